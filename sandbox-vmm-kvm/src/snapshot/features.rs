//! The CPU features a guest was given at boot, recorded in its snapshot
//! and checked on restore against what this host's KVM would give the
//! same guest.
//!
//! The guest kernel and its programs chose code paths by these features
//! at boot (and may keep using them: `rep movsb`, AVX, RDPID, kvmclock).
//! A restore on a host that lacks one of them would crash the guest or
//! corrupt its state later, so it is refused up front. The record is what
//! the VMM *set* (`KVM_GET_SUPPORTED_CPUID` filtered by the profile), not
//! what `KVM_GET_CPUID2` reads back: under nested PVM the read-back lists
//! XSAVE and AVX-512, which neither the host's supported list nor the
//! VMM's CPUID contains, so comparing read-backs refused every restore.

use kvm_bindings::kvm_cpuid_entry2;
use kvm_ioctls::Kvm;
use serde::{Deserialize, Serialize};

use crate::{cpuid, kvm, CpuProfile, KvmError};

/// The feature registers compared, as (leaf, subleaf, mask of EAX, EBX,
/// ECX, EDX). Bits outside the masks are ids, counts, cache geometry or
/// state the guest sets itself (OSXSAVE in leaf 1 ECX, OSPKE in leaf 7
/// ECX), which may differ without harm.
const LEAVES: [(u32, u32, [u32; 4]); 9] = [
    (0x1, 0, [0, 0, !(1 << 27), !0]),
    (0x7, 0, [0, !0, !(1 << 4), !0]),
    (0x7, 1, [!0, 0, 0, !0]),
    (0xd, 0, [!0, 0, 0, !0]),
    (0xd, 1, [!0, 0, 0, 0]),
    (0x4000_0001, 0, [!0, 0, 0, 0]),
    (0x8000_0001, 0, [0, 0, !0, !0]),
    (0x8000_0007, 0, [0, 0, 0, !0]),
    (0x8000_0008, 0, [0, !0, 0, 0]),
];

const REGS: [&str; 4] = ["EAX", "EBX", "ECX", "EDX"];

/// One feature leaf's registers (masked).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FeatureLeaf {
    pub function: u32,
    pub index: u32,
    /// EAX, EBX, ECX, EDX.
    pub regs: [u32; 4],
}

/// The CPU features a guest was started with.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CpuFeatures {
    /// The VMM's CPUID profile was the nested-PVM one.
    pub nested_pvm: bool,
    pub leaves: Vec<FeatureLeaf>,
}

impl CpuFeatures {
    /// The features in `cpuid` (a vCPU's CPUID as the VMM set it).
    pub fn of(cpuid: &[kvm_cpuid_entry2], profile: CpuProfile) -> Self {
        let leaves = LEAVES
            .iter()
            .map(|&(function, index, mask)| {
                let e = cpuid
                    .iter()
                    .find(|e| e.function == function && e.index == index);
                let raw = e.map_or([0; 4], |e| [e.eax, e.ebx, e.ecx, e.edx]);
                FeatureLeaf {
                    function,
                    index,
                    regs: std::array::from_fn(|r| raw[r] & mask[r]),
                }
            })
            .collect();
        Self {
            nested_pvm: profile == CpuProfile::NestedPvm,
            leaves,
        }
    }

    /// What the VMM gives a guest on this host under `profile`.
    pub fn host(kvm_sys: &Kvm, profile: CpuProfile) -> Result<Self, KvmError> {
        let mut cpuid = kvm_sys
            .get_supported_cpuid(kvm_bindings::KVM_MAX_CPUID_ENTRIES)
            .map_err(kvm("KVM_GET_SUPPORTED_CPUID"))?;
        cpuid::filter(&mut cpuid, 0, 1, profile);
        Ok(Self::of(cpuid.as_slice(), profile))
    }

    /// The profile these features were taken under.
    pub fn profile(&self) -> CpuProfile {
        if self.nested_pvm {
            CpuProfile::NestedPvm
        } else {
            CpuProfile::Full
        }
    }

    /// Checks that `host` offers every feature recorded here; the error
    /// names each leaf and register with the bits it lacks.
    pub fn check(&self, host: &CpuFeatures) -> Result<(), String> {
        let mut missing = Vec::new();
        for saved in &self.leaves {
            let offered = host
                .leaves
                .iter()
                .find(|l| l.function == saved.function && l.index == saved.index)
                .map_or([0; 4], |l| l.regs);
            for r in 0..4 {
                let lacks = saved.regs[r] & !offered[r];
                if lacks != 0 {
                    missing.push(format!(
                        "leaf {:#x}.{} {} bits {lacks:#010x}",
                        saved.function, saved.index, REGS[r]
                    ));
                }
            }
        }
        if missing.is_empty() {
            Ok(())
        } else {
            Err(format!(
                "the snapshot's guest was started with CPU features this host's KVM does not \
                 offer ({}): restore it on a host with the same CPU, kernel and KVM settings",
                missing.join(", ")
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(function: u32, index: u32, regs: [u32; 4]) -> kvm_cpuid_entry2 {
        kvm_cpuid_entry2 {
            function,
            index,
            eax: regs[0],
            ebx: regs[1],
            ecx: regs[2],
            edx: regs[3],
            ..Default::default()
        }
    }

    #[test]
    fn a_missing_feature_bit_is_named_and_masked_bits_are_ignored() {
        let saved = CpuFeatures::of(
            &[
                // OSXSAVE (ECX 27) and the APIC id in EBX are not features.
                entry(1, 0, [0x806f8, 0x0100_0800, (1 << 27) | (1 << 23), 1]),
                entry(7, 0, [0, (1 << 5) | (1 << 9), 0, 0]),
            ],
            CpuProfile::Full,
        );
        let host = CpuFeatures::of(
            &[
                entry(1, 0, [0x806f8, 0x0200_0800, 1 << 23, 1]),
                entry(7, 0, [0, 1 << 9, 0, 0]),
            ],
            CpuProfile::Full,
        );
        let e = saved.check(&host).unwrap_err();
        assert!(e.contains("leaf 0x7.0 EBX bits 0x00000020"), "{e}");
        assert!(!e.contains("leaf 0x1."), "{e}");
        // The other way round nothing is missing.
        assert_eq!(host.check(&saved), Ok(()));
        // A host with more features takes the snapshot.
        let more = CpuFeatures::of(
            &[
                entry(1, 0, [0, 0, (1 << 23) | (1 << 20), 1]),
                entry(7, 0, [0, (1 << 5) | (1 << 9) | (1 << 3), 0, 0]),
            ],
            CpuProfile::Full,
        );
        assert_eq!(saved.check(&more), Ok(()));
    }

    #[test]
    fn a_leaf_the_host_lacks_entirely_is_refused() {
        let saved = CpuFeatures::of(
            &[entry(0x4000_0001, 0, [1 << 3, 0, 0, 0])],
            CpuProfile::Full,
        );
        let host = CpuFeatures::of(&[], CpuProfile::Full);
        let e = saved.check(&host).unwrap_err();
        assert!(e.contains("leaf 0x40000001.0 EAX bits 0x00000008"), "{e}");
    }

    #[test]
    fn the_profile_round_trips() {
        let f = CpuFeatures::of(&[], CpuProfile::NestedPvm);
        assert_eq!(f.profile(), CpuProfile::NestedPvm);
        let json = serde_json::to_string(&f).unwrap();
        let back: CpuFeatures = serde_json::from_str(&json).unwrap();
        assert_eq!(back, f);
        assert_eq!(
            CpuFeatures::of(&[], CpuProfile::Full).profile(),
            CpuProfile::Full
        );
    }
}
