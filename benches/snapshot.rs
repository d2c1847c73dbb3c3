//! Snapshots on KVM (issue 17's numbers), in one run:
//! - a cold boot to the first `exec` against a restore to the first `exec`
//!   of the same guest (`minimal`, 1 vCPU, 256 MiB), with the restore's
//!   part up to the agent's answer printed separately;
//! - the time and stored size of a snapshot of a 256 MiB and of a 1 GiB
//!   guest (memory file: zero and untouched pages are holes);
//! - the stored disk of a snapshot of an ephemeral `debian:12` root (only
//!   the blocks written over the image) next to the image's size;
//! - the host memory (PSS, so shared pages count once) of 10 live forks,
//!   next to 10 times the PSS growth of one booted guest (an estimate:
//!   booting 10 guests here costs ten minutes of emulated CPU).
//!
//! Not a criterion bench, for the same reason as `kvm_boot`: a cold boot
//! takes tens of seconds under this project's emulating nested PVM. It
//! runs `SANDBOX_SNAPSHOT_RUNS` boots and restores (default 3) and prints
//! medians. `cargo bench --bench snapshot`; needs `cargo xtask build`.

use std::time::{Duration, Instant};

use sandbox_core::{
    images, BackendKind, BootOptions, Resources, RestoreOptions, Rootfs, Sandbox, Snapshot, Vm,
};

const TIMEOUT: Duration = Duration::from_secs(900);

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn list(v: &[f64]) -> String {
    v.iter()
        .map(|s| format!("{s:.2}"))
        .collect::<Vec<_>>()
        .join(" / ")
}

/// This process's proportional set size in bytes.
fn pss_bytes() -> u64 {
    let text = std::fs::read_to_string("/proc/self/smaps_rollup").unwrap_or_default();
    text.lines()
        .find(|l| l.starts_with("Pss:"))
        .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

async fn boot(memory_mib: u32) -> Vm {
    boot_image(memory_mib, "minimal").await
}

async fn boot_image(memory_mib: u32, image: &str) -> Vm {
    Sandbox::builder()
        .rootfs(Rootfs::ephemeral(
            images::builtin(image).expect("cargo xtask build"),
        ))
        .resources(Resources {
            cpus: 1,
            memory_mib,
        })
        .backend(BackendKind::Kvm)
        .build()
        .expect("sandbox")
        .boot(BootOptions::default().timeout(TIMEOUT))
        .await
        .expect("boot")
}

async fn first_exec(vm: &Vm) {
    let out = vm.exec("true", [""; 0]).await.expect("exec");
    assert_eq!(out.status.code, Some(0), "{out:?}");
}

fn dir(name: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("sandbox-bench-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

fn mib(b: u64) -> f64 {
    b as f64 / (1 << 20) as f64
}

/// Boots a guest of `memory_mib`, runs one exec, snapshots it: (seconds,
/// snapshot).
async fn snapshot_of(memory_mib: u32, name: &str) -> (f64, Snapshot) {
    let vm = boot(memory_mib).await;
    first_exec(&vm).await;
    let t = Instant::now();
    let snap = vm.snapshot(dir(name)).await.expect("snapshot");
    let secs = t.elapsed().as_secs_f64();
    vm.shutdown().await.expect("shutdown");
    (secs, snap)
}

#[tokio::main]
async fn main() {
    if std::env::args().any(|a| a == "--list") {
        return; // `cargo bench -- --list` and test runners probing benches
    }
    if let sandbox_core::KvmProbe::Missing(why) = sandbox_core::probe_kvm() {
        eprintln!("snapshot: /dev/kvm is not usable ({why}); nothing to measure");
        return;
    }
    sandbox::ensure_artifacts().expect("the x86_64 kernel");
    let runs: usize = std::env::var("SANDBOX_SNAPSHOT_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);

    // Cold boots, one at a time (each is one busy host thread).
    let (mut boot_ready, mut boot_exec, mut boot_pss) = (Vec::new(), Vec::new(), Vec::new());
    for run in 0..runs {
        let pss = pss_bytes();
        let t = Instant::now();
        let vm = boot(256).await;
        let ready = t.elapsed().as_secs_f64();
        first_exec(&vm).await;
        let exec = t.elapsed().as_secs_f64();
        boot_pss.push(pss_bytes().saturating_sub(pss) as f64);
        eprintln!("boot {run}: agent ready {ready:.2} s, first exec {exec:.2} s");
        boot_ready.push(ready);
        boot_exec.push(exec);
        vm.shutdown().await.expect("shutdown");
    }

    let (snap_secs, snap) = snapshot_of(256, "256").await;
    let (big_secs, big) = snapshot_of(1024, "1024").await;

    // A large image: the snapshot stores what the guest wrote, not the
    // image.
    let debian = images::builtin("debian:12").expect("cargo xtask build");
    let vm = boot_image(256, "debian:12").await;
    first_exec(&vm).await;
    let out = vm
        .exec("sh", ["-c", "echo kept > /root/note && sync"])
        .await
        .expect("exec");
    assert_eq!(out.status.code, Some(0), "{out:?}");
    let t = Instant::now();
    let deb = vm.snapshot(dir("debian")).await.expect("snapshot");
    let deb_secs = t.elapsed().as_secs_f64();
    vm.shutdown().await.expect("shutdown");
    let vm = Sandbox::restore(&deb, RestoreOptions::default().timeout(TIMEOUT))
        .await
        .expect("restore");
    let note = vm.fs().read_file("/root/note").await.expect("/root/note");
    assert_eq!(note, b"kept\n");
    vm.shutdown().await.expect("shutdown");

    let (mut restore_ready, mut restore_exec) = (Vec::new(), Vec::new());
    for run in 0..runs {
        let t = Instant::now();
        let vm = Sandbox::restore(&snap, RestoreOptions::default().timeout(TIMEOUT))
            .await
            .expect("restore");
        let ready = t.elapsed().as_secs_f64();
        first_exec(&vm).await;
        let exec = t.elapsed().as_secs_f64();
        eprintln!("restore {run}: agent ready {ready:.2} s, first exec {exec:.2} s");
        restore_ready.push(ready);
        restore_exec.push(exec);
        vm.shutdown().await.expect("shutdown");
    }

    let pss = pss_bytes();
    let t = Instant::now();
    let forks = snap
        .fork(10, RestoreOptions::default().timeout(TIMEOUT))
        .await
        .expect("fork");
    let fork_secs = t.elapsed().as_secs_f64();
    let forks_pss = pss_bytes().saturating_sub(pss);
    for vm in forks {
        vm.shutdown().await.expect("shutdown");
    }

    let (b, r) = (median(boot_exec.clone()), median(restore_exec.clone()));
    println!(
        "snapshot (KVM {:?}, minimal, 1 vCPU, {runs} runs)",
        sandbox_core::probe_kvm()
    );
    println!(
        "  snapshot 256 MiB guest   {snap_secs:.2} s; memory file {:.1} MiB, disks {:.1} MiB",
        mib(snap.memory_bytes()),
        mib(snap.disk_bytes())
    );
    println!(
        "  snapshot 1 GiB guest     {big_secs:.2} s; memory file {:.1} MiB, disks {:.1} MiB",
        mib(big.memory_bytes()),
        mib(big.disk_bytes())
    );
    println!(
        "  snapshot debian:12 guest {deb_secs:.2} s; memory file {:.1} MiB, disks {:.2} MiB (image {:.0} MiB)",
        mib(deb.memory_bytes()),
        mib(deb.disk_bytes()),
        mib(debian.size)
    );
    println!(
        "  cold boot -> agent ready median {:.2} s ({})",
        median(boot_ready.clone()),
        list(&boot_ready)
    );
    println!(
        "  cold boot -> first exec  median {b:.2} s ({})",
        list(&boot_exec)
    );
    println!(
        "  restore -> agent ready   median {:.2} s ({})",
        median(restore_ready.clone()),
        list(&restore_ready)
    );
    println!(
        "  restore -> first exec    median {r:.2} s ({})",
        list(&restore_exec)
    );
    println!("  boot/restore to first exec: {:.1}x", b / r);
    println!(
        "  10 forks: restored in {fork_secs:.1} s, PSS {:.1} MiB; 10 x one boot's PSS growth {:.1} MiB (estimated)",
        mib(forks_pss),
        10.0 * median(boot_pss) / (1 << 20) as f64
    );
    for s in [snap, big, deb] {
        let _ = std::fs::remove_dir_all(s.dir());
    }
}
