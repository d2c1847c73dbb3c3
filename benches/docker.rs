//! Docker in the guest (`debian:12-docker`), what each step costs, and
//! beside it what a bare process costs in the same guest:
//!
//! - `dockerd` start to `docker info` answering (a fresh daemon per sample),
//! - `docker run --rm local/busybox true`, and the same with
//!   `--network none` (no veth, bridge port or iptables rules),
//! - `docker build` of the test Dockerfile (FROM, RUN, COPY; no cache),
//! - `runc run` of the same busybox root as a bare OCI bundle (no daemon,
//!   no image store, no network namespace setup: what runc alone costs),
//! - `true` itself (a process with no container at all).
//!
//! Each is run as `bash -c '<command>'` through the agent, so all carry
//! the same exec overhead.
//!
//! `cargo xtask build && cargo bench --bench docker`

use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion};
use sandbox::docker::{busybox_rootfs_tar, DOCKERFILE};
use sandbox_core::docker::Dockerd;
use sandbox_core::fs::WriteOptions;
use sandbox_core::{BootOptions, Vm};

/// Makes a runc bundle from the busybox root whose process runs `true`.
const RUNC_BUNDLE: &str = "set -e; rm -rf /tmp/bundle; mkdir -p /tmp/bundle/rootfs; \
    tar -xf /tmp/busybox.tar -C /tmp/bundle/rootfs; cd /tmp/bundle; runc spec; \
    sed -i 's/\"terminal\": true/\"terminal\": false/; s/\"sh\"$/\"true\"/' config.json";

async fn run(vm: &Vm, script: &str) {
    let out = vm.exec("bash", ["-c", script]).await.unwrap();
    assert!(
        out.status.success(),
        "{script}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

async fn boot() -> Vm {
    sandbox::docker::boot_ephemeral(BootOptions::default().timeout(Duration::from_secs(300))).await
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let vm = rt.block_on(boot());
    eprintln!("[docker bench] backend {:?}", vm.backend());
    let mut g = c.benchmark_group("docker");
    g.sample_size(10);
    g.warm_up_time(Duration::from_millis(1));
    g.measurement_time(Duration::from_secs(1));

    g.bench_function("dockerd_start_to_info", |b| {
        b.to_async(&rt).iter_custom(|iters| {
            let vm = &vm;
            async move {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let t = Instant::now();
                    let d = Dockerd::start(vm).await.unwrap();
                    total += t.elapsed();
                    d.stop().await.unwrap();
                }
                total
            }
        })
    });

    let dockerd = rt.block_on(async {
        let d = Dockerd::start(&vm).await.unwrap();
        let tar = busybox_rootfs_tar().unwrap();
        vm.fs()
            .write_file("/tmp/busybox.tar", &tar, WriteOptions::default())
            .await
            .unwrap();
        run(&vm, "docker import /tmp/busybox.tar local/busybox").await;
        let ctx = WriteOptions {
            create_parents: true,
        };
        vm.fs()
            .write_file("/tmp/ctx/Dockerfile", DOCKERFILE.as_bytes(), ctx)
            .await
            .unwrap();
        vm.fs()
            .write_file("/tmp/ctx/extra.txt", b"extra\n", ctx)
            .await
            .unwrap();
        run(&vm, RUNC_BUNDLE).await;
        d
    });

    for (name, script) in [
        ("docker_run_rm_true", "docker run --rm local/busybox true"),
        (
            "docker_run_rm_true_network_none",
            "docker run --rm --network none local/busybox true",
        ),
        (
            "docker_build_no_cache",
            "docker build -q --no-cache -t local/web /tmp/ctx",
        ),
        ("runc_run_true", "runc run -b /tmp/bundle bench"),
        ("agent_exec_true", "true"),
    ] {
        g.bench_function(name, |b| {
            b.to_async(&rt).iter_custom(|iters| {
                let vm = &vm;
                async move {
                    let mut total = Duration::ZERO;
                    for _ in 0..iters {
                        let t = Instant::now();
                        run(vm, script).await;
                        total += t.elapsed();
                    }
                    total
                }
            })
        });
    }
    g.finish();
    rt.block_on(async {
        dockerd.stop().await.unwrap();
        vm.shutdown().await.unwrap();
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
