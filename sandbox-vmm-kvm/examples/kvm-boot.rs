//! Boots a kernel on the KVM VMM with no devices and prints how it ended:
//! `cargo run -p sandbox-vmm-kvm --example kvm-boot -- VMLINUX [pvm|full]
//! [SECONDS] [extra kernel args...]` (set `SANDBOX_KVM_CONSOLE=1` to watch
//! the console).

use std::time::{Duration, Instant};

use sandbox_vmm_kvm::{CpuProfile, KvmConfig, KvmVm};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let kernel = args
        .first()
        .expect("usage: kvm-boot VMLINUX [pvm|full] [SECONDS] [ARGS..]");
    let profile = match args.get(1).map(String::as_str) {
        Some("full") => CpuProfile::Full,
        _ => CpuProfile::NestedPvm,
    };
    let secs: u64 = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(300);
    let extra = args.get(3..).map(|a| a.join(" ")).unwrap_or_default();
    let start = Instant::now();
    let vm = KvmVm::start(KvmConfig {
        kernel: kernel.into(),
        memory_mib: 256,
        cpus: 1,
        cmdline: extra,
        profile,
        console_log_bytes: 1 << 20,
        devices: Vec::new(),
    })
    .expect("start");
    let exit = vm.wait_exit(Duration::from_secs(secs));
    println!(
        "exit: {exit:?} after {:.1} s",
        start.elapsed().as_secs_f64()
    );
    println!("--- console tail ---\n{}", vm.console().tail(30));
}
