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

use crate::KvmError;

fn kvm(what: &'static str) -> impl Fn(kvm_ioctls::Error) -> KvmError {
    move |e| KvmError::Kvm { what, source: e }
}

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

/// CPUID registers that list instruction-set features, as (function,
/// index, register name, register).
fn feature_words(e: &kvm_cpuid_entry2) -> Vec<(&'static str, u32)> {
    match (e.function, e.index) {
        (1, _) => vec![("ecx", e.ecx), ("edx", e.edx)],
        (7, 0) => vec![("ebx", e.ebx), ("ecx", e.ecx), ("edx", e.edx)],
        (7, 1) => vec![("eax", e.eax)],
        (0xd, 1) => vec![("eax", e.eax)],
        (0x8000_0001, _) => vec![("ecx", e.ecx), ("edx", e.edx)],
        _ => Vec::new(),
    }
}

/// Bits the VMM or KVM sets at run time whatever the host reports (KVM
/// mirrors control-register state into CPUID): leaf 1 ECX MONITOR (3,
/// MISC_ENABLE), OSXSAVE (27, CR4.OSXSAVE) and the hypervisor bit (31, set
/// by `cpuid::filter`); leaf 7.0 ECX OSPKE (4, CR4.PKE).
fn soft_bits(function: u32, index: u32, register: &str) -> u32 {
    match (function, index, register) {
        (1, _, "ecx") => (1 << 3) | (1 << 27) | (1 << 31),
        (7, 0, "ecx") => 1 << 4,
        _ => 0,
    }
}

/// Checks that every instruction-set feature the snapshotted guest was
/// shown is available on this host: a guest that chose code paths by
/// CPUID would otherwise fault on the first instruction this CPU lacks,
/// long after the restore. Returns what is missing.
pub fn check_cpuid(
    saved: &[kvm_cpuid_entry2],
    supported: &[kvm_cpuid_entry2],
) -> Result<(), String> {
    let mut missing = Vec::new();
    for s in saved {
        let words = feature_words(s);
        if words.is_empty() {
            continue;
        }
        let host = supported
            .iter()
            .find(|h| h.function == s.function && (h.index == s.index || s.function == 1));
        let host_words = host.map(feature_words).unwrap_or_default();
        for (name, bits) in words {
            let have = host_words
                .iter()
                .find(|(n, _)| *n == name)
                .map_or(0, |(_, b)| *b);
            let lacking = bits & !have & !soft_bits(s.function, s.index, name);
            if lacking != 0 {
                missing.push(format!(
                    "leaf {:#x}.{} {name} bits {lacking:#010x}",
                    s.function, s.index
                ));
            }
        }
    }
    if missing.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "this host's CPU lacks features the snapshotted guest uses ({}): restore it on a host with the same CPU",
            missing.join(", ")
        ))
    }
}

#[cfg(test)]
mod cpuid_tests {
    use super::*;

    fn leaf(function: u32, index: u32, ebx: u32, ecx: u32, edx: u32) -> kvm_cpuid_entry2 {
        kvm_cpuid_entry2 {
            function,
            index,
            ebx,
            ecx,
            edx,
            ..Default::default()
        }
    }

    #[test]
    fn a_subset_of_the_host_features_restores() {
        let host = [leaf(1, 0, 0, 0b1011, 0xff), leaf(7, 0, 0b111, 0, 0)];
        let saved = [
            leaf(1, 0, 0x0100_0000, 0b0011 | (1 << 31), 0x0f),
            leaf(7, 0, 0b101, 0, 0),
            leaf(0x4000_0000, 0, 1, 2, 3), // not a feature leaf
        ];
        assert_eq!(check_cpuid(&saved, &host), Ok(()));
    }

    #[test]
    fn a_feature_the_host_lacks_is_named() {
        let host = [leaf(1, 0, 0, 0b0011, 0xff), leaf(7, 0, 0b001, 0, 0)];
        let saved = [leaf(1, 0, 0, 0b0011, 0xff), leaf(7, 0, 0b101, 0, 0)];
        let e = check_cpuid(&saved, &host).unwrap_err();
        assert!(e.contains("leaf 0x7.0 ebx bits 0x00000004"), "{e}");
        let no_leaf = check_cpuid(&[leaf(0x8000_0001, 0, 0, 1, 0)], &host).unwrap_err();
        assert!(no_leaf.contains("leaf 0x80000001.0 ecx"), "{no_leaf}");
    }
}
