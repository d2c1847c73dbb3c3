//! `Vm::metrics()`: one typed snapshot of a VM's counters.

use std::time::Duration;

pub use sandbox_virtio::counters::{BlockCounters, NetCounters, RngCounters, VsockCounters};
pub use sandbox_virtio::DeviceCounters;

/// A VM's counters at one moment.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct VmMetrics {
    /// Time from `boot()` to the agent's greeting.
    pub boot_time: Duration,
    /// Guest processes started through the API and not yet exited.
    pub live_processes: usize,
    /// Each virtio device by name: `blk` (the root disk), `data0`..
    /// (data disks), `vsock`, `rng`, and `net` (KVM's virtio-net; UML's
    /// network link is not a virtio device, see `network`).
    pub devices: Vec<(String, DeviceCounters)>,
    /// The network stack's counters (frames, flows, DNS), with a network.
    pub network: Option<crate::net::Stats>,
    /// Guest console bytes dropped from the bounded console log.
    pub console_dropped_bytes: u64,
}

impl VmMetrics {
    /// The counters of the device named `name`.
    pub fn device(&self, name: &str) -> Option<&DeviceCounters> {
        self.devices.iter().find(|(n, _)| n == name).map(|(_, c)| c)
    }
}
