//! Boot-to-ready and exec round-trip on the default backend (UML here),
//! with the UML jail (the default: `boot_to_ready`, `exec_true`) and in its
//! weaker process-only mode (`*_process_only`), in one run: the jail's cost.
//! `first_boot_new_process` starts this binary again per iteration and
//! times, in that new process, building the sandbox and its first boot
//! (what an agent framework that starts a process per task pays: backend
//! probe, image check, jail set-up). Ends with the medians and the goals'
//! ratios.
//!
//! `cargo bench --bench lifecycle`; needs `cargo xtask build` first.

use std::time::{Duration, Instant};

use criterion::{criterion_group, Criterion};
use sandbox::samples::Samples;
use sandbox_core::{BootOptions, Sandbox, UmlJail};

/// Set in a child started by `first_boot_new_process`.
const CHILD: &str = "SANDBOX_BENCH_FIRST_BOOT";

/// Per-iteration times of each measured function, for the summary.
static SAMPLES: Samples = Samples::new();

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
                    let took = start.elapsed();
                    SAMPLES.record(&format!("boot_to_ready{suffix}"), took);
                    total += took;
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

/// In a child: builds the jailed sandbox and boots it once, prints the
/// nanoseconds that took.
fn child() {
    let rt = runtime();
    let start = Instant::now();
    let vm = rt
        .block_on(sandbox(UmlJail::default()).boot(BootOptions::default()))
        .expect("boot");
    let took = start.elapsed();
    rt.block_on(vm.shutdown()).expect("shutdown");
    println!("{}", took.as_nanos());
}

fn first_boot_new_process(c: &mut Criterion) {
    let exe = std::env::current_exe().expect("the bench's own path");
    let mut group = c.benchmark_group("lifecycle");
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(20));
    group.bench_function("first_boot_new_process", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let out = std::process::Command::new(&exe)
                    .env(CHILD, "1")
                    .stderr(std::process::Stdio::inherit())
                    .output()
                    .expect("starting the bench binary again");
                assert!(out.status.success(), "the child failed: {}", out.status);
                let nanos: u64 = String::from_utf8_lossy(&out.stdout)
                    .trim()
                    .parse()
                    .expect("the child prints nanoseconds");
                let took = Duration::from_nanos(nanos);
                SAMPLES.record("first_boot_new_process", took);
                total += took;
            }
            total
        })
    });
    group.finish();
}

/// Medians of every timed boot (warm-up included) against the goals.
fn report() {
    let median = |name| SAMPLES.median(name);
    let (Some(later), Some(first)) = (median("boot_to_ready"), median("first_boot_new_process"))
    else {
        return; // filtered out
    };
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    println!("\nlifecycle summary (medians):");
    println!(
        "  boot_to_ready            {:>8.1} ms (goal <= 100 ms on UML)",
        ms(later)
    );
    if let Some(p) = median("boot_to_ready_process_only") {
        println!("  boot_to_ready_process_only {:>6.1} ms", ms(p));
    }
    println!(
        "  first_boot_new_process   {:>8.1} ms  {:.2}x boot_to_ready (goal <= 1.5x)",
        ms(first),
        first.as_secs_f64() / later.as_secs_f64()
    );
}

criterion_group!(
    benches,
    boot_to_ready,
    first_boot_new_process,
    exec_round_trip
);

fn main() {
    if std::env::var_os(CHILD).is_some() {
        return child();
    }
    benches();
    report();
    Criterion::default().configure_from_args().final_summary();
}
