//! Boot-to-ready and exec round-trip on the default backend (UML here).
//!
//! `cargo bench --bench lifecycle`; needs `cargo xtask build` first.

use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion};
use sandbox_core::BootOptions;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
}

fn boot_to_ready(c: &mut Criterion) {
    let rt = runtime();
    let sandbox = sandbox::minimal().expect("run `cargo xtask build` first");
    let mut group = c.benchmark_group("lifecycle");
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(20));
    group.bench_function("boot_to_ready", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let start = Instant::now();
                    let vm = sandbox.boot(BootOptions::default()).await.unwrap();
                    total += start.elapsed();
                    vm.shutdown().await.unwrap();
                }
                total
            })
        })
    });
    group.finish();
}

fn exec_round_trip(c: &mut Criterion) {
    let rt = runtime();
    let vm = rt.block_on(sandbox::boot("bench")).expect("boot");
    let mut group = c.benchmark_group("lifecycle");
    group.sample_size(30);
    group.bench_function("exec_true", |b| {
        b.to_async(&rt)
            .iter(|| async { vm.exec("true", [""; 0]).await.unwrap() })
    });
    group.finish();
    rt.block_on(vm.shutdown()).unwrap();
}

criterion_group!(benches, boot_to_ready, exec_round_trip);
criterion_main!(benches);
