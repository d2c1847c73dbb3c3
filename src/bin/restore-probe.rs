//! Test helper for tests/kvm.rs: restores the snapshot in the directory
//! named by its first argument, in a process that never saw the VM (as
//! after a host restart: everything comes from the directory), and
//! prints the guest's `/root/note` and the memory mount's `/seed.txt`.
//! The snapshot's guest has a network and a virtual mount on `/virt`:
//! this process gives it a network that denies every connection and an
//! empty file system of its own there.

use std::time::Duration;

use sandbox_core::net::{Conn, NetworkOptions};
use sandbox_core::vfs::MemoryFs;
use sandbox_core::{Mount, RestoreOptions, Sandbox, Snapshot};

#[tokio::main]
async fn main() {
    let dir = std::env::args()
        .nth(1)
        .expect("usage: restore-probe SNAPSHOT_DIR");
    let snapshot = Snapshot::open(&dir).expect("a snapshot directory");
    let deny = NetworkOptions::new(|conn: Conn| async move { Ok(conn.deny()) });
    let vm = Sandbox::restore(
        &snapshot,
        RestoreOptions::default()
            .timeout(Duration::from_secs(600))
            .network(deny)
            .mount("/virt", Mount::virtual_fs(MemoryFs::new())),
    )
    .await
    .expect("restore");
    let note = vm.fs().read_file("/root/note").await.expect("/root/note");
    let seed = vm
        .memory_mount("/mem")
        .expect("the memory mount")
        .read_file("/seed.txt")
        .expect("/seed.txt");
    print!(
        "{}{}",
        String::from_utf8_lossy(&note),
        String::from_utf8_lossy(&seed)
    );
    vm.shutdown().await.expect("shutdown");
}
