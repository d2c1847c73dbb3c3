//! The guest physical address map.
//!
//! ```text
//! 0x0000_0500  GDT (4 entries)          0x0000_0520  IDT (empty)
//! 0x0000_6000  PVH start info           0x0000_7000  e820 table
//! 0x0000_9fc00 MP table (up to 0xa0000) 0x0002_0000  kernel command line
//! 0x0010_0000  kernel (ELF load address) .. end of RAM below MMIO_START
//! 0xd000_0000  virtio-mmio devices, 4 KiB each (MMIO gap up to 4 GiB)
//! 0x1_0000_0000 RAM above the gap, when memory exceeds MMIO_START
//! ```

use vm_memory::GuestAddress;

pub const GDT_START: u64 = 0x500;
pub const IDT_START: u64 = 0x520;
pub const PVH_INFO_START: u64 = 0x6000;
pub const MEMMAP_START: u64 = 0x7000;
/// Where the MP table goes: the last KiB of base memory, which the kernel
/// scans for the floating pointer.
pub const MPTABLE_START: u64 = 0x9fc00;
/// End of usable low memory (the EBDA/VGA hole starts here).
pub const EBDA_START: u64 = 0xa0000;
pub const CMDLINE_START: u64 = 0x20000;
/// Longest kernel command line, with its terminating NUL: x86's
/// `COMMAND_LINE_SIZE` (the kernel silently cuts longer ones).
pub const CMDLINE_MAX: usize = 2048;
/// Where the kernel's ELF segments may start.
pub const HIMEM_START: u64 = 0x10_0000;
/// First virtio-mmio window; RAM stops below.
pub const MMIO_START: u64 = 0xd000_0000;
/// Size of one virtio-mmio window.
pub const MMIO_SIZE: u64 = 0x1000;
/// Start of the 4 GiB boundary.
pub const FOUR_GIB: u64 = 1 << 32;
/// First GSI for virtio-mmio devices (0-15 are legacy ISA lines; 4 is the
/// serial port).
pub const MMIO_GSI_START: u32 = 5;
/// The IOAPIC has 24 pins.
pub const IOAPIC_PINS: u32 = 24;
/// The serial port (COM1) and its interrupt line.
pub const SERIAL_PORT: u16 = 0x3f8;
pub const SERIAL_GSI: u32 = 4;
/// The i8042 command port: writing 0xfe resets the machine (`reboot=k`).
pub const I8042_PORT: u16 = 0x64;
/// Port the agent writes to for a clean power-off (no ACPI here).
pub const POWER_OFF_PORT: u16 = 0x501;

/// RAM regions for `mem_bytes` of guest memory: below the MMIO gap, and
/// above 4 GiB for the rest.
pub fn ram_regions(mem_bytes: u64) -> Vec<(GuestAddress, usize)> {
    if mem_bytes <= MMIO_START {
        vec![(GuestAddress(0), mem_bytes as usize)]
    } else {
        vec![
            (GuestAddress(0), MMIO_START as usize),
            (GuestAddress(FOUR_GIB), (mem_bytes - MMIO_START) as usize),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_skips_the_mmio_gap() {
        assert_eq!(ram_regions(512 << 20), vec![(GuestAddress(0), 512 << 20)]);
        let big = ram_regions(4 << 30);
        assert_eq!(big[0], (GuestAddress(0), MMIO_START as usize));
        assert_eq!(big[1].0, GuestAddress(FOUR_GIB));
        assert_eq!(big[0].1 + big[1].1, 4 << 30);
    }
}
