//! Guest block I/O through our virtio-blk device serving a persistent
//! qcow2 overlay, next to qemu-storage-daemon exporting a copy of the same
//! qcow2 over vhost-user-blk to the same UML guest, in the same run.
//!
//! Workloads (queue depth 1, `O_DIRECT` in the guest, timed in the guest by
//! `sandbox-blkbench`): sequential 1 MiB reads and writes, random 4 KiB
//! reads and writes over the whole disk. Prints MB/s, IOPS and the ratio
//! ours/qsd at the end. The image files live in /dev/shm when it exists,
//! so host disk flushes do not blur the comparison. `cargo bench --bench block`; needs
//! `cargo xtask build` and qemu-storage-daemon (Debian qemu-utils).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use sandbox_core::fs::WriteOptions;
use sandbox_core::{images, BootOptions, DataDisk, Image, ImageFormat, Rootfs, Sandbox, Vm};
use sandbox_rootfs::{Disk, OverlayOptions, Qcow2Overlay, RawImage};

const DISK_BYTES: u64 = 128 << 20;

/// (workload, block bytes, bytes per run).
const WORKLOADS: [(&str, u64, u64); 4] = [
    ("seqread", 1 << 20, 64 << 20),
    ("seqwrite", 1 << 20, 64 << 20),
    ("randread", 4096, 8 << 20),
    ("randwrite", 4096, 8 << 20),
];

/// (workload, server) -> (bytes, guest nanoseconds) summed over runs.
static TOTALS: Mutex<BTreeMap<(String, String), (u64, u128)>> = Mutex::new(BTreeMap::new());

/// The base (raw, non-zero) and a fully allocated overlay over it.
fn prepare(dir: &Path) -> (Image, PathBuf) {
    std::fs::create_dir_all(dir).unwrap();
    let base = dir.join("base.raw");
    let chunk: Vec<u8> = (0..1 << 20).map(|i: u32| (i % 251) as u8 | 1).collect();
    let mut f = std::fs::File::create(&base).unwrap();
    for _ in 0..DISK_BYTES >> 20 {
        std::io::Write::write_all(&mut f, &chunk).unwrap();
    }
    drop(f);
    let image = Image {
        name: "bench-data".into(),
        path: base.clone(),
        format: ImageFormat::Raw,
        arch: "x86_64".into(),
        sha256: sandbox_rootfs::sha256_file(&base).unwrap(),
        size: DISK_BYTES,
        facts: Default::default(),
        run: Default::default(),
    };
    let overlay = dir.join("ours.qcow2");
    let _ = std::fs::remove_file(&overlay);
    let raw = Box::new(RawImage::open(&base).unwrap());
    let mut o = Qcow2Overlay::open(&overlay, raw, &image, OverlayOptions::default()).unwrap();
    for i in 0..DISK_BYTES >> 20 {
        o.write_at(i << 20, &chunk).unwrap();
    }
    drop(o);
    (image, overlay)
}

async fn run(vm: &Vm, dev: &str, workload: &str, block: u64, total: u64, seed: u64) -> u128 {
    let args = [dev, workload]
        .map(String::from)
        .into_iter()
        .chain([block, total, DISK_BYTES, seed].map(|n| n.to_string()));
    let out = vm.exec("/tmp/blkbench", args).await.unwrap();
    assert_eq!(
        out.status.code,
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
}

fn block(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    // Files in memory (tmpfs) when possible: the comparison is about the
    // block servers, not about the host disk's flush latency.
    let shm = Path::new("/dev/shm");
    let parent = if shm.is_dir() {
        shm.to_path_buf()
    } else {
        std::env::temp_dir()
    };
    let dir = parent.join(format!("sandbox-block-bench-{}", std::process::id()));
    let (image, ours) = prepare(&dir);
    let theirs = dir.join("qsd.qcow2");
    std::fs::copy(&ours, &theirs).unwrap();
    let socket = dir.join("qsd.sock");
    let _qsd = sandbox::Qsd::start(&theirs, "qcow2", &socket);
    let vm = rt.block_on(async {
        let vm = Sandbox::builder()
            .rootfs(Rootfs::ephemeral(images::builtin("minimal").unwrap()))
            .disk(Rootfs::persistent(image.clone(), &ours))
            .disk(DataDisk::VhostUser(socket.clone()))
            .backend(sandbox::backend())
            .build()
            .unwrap()
            .boot(BootOptions::default())
            .await
            .unwrap();
        let agent = sandbox_core::artifacts::manifest_path("agent", "guest agent").unwrap();
        let tool = std::fs::read(agent.with_file_name("sandbox-blkbench")).unwrap();
        let opts = WriteOptions::default();
        vm.fs()
            .write_file("/tmp/blkbench", &tool, opts)
            .await
            .unwrap();
        vm.exec("chmod", ["755", "/tmp/blkbench"]).await.unwrap();
        vm
    });
    let mut group = c.benchmark_group("block");
    group
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(6));
    for (workload, bs, total) in WORKLOADS {
        group.throughput(Throughput::Bytes(total));
        for (server, dev) in [("ours", "/dev/vdb"), ("qsd", "/dev/vdc")] {
            group.bench_function(format!("{workload}/{server}"), |b| {
                b.iter_custom(|iters| {
                    let mut ns = 0;
                    for i in 0..iters {
                        ns += rt.block_on(run(&vm, dev, workload, bs, total, i + 1));
                    }
                    let mut t = TOTALS.lock().unwrap();
                    let e = t.entry((workload.into(), server.into())).or_default();
                    e.0 += total * iters;
                    e.1 += ns;
                    Duration::from_nanos(ns as u64)
                })
            });
        }
    }
    group.finish();
    rt.block_on(vm.shutdown()).unwrap();
    report();
    let _ = std::fs::remove_dir_all(&dir);
}

/// One line per workload: both servers' MB/s and IOPS, and the ratio.
fn report() {
    let t = TOTALS.lock().unwrap();
    println!("\nblock summary (guest-timed, queue depth 1):");
    for (workload, bs, _) in WORKLOADS {
        let rate = |server: &str| {
            t.get(&(workload.to_string(), server.to_string()))
                .map_or(0.0, |(bytes, ns)| *bytes as f64 / (*ns as f64 / 1e9))
        };
        let (ours, qsd) = (rate("ours"), rate("qsd"));
        println!(
            "  {workload:<10} ours {:>8.1} MB/s {:>8.0} IOPS | qsd {:>8.1} MB/s {:>8.0} IOPS | ours/qsd {:.2}",
            ours / 1e6,
            ours / bs as f64,
            qsd / 1e6,
            qsd / bs as f64,
            ours / qsd
        );
    }
}

criterion_group!(benches, block);
criterion_main!(benches);
