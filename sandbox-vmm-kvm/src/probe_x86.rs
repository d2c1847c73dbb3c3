//! The x86_64 measurement: a `dec`/`jnz` loop timed at guest ring 0 and
//! ring 3 in a scratch VM.

use std::time::{Duration, Instant};

use kvm_bindings::{kvm_regs, kvm_segment, kvm_userspace_memory_region};
use kvm_ioctls::{Kvm, VcpuExit, VcpuFd};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend};

use super::Probe;
use crate::GuestMemory;

/// Ring 0 slower than ring 3 by more than this factor means emulation.
const EMULATION_FACTOR: f64 = 20.0;
const CODE: u64 = 0x1000;

/// Identity-mapped page tables (one 2 MiB user-accessible page).
const PML4: u64 = 0x2000;
const PDPT: u64 = 0x3000;
const PD: u64 = 0x4000;
/// Loop iterations slower than this are emulated whatever ring 3 does
/// (a native `dec`/`jnz` pair takes about a nanosecond).
const NATIVE_MAX_NS: f64 = 20.0;

/// `mov ecx, n; 1: dec ecx; jnz 1b; out 0x80, al; jmp .` in 64-bit code.
pub(super) fn program(n: u32) -> Vec<u8> {
    let mut code = vec![0xb9];
    code.extend_from_slice(&n.to_le_bytes());
    code.extend_from_slice(&[0xff, 0xc9, 0x75, 0xfc, 0xe6, 0x80, 0xeb, 0xfe]);
    code
}

fn flat(selector: u16, type_: u8, dpl: u8, long: bool) -> kvm_segment {
    kvm_segment {
        base: 0,
        limit: 0xffff_ffff,
        selector,
        type_,
        present: 1,
        dpl,
        db: u8::from(!long),
        s: 1,
        l: u8::from(long),
        g: 1,
        avl: 0,
        unusable: 0,
        padding: 0,
    }
}

/// Runs the loop `n` times at privilege level `cpl`; returns the time.
fn timed_loop(vcpu: &mut VcpuFd, mem: &GuestMemory, cpl: u8, n: u32) -> Result<Duration, String> {
    let w = |v: u64, at: u64| {
        mem.write_obj(v, GuestAddress(at))
            .map_err(|e| e.to_string())
    };
    // Present, writable, user-accessible; the PD entry is a 2 MiB page.
    w(PDPT | 0x7, PML4)?;
    w(PD | 0x7, PDPT)?;
    w(0x87, PD)?;
    mem.write_slice(&program(n), GuestAddress(CODE))
        .map_err(|e| e.to_string())?;
    let mut sregs = vcpu.get_sregs().map_err(|e| e.to_string())?;
    let rpl = u16::from(cpl);
    sregs.cs = flat(0x08 | rpl, 0xb, cpl, true);
    let data = flat(0x10 | rpl, 0x3, cpl, false);
    (sregs.ds, sregs.es, sregs.fs, sregs.gs, sregs.ss) = (data, data, data, data, data);
    sregs.cr3 = PML4;
    sregs.cr4 = 0x20; // PAE
    sregs.cr0 = 0x8000_0011; // PG, ET, PE
    sregs.efer = 0x500; // LME, LMA
    vcpu.set_sregs(&sregs).map_err(|e| e.to_string())?;
    let regs = kvm_regs {
        rip: CODE,
        rflags: 0x2 | (3 << 12), // IOPL 3: `out` is allowed at ring 3
        ..Default::default()
    };
    vcpu.set_regs(&regs).map_err(|e| e.to_string())?;
    let start = Instant::now();
    loop {
        match vcpu.run() {
            Ok(VcpuExit::IoOut(0x80, _)) => return Ok(start.elapsed()),
            Ok(VcpuExit::Intr) => {}
            Ok(other) => return Err(format!("unexpected exit {other:?}")),
            Err(e) if e.errno() == libc::EINTR => {}
            Err(e) => return Err(format!("KVM_RUN: {e}")),
        }
        if start.elapsed() > Duration::from_secs(10) {
            return Err("the probe loop did not finish".into());
        }
    }
}

pub(super) fn measure() -> Result<Probe, String> {
    // Declared first so it is dropped after the VM that maps it.
    let mem = GuestMemory::from_ranges(&[(GuestAddress(0), 0x10000)]).map_err(|e| e.to_string())?;
    let kvm = Kvm::new().map_err(|e| format!("/dev/kvm: {e}"))?;
    let vm = kvm.create_vm().map_err(|e| format!("KVM_CREATE_VM: {e}"))?;
    let host = mem
        .get_host_address(GuestAddress(0))
        .map_err(|e| e.to_string())?;
    let region = kvm_userspace_memory_region {
        slot: 0,
        flags: 0,
        guest_phys_addr: 0,
        memory_size: 0x10000,
        userspace_addr: host as u64,
    };
    // SAFETY: the VM only runs inside this function, while `mem` is alive.
    unsafe { vm.set_user_memory_region(region) }.map_err(|e| e.to_string())?;
    let mut vcpu = vm
        .create_vcpu(0)
        .map_err(|e| format!("KVM_CREATE_VCPU: {e}"))?;
    // One-iteration runs first: the first takes the first entry's costs
    // (page faults on guest memory, vCPU set-up); they measure what one
    // KVM_RUN round trip costs, which is then taken out of the ring-0
    // time. Every time is the least of a few runs: on a loaded host a run
    // can be preempted, which only ever adds time. (A single preempted
    // one-iteration run once made the overhead exceed the whole ring-0
    // time, so an emulating host was taken for hardware, and its guest
    // died on an instruction the emulator rejects.)
    let least = |vcpu: &mut VcpuFd, cpl: u8, n: u32, runs: usize| -> Result<Duration, String> {
        let mut best = Duration::MAX;
        for _ in 0..runs {
            best = best.min(timed_loop(vcpu, &mem, cpl, n)?);
        }
        Ok(best)
    };
    // Enough work to time, little enough to be quick when emulated (5,000
    // ring-0 iterations take about 10 ms here; every boot of a process
    // waits for the probe).
    let (n0, n3) = (5_000u32, 2_000_000u32);
    let mut attempts = 0;
    let (t0, t3) = loop {
        attempts += 1;
        let overhead = least(&mut vcpu, 3, 1, 4)?;
        let t3 = least(&mut vcpu, 3, n3, 2)?;
        let raw = least(&mut vcpu, 0, n0, 2)?;
        if raw > overhead {
            break (raw - overhead, t3);
        }
        // The round trips alone outlasted the loop: a preempted sample
        // still. Measured again; a host that never gives a clean sample
        // gets the emulating host's profile, which also runs on hardware.
        if attempts == 5 {
            return Ok(Probe::Emulated {
                cpl0_ns: f64::NAN,
                cpl3_ns: t3.as_nanos() as f64 / f64::from(n3),
            });
        }
    };
    let cpl0_ns = t0.as_nanos() as f64 / f64::from(n0);
    let cpl3_ns = (t3.as_nanos() as f64 / f64::from(n3)).max(0.01);
    Ok(
        if cpl0_ns / cpl3_ns > EMULATION_FACTOR || cpl0_ns > NATIVE_MAX_NS {
            Probe::Emulated { cpl0_ns, cpl3_ns }
        } else {
            Probe::Hardware { cpl0_ns, cpl3_ns }
        },
    )
}
