//! Boot-to-ready and exec round-trip on the default backend (UML here),
//! with the UML jail (the default: `boot_to_ready`, `exec_true`) and in its
//! weaker process-only mode (`*_process_only`), in one run: the jail's cost.
//!
//! `cargo bench --bench lifecycle`; needs `cargo xtask build` first.

use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion};
use sandbox_core::{BootOptions, Sandbox, UmlJail};

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
}

/// The harness's minimal sandbox with `jail` (ignored on KVM).
fn sandbox(jail: UmlJail) -> Sandbox {
    let minimal = sandbox::minimal().expect("run `cargo xtask build` first");
    Sandbox::builder()
        .rootfs(minimal.rootfs().clone())
        .backend(sandbox::backend())
        .uml_jail(jail)
        .build()
        .expect("sandbox")
}

fn variants() -> [(&'static str, UmlJail); 2] {
    [
        ("", UmlJail::default()),
        ("_process_only", UmlJail::process_only()),
    ]
}

fn boot_to_ready(c: &mut Criterion) {
    for (suffix, jail) in variants() {
        boot_variant(c, suffix, jail);
    }
}

fn boot_variant(c: &mut Criterion, suffix: &str, jail: UmlJail) {
    let rt = runtime();
    let sandbox = sandbox(jail);
    let mut group = c.benchmark_group("lifecycle");
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(20));
    group.bench_function(format!("boot_to_ready{suffix}"), |b| {
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
    for (suffix, jail) in variants() {
        exec_variant(c, suffix, jail);
    }
}

fn exec_variant(c: &mut Criterion, suffix: &str, jail: UmlJail) {
    let rt = runtime();
    let vm = rt
        .block_on(sandbox(jail).boot(BootOptions::default()))
        .expect("boot");
    let mut group = c.benchmark_group("lifecycle");
    group.sample_size(30);
    group.bench_function(format!("exec_true{suffix}"), |b| {
        b.to_async(&rt)
            .iter(|| async { vm.exec("true", [""; 0]).await.unwrap() })
    });
    group.finish();
    rt.block_on(vm.shutdown()).unwrap();
}

criterion_group!(benches, boot_to_ready, exec_round_trip);
criterion_main!(benches);
