//! Decoding of the exception syndrome (ESR_EL2) a vCPU exit reports:
//! which trap it was, and for a data abort on a device window, the access
//! (size, direction, register) the VMM must emulate. Arm ARM D17.2.37.

/// Exception class: trapped WFI or WFE.
const EC_WFX: u64 = 0x01;
/// Exception class: HVC from AArch64.
const EC_HVC64: u64 = 0x16;
/// Exception class: SMC from AArch64.
const EC_SMC64: u64 = 0x17;
/// Exception class: trapped MSR, MRS or system instruction.
const EC_SYSREG: u64 = 0x18;
/// Exception class: data abort from a lower exception level.
const EC_DABT_LOW: u64 = 0x24;

/// An MMIO access to emulate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Access {
    /// 1, 2, 4 or 8 bytes.
    pub size: usize,
    /// The general register (0 to 30; 31 is the zero register).
    pub reg: u8,
    /// A store (the guest writes the device).
    pub write: bool,
    /// A load that sign-extends into the register.
    pub sign_extend: bool,
    /// A load into the 64-bit register (else the upper half is cleared).
    pub sixty_four: bool,
}

impl Access {
    /// The value a load puts in the register, from the device's bytes
    /// (little-endian, `size` of them).
    pub fn load_value(&self, data: &[u8]) -> u64 {
        let mut v = [0u8; 8];
        let n = self.size.min(data.len()).min(8);
        v[..n].copy_from_slice(&data[..n]);
        let raw = u64::from_le_bytes(v);
        let bits = (self.size * 8) as u32;
        let value = if self.sign_extend && bits < 64 {
            let shift = 64 - bits;
            (((raw << shift) as i64) >> shift) as u64
        } else {
            raw
        };
        if self.sixty_four {
            value
        } else {
            value & 0xffff_ffff
        }
    }
}

/// A system register access (MSR/MRS), by its encoding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SysReg {
    /// op0, op1, CRn, CRm, op2 packed as in Arm's encoding tables.
    pub encoding: u32,
    /// The general register.
    pub reg: u8,
    /// MRS (a read into the register) rather than MSR.
    pub read: bool,
}

/// What a vCPU exit's syndrome says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// A load or store to an address without RAM.
    DataAbort(Access),
    /// A data abort the syndrome does not describe (ISV clear: a load or
    /// store pair, writeback, or SIMD access to a device window). Not
    /// emulated: the guest is stopped with this error.
    DataAbortUndecodable,
    /// HVC (PSCI calls, here) with its immediate.
    Hvc(u16),
    /// SMC with its immediate.
    Smc(u16),
    /// A trapped system register access.
    SysReg(SysReg),
    /// WFI or WFE: the vCPU waits for an interrupt.
    WaitForInterrupt,
    /// Any other exception class.
    Other(u8),
}

/// Decodes ESR_EL2 as a vCPU exit reports it.
pub fn decode(esr: u64) -> Exit {
    let ec = (esr >> 26) & 0x3f;
    let iss = esr & 0x1ff_ffff;
    match ec {
        EC_DABT_LOW if iss & (1 << 24) == 0 => Exit::DataAbortUndecodable,
        EC_DABT_LOW => Exit::DataAbort(Access {
            size: 1 << ((iss >> 22) & 3),
            reg: ((iss >> 16) & 0x1f) as u8,
            write: iss & (1 << 6) != 0,
            sign_extend: iss & (1 << 21) != 0,
            sixty_four: iss & (1 << 15) != 0,
        }),
        EC_HVC64 => Exit::Hvc(iss as u16),
        EC_SMC64 => Exit::Smc(iss as u16),
        EC_SYSREG => Exit::SysReg(SysReg {
            // ISS: Op0 [21:20], Op2 [19:17], Op1 [16:14], CRn [13:10],
            // Rt [9:5], CRm [4:1], Direction [0] (1 = read).
            encoding: (((iss >> 20) & 3) << 14
                | ((iss >> 14) & 7) << 11
                | ((iss >> 10) & 0xf) << 7
                | ((iss >> 1) & 0xf) << 3
                | ((iss >> 17) & 7)) as u32,
            reg: ((iss >> 5) & 0x1f) as u8,
            read: iss & 1 != 0,
        }),
        EC_WFX => Exit::WaitForInterrupt,
        other => Exit::Other(other as u8),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dabt(isv: bool, sas: u64, sse: bool, srt: u64, sf: bool, wnr: bool) -> u64 {
        (EC_DABT_LOW << 26)
            | (1 << 25)
            | (u64::from(isv) << 24)
            | (sas << 22)
            | (u64::from(sse) << 21)
            | (srt << 16)
            | (u64::from(sf) << 15)
            | (u64::from(wnr) << 6)
    }

    #[test]
    fn stores_and_loads_decode_size_register_and_direction() {
        // str w3, [x0]: 4 bytes from w3.
        assert_eq!(
            decode(dabt(true, 2, false, 3, false, true)),
            Exit::DataAbort(Access {
                size: 4,
                reg: 3,
                write: true,
                sign_extend: false,
                sixty_four: false
            })
        );
        // ldrb w30, [x1].
        let Exit::DataAbort(a) = decode(dabt(true, 0, false, 30, false, false)) else {
            panic!("not a data abort")
        };
        assert_eq!((a.size, a.reg, a.write), (1, 30, false));
        // ldr x7, [x2].
        let Exit::DataAbort(a) = decode(dabt(true, 3, false, 7, true, false)) else {
            panic!("not a data abort")
        };
        assert_eq!((a.size, a.reg, a.sixty_four), (8, 7, true));
    }

    #[test]
    fn an_abort_without_syndrome_is_not_guessed() {
        assert_eq!(
            decode(dabt(false, 3, false, 7, true, true)),
            Exit::DataAbortUndecodable
        );
    }

    #[test]
    fn loads_extend_as_the_instruction_says() {
        let ldrsb_x = Access {
            size: 1,
            reg: 0,
            write: false,
            sign_extend: true,
            sixty_four: true,
        };
        assert_eq!(ldrsb_x.load_value(&[0x80]), 0xffff_ffff_ffff_ff80);
        let ldrsh_w = Access {
            size: 2,
            sixty_four: false,
            ..ldrsb_x
        };
        assert_eq!(ldrsh_w.load_value(&[0x00, 0x80]), 0xffff_8000);
        let ldr_w = Access {
            size: 4,
            sign_extend: false,
            ..ldrsh_w
        };
        assert_eq!(ldr_w.load_value(&[1, 2, 3, 4]), 0x0403_0201);
        // A short buffer never panics.
        assert_eq!(ldr_w.load_value(&[]), 0);
    }

    #[test]
    fn calls_waits_and_system_registers() {
        assert_eq!(decode((EC_HVC64 << 26) | (1 << 25)), Exit::Hvc(0));
        assert_eq!(decode((EC_SMC64 << 26) | 7), Exit::Smc(7));
        assert_eq!(decode(EC_WFX << 26), Exit::WaitForInterrupt);
        assert_eq!(decode(0x3f << 26), Exit::Other(0x3f));
        // mrs x5, cntpct_el0: op0 3, op1 3, CRn 14, CRm 0, op2 1.
        let iss = (3 << 20) | (1 << 17) | (3 << 14) | (14 << 10) | (5 << 5) | 1;
        assert_eq!(
            decode((EC_SYSREG << 26) | iss),
            Exit::SysReg(SysReg {
                encoding: (3 << 14) | (3 << 11) | (14 << 7) | 1,
                reg: 5,
                read: true
            })
        );
    }

    #[test]
    fn every_syndrome_decodes_without_panicking() {
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        for _ in 0..100_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            if let Exit::DataAbort(a) = decode(x) {
                assert!(matches!(a.size, 1 | 2 | 4 | 8) && a.reg < 32);
                let _ = a.load_value(&x.to_le_bytes());
            }
        }
    }
}
