//! Loading the kernel and writing what the PVH entry point reads: the
//! start info, the e820 memory map and the command line.

use std::fs::File;
use std::path::Path;

use linux_loader::cmdline::Cmdline;
use linux_loader::configurator::pvh::PvhBootConfigurator;
use linux_loader::configurator::{BootConfigurator, BootParams};
use linux_loader::loader::elf::start_info::{hvm_memmap_table_entry, hvm_start_info};
use linux_loader::loader::elf::{Elf, PvhBootCapability};
use linux_loader::loader::{load_cmdline, KernelLoader};
use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryRegion};

use crate::layout::*;
use crate::{GuestMemory, KvmError};

const XEN_HVM_START_MAGIC: u32 = 0x336e_c578;
const E820_RAM: u32 = 1;
const E820_RESERVED: u32 = 2;

/// Loads `vmlinux` and returns its PVH entry point.
pub fn load_kernel(mem: &GuestMemory, kernel: &Path) -> Result<GuestAddress, KvmError> {
    let mut file =
        File::open(kernel).map_err(|e| KvmError::Boot(format!("{}: {e}", kernel.display())))?;
    let loaded = Elf::load(mem, None, &mut file, Some(GuestAddress(HIMEM_START)))
        .map_err(|e| KvmError::Boot(format!("loading {}: {e}", kernel.display())))?;
    match loaded.pvh_boot_cap {
        PvhBootCapability::PvhEntryPresent(entry) => Ok(entry),
        _ => Err(KvmError::Boot(format!(
            "{} has no PVH entry point (CONFIG_PVH): rebuild it with `cargo xtask build`",
            kernel.display()
        ))),
    }
}

/// Writes the command line, the memory map and the PVH start info.
pub fn write_boot_info(mem: &GuestMemory, cmdline: &str) -> Result<(), KvmError> {
    let boot = |e: &dyn std::fmt::Display| KvmError::Boot(e.to_string());
    if cmdline.len() >= CMDLINE_MAX {
        return Err(KvmError::Boot(format!(
            "the kernel command line is {} bytes and the kernel keeps at most {}: \
             fewer devices (each virtio-mmio device adds a parameter) or shorter options",
            cmdline.len(),
            CMDLINE_MAX - 1
        )));
    }
    let mut cl = Cmdline::new(CMDLINE_MAX).map_err(|e| boot(&e))?;
    cl.insert_str(cmdline).map_err(|e| boot(&e))?;
    load_cmdline(mem, GuestAddress(CMDLINE_START), &cl).map_err(|e| boot(&e))?;

    // Base memory up to the MP table; the table and the legacy hole are
    // reserved.
    let mut memmap = vec![
        entry(0, MPTABLE_START, E820_RAM),
        entry(MPTABLE_START, HIMEM_START - MPTABLE_START, E820_RESERVED),
    ];
    for region in mem.iter() {
        let start = region.start_addr().raw_value().max(HIMEM_START);
        let end = region.start_addr().raw_value() + region.len();
        if end > start {
            memmap.push(entry(start, end - start, E820_RAM));
        }
    }
    let start_info = hvm_start_info {
        magic: XEN_HVM_START_MAGIC,
        version: 1,
        cmdline_paddr: CMDLINE_START,
        memmap_paddr: MEMMAP_START,
        memmap_entries: memmap.len() as u32,
        ..Default::default()
    };
    let mut params = BootParams::new(&start_info, GuestAddress(PVH_INFO_START));
    params.set_sections(&memmap, GuestAddress(MEMMAP_START));
    PvhBootConfigurator::write_bootparams::<GuestMemory>(&params, mem).map_err(|e| boot(&e))?;
    write_gdt(mem)
}

fn entry(addr: u64, size: u64, type_: u32) -> hvm_memmap_table_entry {
    hvm_memmap_table_entry {
        addr,
        size,
        type_,
        reserved: 0,
    }
}

/// Flat 32-bit code and data descriptors (and a TSS) for the PVH entry,
/// which starts in protected mode with paging off.
pub const GDT: [u64; 4] = [
    0,
    gdt_entry(0xc09b, 0, 0xfffff), // code: present, exec/read, 32-bit, 4 KiB granularity
    gdt_entry(0xc093, 0, 0xfffff), // data: present, read/write
    gdt_entry(0x808b, 0, 0xfffff), // TSS: present, busy
];

/// A segment descriptor from its flags, base and limit.
pub const fn gdt_entry(flags: u16, base: u32, limit: u32) -> u64 {
    ((base as u64 & 0xff00_0000) << 32)
        | ((flags as u64 & 0xf0ff) << 40)
        | ((limit as u64 & 0x000f_0000) << 32)
        | ((base as u64 & 0x00ff_ffff) << 16)
        | (limit as u64 & 0x0000_ffff)
}

fn write_gdt(mem: &GuestMemory) -> Result<(), KvmError> {
    for (i, e) in GDT.iter().enumerate() {
        mem.write_obj(*e, GuestAddress(GDT_START + 8 * i as u64))
            .map_err(|e| KvmError::Boot(format!("writing the GDT: {e}")))?;
    }
    mem.write_obj(0u64, GuestAddress(IDT_START))
        .map_err(|e| KvmError::Boot(format!("writing the IDT: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn descriptors_match_the_manual_encoding() {
        // Flat 32-bit code segment, as firmware builds it.
        assert_eq!(gdt_entry(0xc09b, 0, 0xfffff), 0x00cf_9b00_0000_ffff);
        assert_eq!(gdt_entry(0xc093, 0, 0xfffff), 0x00cf_9300_0000_ffff);
    }

    #[test]
    fn command_lines_the_kernel_would_cut_are_refused() {
        let mem = GuestMemory::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        write_boot_info(&mem, &"x".repeat(CMDLINE_MAX - 1)).unwrap();
        let err = write_boot_info(&mem, &"x".repeat(CMDLINE_MAX)).unwrap_err();
        assert!(err.to_string().contains("at most 2047"), "{err}");
    }
}
