//! Data disks: block devices after the root, served by our virtio-blk
//! device or by an external vhost-user-blk backend (qemu-storage-daemon).

use std::path::{Path, PathBuf};

use sandbox_core::{images, BootOptions, DataDisk, Image, ImageFormat, Rootfs, Sandbox};
use sandbox_rootfs::sha256_file;

fn data_image(path: &Path, fill: u8) -> Image {
    let mut data = vec![fill; 8 << 20];
    data[..16].copy_from_slice(b"sandbox data 16B");
    std::fs::write(path, &data).unwrap();
    Image {
        name: "data".into(),
        path: path.to_path_buf(),
        format: ImageFormat::Raw,
        arch: "x86_64".into(),
        sha256: sha256_file(path).unwrap(),
        size: data.len() as u64,
        facts: Default::default(),
        run: Default::default(),
    }
}

fn tmp(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!("sandbox-disks-{}-{name}", std::process::id()))
}

#[tokio::test]
async fn data_disks_from_our_device_and_from_qemu_storage_daemon() {
    let ours = data_image(&tmp("ours.raw"), 0x11);
    let theirs_file = tmp("theirs.raw");
    data_image(&theirs_file, 0x22);
    let socket = tmp("qsd.sock");
    let _qsd = sandbox::Qsd::start(&theirs_file, "raw", &socket);

    let vm = Sandbox::builder()
        .rootfs(Rootfs::ephemeral(images::builtin("minimal").unwrap()))
        .disk(Rootfs::ephemeral(ours.clone()))
        .disk(DataDisk::VhostUser(socket.clone()))
        .backend(sandbox::backend())
        .build()
        .unwrap()
        .boot(BootOptions::default())
        .await
        .unwrap();
    let out = vm
        .exec(
            "sh",
            [
                "-c",
                "cat /sys/block/vdb/size /sys/block/vdc/size /sys/block/vdb/serial; echo; \
                 head -c 16 /dev/vdb; echo; head -c 17 /dev/vdc | tail -c 1 | od -An -tx1; \
                 printf 'written by guest' | dd of=/dev/vdc bs=512 seek=1 conv=sync,fsync 2>/dev/null; echo rc=$?",
            ],
        )
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        text,
        "16384\n16384\nsandbox-data0\nsandbox data 16B\n 22\nrc=0\n",
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    vm.shutdown().await.unwrap();
    let back = std::fs::read(&theirs_file).unwrap();
    assert_eq!(&back[512..528], b"written by guest");
    for f in [&ours.path, &theirs_file] {
        std::fs::remove_file(f).unwrap();
    }
}
