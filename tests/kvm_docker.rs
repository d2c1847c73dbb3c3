//! Docker through the KVM backend: `debian:12-docker` booted on KVM,
//! `dockerd` started, a busybox root imported, `docker run --rm` once.
//!
//! Runs on hardware KVM (so `cargo xtask ci` runs it wherever `/dev/kvm`
//! is real). Under an emulating `/dev/kvm` (nested PVM, these machines)
//! it takes far longer than the 10 minutes a CI step may spend on it
//! (docs/docker.md has the measured time), so there it runs only with
//! `SANDBOX_KVM_DOCKER=1`; otherwise it reports itself skipped.

use std::time::{Duration, Instant};

use sandbox::docker::busybox_rootfs_tar;
use sandbox_core::docker::Dockerd;
use sandbox_core::fs::WriteOptions;
use sandbox_core::{BackendKind, BootOptions, KvmProbe, Resources, Rootfs, Sandbox};

const NAME: &str = "kvm_docker::docker_runs_a_container_on_the_kvm_backend";

#[tokio::test(flavor = "multi_thread")]
async fn docker_runs_a_container_on_the_kvm_backend() {
    let asked = std::env::var("SANDBOX_KVM_DOCKER").is_ok_and(|v| v == "1");
    match sandbox_core::probe_kvm() {
        KvmProbe::Missing(why) => {
            return sandbox::skip(NAME, &format!("/dev/kvm is not usable here ({why})"));
        }
        KvmProbe::Emulated { .. } if !asked => {
            return sandbox::skip(
                NAME,
                "/dev/kvm emulates guest ring 0 here (nested PVM): Docker on it takes \
                 tens of minutes; set SANDBOX_KVM_DOCKER=1 to run it anyway",
            );
        }
        _ => {}
    }
    let start = Instant::now();
    let vm = Sandbox::builder()
        .rootfs(Rootfs::ephemeral(sandbox::builtin("debian:12-docker")))
        .resources(Resources {
            cpus: 2,
            memory_mib: 1024,
        })
        .backend(BackendKind::Kvm)
        .build()
        .unwrap()
        .boot(BootOptions::default().timeout(Duration::from_secs(900)))
        .await
        .unwrap();
    assert_eq!(vm.backend(), BackendKind::Kvm);
    eprintln!("[kvm docker] boot: {:.1} s", start.elapsed().as_secs_f64());
    let t = Instant::now();
    let dockerd = Dockerd::start_with_timeout(&vm, Duration::from_secs(1800))
        .await
        .unwrap();
    eprintln!("[kvm docker] dockerd: {:.1} s", t.elapsed().as_secs_f64());
    vm.fs()
        .write_file(
            "/tmp/busybox.tar",
            &busybox_rootfs_tar().unwrap(),
            WriteOptions::default(),
        )
        .await
        .unwrap();
    // A container's environment comes from Docker, not from the agent:
    // `-e GLIBC_TUNABLES` hands the nested-PVM tunables (if any) to its
    // static glibc busybox too (docs/kvm-backend.md).
    let t = Instant::now();
    let out = vm
        .exec(
            "sh",
            [
                "-c",
                "docker import /tmp/busybox.tar local/busybox >/dev/null && \
                 docker run --rm -e GLIBC_TUNABLES local/busybox echo hello from a container on KVM",
            ],
        )
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.stdout, b"hello from a container on KVM\n");
    eprintln!(
        "[kvm docker] import and run: {:.1} s",
        t.elapsed().as_secs_f64()
    );
    dockerd.stop().await.unwrap();
    vm.shutdown().await.unwrap();
    eprintln!("[kvm docker] total: {:.1} s", start.elapsed().as_secs_f64());
}
