//! One vCPU's architectural state, saved while it is parked and restored
//! into a fresh vCPU before it first runs.
//!
//! The order follows Firecracker and QEMU: on save, `mp_state` first and
//! `vcpu_events` last; on restore CPUID first, then `mp_state` before the
//! local APIC, the local APIC before the MSRs (the TSC-deadline MSR only
//! sticks once the APIC timer is in that mode), and events last (they may
//! inject a pending exception into the state just set).

use kvm_bindings::{
    kvm_cpuid_entry2, kvm_debugregs, kvm_lapic_state, kvm_mp_state, kvm_msr_entry, kvm_regs,
    kvm_sregs, kvm_vcpu_events, kvm_xcrs, kvm_xsave, CpuId, Msrs,
};
use kvm_ioctls::VcpuFd;
use serde::{Deserialize, Serialize};

use crate::{kvm, KvmError};

/// MSRs read per `KVM_GET_MSRS` call (the kernel stops at the first one it
/// cannot read and says how many it did).
const MSR_CHUNK: usize = 64;

/// What one vCPU needs to continue where it stopped.
#[derive(Debug, Serialize, Deserialize)]
pub struct VcpuState {
    /// The vCPU's index (its APIC id).
    pub id: u8,
    pub cpuid: Vec<kvm_cpuid_entry2>,
    pub mp_state: kvm_mp_state,
    pub regs: kvm_regs,
    pub sregs: kvm_sregs,
    /// The x87/SSE/AVX state (the 4 KiB legacy `KVM_GET_XSAVE` layout).
    pub xsave: kvm_xsave,
    /// `None` where the host has no `KVM_CAP_XCRS`.
    pub xcrs: Option<kvm_xcrs>,
    pub debugregs: kvm_debugregs,
    pub lapic: kvm_lapic_state,
    pub msrs: Vec<kvm_msr_entry>,
    pub events: kvm_vcpu_events,
    /// The guest TSC frequency, kHz (0 if the host does not say).
    pub tsc_khz: u32,
}

/// Reads every MSR of `index` that `vcpu` can read.
fn read_msrs(vcpu: &VcpuFd, index: &[u32]) -> Result<Vec<kvm_msr_entry>, KvmError> {
    let mut out = Vec::with_capacity(index.len());
    let mut rest = index;
    while !rest.is_empty() {
        let chunk = &rest[..rest.len().min(MSR_CHUNK)];
        let entries: Vec<kvm_msr_entry> = chunk
            .iter()
            .map(|&index| kvm_msr_entry {
                index,
                ..Default::default()
            })
            .collect();
        let mut msrs = Msrs::from_entries(&entries)
            .map_err(|e| KvmError::Config(format!("MSR list: {e:?}")))?;
        let read = vcpu.get_msrs(&mut msrs).map_err(kvm("KVM_GET_MSRS"))?;
        out.extend_from_slice(&msrs.as_slice()[..read.min(chunk.len())]);
        // The one at `read` failed: skip it and go on after it.
        rest = &rest[(read + 1).min(rest.len())..];
    }
    Ok(out)
}

impl Clone for VcpuState {
    fn clone(&self) -> Self {
        Self {
            cpuid: self.cpuid.clone(),
            msrs: self.msrs.clone(),
            // The legacy area only: `extra` is empty (zero-sized).
            xsave: kvm_xsave {
                region: self.xsave.region,
                ..Default::default()
            },
            ..*self
        }
    }
}

impl VcpuState {
    /// Saves `vcpu`'s state; it must not be running. `msr_index` lists the
    /// MSRs to keep (the host's `KVM_GET_MSR_INDEX_LIST`).
    pub fn save(id: u8, vcpu: &VcpuFd, msr_index: &[u32]) -> Result<Self, KvmError> {
        let mp_state = vcpu.get_mp_state().map_err(kvm("KVM_GET_MP_STATE"))?;
        let regs = vcpu.get_regs().map_err(kvm("KVM_GET_REGS"))?;
        let sregs = vcpu.get_sregs().map_err(kvm("KVM_GET_SREGS"))?;
        let xsave = vcpu.get_xsave().map_err(kvm("KVM_GET_XSAVE"))?;
        let xcrs = vcpu.get_xcrs().ok();
        let debugregs = vcpu.get_debug_regs().map_err(kvm("KVM_GET_DEBUGREGS"))?;
        let lapic = vcpu.get_lapic().map_err(kvm("KVM_GET_LAPIC"))?;
        let tsc_khz = vcpu.get_tsc_khz().unwrap_or(0);
        let cpuid = vcpu
            .get_cpuid2(kvm_bindings::KVM_MAX_CPUID_ENTRIES)
            .map_err(kvm("KVM_GET_CPUID2"))?
            .as_slice()
            .to_vec();
        let msrs = read_msrs(vcpu, msr_index)?;
        let events = vcpu.get_vcpu_events().map_err(kvm("KVM_GET_VCPU_EVENTS"))?;
        Ok(Self {
            id,
            cpuid,
            mp_state,
            regs,
            sregs,
            xsave,
            xcrs,
            debugregs,
            lapic,
            msrs,
            events,
            tsc_khz,
        })
    }

    /// Loads the state into a freshly created `vcpu`.
    pub fn restore(&self, vcpu: &VcpuFd) -> Result<(), KvmError> {
        let cpuid = CpuId::from_entries(&self.cpuid)
            .map_err(|e| KvmError::Config(format!("snapshot CPUID: {e:?}")))?;
        vcpu.set_cpuid2(&cpuid).map_err(kvm("KVM_SET_CPUID2"))?;
        if self.tsc_khz != 0 && vcpu.get_tsc_khz().ok() != Some(self.tsc_khz) {
            vcpu.set_tsc_khz(self.tsc_khz)
                .map_err(kvm("KVM_SET_TSC_KHZ"))?;
        }
        vcpu.set_mp_state(self.mp_state)
            .map_err(kvm("KVM_SET_MP_STATE"))?;
        vcpu.set_regs(&self.regs).map_err(kvm("KVM_SET_REGS"))?;
        vcpu.set_sregs(&self.sregs).map_err(kvm("KVM_SET_SREGS"))?;
        // SAFETY: a legacy 4 KiB xsave area, which is what the kernel reads
        // for KVM_SET_XSAVE without KVM_CAP_XSAVE2 sizing.
        unsafe { vcpu.set_xsave(&self.xsave) }.map_err(kvm("KVM_SET_XSAVE"))?;
        if let Some(xcrs) = &self.xcrs {
            vcpu.set_xcrs(xcrs).map_err(kvm("KVM_SET_XCRS"))?;
        }
        vcpu.set_debug_regs(&self.debugregs)
            .map_err(kvm("KVM_SET_DEBUGREGS"))?;
        vcpu.set_lapic(&self.lapic).map_err(kvm("KVM_SET_LAPIC"))?;
        let msrs = Msrs::from_entries(&self.msrs)
            .map_err(|e| KvmError::Config(format!("snapshot MSRs: {e:?}")))?;
        let written = vcpu.set_msrs(&msrs).map_err(kvm("KVM_SET_MSRS"))?;
        if written != self.msrs.len() {
            let failed = self.msrs.get(written).map_or(0, |m| m.index);
            return Err(KvmError::Config(format!(
                "the host refused MSR {failed:#x} of the snapshot ({written} of {} restored)",
                self.msrs.len()
            )));
        }
        vcpu.set_vcpu_events(&self.events)
            .map_err(kvm("KVM_SET_VCPU_EVENTS"))
    }
}
