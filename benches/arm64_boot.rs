//! arm64 guests under QEMU's emulator (`BackendKind::QemuArm64`, TCG):
//! boot to agent-ready and the exec round trip of `true`, plain timings to
//! track the arm64 kernel, agent and `minimal` image (no goal: emulation
//! sets the pace, not our code).
//!
//! `cargo bench --bench arm64_boot`; needs `cargo xtask build --arch arm64`.

use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion};
use sandbox_core::{images, BackendKind, BootOptions, Rootfs, Sandbox};

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
}

fn sandbox() -> Sandbox {
    let image = images::builtin_arch("minimal", "aarch64")
        .expect("run `cargo xtask build --arch arm64` first");
    Sandbox::builder()
        .rootfs(Rootfs::ephemeral(image))
        .backend(BackendKind::QemuArm64)
        .build()
        .expect("sandbox")
}

fn opts() -> BootOptions {
    BootOptions::default().timeout(Duration::from_secs(120))
}

fn boot_to_ready(c: &mut Criterion) {
    let rt = runtime();
    let sandbox = sandbox();
    let mut group = c.benchmark_group("arm64_tcg");
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(30));
    group.bench_function("boot_to_ready", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let start = Instant::now();
                    let vm = sandbox.boot(opts()).await.unwrap();
                    total += start.elapsed();
                    vm.shutdown().await.unwrap();
                }
                total
            })
        })
    });
    let vm = rt.block_on(sandbox.boot(opts())).unwrap();
    group.bench_function("exec_true", |b| {
        b.to_async(&rt)
            .iter(|| async { vm.exec("true", [""; 0]).await.unwrap() })
    });
    group.finish();
    rt.block_on(vm.shutdown()).unwrap();
}

criterion_group!(benches, boot_to_ready);
criterion_main!(benches);
