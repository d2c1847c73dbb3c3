//! Typed snapshots of device counters, and [`CounterReader`], which reads
//! them from a device's live metrics after the device moved into its
//! transport (a vhost-user server thread, the mmio bus).

use std::sync::Arc;
use std::time::Duration;

/// One device's counters at one moment.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum DeviceCounters {
    /// virtio-blk.
    Block(BlockCounters),
    /// virtio-vsock.
    Vsock(VsockCounters),
    /// virtio-net.
    Net(NetCounters),
    /// virtio-rng.
    Rng(RngCounters),
}

/// virtio-blk counters.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BlockCounters {
    /// Requests completed (any status).
    pub requests: u64,
    /// Bytes the guest read.
    pub read_bytes: u64,
    /// Bytes the guest wrote.
    pub write_bytes: u64,
    /// Requests answered with an I/O error.
    pub io_errors: u64,
    /// Descriptor chains that could not be parsed.
    pub malformed: u64,
    /// Flushes completed.
    pub flushes: u64,
    /// Total time spent flushing.
    pub flush_time: Duration,
}

impl BlockCounters {
    /// Mean flush latency, if any flush happened.
    pub fn mean_flush(&self) -> Option<Duration> {
        u32::try_from(self.flushes)
            .ok()
            .filter(|n| *n > 0)
            .map(|n| self.flush_time / n)
    }
}

/// virtio-vsock counters.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct VsockCounters {
    /// Connections established.
    pub connections: u64,
    /// Stream bytes delivered to the guest.
    pub to_guest_bytes: u64,
    /// Stream bytes received from the guest.
    pub from_guest_bytes: u64,
    /// Times a connection's guest credit ran out.
    pub credit_stalls: u64,
    /// Packets or chains that broke the protocol.
    pub malformed: u64,
}

/// virtio-net counters.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NetCounters {
    /// Frames the guest sent.
    pub tx_frames: u64,
    /// Frames delivered to the guest.
    pub rx_frames: u64,
    /// Frames dropped (malformed, oversized, no room).
    pub dropped: u64,
}

/// virtio-rng counters.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RngCounters {
    /// Random bytes written into guest buffers.
    pub bytes: u64,
    /// Requests that were not writable guest buffers.
    pub malformed: u64,
}

/// Reads one device's counters; cheap to clone, and valid while and after
/// the device runs.
#[derive(Clone)]
pub struct CounterReader(Arc<dyn Fn() -> DeviceCounters + Send + Sync>);

impl CounterReader {
    /// A reader calling `f`.
    pub fn new(f: impl Fn() -> DeviceCounters + Send + Sync + 'static) -> Self {
        Self(Arc::new(f))
    }

    /// The counters now.
    pub fn read(&self) -> DeviceCounters {
        (self.0)()
    }
}

/// Reads every named reader.
pub fn read_named(readers: &[(String, CounterReader)]) -> Vec<(String, DeviceCounters)> {
    readers.iter().map(|(n, r)| (n.clone(), r.read())).collect()
}

impl std::fmt::Debug for CounterReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.read().fmt(f)
    }
}
