//! Test helper for tests/crash.rs: boots the minimal image on the
//! persistent overlay named by its first argument and keeps the guest
//! rewriting `/root/data` generation after generation (and writing fresh
//! files) until the test kills this process with SIGKILL. Prints `writing`
//! once the guest is busy.

use sandbox_core::{images, BootOptions, Rootfs, Sandbox};

/// Overwrites /root/data in place, alternating generations 1 and 2; each
/// 8-byte token is `gNNNNNN\n`, so every block of the file is uniform.
/// Also writes fresh files, so new clusters get allocated meanwhile.
const GUEST_LOOP: &str = "yes g000001 | head -c 4194304 > /tmp/p1; \
    yes g000002 | head -c 4194304 > /tmp/p2; echo started; i=0; while :; do \
    dd if=/tmp/p$((i % 2 + 1)) of=/root/data bs=64k conv=notrunc,fsync 2>/dev/null; \
    head -c 65536 /tmp/p1 > /root/fresh-$((i % 8)); i=$((i+1)); done";

#[tokio::main]
async fn main() {
    let path = std::env::args()
        .nth(1)
        .expect("usage: crash-writer OVERLAY");
    let image = images::builtin("minimal").expect("cargo xtask build has run");
    let vm = Sandbox::builder()
        .rootfs(Rootfs::persistent(image, path))
        .backend(sandbox::backend())
        .build()
        .expect("sandbox")
        .boot(BootOptions::default())
        .await
        .expect("boot");
    let mut writer = vm
        .command("sh")
        .args(["-c", GUEST_LOOP])
        .spawn()
        .expect("spawn");
    let mut stdout = writer.stdout.take().expect("stdout");
    let mut line = [0u8; 8];
    tokio::io::AsyncReadExt::read_exact(&mut stdout, &mut line)
        .await
        .expect("the guest loop started");
    println!("writing");
    // Run until killed.
    let _ = writer.exit().await;
    std::process::exit(1);
}
