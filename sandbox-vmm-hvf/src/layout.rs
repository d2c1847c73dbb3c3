//! The guest's physical address map, mirroring QEMU's `virt` machine so
//! that the device tree this crate writes also describes a QEMU guest
//! (`qemu-system-aarch64 -M virt,gic-version=3`), where it is checked.

/// GICv3 distributor.
pub const GICD_BASE: u64 = 0x0800_0000;
/// The distributor's size.
pub const GICD_SIZE: u64 = 0x1_0000;
/// GICv3 redistributors, one frame pair per vCPU.
pub const GICR_BASE: u64 = 0x080A_0000;
/// One vCPU's redistributor (RD_base plus SGI_base frames).
pub const GICR_STRIDE: u64 = 0x2_0000;
/// The space QEMU leaves for redistributors below the UART (123 vCPUs).
pub const GICR_SPACE: u64 = 0x00F6_0000;
/// The PL011 console.
pub const UART_BASE: u64 = 0x0900_0000;
/// The PL011's register window.
pub const UART_SIZE: u64 = 0x1000;
/// The UART's shared peripheral interrupt (SPI number, not INTID).
pub const UART_SPI: u32 = 1;
/// The GIC interrupt id of SPI `spi` (SPIs start at INTID 32), as
/// `hv_gic_set_spi` takes it.
pub const fn spi_intid(spi: u32) -> u32 {
    32 + spi
}
/// The first virtio-mmio transport.
pub const VIRTIO_BASE: u64 = 0x0A00_0000;
/// The distance between two virtio-mmio transports.
pub const VIRTIO_STRIDE: u64 = 0x200;
/// virtio-mmio transport `n` raises SPI `VIRTIO_SPI + n`.
pub const VIRTIO_SPI: u32 = 16;
/// QEMU's `virt` has 32 virtio-mmio transports.
pub const VIRTIO_MAX: usize = 32;
/// Guest RAM starts here.
pub const RAM_BASE: u64 = 0x4000_0000;
/// RAM ends below this (1 TiB, QEMU's high memory start without highmem).
pub const RAM_LIMIT: u64 = 0x100_0000_0000;
/// Arm's rule for the kernel image: placed 2 MiB aligned.
pub const KERNEL_ALIGN: u64 = 0x20_0000;
/// Linux's limit on the device tree blob (Documentation/arch/arm64/booting.rst).
pub const FDT_MAX: u64 = 0x20_0000;
/// The architected timer's PPIs as device-tree interrupt numbers (INTID - 16):
/// secure physical, non-secure physical, virtual, hypervisor.
pub const TIMER_PPIS: [u32; 4] = [13, 14, 11, 10];

// The windows do not overlap (checked when the crate compiles).
const _: () = {
    assert!(GICD_BASE + GICD_SIZE <= GICR_BASE);
    assert!(GICR_BASE + GICR_SPACE <= UART_BASE);
    assert!(UART_BASE + UART_SIZE <= VIRTIO_BASE);
    assert!(VIRTIO_BASE + VIRTIO_STRIDE * VIRTIO_MAX as u64 <= RAM_BASE);
    assert!(RAM_BASE.is_multiple_of(KERNEL_ALIGN));
};

/// What a machine description got wrong.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum LayoutError {
    /// No vCPU, or more than the redistributor space holds.
    #[error("{0} vCPUs: between 1 and {max} fit the GIC layout", max = max_cpus())]
    Cpus(u32),
    /// More devices than transports.
    #[error("{0} virtio devices: at most {VIRTIO_MAX} transports exist")]
    Devices(usize),
    /// RAM too small for a kernel and a device tree, or past the map's end.
    #[error("{0} MiB of RAM: between 64 MiB and {max} MiB fit", max = (RAM_LIMIT - RAM_BASE) >> 20)]
    Memory(u64),
}

/// The most vCPUs whose redistributors fit in [`GICR_SPACE`].
pub const fn max_cpus() -> u32 {
    (GICR_SPACE / GICR_STRIDE) as u32
}

/// A machine's size: vCPUs, RAM and virtio-mmio devices.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layout {
    cpus: u32,
    ram_bytes: u64,
    devices: usize,
}

impl Layout {
    /// A layout for `cpus` vCPUs, `ram_mib` MiB of RAM and `devices`
    /// virtio-mmio transports, checked against the map.
    pub fn new(cpus: u32, ram_mib: u64, devices: usize) -> Result<Self, LayoutError> {
        if cpus == 0 || cpus > max_cpus() {
            return Err(LayoutError::Cpus(cpus));
        }
        if devices > VIRTIO_MAX {
            return Err(LayoutError::Devices(devices));
        }
        let ram_bytes = ram_mib
            .checked_mul(1 << 20)
            .filter(|b| (64 << 20..=RAM_LIMIT - RAM_BASE).contains(b))
            .ok_or(LayoutError::Memory(ram_mib))?;
        Ok(Self {
            cpus,
            ram_bytes,
            devices,
        })
    }

    /// vCPUs.
    pub fn cpus(&self) -> u32 {
        self.cpus
    }

    /// RAM in bytes, from [`RAM_BASE`].
    pub fn ram_bytes(&self) -> u64 {
        self.ram_bytes
    }

    /// virtio-mmio transports in use.
    pub fn devices(&self) -> usize {
        self.devices
    }

    /// The redistributor region of all vCPUs.
    pub fn gicr_size(&self) -> u64 {
        GICR_STRIDE * u64::from(self.cpus)
    }

    /// Transport `n`'s register window and SPI, if it exists.
    pub fn virtio(&self, n: usize) -> Option<(u64, u32)> {
        (n < self.devices).then(|| {
            (
                VIRTIO_BASE + VIRTIO_STRIDE * n as u64,
                VIRTIO_SPI + n as u32,
            )
        })
    }

    /// The transport whose window holds `addr`, and the offset in it.
    pub fn virtio_at(&self, addr: u64) -> Option<(usize, u64)> {
        let off = addr.checked_sub(VIRTIO_BASE)?;
        let n = usize::try_from(off / VIRTIO_STRIDE).ok()?;
        (n < self.devices).then_some((n, off % VIRTIO_STRIDE))
    }

    /// Where the device tree goes: the last 2 MiB of RAM, so that it shares
    /// no 2 MiB block with the kernel (booting.rst).
    pub fn fdt_addr(&self) -> u64 {
        RAM_BASE + self.ram_bytes - FDT_MAX
    }

    /// The vCPU's MPIDR affinity as the device tree and PSCI name it:
    /// Aff0 holds up to 16 vCPUs per cluster (the GICv3 target-list limit),
    /// Aff1 the cluster, as QEMU's `virt` does.
    pub fn mpidr(cpu: u32) -> u64 {
        u64::from(cpu % 16) | (u64::from(cpu / 16) << 8)
    }

    /// The vCPU index of an MPIDR affinity from the guest, if it names one
    /// of this machine's vCPUs.
    pub fn cpu_of_mpidr(&self, mpidr: u64) -> Option<u32> {
        let aff = mpidr & 0xff_00ff_ffff;
        if aff & !0xffff != 0 || aff & 0xf0 != 0 {
            return None;
        }
        let cpu = u32::try_from((aff >> 8) * 16 + (aff & 0xf)).ok()?;
        (cpu < self.cpus).then_some(cpu)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_map_matches_qemu_virt() {
        let l = Layout::new(4, 512, 3).unwrap();
        assert_eq!(l.virtio(0), Some((0x0A00_0000, 16)));
        assert_eq!(l.virtio(2), Some((0x0A00_0400, 18)));
        assert_eq!(l.virtio(3), None);
        assert_eq!(l.fdt_addr(), 0x4000_0000 + (510 << 20));
        assert!(l.fdt_addr().is_multiple_of(KERNEL_ALIGN));
        assert_eq!(max_cpus(), 123);
    }

    #[test]
    fn addresses_map_back_to_transports() {
        let l = Layout::new(1, 256, 2).unwrap();
        assert_eq!(l.virtio_at(0x0A00_0000), Some((0, 0)));
        assert_eq!(l.virtio_at(0x0A00_0270), Some((1, 0x70)));
        assert_eq!(l.virtio_at(0x0A00_0400), None);
        assert_eq!(l.virtio_at(0x09FF_FFFF), None);
        assert_eq!(l.virtio_at(u64::MAX), None);
    }

    #[test]
    fn bad_sizes_are_refused_with_what_fits() {
        assert_eq!(Layout::new(0, 256, 1), Err(LayoutError::Cpus(0)));
        assert_eq!(Layout::new(124, 256, 1), Err(LayoutError::Cpus(124)));
        assert_eq!(Layout::new(1, 256, 33), Err(LayoutError::Devices(33)));
        assert_eq!(Layout::new(1, 32, 1), Err(LayoutError::Memory(32)));
        assert_eq!(
            Layout::new(1, u64::MAX, 1),
            Err(LayoutError::Memory(u64::MAX))
        );
        assert!(LayoutError::Cpus(0).to_string().contains("123"));
    }

    #[test]
    fn mpidrs_round_trip_and_foreign_ones_are_refused() {
        let l = Layout::new(40, 256, 0).unwrap();
        for cpu in 0..40 {
            assert_eq!(l.cpu_of_mpidr(Layout::mpidr(cpu)), Some(cpu));
        }
        assert_eq!(Layout::mpidr(17), 0x101);
        assert_eq!(l.cpu_of_mpidr(Layout::mpidr(40)), None);
        assert_eq!(l.cpu_of_mpidr(0x10), None);
        assert_eq!(l.cpu_of_mpidr(0x1_0000), None);
        assert_eq!(l.cpu_of_mpidr(1 << 32), None);
        // The MT and U bits of MPIDR_EL1 are not affinity.
        assert_eq!(l.cpu_of_mpidr((1 << 31) | 3), Some(3));
    }
}
