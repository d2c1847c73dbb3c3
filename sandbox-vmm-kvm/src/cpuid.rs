//! The CPUID a guest sees: `KVM_GET_SUPPORTED_CPUID`, filtered.
//!
//! For every host:
//! - leaf 0x1: EBX carries the vCPU's APIC id and the logical CPU count,
//!   ECX bit 31 (hypervisor) is set;
//! - leaves 0xb and 0x1f: EDX carries the x2APIC id.
//!
//! The nested-PVM profile ([`CpuProfile::NestedPvm`]) also hides what the
//! emulating host cannot execute at guest ring 0 (../shared/ENVIRONMENT.md):
//! XSAVE and everything built on it (OSXSAVE, AVX, AVX2, AVX-512, FMA, F16C,
//! leaf 0xd zeroed), POPCNT and SMAP; and the fast-string flags (ERMS,
//! FSRM, FZRM, FSRS, FSRC), whose byte-wise string loops it runs slowest.
//! On hardware KVM ([`CpuProfile::Full`]) nothing else is removed.

use kvm_bindings::CpuId;

pub use crate::CpuProfile;

const ECX_POPCNT: u32 = 1 << 23;
const ECX_FMA: u32 = 1 << 12;
const ECX_XSAVE: u32 = 1 << 26;
const ECX_OSXSAVE: u32 = 1 << 27;
const ECX_AVX: u32 = 1 << 28;
const ECX_F16C: u32 = 1 << 29;
const ECX_HYPERVISOR: u32 = 1 << 31;
/// Leaf 7 EBX: AVX2 (5), ERMS (9: see [`L7_EDX_HIDDEN`]), AVX-512
/// F/DQ/IFMA/PF/ER/CD/BW/VL (16, 17, 21, 26, 27, 28, 30, 31) and SMAP (20).
const L7_EBX_HIDDEN: u32 = (1 << 5)
    | (1 << 9)
    | (1 << 16)
    | (1 << 17)
    | (1 << 20)
    | (1 << 21)
    | (1 << 26)
    | (1 << 27)
    | (1 << 28)
    | (1 << 30)
    | (1 << 31);
/// Leaf 7 ECX: AVX-512 VBMI, VBMI2, VNNI, BITALG, VPOPCNTDQ; VAES, VPCLMULQDQ
/// (AVX encodings).
const L7_ECX_HIDDEN: u32 =
    (1 << 1) | (1 << 6) | (1 << 9) | (1 << 10) | (1 << 11) | (1 << 12) | (1 << 14);
/// Leaf 7 EDX: AVX-512 4VNNIW, 4FMAPS, VP2INTERSECT, FP16; and FSRM (4).
///
/// ERMS, FSRM and leaf 7.1's FZRM, FSRS and FSRC tell the kernel that
/// byte-wise `rep movsb`/`rep stosb` are fast, and it then clears pages,
/// copies to and from user space and runs memcpy/memset with them. The
/// emulator runs a string instruction one iteration at a time, so a byte
/// per iteration costs eight times the emulated iterations of the `rep
/// movsq`/`rep stosq` and unrolled-loop variants the kernel uses without
/// them (a page clear: 4096 iterations instead of 512). (On this project's
/// hosts the kernel still saw ERMS and FSRM with them hidden here;
/// `NESTED_PVM_CMDLINE` clears them, as it does XSAVE.)
const L7_EDX_HIDDEN: u32 = (1 << 2) | (1 << 3) | (1 << 4) | (1 << 8) | (1 << 23);
/// Leaf 7 subleaf 1 EAX: FZRM (10), FSRS (11), FSRC (12); see above.
const L7_1_EAX_HIDDEN: u32 = (1 << 10) | (1 << 11) | (1 << 12);

/// Adjusts `cpuid` for vCPU `index` of `count`.
pub fn filter(cpuid: &mut CpuId, index: u8, count: u8, profile: CpuProfile) {
    let pvm = profile == CpuProfile::NestedPvm;
    for e in cpuid.as_mut_slice() {
        match e.function {
            1 => {
                e.ebx = (e.ebx & 0x0000_ffff) | (u32::from(index) << 24) | (u32::from(count) << 16);
                e.ecx |= ECX_HYPERVISOR;
                if pvm {
                    e.ecx &= !(ECX_POPCNT | ECX_FMA | ECX_XSAVE | ECX_OSXSAVE | ECX_AVX | ECX_F16C);
                }
            }
            7 if e.index == 0 && pvm => {
                e.ebx &= !L7_EBX_HIDDEN;
                e.ecx &= !L7_ECX_HIDDEN;
                e.edx &= !L7_EDX_HIDDEN;
            }
            7 if e.index == 1 && pvm => e.eax &= !L7_1_EAX_HIDDEN,
            0xd if pvm => {
                (e.eax, e.ebx, e.ecx, e.edx) = (0, 0, 0, 0);
            }
            0xb | 0x1f => e.edx = u32::from(index),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kvm_bindings::kvm_cpuid_entry2;

    fn leaf(function: u32, index: u32) -> kvm_cpuid_entry2 {
        kvm_cpuid_entry2 {
            function,
            index,
            eax: !0,
            ebx: !0,
            ecx: !0,
            edx: !0,
            ..Default::default()
        }
    }

    #[test]
    fn the_pvm_profile_hides_xsave_popcnt_and_smap_and_full_keeps_them() {
        let entries = [
            leaf(1, 0),
            leaf(7, 0),
            leaf(0xd, 0),
            leaf(0xb, 0),
            leaf(7, 1),
        ];
        let mut pvm = CpuId::from_entries(&entries).unwrap();
        filter(&mut pvm, 2, 4, CpuProfile::NestedPvm);
        let e = pvm.as_slice();
        assert_eq!(e[0].ecx & (ECX_XSAVE | ECX_POPCNT | ECX_AVX), 0);
        assert_ne!(e[0].ecx & ECX_HYPERVISOR, 0);
        assert_eq!(e[0].ebx >> 24, 2, "APIC id");
        assert_eq!((e[0].ebx >> 16) & 0xff, 4, "CPU count");
        assert_eq!(e[1].ebx & (1 << 20), 0, "SMAP");
        assert_eq!((e[2].eax, e[2].ebx), (0, 0));
        assert_eq!(e[3].edx, 2);
        assert_eq!(e[1].ebx & (1 << 9), 0, "ERMS");
        assert_eq!(e[1].edx & (1 << 4), 0, "FSRM");
        assert_eq!(e[4].eax & (0b111 << 10), 0, "FZRM, FSRS, FSRC");
        assert_ne!(e[4].eax, 0, "the rest of leaf 7.1");
        let mut full = CpuId::from_entries(&entries).unwrap();
        filter(&mut full, 0, 1, CpuProfile::Full);
        let e = full.as_slice();
        assert_ne!(e[0].ecx & ECX_XSAVE, 0);
        assert_ne!(e[1].ebx & (1 << 20), 0);
        assert_ne!(e[1].ebx & (1 << 9), 0);
        assert_ne!(e[4].eax & (1 << 11), 0);
    }
}
