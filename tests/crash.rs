//! Crash consistency of a persistent overlay: kill -9 the host process
//! while the guest rewrites a file; the overlay stays valid for qemu-img,
//! boots, and every block of the file is either its old or its new content.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use sandbox_core::{images, Rootfs};

/// ext4 block size of the minimal image: the unit the guest writes in.
const FS_BLOCK: usize = 1024;

async fn boot(path: &Path) -> sandbox_core::Vm {
    let image = images::builtin("minimal").unwrap();
    sandbox::boot_rootfs(Rootfs::persistent(image, path))
        .await
        .unwrap()
}

/// `qemu-img check`'s exit code: 0 clean, 3 leaked clusters only (which
/// qemu documents as harmless), 2 corrupt.
fn qemu_check(path: &Path) -> (i32, String) {
    let out = Command::new("qemu-img")
        .args(["check", "-f", "qcow2"])
        .arg(path)
        .output()
        .expect("qemu-img (Debian qemu-utils) is installed");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    (out.status.code().unwrap_or(-1), text)
}

/// The generation a block holds, if every token in it is the same.
fn uniform_generation(block: &[u8]) -> Option<u32> {
    let first = &block[..8];
    if first[0] != b'g' || first[7] != b'\n' || block.chunks(8).any(|t| t != first) {
        return None;
    }
    std::str::from_utf8(&first[1..7]).ok()?.parse().ok()
}

#[tokio::test(flavor = "multi_thread")]
async fn kill_9_during_heavy_writes_leaves_old_or_new_blocks() {
    let path = std::env::temp_dir().join(format!("sandbox-crash-{}.qcow2", std::process::id()));
    let _ = std::fs::remove_file(&path);
    // Generation 0 on disk, synced.
    let vm = boot(&path).await;
    let prep = vm
        .exec(
            "sh",
            [
                "-c",
                "yes g000000 | head -c 4194304 > /root/data && sync && echo ok",
            ],
        )
        .await
        .unwrap();
    assert_eq!(prep.stdout, b"ok\n");
    vm.shutdown().await.unwrap();

    for round in 0..3u64 {
        let mut child = Command::new(env!("CARGO_BIN_EXE_crash-writer"))
            .arg(&path)
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert_eq!(line, "writing\n", "the helper got the guest writing");
        // Land the kill at a different point of the write loop each round.
        std::thread::sleep(Duration::from_millis(300 + 450 * round));
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        // The guest kernel follows its parent (PDEATHSIG); give it a moment.
        tokio::time::sleep(Duration::from_millis(300)).await;

        let (code, report) = qemu_check(&path);
        assert!(
            code == 0 || code == 3,
            "round {round}: corrupt overlay: {report}"
        );
        eprintln!("[crash] round {round}: qemu-img check exit {code}");

        let vm = boot(&path).await;
        let data = vm.fs().read_file("/root/data").await.unwrap();
        assert_eq!(
            data.len(),
            4 << 20,
            "round {round}: the file keeps its size"
        );
        let mut generations = std::collections::BTreeMap::new();
        for (i, block) in data.chunks(FS_BLOCK).enumerate() {
            let g = uniform_generation(block)
                .unwrap_or_else(|| panic!("round {round}: block {i} is torn or garbage"));
            *generations.entry(g).or_insert(0u32) += 1;
        }
        eprintln!("[crash] round {round}: blocks per generation {generations:?}");
        vm.shutdown().await.unwrap();
        let (code, report) = qemu_check(&path);
        assert_eq!(
            code, 0,
            "round {round}: after a clean run the overlay is clean: {report}"
        );
    }
    std::fs::remove_file(&path).unwrap();
}
