//! vCPU set-up for the PVH entry and the per-vCPU run loop.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use kvm_bindings::{kvm_fpu, kvm_regs, kvm_segment, CpuId};
use kvm_ioctls::{VcpuExit, VcpuFd};

use crate::boot::GDT;
use crate::bus::Bus;
use crate::layout::*;
use crate::pause::Gate;
use crate::snapshot::VcpuState;
use crate::{kvm, GuestExit, KvmError};

const X86_CR0_PE: u64 = 0x1;
const X86_CR0_ET: u64 = 0x10;
const APIC_LVT0: usize = 0x350;
const APIC_LVT1: usize = 0x360;
const APIC_MODE_EXTINT: u32 = 0x7;
const APIC_MODE_NMI: u32 = 0x4;

/// A segment from its GDT descriptor.
fn segment(index: u16, descriptor: u64) -> kvm_segment {
    let flags = (descriptor >> 40) & 0xf0ff;
    kvm_segment {
        base: 0,
        limit: 0xffff_ffff,
        selector: index * 8,
        type_: (flags & 0xf) as u8,
        present: ((flags >> 7) & 1) as u8,
        dpl: ((flags >> 5) & 3) as u8,
        db: ((flags >> 14) & 1) as u8,
        s: ((flags >> 4) & 1) as u8,
        l: ((flags >> 13) & 1) as u8,
        g: ((flags >> 15) & 1) as u8,
        avl: 0,
        unusable: 0,
        padding: 0,
    }
}

/// Sets CPUID, the FPU and the local APIC's LINT pins on every vCPU; on
/// the boot vCPU also the registers the PVH entry expects: 32-bit
/// protected mode, paging off, flat segments, `rbx` = start info.
pub fn configure(vcpu: &VcpuFd, cpuid: &CpuId, boot: Option<u64>) -> Result<(), KvmError> {
    vcpu.set_cpuid2(cpuid).map_err(kvm("KVM_SET_CPUID2"))?;
    let fpu = kvm_fpu {
        fcw: 0x37f,
        mxcsr: 0x1f80,
        ..Default::default()
    };
    vcpu.set_fpu(&fpu).map_err(kvm("KVM_SET_FPU"))?;
    let mut lapic = vcpu.get_lapic().map_err(kvm("KVM_GET_LAPIC"))?;
    for (reg, mode) in [(APIC_LVT0, APIC_MODE_EXTINT), (APIC_LVT1, APIC_MODE_NMI)] {
        let bytes: Vec<u8> = lapic.regs[reg..reg + 4].iter().map(|b| *b as u8).collect();
        let value = u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]);
        let value = (value & !0x700) | (mode << 8);
        for (i, b) in value.to_le_bytes().iter().enumerate() {
            lapic.regs[reg + i] = *b as _;
        }
    }
    vcpu.set_lapic(&lapic).map_err(kvm("KVM_SET_LAPIC"))?;
    let Some(entry) = boot else {
        return Ok(());
    };
    let mut sregs = vcpu.get_sregs().map_err(kvm("KVM_GET_SREGS"))?;
    let code = segment(1, GDT[1]);
    let data = segment(2, GDT[2]);
    let tss = segment(3, GDT[3]);
    sregs.cs = code;
    (sregs.ds, sregs.es, sregs.fs, sregs.gs, sregs.ss) = (data, data, data, data, data);
    sregs.tr = tss;
    sregs.gdt.base = GDT_START;
    sregs.gdt.limit = (GDT.len() * 8 - 1) as u16;
    sregs.idt.base = IDT_START;
    sregs.idt.limit = 7;
    sregs.cr0 = X86_CR0_PE | X86_CR0_ET;
    sregs.cr4 = 0;
    sregs.efer = 0;
    vcpu.set_sregs(&sregs).map_err(kvm("KVM_SET_SREGS"))?;
    let regs = kvm_regs {
        rflags: 0x2,
        rip: entry,
        rbx: PVH_INFO_START,
        ..Default::default()
    };
    vcpu.set_regs(&regs).map_err(kvm("KVM_SET_REGS"))
}

/// Each vCPU's state as saved when it last parked (or why it could not be).
pub type SavedStates = Arc<Mutex<Vec<Option<Result<VcpuState, String>>>>>;

/// What a vCPU thread shares with its VM.
pub struct Shared {
    pub bus: Arc<Bus>,
    pub stop: Arc<AtomicBool>,
    pub gate: Arc<Gate>,
    /// Each vCPU's state as saved when it last parked.
    pub saved: SavedStates,
    /// The MSRs saved with a vCPU (the host's index list).
    pub msr_index: Arc<[u32]>,
}

/// Saves a stopped vCPU's state into its slot: first a `KVM_RUN` with
/// `immediate_exit` completes an I/O instruction whose data the VMM just
/// supplied, so the state lies between two instructions.
fn save_parked(id: u8, vcpu: &mut VcpuFd, shared: &Shared) {
    vcpu.set_kvm_immediate_exit(1);
    let _ = vcpu.run();
    vcpu.set_kvm_immediate_exit(0);
    let state = VcpuState::save(id, vcpu, &shared.msr_index).map_err(|e| {
        let source = std::error::Error::source(&e).map(|s| format!(": {s}"));
        format!("{e}{}", source.unwrap_or_default())
    });
    let mut slots = shared.saved.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(slot) = slots.get_mut(usize::from(id)) {
        *slot = Some(state);
    }
}

/// Runs `vcpu` until the guest stops or `stop` is set (a signal kicks it
/// out of `KVM_RUN`), parking while the gate says the VM is paused (its
/// state saved first). Returns why it stopped.
pub fn run(id: u8, mut vcpu: VcpuFd, shared: Shared) -> GuestExit {
    let Shared {
        ref bus,
        ref stop,
        ref gate,
        ..
    } = shared;
    loop {
        if stop.load(Ordering::Acquire) {
            return GuestExit::Stopped;
        }
        if gate.is_paused() {
            save_parked(id, &mut vcpu, &shared);
            if gate.park() {
                // Tells a kvmclock guest it was stopped, so its watchdogs
                // do not report the pause as a soft lockup (EINVAL when
                // the guest has no kvmclock: nothing to tell).
                let _ = vcpu.kvmclock_ctrl();
            }
            continue;
        }
        let mut exit = match vcpu.run() {
            Ok(exit) => exit,
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {
                vcpu.set_kvm_immediate_exit(0);
                continue;
            }
            Err(e) => return GuestExit::Crashed(format!("KVM_RUN failed: {e}")),
        };
        let outcome = match crate::run::common_exit(&mut exit, bus.as_ref()) {
            Some(outcome) => outcome,
            None => match exit {
                VcpuExit::IoOut(port, data) => bus.pio_write(port, data),
                VcpuExit::IoIn(port, data) => {
                    bus.pio_read(port, data);
                    None
                }
                VcpuExit::Hlt => Some(GuestExit::Halted),
                VcpuExit::Shutdown => Some(GuestExit::Crashed(
                    "the guest triple-faulted (KVM_EXIT_SHUTDOWN)".into(),
                )),
                VcpuExit::InternalError => {
                    let rip = vcpu.get_regs().map(|r| r.rip).unwrap_or(0);
                    Some(GuestExit::Crashed(format!(
                        "KVM internal error (an instruction KVM could not emulate?) at rip {rip:#x}"
                    )))
                }
                other => {
                    log::debug!("unhandled vCPU exit {other:?}");
                    None
                }
            },
        };
        if let Some(exit) = outcome {
            return exit;
        }
    }
}
