//! arm64 vCPU set-up (KVM_ARM_VCPU_INIT with in-kernel PSCI 0.2, the boot
//! registers of booting.rst) and the per-vCPU run loop.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use kvm_bindings::{
    kvm_regs, kvm_vcpu_init, user_pt_regs, KVM_ARM_VCPU_POWER_OFF, KVM_ARM_VCPU_PSCI_0_2,
    KVM_REG_ARM64, KVM_REG_ARM_CORE, KVM_REG_SIZE_U64,
};
use kvm_ioctls::{VcpuExit, VcpuFd, VmFd};
use sandbox_vmm_hvf::image::Entry;

use super::bus::Bus;
use crate::pause::Gate;
use crate::{kvm, GuestExit, KvmError};

/// The ONE_REG id of a 64-bit core register at byte `offset` in
/// `kvm_regs` (the id counts 32-bit words).
fn core_reg(offset: usize) -> u64 {
    KVM_REG_ARM64 | KVM_REG_SIZE_U64 | u64::from(KVM_REG_ARM_CORE) | (offset / 4) as u64
}

/// `x0`, the PC and PSTATE.
fn x0() -> u64 {
    core_reg(std::mem::offset_of!(kvm_regs, regs) + std::mem::offset_of!(user_pt_regs, regs))
}
fn pc() -> u64 {
    core_reg(std::mem::offset_of!(kvm_regs, regs) + std::mem::offset_of!(user_pt_regs, pc))
}
fn pstate() -> u64 {
    core_reg(std::mem::offset_of!(kvm_regs, regs) + std::mem::offset_of!(user_pt_regs, pstate))
}

/// The host's preferred vCPU type with in-kernel PSCI 0.2 (CPU_ON,
/// SYSTEM_OFF and SYSTEM_RESET are answered by KVM; the last two come back
/// as system events).
pub fn init_template(vm: &VmFd) -> Result<kvm_vcpu_init, KvmError> {
    let mut kvi = kvm_vcpu_init::default();
    vm.get_preferred_target(&mut kvi)
        .map_err(kvm("KVM_ARM_PREFERRED_TARGET"))?;
    kvi.features[0] |= 1 << KVM_ARM_VCPU_PSCI_0_2;
    Ok(kvi)
}

/// Initializes `vcpu`: the boot vCPU (`entry` given) starts at the image
/// with x0 = the device tree; the others start powered off, for the
/// guest's PSCI CPU_ON.
pub fn configure(
    vcpu: &VcpuFd,
    template: &kvm_vcpu_init,
    entry: Option<&Entry>,
) -> Result<(), KvmError> {
    let mut kvi = *template;
    if entry.is_none() {
        kvi.features[0] |= 1 << KVM_ARM_VCPU_POWER_OFF;
    }
    vcpu.vcpu_init(&kvi).map_err(kvm("KVM_ARM_VCPU_INIT"))?;
    let Some(entry) = entry else {
        return Ok(());
    };
    for (reg, value) in [(pstate(), entry.pstate), (pc(), entry.pc), (x0(), entry.x0)] {
        vcpu.set_one_reg(reg, &value.to_le_bytes())
            .map_err(kvm("KVM_SET_ONE_REG"))?;
    }
    Ok(())
}

/// What a vCPU thread shares with its VM.
pub struct Shared {
    pub bus: Arc<Bus>,
    pub stop: Arc<AtomicBool>,
    pub gate: Arc<Gate>,
}

/// Runs `vcpu` until the guest stops or `stop` is set (a signal kicks it
/// out of `KVM_RUN`), parking while the gate says the VM is paused.
pub fn run(mut vcpu: VcpuFd, shared: Shared) -> GuestExit {
    let Shared { bus, stop, gate } = shared;
    loop {
        if stop.load(Ordering::Acquire) {
            return GuestExit::Stopped;
        }
        if gate.is_paused() {
            gate.park();
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
                VcpuExit::InternalError => Some(GuestExit::Crashed(
                    "KVM internal error (KVM_EXIT_INTERNAL_ERROR)".into(),
                )),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn core_register_ids_match_the_kernel_abi() {
        // arch/arm64/include/uapi/asm/kvm.h: KVM_REG_ARM_CORE_REG(regs.pc)
        // is word 64, pstate word 66, x0 word 0.
        assert_eq!(pc() & 0xffff, 64);
        assert_eq!(pstate() & 0xffff, 66);
        assert_eq!(x0() & 0xffff, 0);
        assert_eq!(pc() >> 52, 0x603);
    }
}
