//! Definition validation and boot failures: clear errors, nothing left running.

use sandbox_core::{images, BootOptions, Error, Resources, Sandbox};

#[test]
fn build_validates_before_starting_anything() {
    assert!(matches!(
        Sandbox::builder().build(),
        Err(Error::InvalidConfig(m)) if m.contains("image")
    ));
    let image = images::builtin("minimal").unwrap();
    let too_small = Sandbox::builder()
        .image(image.clone())
        .resources(Resources {
            cpus: 1,
            memory_mib: 8,
        })
        .build();
    assert!(matches!(too_small, Err(Error::InvalidConfig(m)) if m.contains("memory_mib")));
    let mut missing = image;
    missing.path = "/nonexistent/image.ext4".into();
    assert!(matches!(
        Sandbox::builder().image(missing).build(),
        Err(Error::ArtifactMissing { .. })
    ));
    assert!(matches!(
        images::builtin("alpine:3"),
        Err(Error::InvalidConfig(m)) if m.contains("minimal")
    ));
}

#[tokio::test]
async fn bad_boot_options_are_rejected_before_booting() {
    let sandbox = sandbox::minimal().unwrap();
    for opts in [
        BootOptions::default().hostname("bad host"),
        BootOptions::default().hostname(""),
        BootOptions::default().cwd("relative/dir"),
    ] {
        assert!(matches!(
            sandbox.boot(opts).await,
            Err(Error::InvalidConfig(_))
        ));
    }
}

#[tokio::test]
async fn the_hostname_reaches_the_guest() {
    let vm = sandbox::boot("agent-42").await.unwrap();
    let out = vm.exec("cat", ["/proc/sys/kernel/hostname"]).await.unwrap();
    assert_eq!(out.stdout, b"agent-42\n");
    let mounts = vm.exec("cat", ["/proc/mounts"]).await.unwrap();
    let mounts = String::from_utf8(mounts.stdout).unwrap();
    for m in [
        " /proc ",
        " /sys ",
        " /dev ",
        " /dev/pts ",
        " /dev/shm ",
        " /tmp ",
        " /run ",
    ] {
        assert!(mounts.contains(m), "{m} missing from {mounts}");
    }
    // The root is mounted without ext4's background inode-table zeroing
    // (it wrote into overlays and kept idle guests busy).
    let root = mounts
        .lines()
        .find(|l| l.starts_with("/dev/root / ") || l.starts_with("/dev/vda / "));
    assert!(
        root.is_some_and(|l| l.contains("noinit_itable")),
        "root mount options: {root:?}"
    );
    let fd = vm.exec("bash", ["-c", "cat < <(printf hi)"]).await.unwrap();
    assert_eq!(fd.stdout, b"hi", "/dev/fd works");
    vm.shutdown().await.unwrap();
}

#[tokio::test]
async fn the_guest_has_a_virtio_rng() {
    // (UML also has its own host-backed rng, so this one is chosen by hand.)
    let vm = sandbox::boot("rng").await.unwrap();
    sandbox::assert_virtio_hwrng(&vm, true).await;
    vm.shutdown().await.unwrap();
}

#[tokio::test]
async fn pause_and_snapshot_on_uml_are_clear_errors_and_the_guest_runs_on() {
    let vm = sandbox::boot("no-pause").await.unwrap();
    if vm.backend() != sandbox_core::BackendKind::Uml {
        sandbox::skip(
            "boot::pause_and_snapshot_on_uml_are_clear_errors_and_the_guest_runs_on",
            "the harness chose another backend than UML",
        );
        return;
    }
    for (what, result) in [("pause", vm.pause()), ("resume", vm.resume())] {
        match result {
            Err(e @ Error::Unsupported { .. }) => {
                let text = e.to_string();
                assert!(text.starts_with(what), "{text}");
                assert!(text.contains("KVM backend"), "says what to use: {text}");
            }
            other => panic!("{what} on UML: {other:?}"),
        }
    }
    assert!(!vm.is_paused());
    let dir = std::env::temp_dir().join(format!("sandbox-uml-snapshot-{}", std::process::id()));
    match vm.snapshot(&dir).await {
        Err(e @ Error::Unsupported { .. }) => assert!(e.to_string().contains("KVM"), "{e}"),
        other => panic!("snapshot on UML: {other:?}"),
    }
    assert!(!dir.join("machine.json").exists(), "nothing was written");
    let out = vm.exec("echo", ["still running"]).await.unwrap();
    assert_eq!(out.stdout, b"still running\n");
    vm.shutdown().await.unwrap();
}
