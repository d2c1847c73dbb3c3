//! Saving and restoring a virtio-mmio device's transport state: registers
//! and queue positions. The device's host side (disk, connections) is the
//! device's own business; see [`crate::VirtioDevice::quiesce`].

use std::sync::atomic::Ordering;
use std::sync::Arc;

use crate::event::EventFd;
use serde::{Deserialize, Serialize};
use virtio_queue::{Queue, QueueState};

use super::{MmioDevice, State};
use crate::{GuestMemory, VirtioDevice};

/// One queue's configuration and ring positions.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueSnapshot {
    pub max_size: u16,
    pub size: u16,
    pub ready: bool,
    pub desc_table: u64,
    pub avail_ring: u64,
    pub used_ring: u64,
    pub next_avail: u16,
    pub next_used: u16,
    pub event_idx_enabled: bool,
}

impl From<&Queue> for QueueSnapshot {
    fn from(q: &Queue) -> Self {
        let s = q.state();
        Self {
            max_size: s.max_size,
            size: s.size,
            ready: s.ready,
            desc_table: s.desc_table,
            avail_ring: s.avail_ring,
            used_ring: s.used_ring,
            next_avail: s.next_avail,
            next_used: s.next_used,
            event_idx_enabled: s.event_idx_enabled,
        }
    }
}

impl QueueSnapshot {
    fn to_queue(self) -> Result<Queue, String> {
        Queue::try_from(QueueState {
            max_size: self.max_size,
            next_avail: self.next_avail,
            next_used: self.next_used,
            event_idx_enabled: self.event_idx_enabled,
            size: self.size,
            ready: self.ready,
            desc_table: self.desc_table,
            avail_ring: self.avail_ring,
            used_ring: self.used_ring,
        })
        .map_err(|e| format!("a saved queue is not valid: {e:?}"))
    }
}

/// A virtio-mmio device's registers and queues.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MmioState {
    pub device_type: u32,
    pub status: u32,
    pub features_sel: u32,
    pub driver_features_sel: u32,
    pub driver_features: u64,
    pub queue_sel: u32,
    /// The driver had set `DRIVER_OK` and the device was serving.
    pub active: bool,
    pub config_generation: u32,
    pub interrupt_status: u32,
    pub queues: Vec<QueueSnapshot>,
    /// The device's own state ([`crate::VirtioDevice::save_state`]),
    /// which the restoring side hands to the device it builds.
    #[serde(default)]
    pub device_state: Option<String>,
}

impl MmioDevice {
    /// Stops the device's worker, keeping its host-side state, and returns
    /// the transport and queue state. The guest must be paused (it then
    /// queues nothing new, and what the worker took is answered before it
    /// stops). [`MmioDevice::unquiesce`] serves the queues again.
    pub fn quiesce(&self) -> MmioState {
        let mut s = self.lock();
        if s.active && !s.quiesced {
            s.queues = s.device.quiesce().unwrap_or_default();
            s.quiesced = true;
        }
        self.state_of(&s)
    }

    /// Copies a quiesced block device's disk into `out` (see
    /// [`VirtioDevice::save_disk`]); `None` for other devices.
    pub fn save_disk(&self, out: &std::fs::File) -> Option<std::io::Result<u64>> {
        let mut s = self.lock();
        if s.active && !s.quiesced {
            return Some(Err(std::io::Error::other(
                "the device is serving: quiesce it first",
            )));
        }
        s.device.save_disk(out)
    }

    /// Serves a quiesced device's queues again.
    pub fn unquiesce(&self) -> Result<(), String> {
        let mut s = self.lock();
        if !s.quiesced {
            return Ok(());
        }
        s.quiesced = false;
        self.activate(&mut s)
    }

    fn state_of(&self, s: &State) -> MmioState {
        MmioState {
            device_type: s.device.device_type(),
            status: s.status,
            features_sel: s.features_sel,
            driver_features_sel: s.driver_features_sel,
            driver_features: s.driver_features,
            queue_sel: s.queue_sel,
            active: s.active,
            config_generation: s.config_generation,
            interrupt_status: self.interrupt_status.load(Ordering::Acquire),
            queues: s.queues.iter().map(QueueSnapshot::from).collect(),
            device_state: s.device.save_state(),
        }
    }

    /// A device in the state `state` was saved in, over restored guest
    /// memory: an active device starts serving its queues at once (from
    /// the saved positions), and a pending interrupt is raised again.
    pub fn restore(
        device: Box<dyn VirtioDevice>,
        mem: Arc<GuestMemory>,
        irq: EventFd,
        state: &MmioState,
    ) -> Result<Self, String> {
        if device.device_type() != state.device_type {
            return Err(format!(
                "the snapshot has device type {} here, the machine type {}",
                state.device_type,
                device.device_type()
            ));
        }
        if device.queue_max_sizes().len() != state.queues.len() {
            return Err(format!(
                "device type {} has {} queues, the snapshot {}",
                state.device_type,
                device.queue_max_sizes().len(),
                state.queues.len()
            ));
        }
        let this = Self::new(device, mem, irq).map_err(|e| e.to_string())?;
        {
            let mut s = this.lock();
            s.status = state.status;
            s.features_sel = state.features_sel;
            s.driver_features_sel = state.driver_features_sel;
            s.driver_features = state.driver_features & s.device.features();
            s.queue_sel = state.queue_sel;
            s.config_generation = state.config_generation;
            s.queues = state
                .queues
                .iter()
                .map(|q| q.to_queue())
                .collect::<Result<_, _>>()?;
            this.interrupt_status
                .store(state.interrupt_status, Ordering::Release);
            if state.active {
                this.activate(&mut s)?;
                s.active = true;
            }
        }
        if state.interrupt_status != 0 {
            let _ = this.irq.write(1);
        }
        Ok(this)
    }
}
