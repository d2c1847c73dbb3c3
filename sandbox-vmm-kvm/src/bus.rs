//! Port and MMIO dispatch for vCPU exits: the serial port, the i8042 reset
//! line, our power-off port, and the virtio-mmio devices.

use std::io::{self, Write};
use std::sync::Mutex;

use vm_superio::serial::NoEvents;
use vm_superio::{Serial, Trigger};
use vmm_sys_util::eventfd::EventFd;

use crate::layout::*;
use crate::GuestExit;
use sandbox_virtio::mmio::MmioDevice;
use sandbox_virtio::ConsoleLog;

/// Raises the serial port's interrupt line through an irqfd.
pub struct IrqTrigger(pub EventFd);

impl Trigger for IrqTrigger {
    type E = io::Error;
    fn trigger(&self) -> io::Result<()> {
        self.0.write(1)
    }
}

/// Serial output: into the bounded console log (and to stderr when
/// `SANDBOX_KVM_CONSOLE=1`, for debugging boots).
pub struct ConsoleWriter {
    pub log: ConsoleLog,
    pub echo: bool,
}

impl Write for ConsoleWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.log.push(buf);
        if self.echo {
            let _ = io::stderr().write_all(buf);
        }
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Everything a vCPU exit can reach.
pub struct Bus {
    pub serial: Mutex<Serial<IrqTrigger, NoEvents, ConsoleWriter>>,
    pub mmio: Vec<MmioDevice>,
}

impl Bus {
    /// A port write; returns how the guest stops, if it does.
    pub fn pio_write(&self, port: u16, data: &[u8]) -> Option<GuestExit> {
        let value = data.first().copied().unwrap_or(0);
        match port {
            p if (SERIAL_PORT..SERIAL_PORT + 8).contains(&p) => {
                let mut serial = self.serial.lock().unwrap_or_else(|e| e.into_inner());
                let _ = serial.write((p - SERIAL_PORT) as u8, value);
                None
            }
            I8042_PORT if value == 0xfe => Some(GuestExit::Reboot),
            POWER_OFF_PORT => Some(GuestExit::PowerOff),
            _ => None,
        }
    }

    /// A port read.
    pub fn pio_read(&self, port: u16, data: &mut [u8]) {
        match port {
            p if (SERIAL_PORT..SERIAL_PORT + 8).contains(&p) => {
                let mut serial = self.serial.lock().unwrap_or_else(|e| e.into_inner());
                data.fill(0);
                if let Some(b) = data.first_mut() {
                    *b = serial.read((p - SERIAL_PORT) as u8);
                }
            }
            // i8042 status and data: nothing pending.
            0x60 | I8042_PORT => data.fill(0),
            _ => data.fill(0xff),
        }
    }

    fn device(&self, addr: u64) -> Option<(&MmioDevice, u64)> {
        let index = addr.checked_sub(MMIO_START)? / MMIO_SIZE;
        let dev = self.mmio.get(usize::try_from(index).ok()?)?;
        Some((dev, addr - MMIO_START - index * MMIO_SIZE))
    }
}

impl crate::run::MmioBus for Bus {
    /// An MMIO read; unmapped addresses read as all ones.
    fn mmio_read(&self, addr: u64, data: &mut [u8]) {
        match self.device(addr) {
            Some((dev, offset)) => dev.read(offset, data),
            None => data.fill(0xff),
        }
    }

    /// An MMIO write; unmapped addresses are ignored.
    fn mmio_write(&self, addr: u64, data: &[u8]) {
        if let Some((dev, offset)) = self.device(addr) {
            dev.write(offset, data);
        }
    }
}
