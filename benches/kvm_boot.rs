//! Boot time on KVM, ours next to QEMU in the same run: from VM creation to
//! the kernel's `Run /sbin/sandbox-guest as init process` line, for
//! `sandbox-vmm-kvm` and for `qemu-system-x86_64 -M microvm -accel kvm`
//! booting the same `vmlinux`, command line and root image (read-only
//! virtio-blk on virtio-mmio). Also our VMM's host memory overhead: RSS
//! growth minus the guest RAM it touched.
//!
//! Not a criterion bench: a boot takes tens of seconds under this
//! project's emulating nested PVM, so it runs `SANDBOX_KVM_BOOT_RUNS`
//! boots of each (default 3) and prints medians and the ratio.
//! `cargo bench --bench kvm_boot`; needs `cargo xtask build` and Debian's
//! qemu-system-x86.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use sandbox_core::images;
use sandbox_rootfs::RawImage;
use sandbox_virtio::block::Block;
use sandbox_vmm_kvm::probe::{probe, Probe};
use sandbox_vmm_kvm::{CpuProfile, KvmConfig, KvmVm, NESTED_PVM_CMDLINE};

const INIT_LINE: &str = "Run /sbin/sandbox-guest as init process";
const TIMEOUT: Duration = Duration::from_secs(300);

fn kernel() -> std::path::PathBuf {
    sandbox_core::artifacts::manifest_path("kernel-x86_64", "x86_64 kernel")
        .expect("cargo xtask build")
}

/// The root and init, which both VMMs get.
const ROOT_ARGS: &str = "root=/dev/vda ro rootfstype=ext4 init=/sbin/sandbox-guest";

/// QEMU's whole command line: what our VMM adds by itself, then `ROOT_ARGS`.
fn qemu_cmdline(profile: CpuProfile) -> String {
    let pvm = if profile == CpuProfile::NestedPvm {
        format!(" {NESTED_PVM_CMDLINE}")
    } else {
        String::new()
    };
    format!("console=ttyS0 reboot=k panic=-1{pvm} {ROOT_ARGS}")
}

fn rss_kib() -> u64 {
    sandbox::rss_bytes() / 1024
}

/// RSS (KiB) of the mappings that hold guest RAM.
fn guest_rss_kib(ranges: &[(usize, usize)]) -> u64 {
    let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap_or_default();
    let mut total = 0;
    let mut inside = false;
    for line in smaps.lines() {
        if let Some((range, _)) = line.split_once(' ') {
            if let Some((a, b)) = range.split_once('-') {
                if let (Ok(a), Ok(b)) = (usize::from_str_radix(a, 16), usize::from_str_radix(b, 16))
                {
                    inside = ranges.iter().any(|(s, l)| a >= *s && b <= s + l);
                    continue;
                }
            }
        }
        if inside {
            if let Some(v) = line.strip_prefix("Rss:") {
                total += v
                    .split_whitespace()
                    .next()
                    .and_then(|n| n.parse::<u64>().ok())
                    .unwrap_or(0);
            }
        }
    }
    total
}

/// Our VMM: seconds to the init line, and VMM overhead in KiB.
fn ours(image: &Path, profile: CpuProfile) -> (f64, u64) {
    let before = rss_kib();
    let start = Instant::now();
    let root = Box::new(RawImage::open(image).expect("image"));
    let vm = KvmVm::start(KvmConfig {
        kernel: kernel(),
        memory_mib: 256,
        cpus: 1,
        cmdline: ROOT_ARGS.into(),
        profile,
        console_log_bytes: 1 << 20,
        devices: vec![Box::new(Block::new(root, "bench-root"))],
    })
    .expect("start");
    while !vm.console().tail(400).contains(INIT_LINE) {
        assert!(
            start.elapsed() < TIMEOUT,
            "no init line:\n{}",
            vm.console().tail(20)
        );
        assert!(
            vm.exited().is_none(),
            "guest stopped:\n{}",
            vm.console().tail(20)
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let secs = start.elapsed().as_secs_f64();
    let overhead = rss_kib()
        .saturating_sub(before)
        .saturating_sub(guest_rss_kib(&vm.guest_memory_ranges()));
    (secs, overhead)
}

/// QEMU microvm: seconds to the init line, or why it did not get there.
fn qemu(image: &Path, profile: CpuProfile) -> Result<f64, String> {
    let start = Instant::now();
    let mut child = Command::new("qemu-system-x86_64")
        // acpi=off: our kernel has no ACPI, and only without it does QEMU
        // put its virtio-mmio devices on the kernel command line.
        .args([
            "-M",
            "microvm,x-option-roms=off,rtc=off,acpi=off",
            "-accel",
            "kvm",
        ])
        // `-cpu host` on hardware; under nested PVM it fails setting MSR
        // 0x10a, so QEMU's default CPU model there.
        .args(if profile == CpuProfile::Full {
            &["-cpu", "host"][..]
        } else {
            &[]
        })
        .args([
            "-m",
            "256",
            "-smp",
            "1",
            "-nodefaults",
            "-no-user-config",
            "-nographic",
        ])
        .args(["-serial", "stdio", "-kernel"])
        .arg(kernel())
        .arg("-append")
        .arg(qemu_cmdline(profile))
        .arg("-drive")
        .arg(format!(
            "id=root,file={},format=raw,if=none,readonly=on",
            image.display()
        ))
        .args(["-device", "virtio-blk-device,drive=root"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("qemu-system-x86_64 (Debian qemu-system-x86) is installed");
    let stdout = child.stdout.take().unwrap();
    let pid = child.id();
    // Kill QEMU if it never gets there, which ends the read below.
    let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
    let watchdog = std::thread::spawn(move || {
        if done_rx.recv_timeout(TIMEOUT).is_err() {
            // SAFETY: kill(2) on the child we spawned (not yet reaped).
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
        }
    });
    let mut lines = BufReader::new(stdout).lines();
    let found = lines.any(|l| l.is_ok_and(|l| l.contains(INIT_LINE)));
    let _ = done_tx.send(());
    let _ = watchdog.join();
    let secs = start.elapsed().as_secs_f64();
    let _ = child.kill();
    let _ = child.wait();
    if found {
        Ok(secs)
    } else {
        Err(format!("no init line within {:.0} s", secs))
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return; // `cargo bench -- --list` and test runners probing benches
    }
    let profile = match probe() {
        Probe::Hardware { .. } => CpuProfile::Full,
        Probe::Emulated { .. } => CpuProfile::NestedPvm,
        Probe::Unavailable(why) => {
            eprintln!("kvm_boot: /dev/kvm is not usable ({why}); nothing to measure");
            return;
        }
    };
    sandbox::ensure_artifacts().expect("the x86_64 kernel");
    let runs: usize = std::env::var("SANDBOX_KVM_BOOT_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    let image = images::builtin("minimal").expect("cargo xtask build").path;
    let (mut ours_s, mut qemu_s, mut overhead) = (Vec::new(), Vec::new(), Vec::new());
    for run in 0..runs {
        let (s, o) = ours(&image, profile);
        eprintln!("run {run}: ours {s:.2} s (VMM overhead {o} KiB)");
        ours_s.push(s);
        overhead.push(o as f64);
        match qemu(&image, profile) {
            Ok(q) => {
                eprintln!("run {run}: qemu microvm {q:.2} s");
                qemu_s.push(q);
            }
            Err(why) => eprintln!("run {run}: qemu microvm failed: {why}"),
        }
    }
    let o = median(ours_s);
    println!("kvm_boot ({profile:?}, {runs} runs): VM creation -> \"{INIT_LINE}\"");
    println!("  sandbox-vmm-kvm  median {o:.2} s");
    if qemu_s.is_empty() {
        println!("  qemu -M microvm  did not reach the init line");
    } else {
        let q = median(qemu_s);
        println!("  qemu -M microvm  median {q:.2} s");
        println!("  ours/qemu        {:.2}", o / q);
    }
    println!(
        "  VMM host memory overhead (RSS minus touched guest RAM): median {:.0} KiB",
        median(overhead)
    );
}
