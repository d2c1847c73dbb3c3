//! An Intel MultiProcessor Specification 1.4 table: how a guest without
//! ACPI finds its CPUs, its IOAPIC and the ISA interrupt routing. The
//! floating pointer sits at the start of the last KiB of base memory, where
//! the kernel looks for it, followed by the configuration table.

use vm_memory::{Bytes, GuestAddress};

use crate::layout::{EBDA_START, IOAPIC_PINS, MPTABLE_START};
use crate::{GuestMemory, KvmError};

const LAPIC_ADDR: u32 = 0xfee0_0000;
const IOAPIC_ADDR: u32 = 0xfec0_0000;
const APIC_VERSION: u8 = 0x14;
const IOAPIC_VERSION: u8 = 0x11;
/// Most CPUs whose table fits below `EBDA_START`.
pub const MAX_CPUS: u8 = 32;

fn checksum(bytes: &[u8]) -> u8 {
    0u8.wrapping_sub(bytes.iter().fold(0u8, |a, b| a.wrapping_add(*b)))
}

/// The table bytes for `cpus` processors, to be placed at `MPTABLE_START`.
pub fn build(cpus: u8) -> Result<Vec<u8>, KvmError> {
    if cpus == 0 || cpus > MAX_CPUS {
        return Err(KvmError::Config(format!(
            "the KVM backend supports 1 to {MAX_CPUS} vCPUs, not {cpus}"
        )));
    }
    let ioapic_id = cpus;
    let mut entries = Vec::new();
    for id in 0..cpus {
        let mut e = [0u8; 20];
        e[0] = 0; // processor
        e[1] = id;
        e[2] = APIC_VERSION;
        e[3] = 1 | if id == 0 { 2 } else { 0 }; // enabled, BSP
        e[4..8].copy_from_slice(&0x600u32.to_le_bytes()); // family 6
        e[8..12].copy_from_slice(&0x201u32.to_le_bytes()); // FPU, APIC
        entries.extend_from_slice(&e);
    }
    entries.extend_from_slice(&[1, 0, b'I', b'S', b'A', b' ', b' ', b' ']); // bus 0: ISA
    let mut ioapic = [2u8, ioapic_id, IOAPIC_VERSION, 1, 0, 0, 0, 0];
    ioapic[4..8].copy_from_slice(&IOAPIC_ADDR.to_le_bytes());
    entries.extend_from_slice(&ioapic);
    for irq in 0..IOAPIC_PINS as u8 {
        // I/O interrupt: INT, conforming polarity/trigger, ISA irq -> pin.
        entries.extend_from_slice(&[3, 0, 0, 0, 0, irq, ioapic_id, irq]);
    }
    // Local interrupts: ExtINT on LINT0 of the BSP, NMI on LINT1 of all.
    entries.extend_from_slice(&[4, 3, 0, 0, 0, 0, 0, 0]);
    entries.extend_from_slice(&[4, 1, 0, 0, 0, 0, 0xff, 1]);
    let count = (cpus as u16) + 1 + 1 + IOAPIC_PINS as u16 + 2;

    let mut header = [0u8; 44];
    header[0..4].copy_from_slice(b"PCMP");
    header[4..6].copy_from_slice(&((44 + entries.len()) as u16).to_le_bytes());
    header[6] = 4; // spec 1.4
    header[8..16].copy_from_slice(b"SANDBOX ");
    header[16..28].copy_from_slice(b"KVM GUEST   ");
    header[34..36].copy_from_slice(&count.to_le_bytes());
    header[36..40].copy_from_slice(&LAPIC_ADDR.to_le_bytes());
    let mut table = [header.as_slice(), &entries].concat();
    table[7] = checksum(&table);

    let mut fp = [0u8; 16];
    fp[0..4].copy_from_slice(b"_MP_");
    fp[4..8].copy_from_slice(&((MPTABLE_START + 16) as u32).to_le_bytes());
    fp[8] = 1; // length in 16-byte units
    fp[9] = 4;
    fp[10] = checksum(&fp);
    let all = [fp.as_slice(), &table].concat();
    if MPTABLE_START + all.len() as u64 > EBDA_START {
        return Err(KvmError::Config("the MP table does not fit".into()));
    }
    Ok(all)
}

/// Writes the table for `cpus` processors into guest memory.
pub fn write(mem: &GuestMemory, cpus: u8) -> Result<(), KvmError> {
    let bytes = build(cpus)?;
    mem.write_slice(&bytes, GuestAddress(MPTABLE_START))
        .map_err(|e| KvmError::Boot(format!("writing the MP table: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_checksum_to_zero_and_count_their_entries() {
        for cpus in [1u8, 2, MAX_CPUS] {
            let t = build(cpus).unwrap();
            let sum = |b: &[u8]| b.iter().fold(0u8, |a, x| a.wrapping_add(*x));
            assert_eq!(sum(&t[..16]), 0, "floating pointer");
            let len = u16::from_le_bytes([t[20], t[21]]) as usize;
            assert_eq!(sum(&t[16..16 + len]), 0, "config table");
            assert_eq!(&t[16..20], b"PCMP");
            let count = u16::from_le_bytes([t[50], t[51]]);
            assert_eq!(count, u16::from(cpus) + 28);
            assert_eq!(len, 44 + 20 * cpus as usize + 8 * 28);
        }
        assert!(build(0).is_err());
        assert!(build(MAX_CPUS + 1).is_err());
    }
}
