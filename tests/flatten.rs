//! Flattening after guest writes: a cow root's base plus its store become a
//! standalone qcow2 that qemu-img accepts, that compares identical to the
//! composed source, and that boots with the guest's files in it.

use std::sync::Arc;

use futures::StreamExt;
use sandbox_core::rootfs::{bytes, flatten, MemStore, Qcow2Options, Source};
use sandbox_core::{images, Image, ImageFormat, Rootfs};
use sandbox_rootfs::sha256_file;
use tokio::io::AsyncWriteExt;

async fn boot(rootfs: Rootfs) -> sandbox_core::Vm {
    sandbox::boot_rootfs(rootfs).await.unwrap()
}

fn qemu_img(args: &[&str]) -> std::process::Output {
    std::process::Command::new("qemu-img")
        .args(args)
        .output()
        .expect("qemu-img (Debian qemu-utils) is installed")
}

#[tokio::test(flavor = "multi_thread")]
async fn a_composed_source_flattens_after_guest_writes_and_boots() {
    let image = images::builtin("minimal").unwrap();
    let store = Arc::new(MemStore::new(4096));
    let vm = boot(Rootfs::cow(image.clone(), store.clone())).await;
    let out = vm
        .exec(
            "sh",
            [
                "-c",
                "echo flattened > /root/note && head -c 3000000 /dev/urandom > /root/blob \
                 && sync && md5sum /root/blob",
            ],
        )
        .await
        .unwrap();
    assert_eq!(out.status.code, Some(0));
    let md5 = String::from_utf8(out.stdout).unwrap();
    vm.shutdown().await.unwrap();

    let dir = std::env::temp_dir().join(format!("sandbox-flatten-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let composed = Rootfs::compose(image.clone(), store.clone());

    // The composed source as a raw file, for qemu-img compare.
    let expected = dir.join("composed.raw");
    let source = Source::from(composed.clone());
    let (rt, exp) = (tokio::runtime::Handle::current(), expected.clone());
    tokio::task::spawn_blocking(move || {
        let mut disk = source.open_read(&rt).unwrap();
        let mut f = std::fs::File::create(&exp).unwrap();
        let mut buf = vec![0u8; 1 << 20];
        let mut at = 0;
        while at < disk.size() {
            let n = buf.len().min((disk.size() - at) as usize);
            disk.read_at(at, &mut buf[..n]).unwrap();
            std::io::Write::write_all(&mut f, &buf[..n]).unwrap();
            at += n as u64;
        }
    })
    .await
    .unwrap();

    let dest = Arc::new(MemStore::new(1 << 20));
    let flat = flatten(composed, Qcow2Options::default(), dest)
        .await
        .unwrap();
    let path = dir.join("flat.qcow2");
    let mut file = tokio::fs::File::create(&path).await.unwrap();
    let mut chunks = Box::pin(bytes(&flat, 256 << 10));
    while let Some(chunk) = chunks.next().await {
        file.write_all(&chunk.unwrap()).await.unwrap();
    }
    file.flush().await.unwrap();
    drop(file);
    assert_eq!(sha256_file(&path).unwrap(), flat.sha256);

    let (p, e) = (path.to_str().unwrap(), expected.to_str().unwrap());
    let check = qemu_img(&["check", "-f", "qcow2", p]);
    assert!(check.status.success(), "qemu-img check: {check:?}");
    let info = String::from_utf8(qemu_img(&["info", p]).stdout).unwrap();
    assert!(!info.contains("backing file"), "standalone: {info}");
    let cmp = qemu_img(&["compare", "-f", "raw", "-F", "qcow2", e, p]);
    assert!(cmp.status.success(), "qemu-img compare: {cmp:?}");

    let flattened = Image {
        name: "flattened".into(),
        path: path.clone(),
        format: ImageFormat::Qcow2,
        sha256: flat.sha256.clone(),
        size: flat.len,
        ..image.clone()
    };
    let vm = boot(Rootfs::read_only(flattened)).await;
    let out = vm
        .exec("sh", ["-c", "cat /root/note && md5sum /root/blob"])
        .await
        .unwrap();
    assert_eq!(
        String::from_utf8(out.stdout).unwrap(),
        format!("flattened\n{md5}")
    );
    vm.shutdown().await.unwrap();
    assert_eq!(
        sha256_file(&image.path).unwrap(),
        image.sha256,
        "base untouched"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}
