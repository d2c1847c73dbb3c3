//! The arm64 guest kernel under QEMU's arm64 emulator (TCG), booted with
//! the device tree `sandbox-vmm-hvf` writes for Hypervisor.framework: the
//! same blob must describe QEMU `virt`'s hardware (issue 18, item 5's first
//! step). Checked on the console: the GICv3, the architected timer, the
//! PL011 console from `stdout-path`, a second vCPU started through PSCI
//! over HVC, and the kernel's run up to mounting a root file system (there
//! is no disk yet, so it stops there).
//!
//! Needs `cargo xtask build --arch arm64` (CI runs it) and Debian's
//! `qemu-system-arm`.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use sandbox_vmm_hvf::layout::Layout;

fn cache() -> PathBuf {
    std::env::var_os("SANDBOX_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(std::env::var("HOME").unwrap()).join(".cache/sandbox"))
}

fn arm64_kernel() -> PathBuf {
    let path = cache().join("manifest/kernel-arm64.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e}; run `cargo xtask build --arch arm64`",
            path.display()
        )
    });
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    PathBuf::from(v["path"].as_str().unwrap())
}

/// Runs QEMU until the kernel has nothing left to boot (it panics without
/// a root disk and, with `panic=-1`, reboots, which `-no-reboot` turns
/// into an exit), and returns the console.
fn boot(layout: &Layout, bootargs: &str) -> (String, Duration) {
    let dtb = std::env::temp_dir().join(format!("arm64-{}.dtb", std::process::id()));
    let blob = sandbox_vmm_hvf::fdt::device_tree(layout, bootargs).unwrap();
    std::fs::write(&dtb, blob).unwrap();
    let start = Instant::now();
    let out = Command::new("qemu-system-aarch64")
        .args(["-M", "virt,gic-version=3", "-cpu", "max", "-accel", "tcg"])
        .args(["-m", &format!("{}M", layout.ram_bytes() >> 20)])
        .args(["-smp", &layout.cpus().to_string()])
        .args([
            "-nographic",
            "-no-reboot",
            "-nodefaults",
            "-serial",
            "stdio",
        ])
        .arg("-kernel")
        .arg(arm64_kernel())
        .arg("-dtb")
        .arg(&dtb)
        .stdin(Stdio::null())
        .output()
        .expect(
            "qemu-system-aarch64 is missing: apt-get install qemu-system-arm (cargo xtask deps)",
        );
    let _ = std::fs::remove_file(&dtb);
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        start.elapsed(),
    )
}

#[test]
fn the_arm64_kernel_boots_on_our_device_tree_under_qemu() {
    let layout = Layout::new(2, 256, 2).unwrap();
    let (console, took) = boot(&layout, "console=ttyAMA0 panic=-1");
    eprintln!("arm64 boot under TCG to the root mount: {took:.2?}");
    if std::env::var_os("SANDBOX_SHOW_CONSOLE").is_some() {
        eprintln!("{console}");
    }
    for expected in [
        "Booting Linux on physical CPU 0x0000000000",
        "psci: PSCIv1.",
        "GICv3: ",
        "arch_timer: cp15 timer(s) running",
        "9000000.pl011: ttyAMA0 at MMIO 0x9000000",
        "smp: Brought up 1 node, 2 CPUs",
        "Kernel command line: console=ttyAMA0 panic=-1",
        "VFS: Unable to mount root fs",
    ] {
        assert!(
            console.contains(expected),
            "{expected:?} missing from the console:\n{console}"
        );
    }
}
