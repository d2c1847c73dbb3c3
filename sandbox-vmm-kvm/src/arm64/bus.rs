//! MMIO dispatch for arm64 vCPU exits: the PL011 console and the
//! virtio-mmio transports, at the addresses of QEMU's `virt` machine
//! (`sandbox_vmm_hvf::layout`, shared with the Hypervisor.framework VMM).

use std::io::Write;
use std::sync::{Arc, Mutex};

use kvm_bindings::{KVM_ARM_IRQ_TYPE_SHIFT, KVM_ARM_IRQ_TYPE_SPI};
use kvm_ioctls::VmFd;
use sandbox_virtio::mmio::MmioDevice;
use sandbox_virtio::ConsoleLog;
use sandbox_vmm_hvf::layout::{self, Layout};
use sandbox_vmm_hvf::pl011::Pl011;

/// The KVM_IRQ_LINE number of SPI `spi` (INTID 32 + `spi`).
pub fn spi_line(spi: u32) -> u32 {
    (KVM_ARM_IRQ_TYPE_SPI << KVM_ARM_IRQ_TYPE_SHIFT) | (32 + spi)
}

/// Everything an arm64 vCPU exit can reach.
pub struct Bus {
    pub layout: Layout,
    pub uart: Mutex<Pl011>,
    pub console: ConsoleLog,
    /// Also copy console output to stderr (`SANDBOX_KVM_CONSOLE=1`).
    pub echo: bool,
    /// For the UART's level-triggered interrupt line.
    pub vm: Arc<VmFd>,
    pub mmio: Vec<MmioDevice>,
}

impl Bus {
    fn uart_offset(addr: u64) -> Option<u64> {
        let off = addr.checked_sub(layout::UART_BASE)?;
        (off < layout::UART_SIZE).then_some(off)
    }

    /// Drives the UART's interrupt line to its current level.
    fn uart_irq(&self, uart: &Pl011) {
        let _ = self.vm.set_irq_line(spi_line(layout::UART_SPI), uart.irq());
    }
}

impl crate::run::MmioBus for Bus {
    /// An MMIO read; unmapped addresses read as all ones.
    fn mmio_read(&self, addr: u64, data: &mut [u8]) {
        if let Some(off) = Self::uart_offset(addr) {
            let mut uart = self.uart.lock().unwrap_or_else(|e| e.into_inner());
            let value = uart.read(off).to_le_bytes();
            for (d, v) in data
                .iter_mut()
                .zip(value.iter().chain(std::iter::repeat(&0)))
            {
                *d = *v;
            }
            self.uart_irq(&uart);
            return;
        }
        match self.layout.virtio_at(addr) {
            Some((n, off)) if n < self.mmio.len() => self.mmio[n].read(off, data),
            _ => data.fill(0xff),
        }
    }

    /// An MMIO write; unmapped addresses are ignored.
    fn mmio_write(&self, addr: u64, data: &[u8]) {
        if let Some(off) = Self::uart_offset(addr) {
            let mut bytes = [0u8; 4];
            for (b, d) in bytes.iter_mut().zip(data) {
                *b = *d;
            }
            let mut uart = self.uart.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(byte) = uart.write(off, u32::from_le_bytes(bytes)) {
                self.console.push(&[byte]);
                if self.echo {
                    let _ = std::io::stderr().write_all(&[byte]);
                }
            }
            self.uart_irq(&uart);
            return;
        }
        if let Some((n, off)) = self.layout.virtio_at(addr) {
            if let Some(dev) = self.mmio.get(n) {
                dev.write(off, data);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn an_spi_line_carries_the_type_and_intid() {
        assert_eq!(super::spi_line(1), (1 << 24) | 33);
    }
}
