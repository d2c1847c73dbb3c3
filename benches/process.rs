//! Process API costs on the default backend (UML here): exec round trip,
//! spawn-to-ready, and guest-to-host stdout throughput, beside the limit
//! inside the same guest: a bare fork+exec of busybox `true` from a
//! busybox shell loop, timed in the guest. Ends with each median and the
//! ratios issue 19 sets goals for (exec <= 2x, spawn-to-ready <= 1.5x).
//!
//! `cargo bench --bench process`; needs `cargo xtask build` first.

use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use sandbox::samples::Samples;
use sandbox_core::Vm;
use tokio::io::AsyncReadExt;

/// Bytes streamed per throughput iteration.
const STREAM_BYTES: u64 = 256 << 20;

/// Execs per guest-side loop.
const LOOP: u32 = 40;

/// Per-iteration times of each measured function, for the summary.
static SAMPLES: Samples = Samples::new();

/// One fork+exec of `/bin/true` from a busybox shell, timed by bash's
/// `$EPOCHREALTIME` around a loop of [`LOOP`] of them.
async fn guest_fork_exec(vm: &Vm) -> Duration {
    let script = format!(
        "s=$EPOCHREALTIME; busybox sh -c 'i=0; while [ $i -lt {LOOP} ]; do /bin/true; \
         i=$((i+1)); done'; e=$EPOCHREALTIME; echo $s $e"
    );
    let out = vm.exec("bash", ["-c", script.as_str()]).await.unwrap();
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    let t: Vec<f64> = text
        .split_whitespace()
        .map(|v| v.parse().unwrap())
        .collect();
    Duration::from_secs_f64((t[1] - t[0]) / f64::from(LOOP))
}

fn process(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let vm = rt.block_on(sandbox::boot("bench")).expect("boot");
    let mut group = c.benchmark_group("process");
    group.sample_size(30);
    group.bench_function("guest_fork_exec", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let one = guest_fork_exec(&vm).await;
                    SAMPLES.record("guest_fork_exec", one);
                    total += one;
                }
                total
            })
        })
    });
    group.bench_function("exec_round_trip", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let start = Instant::now();
                    vm.exec("true", [""; 0]).await.unwrap();
                    let took = start.elapsed();
                    SAMPLES.record("exec_round_trip", took);
                    total += took;
                }
                total
            })
        })
    });
    group.bench_function("spawn_to_ready", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let start = Instant::now();
                    let p = vm.spawn("true", [""; 0]).unwrap();
                    p.ready().await.unwrap();
                    let took = start.elapsed();
                    SAMPLES.record("spawn_to_ready", took);
                    total += took;
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
    report();
}

/// Medians of every timed call (warm-up included) and the goal ratios.
fn report() {
    let median = |name| SAMPLES.median(name).unwrap_or_default();
    let bare = median("guest_fork_exec");
    println!("\nprocess summary (medians):");
    println!("  bare fork+exec in the guest  {:>8.2} ms", ms(bare));
    for (name, goal) in [("exec_round_trip", 2.0), ("spawn_to_ready", 1.5)] {
        let m = median(name);
        println!(
            "  {name:<28} {:>8.2} ms  {:.2}x bare (goal <= {goal}x)",
            ms(m),
            m.as_secs_f64() / bare.as_secs_f64()
        );
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

criterion_group!(benches, process);
criterion_main!(benches);
