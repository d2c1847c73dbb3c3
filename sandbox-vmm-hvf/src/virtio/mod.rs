//! The virtio-mmio transports of an arm64 machine whose hypervisor has no
//! ioeventfds or irqfds (Hypervisor.framework): every register access is a
//! data abort the vCPU thread hands to [`VirtioBus`], a `QueueNotify`
//! write kicks the device's worker through the transport's own kick
//! descriptor, and an [`IrqPump`] thread turns the transports' interrupt
//! descriptors into calls that raise their SPIs. The transports and
//! devices are `sandbox-virtio`'s, the same the KVM VMM uses.
//!
//! Nothing here calls the hypervisor, so it is tested on Linux.

use std::io;
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::thread::JoinHandle;

use sandbox_virtio::event::{event_fd, EventFd, Events, Interest, Poller};
use sandbox_virtio::mmio::MmioDevice;
use sandbox_virtio::{GuestMemory, VirtioDevice};

use crate::layout::{self, Layout};

/// The machine's virtio-mmio transports, transport `n` at
/// `VIRTIO_BASE + n * VIRTIO_STRIDE` as the device tree says.
pub struct VirtioBus {
    layout: Layout,
    transports: Vec<MmioDevice>,
}

impl VirtioBus {
    /// Puts `devices` on transports 0, 1, ... over guest memory `mem`;
    /// returns the bus and each transport's interrupt descriptor with its
    /// GIC interrupt id, for an [`IrqPump`]. `layout` must have room for
    /// exactly them.
    pub fn new(
        layout: &Layout,
        devices: Vec<Box<dyn VirtioDevice>>,
        mem: Arc<GuestMemory>,
    ) -> io::Result<(Self, Vec<(EventFd, u32)>)> {
        let count = devices.len();
        let mismatch = || {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "{count} virtio devices for a layout of {} transports",
                    layout.devices()
                ),
            )
        };
        if count != layout.devices() {
            return Err(mismatch());
        }
        let mut transports = Vec::with_capacity(devices.len());
        let mut irqs = Vec::with_capacity(devices.len());
        for (n, device) in devices.into_iter().enumerate() {
            let (_, spi) = layout.virtio(n).ok_or_else(mismatch)?;
            let irq = event_fd()?;
            irqs.push((irq.try_clone()?, layout::spi_intid(spi)));
            transports.push(MmioDevice::new(device, mem.clone(), irq)?);
        }
        Ok((
            Self {
                layout: *layout,
                transports,
            },
            irqs,
        ))
    }

    fn slot(&self, addr: u64) -> Option<(&MmioDevice, u64)> {
        let (n, off) = self.layout.virtio_at(addr)?;
        Some((self.transports.get(n)?, off))
    }

    /// A guest load; false if no transport is at `addr`.
    pub fn read(&self, addr: u64, data: &mut [u8]) -> bool {
        match self.slot(addr) {
            Some((t, off)) => {
                t.read(off, data);
                true
            }
            None => false,
        }
    }

    /// A guest store; false if no transport is at `addr`.
    pub fn write(&self, addr: u64, data: &[u8]) -> bool {
        match self.slot(addr) {
            Some((t, off)) => {
                t.write(off, data);
                true
            }
            None => false,
        }
    }

    /// Stops every device (the machine is going away).
    pub fn shutdown(&self) {
        for t in &self.transports {
            t.shutdown();
        }
    }
}

/// A thread that raises a transport's interrupt whenever its descriptor
/// is written: what KVM's irqfds do in the kernel. Stopped and joined on
/// drop.
pub struct IrqPump {
    stop: EventFd,
    thread: Option<JoinHandle<()>>,
}

impl IrqPump {
    /// Watches `irqs` and calls `raise(intid)` for each interrupt (several
    /// writes before the thread runs make one call, as an edge-triggered
    /// line merges them).
    pub fn start(
        irqs: Vec<(EventFd, u32)>,
        raise: impl Fn(u32) + Send + 'static,
    ) -> io::Result<Self> {
        let stop = event_fd()?;
        let stop_token = irqs.len() as u64;
        let poller = Poller::new()?;
        for (i, (fd, _)) in irqs.iter().enumerate() {
            poller.add(fd.as_raw_fd(), Interest::Read, i as u64)?;
        }
        poller.add(stop.as_raw_fd(), Interest::Read, stop_token)?;
        let thread = std::thread::Builder::new()
            .name("hvf-irq".into())
            .spawn(move || {
                let mut events = Events::with_capacity(irqs.len() + 1);
                loop {
                    match poller.wait(-1, &mut events) {
                        Ok(_) => {}
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                        Err(e) => {
                            log::error!("hvf-irq: polling failed, interrupts stop: {e}");
                            return;
                        }
                    }
                    for token in events.tokens() {
                        if token == stop_token {
                            return;
                        }
                        if let Some((fd, intid)) = irqs.get(token as usize) {
                            let _ = fd.read();
                            raise(*intid);
                        }
                    }
                }
            })?;
        Ok(Self {
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for IrqPump {
    fn drop(&mut self) {
        let _ = self.stop.write(1);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests;
