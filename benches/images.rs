//! `images::import` of a ~100 MB image (three gzip layers of 1 MiB files of
//! incompressible bytes plus busybox): cold (a fresh cache: resolve,
//! verify, helper VM, unpack, seal) and cached (a second import of the same
//! image), next to the host's own `mkfs.ext4 -d` of the same unpacked tree
//! (the limit: no VM, no verification, trusted input).
//!
//! `cargo xtask build && cargo bench --bench images`

use std::path::Path;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion};
use sandbox::oci_fixture::{Layer, Scratch, Spec, Stored};
use sandbox_core::images::{self, ImportOptions};

/// Files per layer, 1 MiB each.
const FILES: usize = 32;

/// Pseudo-random bytes (xorshift), so gzip cannot shrink them.
fn noise(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

fn spec() -> Spec {
    let mut layers = vec![(Layer::busybox().bytes(), Stored::Gzip)];
    for l in 0..3u64 {
        let mut layer = Layer::new().dir(&format!("data{l}"));
        for i in 0..FILES as u64 {
            layer = layer.file(&format!("data{l}/f{i}"), &noise(l * 1000 + i, 1 << 20));
        }
        layers.push((layer.bytes(), Stored::Gzip));
    }
    Spec::new("bench:1", layers)
}

/// The same tree on the host, for `mkfs.ext4 -d`.
fn host_tree(dir: &Path) {
    for l in 0..3u64 {
        let d = dir.join(format!("data{l}"));
        std::fs::create_dir_all(&d).unwrap();
        for i in 0..FILES as u64 {
            std::fs::write(d.join(format!("f{i}")), noise(l * 1000 + i, 1 << 20)).unwrap();
        }
    }
    std::fs::create_dir_all(dir.join("bin")).unwrap();
    std::fs::copy(sandbox::oci_fixture::BUSYBOX, dir.join("bin/busybox")).unwrap();
}

fn import(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let s = Scratch::new("bench");
    let layout = s.0.join("layout");
    spec().write_layout(&layout);
    let size: u64 = walk(&layout);
    println!("image source: {:.1} MB", size as f64 / 1e6);
    let tree = s.0.join("tree");
    host_tree(&tree);
    let opts = |cache: &Path| {
        ImportOptions::default()
            .cache_dir(cache)
            .max_image_bytes(1 << 30)
    };
    // The empty file system of that size is made once per cache; keep it
    // out of the cold number by sharing one across fresh image caches.
    let shared = s.0.join("shared");
    rt.block_on(images::import(&layout, opts(&shared))).unwrap();
    let mut group = c.benchmark_group("images/import_100mb");
    group.sample_size(10);
    group.warm_up_time(Duration::from_millis(1));
    group.measurement_time(Duration::from_secs(30));
    group.bench_function("cold", |b| {
        b.iter(|| {
            // A fresh image directory in the same cache: everything but
            // the cached empty file system is redone.
            let digest_dir = std::fs::read_dir(&shared)
                .unwrap()
                .filter_map(|e| e.ok())
                .find(|e| e.file_name().len() == 64)
                .map(|e| e.path());
            if let Some(d) = digest_dir {
                std::fs::remove_dir_all(d).unwrap();
            }
            rt.block_on(images::import(&layout, opts(&shared))).unwrap()
        })
    });
    group.bench_function("cached", |b| {
        b.iter(|| rt.block_on(images::import(&layout, opts(&shared))).unwrap())
    });
    let out = s.0.join("host.ext4");
    group.bench_function("host_mkfs_ext4_d", |b| {
        b.iter(|| {
            let _ = std::fs::remove_file(&out);
            let f = std::fs::File::create(&out).unwrap();
            f.set_len(1 << 30).unwrap();
            let ok = std::process::Command::new("mkfs.ext4")
                .args(["-q", "-F", "-O", "^has_journal", "-d"])
                .arg(&tree)
                .arg(&out)
                .status()
                .unwrap()
                .success();
            assert!(ok);
        })
    });
    group.finish();
}

fn walk(p: &Path) -> u64 {
    let m = std::fs::metadata(p).unwrap();
    if m.is_dir() {
        std::fs::read_dir(p)
            .unwrap()
            .map(|e| walk(&e.unwrap().path()))
            .sum()
    } else {
        m.len()
    }
}

criterion_group!(benches, import);
criterion_main!(benches);
