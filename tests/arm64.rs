//! The arm64 guest kernel under QEMU's arm64 emulator (TCG), booted with
//! the device tree `sandbox-vmm-hvf` writes for Hypervisor.framework: the
//! same blob must describe QEMU `virt`'s hardware (issue 18, item 5's first
//! step). Checked on the console: the GICv3, the architected timer, the
//! PL011 console from `stdout-path`, a second vCPU started through PSCI
//! over HVC, and the kernel's run up to mounting a root file system (there
//! is no disk yet, so it stops there).
//!
//! The second test boots the whole arm64 guest (kernel, agent, `minimal`)
//! through `sandbox-core` with `BackendKind::QemuArm64`: QEMU runs `virt`
//! on that device tree with our own virtio devices served over vhost-user,
//! and exec, spawn, pty and the file API run through the normal client.
//!
//! Needs `cargo xtask build --arch arm64` (CI runs it) and Debian's
//! `qemu-system-arm`.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use sandbox_vmm_hvf::layout::Layout;

fn cache() -> PathBuf {
    std::env::var_os("SANDBOX_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(std::env::var("HOME").unwrap()).join(".cache/sandbox"))
}

fn arm64_kernel() -> PathBuf {
    let path = cache().join("manifest/kernel-arm64.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e}; run `cargo xtask build --arch arm64`",
            path.display()
        )
    });
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    PathBuf::from(v["path"].as_str().unwrap())
}

/// Runs QEMU until the kernel has nothing left to boot (it panics without
/// a root disk and, with `panic=-1`, reboots, which `-no-reboot` turns
/// into an exit), and returns the console.
fn boot(layout: &Layout, bootargs: &str) -> (String, Duration) {
    let dtb = std::env::temp_dir().join(format!("arm64-{}.dtb", std::process::id()));
    let blob = sandbox_vmm_hvf::fdt::device_tree(layout, bootargs).unwrap();
    std::fs::write(&dtb, blob).unwrap();
    let start = Instant::now();
    let out = Command::new("qemu-system-aarch64")
        .args(["-M", "virt,gic-version=3", "-cpu", "max", "-accel", "tcg"])
        .args(["-m", &format!("{}M", layout.ram_bytes() >> 20)])
        .args(["-smp", &layout.cpus().to_string()])
        .args([
            "-nographic",
            "-no-reboot",
            "-nodefaults",
            "-serial",
            "stdio",
        ])
        .arg("-kernel")
        .arg(arm64_kernel())
        .arg("-dtb")
        .arg(&dtb)
        .stdin(Stdio::null())
        .output()
        .expect(
            "qemu-system-aarch64 is missing: apt-get install qemu-system-arm (cargo xtask deps)",
        );
    let _ = std::fs::remove_file(&dtb);
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        start.elapsed(),
    )
}

#[test]
fn the_arm64_kernel_boots_on_our_device_tree_under_qemu() {
    let layout = Layout::new(2, 256, 2).unwrap();
    let (console, took) = boot(&layout, "console=ttyAMA0 panic=-1");
    eprintln!("arm64 boot under TCG to the root mount: {took:.2?}");
    if std::env::var_os("SANDBOX_SHOW_CONSOLE").is_some() {
        eprintln!("{console}");
    }
    for expected in [
        "Booting Linux on physical CPU 0x0000000000",
        "psci: PSCIv1.",
        "GICv3: ",
        "arch_timer: cp15 timer(s) running",
        "9000000.pl011: ttyAMA0 at MMIO 0x9000000",
        "smp: Brought up 1 node, 2 CPUs",
        "Kernel command line: console=ttyAMA0 panic=-1",
        "VFS: Unable to mount root fs",
    ] {
        assert!(
            console.contains(expected),
            "{expected:?} missing from the console:\n{console}"
        );
    }
}

mod guest {
    use std::time::Duration;

    use sandbox_core::{
        fs::WriteOptions, images, BackendKind, BootOptions, Mount, PtySize, Rootfs, Sandbox,
    };
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn sandbox() -> Sandbox {
        let image = images::builtin_arch("minimal", "aarch64")
            .expect("run `cargo xtask build --arch arm64`");
        assert_eq!(image.arch, "aarch64");
        Sandbox::builder()
            .rootfs(Rootfs::ephemeral(image))
            .backend(BackendKind::QemuArm64)
            .build()
            .unwrap()
    }

    async fn read_until(out: &mut sandbox_core::OutputStream, needle: &str) -> String {
        let mut seen = String::new();
        let found = tokio::time::timeout(Duration::from_secs(60), async {
            let mut buf = [0u8; 4096];
            while !seen.contains(needle) {
                let n = out.read(&mut buf).await.unwrap();
                assert!(n > 0, "terminal closed before {needle:?}; got {seen:?}");
                seen.push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        })
        .await;
        assert!(found.is_ok(), "no {needle:?} in {seen:?}");
        seen
    }

    #[tokio::test]
    async fn the_arm64_guest_runs_exec_spawn_pty_and_files_through_sandbox_core() {
        // A host directory mounted read-only: virtio-fs on arm64 too.
        let share = std::env::temp_dir().join(format!("arm64-share-{}", std::process::id()));
        std::fs::create_dir_all(&share).unwrap();
        std::fs::write(share.join("hello.txt"), b"from the host\n").unwrap();
        let vm = sandbox()
            .boot(
                BootOptions::default()
                    .hostname("arm64")
                    .mount("/share", Mount::bind(&share).read_only())
                    .timeout(Duration::from_secs(120)),
            )
            .await
            .unwrap();
        eprintln!(
            "arm64 guest under TCG: agent ready in {} ms ({})",
            vm.boot_time().as_millis(),
            vm.backend_reason()
        );
        assert_eq!(vm.backend(), BackendKind::QemuArm64);

        // exec: the guest is arm64 and runs the agent from our image.
        let out = vm.exec("uname", ["-m"]).await.unwrap();
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "aarch64");
        let out = vm.exec("hostname", [""; 0]).await.unwrap();
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "arm64");
        let out = vm
            .exec("sh", ["-c", "grep -c ^processor /proc/cpuinfo; exit 3"])
            .await
            .unwrap();
        assert_eq!(out.status.code, Some(3));
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "1");

        let out = vm.exec("cat", ["/share/hello.txt"]).await.unwrap();
        assert_eq!(out.stdout, b"from the host\n");
        let out = vm.exec("touch", ["/share/new"]).await.unwrap();
        assert_ne!(out.status.code, Some(0), "a read-only bind refuses writes");
        assert!(!share.join("new").exists());

        // spawn: stdin streams in, stdout streams out.
        let mut p = vm.spawn("sha256sum", [""; 0]).unwrap();
        p.ready().await.unwrap();
        let mut stdin = p.stdin.take().unwrap();
        let data = vec![0x5au8; 1 << 20];
        stdin.write_all(&data).await.unwrap();
        stdin.shutdown().await.unwrap();
        let mut text = String::new();
        p.stdout
            .take()
            .unwrap()
            .read_to_string(&mut text)
            .await
            .unwrap();
        use sha2::Digest;
        let want = format!("{:x}", sha2::Sha256::digest(&data));
        assert_eq!(text.split_whitespace().next(), Some(want.as_str()));
        assert_eq!(p.exit().await.unwrap().code, Some(0));

        // pty: bash on a terminal of the requested size.
        let mut sh = vm
            .pty(
                "bash",
                ["-i"],
                PtySize {
                    rows: 30,
                    cols: 100,
                },
            )
            .unwrap();
        sh.ready().await.unwrap();
        sh.input
            .write_all(b"test -t 0 && echo tty-ok; stty size; exit 5\n")
            .await
            .unwrap();
        read_until(&mut sh.output, "30 100").await;
        assert_eq!(sh.exit().await.unwrap().code, Some(5));

        // The file API, both ways, on the ephemeral root.
        let body: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        vm.fs()
            .write_file(
                "/root/deep/blob",
                &body,
                WriteOptions {
                    create_parents: true,
                },
            )
            .await
            .unwrap();
        let out = vm.exec("wc", ["-c", "/root/deep/blob"]).await.unwrap();
        assert!(String::from_utf8_lossy(&out.stdout).starts_with("300000 "));
        vm.exec("sh", ["-c", "echo from-the-guest > /tmp/g"])
            .await
            .unwrap();
        assert_eq!(
            vm.fs().read_file("/tmp/g").await.unwrap(),
            b"from-the-guest\n"
        );
        assert_eq!(vm.fs().read_file("/root/deep/blob").await.unwrap(), body);

        vm.shutdown().await.unwrap();
        std::fs::remove_dir_all(&share).unwrap();
    }

    #[tokio::test]
    async fn an_x86_64_image_is_refused_on_the_arm64_backend_and_the_reverse() {
        let x86 = images::builtin("minimal").expect("cargo xtask build");
        let err = Sandbox::builder()
            .rootfs(Rootfs::ephemeral(x86))
            .backend(BackendKind::QemuArm64)
            .build()
            .unwrap()
            .boot(BootOptions::default())
            .await
            .unwrap_err();
        assert!(err.to_string().contains("aarch64"), "{err}");
        let arm = images::builtin_arch("minimal", "aarch64").unwrap();
        let err = Sandbox::builder()
            .rootfs(Rootfs::ephemeral(arm))
            .backend(BackendKind::Uml)
            .build()
            .unwrap()
            .boot(BootOptions::default())
            .await
            .unwrap_err();
        assert!(err.to_string().contains("QemuArm64"), "{err}");
    }
}
