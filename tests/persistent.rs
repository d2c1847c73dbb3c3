//! `Rootfs::persistent`: a qcow2 overlay file that keeps the guest's writes
//! across boots, locked while in use, bound to its base, read by qemu-img.

use std::path::{Path, PathBuf};

use sandbox_core::{images, Error, Rootfs};
use sandbox_rootfs::{sha256_file, RootfsError};

use sandbox::boot_rootfs as boot;

fn overlay_path(tag: &str) -> PathBuf {
    let p = std::env::temp_dir().join(format!(
        "sandbox-persistent-{tag}-{}.qcow2",
        std::process::id()
    ));
    let _ = std::fs::remove_file(&p);
    p
}

/// Asserts `qemu-img check` finds the overlay clean.
fn assert_qemu_check(path: &Path) {
    let out = std::process::Command::new("qemu-img")
        .args(["check", "-f", "qcow2"])
        .arg(path)
        .output()
        .expect("qemu-img (Debian qemu-utils) is installed");
    assert!(
        out.status.success(),
        "qemu-img check {}: {}{}",
        path.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test]
async fn writes_and_a_guest_built_binary_survive_reboot() {
    let image = images::builtin("minimal").unwrap();
    let path = overlay_path("reboot");
    let rootfs = Rootfs::persistent(image.clone(), &path);
    let vm = boot(rootfs.clone()).await.unwrap();
    let out = vm
        .exec(
            "sh",
            [
                "-c",
                "echo kept > /root/file && mkdir -p /usr/local/bin && printf '#!/bin/sh\\necho ran from the overlay\\n' > /usr/local/bin/hello \
                 && chmod +x /usr/local/bin/hello && mkdir -p /root/bin && cp /bin/busybox /root/bin/busybox && sync && echo ok",
            ],
        )
        .await
        .unwrap();
    assert_eq!(
        out.stdout,
        b"ok\n",
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    vm.shutdown().await.unwrap();
    assert_qemu_check(&path);

    let vm = boot(rootfs).await.unwrap();
    assert_eq!(
        vm.exec("cat", ["/root/file"]).await.unwrap().stdout,
        b"kept\n"
    );
    let ran = vm.exec("hello", Vec::<String>::new()).await.unwrap();
    assert_eq!(ran.stdout, b"ran from the overlay\n");
    // A binary the guest wrote (a copy of busybox) runs.
    let bb = vm
        .exec("/root/bin/busybox", ["echo", "copied binary runs"])
        .await
        .unwrap();
    assert_eq!(bb.stdout, b"copied binary runs\n");
    vm.shutdown().await.unwrap();
    assert_qemu_check(&path);
    assert_eq!(
        sha256_file(&image.path).unwrap(),
        image.sha256,
        "base untouched"
    );
    std::fs::remove_file(&path).unwrap();
}

#[tokio::test]
async fn a_second_vm_on_the_same_overlay_is_refused_while_the_first_runs() {
    let image = images::builtin("minimal").unwrap();
    let path = overlay_path("locked");
    let first = boot(Rootfs::persistent(image.clone(), &path))
        .await
        .unwrap();
    let err = boot(Rootfs::persistent(image.clone(), &path))
        .await
        .expect_err("the second boot fails");
    assert!(
        matches!(err, Error::Rootfs(RootfsError::Locked(_))),
        "expected a lock error, got {err:?}"
    );
    assert!(err.to_string().contains("in use by another VM"), "{err}");
    first.shutdown().await.unwrap();
    // Free again once the first VM is gone.
    let again = boot(Rootfs::persistent(image, &path)).await.unwrap();
    again.shutdown().await.unwrap();
    assert_qemu_check(&path);
    std::fs::remove_file(&path).unwrap();
}

#[tokio::test]
async fn an_overlay_refuses_a_different_base() {
    let image = images::builtin("minimal").unwrap();
    let path = overlay_path("base");
    let vm = boot(Rootfs::persistent(image.clone(), &path))
        .await
        .unwrap();
    vm.shutdown().await.unwrap();
    // Another base: a copy of the image with one byte changed.
    let copy = std::env::temp_dir().join(format!("sandbox-other-base-{}.ext4", std::process::id()));
    let mut bytes = std::fs::read(&image.path).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    std::fs::write(&copy, &bytes).unwrap();
    let other = sandbox_core::Image {
        name: "other-base".into(),
        path: copy.clone(),
        sha256: sha256_file(&copy).unwrap(),
        ..image.clone()
    };
    let err = boot(Rootfs::persistent(other, &path))
        .await
        .expect_err("refused");
    std::fs::remove_file(&copy).unwrap();
    assert!(
        matches!(err, Error::Rootfs(RootfsError::BaseMismatch { .. })),
        "expected a base mismatch, got {err:?}"
    );
    assert!(err.to_string().contains(&image.sha256), "{err}");
    let rel = boot(Rootfs::persistent(image, "relative/state.qcow2"))
        .await
        .err()
        .unwrap();
    assert!(
        matches!(rel, Error::Rootfs(RootfsError::InvalidPath(_))),
        "{rel:?}"
    );
    std::fs::remove_file(&path).unwrap();
}

#[tokio::test]
async fn two_vms_share_one_base_with_their_own_overlays() {
    let image = images::builtin("minimal").unwrap();
    let (a, b) = (overlay_path("share-a"), overlay_path("share-b"));
    let (vm_a, vm_b) = tokio::join!(
        boot(Rootfs::persistent(image.clone(), &a)),
        boot(Rootfs::persistent(image.clone(), &b))
    );
    let (vm_a, vm_b) = (vm_a.unwrap(), vm_b.unwrap());
    for (vm, word) in [(&vm_a, "alpha"), (&vm_b, "beta")] {
        let cmd = format!("echo {word} > /root/who && sync");
        assert_eq!(
            vm.exec("sh", ["-c", &cmd]).await.unwrap().status.code,
            Some(0)
        );
    }
    assert_eq!(
        vm_a.exec("cat", ["/root/who"]).await.unwrap().stdout,
        b"alpha\n"
    );
    assert_eq!(
        vm_b.exec("cat", ["/root/who"]).await.unwrap().stdout,
        b"beta\n"
    );
    vm_a.shutdown().await.unwrap();
    vm_b.shutdown().await.unwrap();
    for p in [&a, &b] {
        assert_qemu_check(p);
        std::fs::remove_file(p).unwrap();
    }
    assert_eq!(
        sha256_file(&image.path).unwrap(),
        image.sha256,
        "base untouched"
    );
}
