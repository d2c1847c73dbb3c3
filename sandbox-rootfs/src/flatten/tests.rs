//! Flattened images are accepted by `qemu-img check`, compare identical to
//! their source with `qemu-img compare`, and read back through our reader.

use std::path::PathBuf;
use std::process::Command;

use super::*;
use crate::{MemOverlay, Qcow2Image, RawImage};

fn tmp(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!("flatten-{}-{name}", std::process::id()))
}

fn qemu_img(args: &[&str], files: &[&PathBuf]) -> std::process::Output {
    Command::new("qemu-img")
        .args(args)
        .args(files.iter().map(|f| f.as_os_str()))
        .output()
        .expect("qemu-img (Debian qemu-utils) is installed")
}

#[test]
fn a_composed_disk_flattens_to_a_valid_identical_qcow2() {
    // A 3 MiB base with data in the first and last MiB, plus guest writes.
    let base = tmp("base.raw");
    let mut data = vec![0u8; 3 << 20];
    data[..1 << 20]
        .iter_mut()
        .enumerate()
        .for_each(|(i, b)| *b = (i % 253) as u8);
    data[2 << 20..].fill(0x5a);
    std::fs::write(&base, &data).unwrap();
    let mut composed = MemOverlay::new(Box::new(RawImage::open(&base).unwrap()), 1 << 20);
    composed.write_at(1536 << 10, &[0xee; 8192]).unwrap();
    composed.write_at(100, b"guest wrote this").unwrap();
    let mut expected = vec![0u8; data.len()];
    composed.read_at(0, &mut expected).unwrap();
    let expected_raw = tmp("expected.raw");
    std::fs::write(&expected_raw, &expected).unwrap();

    for cluster_size in [512u32, 4096, 65536] {
        let out = tmp(&format!("out-{cluster_size}.qcow2"));
        let mut f = std::fs::File::create(&out).unwrap();
        flatten_qcow2(&mut composed, Qcow2Options { cluster_size }, &mut f).unwrap();
        drop(f);
        let check = qemu_img(&["check", "-q", "-f", "qcow2"], &[&out]);
        assert!(
            check.status.success(),
            "qemu-img check ({cluster_size}): {}",
            String::from_utf8_lossy(&check.stdout)
        );
        let cmp = qemu_img(
            &["compare", "-q", "-f", "raw", "-F", "qcow2"],
            &[&expected_raw, &out],
        );
        assert!(
            cmp.status.success(),
            "qemu-img compare ({cluster_size}) found a difference"
        );
        let mut back = Qcow2Image::open(&out).unwrap();
        let mut got = vec![0u8; expected.len()];
        back.read_at(0, &mut got).unwrap();
        assert!(got == expected);
        // Sparse: the zero MiB in the middle took no data clusters.
        assert!(std::fs::metadata(&out).unwrap().len() < (3 << 20) - (400 << 10));
        std::fs::remove_file(&out).unwrap();
    }
    std::fs::remove_file(&base).unwrap();
    std::fs::remove_file(&expected_raw).unwrap();
}

#[test]
fn bad_cluster_sizes_are_refused() {
    let mut disk = crate::MemDisk::new(4096);
    let mut out = std::io::Cursor::new(Vec::new());
    for cs in [0u32, 256, 3000, 4 << 20] {
        assert!(flatten_qcow2(&mut disk, Qcow2Options { cluster_size: cs }, &mut out).is_err());
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_composed_source_flattens_into_a_store_and_streams_to_a_valid_file() {
    use crate::{bytes, sha256_file, BlockStore, Image, ImageFormat, MemStore, Rootfs};
    use futures::StreamExt;
    use std::sync::Arc;

    let base = tmp("store-base.raw");
    let data: Vec<u8> = (0..3u32 << 20).map(|i| (i / 4096) as u8).collect();
    std::fs::write(&base, &data).unwrap();
    let image = Image {
        name: "flatten-base".into(),
        path: base.clone(),
        format: ImageFormat::Raw,
        arch: "x86_64".into(),
        sha256: sha256_file(&base).unwrap(),
        size: data.len() as u64,
        facts: Default::default(),
        run: Default::default(),
    };
    let overlay = Arc::new(MemStore::new(4096));
    let composed = Rootfs::compose(image.clone(), overlay.clone());
    let blocks = vec![
        (5u64, bytes::Bytes::from(vec![0xab; 4096])),
        (700, bytes::Bytes::from(vec![0u8; 4096])),
    ];
    overlay.write(&composed.context(), blocks).await.unwrap();
    let mut expected = data.clone();
    expected[5 * 4096..6 * 4096].fill(0xab);
    expected[700 * 4096..701 * 4096].fill(0);
    let expected_raw = tmp("store-expected.raw");
    std::fs::write(&expected_raw, &expected).unwrap();

    let dest = Arc::new(MemStore::new(65536));
    let flat = crate::flatten(composed, Qcow2Options { cluster_size: 4096 }, dest.clone())
        .await
        .unwrap();
    assert_eq!(flat.context.base_sha256, image.sha256);
    let out = tmp("store-out.qcow2");
    let mut chunks = Box::pin(bytes(&flat, 100_000));
    let mut file = Vec::new();
    while let Some(chunk) = chunks.next().await {
        file.extend_from_slice(&chunk.unwrap());
    }
    assert_eq!(file.len() as u64, flat.len);
    std::fs::write(&out, &file).unwrap();
    assert_eq!(sha256_file(&out).unwrap(), flat.sha256);
    let check = qemu_img(&["check", "-q", "-f", "qcow2"], &[&out]);
    assert!(check.status.success(), "qemu-img check");
    let cmp = qemu_img(
        &["compare", "-q", "-f", "raw", "-F", "qcow2"],
        &[&expected_raw, &out],
    );
    assert!(cmp.status.success(), "qemu-img compare found a difference");
    assert!(dest.len() as u64 <= flat.len.div_ceil(65536));
    for f in [&base, &expected_raw, &out] {
        std::fs::remove_file(f).unwrap();
    }
}
