//! The virtio-mmio transport (virtio 1.x, register layout version 2) in
//! front of any [`VirtioDevice`]: the same device logic the UML backend
//! serves over vhost-user.
//!
//! Queue notifications arrive on ioeventfds (KVM signals them without a
//! vCPU exit); interrupts leave through an irqfd after setting the
//! `InterruptStatus` bit the driver reads and acknowledges.

use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use crate::event::EventFd;
use virtio_queue::{Queue, QueueT};

use crate::{ActivationContext, GuestMemory, Interrupt, QueueKick, VirtioDevice};

const MAGIC: u32 = 0x7472_6976; // "virt"
const VERSION: u32 = 2;
const VENDOR: u32 = 0x5342_5800; // "SBX"

/// Offset of the `QueueNotify` register (where ioeventfds are attached).
pub const REG_QUEUE_NOTIFY: u64 = virtio_bindings::virtio_mmio::VIRTIO_MMIO_QUEUE_NOTIFY as u64;
use virtio_bindings::virtio_config::{
    VIRTIO_CONFIG_S_ACKNOWLEDGE as STATUS_ACKNOWLEDGE, VIRTIO_CONFIG_S_DRIVER as STATUS_DRIVER,
    VIRTIO_CONFIG_S_DRIVER_OK as STATUS_DRIVER_OK, VIRTIO_CONFIG_S_FAILED as STATUS_FAILED,
    VIRTIO_CONFIG_S_FEATURES_OK as STATUS_FEATURES_OK,
    VIRTIO_CONFIG_S_NEEDS_RESET as STATUS_NEEDS_RESET,
};
use virtio_bindings::virtio_mmio::VIRTIO_MMIO_INT_VRING as INT_USED_RING;

/// Sets the used-ring bit, then raises the irqfd.
struct MmioInterrupt {
    status: Arc<AtomicU32>,
    irq: EventFd,
    failed: Arc<AtomicBool>,
}

impl Interrupt for MmioInterrupt {
    fn signal_used_queue(&self, _queue: usize) {
        self.status.fetch_or(INT_USED_RING, Ordering::AcqRel);
        let _ = self.irq.write(1);
    }

    fn device_failed(&self) {
        self.failed.store(true, Ordering::Release);
        self.status.fetch_or(
            virtio_bindings::virtio_mmio::VIRTIO_MMIO_INT_CONFIG,
            Ordering::AcqRel,
        );
        let _ = self.irq.write(1);
    }
}

struct State {
    device: Box<dyn VirtioDevice>,
    status: u32,
    features_sel: u32,
    driver_features_sel: u32,
    driver_features: u64,
    queue_sel: u32,
    queues: Vec<Queue>,
    active: bool,
    /// Active, with its worker stopped for a snapshot.
    quiesced: bool,
    config_generation: u32,
}

/// One device's 4 KiB register window.
pub struct MmioDevice {
    state: Mutex<State>,
    mem: Arc<GuestMemory>,
    interrupt_status: Arc<AtomicU32>,
    /// Set when the device's worker failed: the status reads
    /// `DEVICE_NEEDS_RESET` until the driver resets the device.
    failed: Arc<AtomicBool>,
    irq: EventFd,
    /// One per queue; registered with KVM on `QueueNotify` (datamatch =
    /// queue index) by the VM.
    kicks: Vec<EventFd>,
}

fn fresh_queues(device: &dyn VirtioDevice) -> Vec<Queue> {
    device
        .queue_max_sizes()
        .iter()
        .filter_map(|max| Queue::new(*max).ok())
        .collect()
}

impl MmioDevice {
    /// Wraps `device`; `irq` is the irqfd of its interrupt line.
    pub fn new(
        device: Box<dyn VirtioDevice>,
        mem: Arc<GuestMemory>,
        irq: EventFd,
    ) -> std::io::Result<Self> {
        let queues = fresh_queues(&*device);
        let kicks = (0..queues.len())
            .map(|_| crate::event::event_fd())
            .collect::<std::io::Result<Vec<_>>>()?;
        Ok(Self {
            state: Mutex::new(State {
                device,
                status: 0,
                features_sel: 0,
                driver_features_sel: 0,
                driver_features: 0,
                queue_sel: 0,
                queues,
                active: false,
                quiesced: false,
                config_generation: 0,
            }),
            mem,
            interrupt_status: Arc::new(AtomicU32::new(0)),
            failed: Arc::default(),
            irq,
            kicks,
        })
    }

    /// The queue notification eventfds, in queue order.
    pub fn kicks(&self) -> &[EventFd] {
        &self.kicks
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A register or config-space read.
    pub fn read(&self, offset: u64, data: &mut [u8]) {
        let s = self.lock();
        if offset >= 0x100 {
            s.device.read_config(offset - 0x100, data);
            return;
        }
        let q = s.queues.get(s.queue_sel as usize);
        let value = match offset {
            0x00 => MAGIC,
            0x04 => VERSION,
            0x08 => s.device.device_type(),
            0x0c => VENDOR,
            0x10 => {
                let f = s.device.features();
                match s.features_sel {
                    0 => f as u32,
                    1 => (f >> 32) as u32,
                    _ => 0,
                }
            }
            0x34 => q.map_or(0, |q| u32::from(q.max_size())),
            0x44 => q.map_or(0, |q| u32::from(q.ready())),
            0x60 => self.interrupt_status.load(Ordering::Acquire),
            0x70 if self.failed.load(Ordering::Acquire) => s.status | STATUS_NEEDS_RESET,
            0x70 => s.status,
            0xfc => s.config_generation,
            _ => 0,
        };
        let bytes = value.to_le_bytes();
        let n = data.len().min(4);
        data[..n].copy_from_slice(&bytes[..n]);
        data[n..].fill(0);
    }

    /// A register write. Malformed driver behaviour is ignored or marks the
    /// device failed; it never panics.
    pub fn write(&self, offset: u64, data: &[u8]) {
        let mut s = self.lock();
        if offset >= 0x100 {
            // Config space writes are not used by our devices.
            return;
        }
        if data.len() != 4 {
            return;
        }
        let v = u32::from_le_bytes([data[0], data[1], data[2], data[3]]);
        let sel = s.queue_sel as usize;
        let editable = !s.active;
        match offset {
            0x14 => s.features_sel = v,
            0x20 => {
                let shift = match s.driver_features_sel {
                    0 => 0,
                    1 => 32,
                    _ => return,
                };
                let mask = 0xffff_ffffu64 << shift;
                let offered = s.device.features();
                s.driver_features =
                    (s.driver_features & !mask) | ((u64::from(v) << shift) & offered);
            }
            0x24 => s.driver_features_sel = v,
            0x30 => s.queue_sel = v,
            0x38 if editable => {
                if let Some(q) = s.queues.get_mut(sel) {
                    q.set_size(v as u16);
                }
            }
            0x44 if editable => {
                if let Some(q) = s.queues.get_mut(sel) {
                    q.set_ready(v == 1);
                }
            }
            REG_QUEUE_NOTIFY => {
                // Only reached when the ioeventfd is not registered.
                if let Some(k) = self.kicks.get(v as usize) {
                    let _ = k.write(1);
                }
            }
            0x64 => {
                self.interrupt_status.fetch_and(!v, Ordering::AcqRel);
            }
            0x70 => self.set_status(&mut s, v),
            0x80 | 0x84 | 0x90 | 0x94 | 0xa0 | 0xa4 if editable => {
                if let Some(q) = s.queues.get_mut(sel) {
                    let (low, high) = if offset.is_multiple_of(8) {
                        (Some(v), None)
                    } else {
                        (None, Some(v))
                    };
                    match offset & !0xf {
                        0x80 => q.set_desc_table_address(low, high),
                        0x90 => q.set_avail_ring_address(low, high),
                        _ => q.set_used_ring_address(low, high),
                    }
                }
            }
            _ => {}
        }
    }

    fn set_status(&self, s: &mut State, v: u32) {
        if v == 0 {
            self.reset(s);
            return;
        }
        if v & STATUS_FAILED != 0 {
            s.status |= STATUS_FAILED;
            return;
        }
        // FEATURES_OK only sticks if VERSION_1 was accepted.
        let mut v = v;
        if v & STATUS_FEATURES_OK != 0 && s.driver_features & crate::VIRTIO_F_VERSION_1 == 0 {
            v &= !STATUS_FEATURES_OK;
        }
        let needed = STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK;
        if v & STATUS_DRIVER_OK != 0 && !s.active {
            if v & needed != needed {
                s.status = v & !STATUS_DRIVER_OK;
                return;
            }
            match self.activate(s) {
                Ok(()) => s.active = true,
                Err(e) => {
                    log::warn!(
                        "virtio-mmio: activating device type {}: {e}",
                        s.device.device_type()
                    );
                    s.status = v | STATUS_NEEDS_RESET;
                    return;
                }
            }
        }
        s.status = v;
    }

    fn activate(&self, s: &mut State) -> Result<(), String> {
        if !s.queues.iter().all(|q| q.ready()) {
            return Err("not every queue is ready".into());
        }
        let mut kicks = Vec::new();
        for k in &self.kicks {
            // SAFETY: dup returns a new descriptor we own (or -1, checked).
            let fd = unsafe { libc::dup(k.as_raw_fd()) };
            if fd < 0 {
                return Err(std::io::Error::last_os_error().to_string());
            }
            // SAFETY: `fd` is a fresh descriptor owned by nobody else.
            kicks.push(QueueKick(unsafe { File::from_raw_fd(fd) }));
        }
        let irq = self.irq.try_clone().map_err(|e| e.to_string())?;
        let ctx = ActivationContext {
            mem: self.mem.clone(),
            queues: std::mem::take(&mut s.queues),
            kicks,
            interrupt: Arc::new(MmioInterrupt {
                status: self.interrupt_status.clone(),
                irq,
                failed: self.failed.clone(),
            }),
            acked_features: s.driver_features,
        };
        let result = s.device.activate(ctx).map_err(|e| e.to_string());
        if result.is_err() {
            s.queues = fresh_queues(&*s.device);
        }
        result
    }

    fn reset(&self, s: &mut State) {
        if s.active {
            let _ = s.device.reset();
        }
        s.queues = fresh_queues(&*s.device);
        s.active = false;
        s.quiesced = false;
        s.status = 0;
        s.driver_features = 0;
        s.features_sel = 0;
        s.driver_features_sel = 0;
        s.queue_sel = 0;
        s.config_generation = s.config_generation.wrapping_add(1);
        self.interrupt_status.store(0, Ordering::Release);
        self.failed.store(false, Ordering::Release);
    }

    /// Stops the device (VM shutdown).
    pub fn shutdown(&self) {
        let mut s = self.lock();
        self.reset(&mut s);
    }
}

mod snapshot;
pub use snapshot::{MmioState, QueueSnapshot};

#[cfg(test)]
mod tests;
