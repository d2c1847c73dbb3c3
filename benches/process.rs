//! Process API costs on the default backend (UML here): exec round trip,
//! spawn-to-ready, and guest-to-host stdout throughput.
//!
//! `cargo bench --bench process`; needs `cargo xtask build` first.

use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use tokio::io::AsyncReadExt;

/// Bytes streamed per throughput iteration.
const STREAM_BYTES: u64 = 256 << 20;

fn process(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let vm = rt.block_on(sandbox::boot("bench")).expect("boot");
    let mut group = c.benchmark_group("process");
    group.sample_size(30);
    group.bench_function("exec_round_trip", |b| {
        b.to_async(&rt)
            .iter(|| async { vm.exec("true", [""; 0]).await.unwrap() })
    });
    group.bench_function("spawn_to_ready", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let start = Instant::now();
                    let p = vm.spawn("true", [""; 0]).unwrap();
                    p.ready().await.unwrap();
                    total += start.elapsed();
                    p.exit().await.unwrap();
                }
                total
            })
        })
    });
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(30));
    group.throughput(Throughput::Bytes(STREAM_BYTES));
    group.bench_function("stdout_throughput", |b| {
        b.to_async(&rt).iter(|| async {
            let count = (STREAM_BYTES >> 16).to_string();
            let mut p = vm
                .command("dd")
                .args(["if=/dev/zero", "bs=65536", &format!("count={count}")])
                .spawn()
                .unwrap();
            let mut out = p.stdout.take().unwrap();
            let mut buf = vec![0u8; 1 << 18];
            let mut got = 0u64;
            loop {
                let n = out.read(&mut buf).await.unwrap();
                if n == 0 {
                    break;
                }
                got += n as u64;
            }
            assert_eq!(got, STREAM_BYTES);
            p.exit().await.unwrap();
        })
    });
    group.finish();
    rt.block_on(vm.shutdown()).unwrap();
}

criterion_group!(benches, process);
criterion_main!(benches);
