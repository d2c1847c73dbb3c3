//! Lock-free counters of one vsock device.

use std::sync::atomic::{AtomicU64, Ordering};

/// Counters updated by the device worker and readable at any time.
#[derive(Debug, Default)]
pub struct VsockMetrics {
    /// Connections established.
    pub connections: AtomicU64,
    /// Stream bytes delivered to the guest.
    pub to_guest_bytes: AtomicU64,
    /// Stream bytes received from the guest.
    pub from_guest_bytes: AtomicU64,
    /// Packets or chains that could not be parsed, or broke the protocol.
    pub malformed: AtomicU64,
}

impl VsockMetrics {
    pub(crate) fn inc(&self, counter: &AtomicU64) {
        self.add(counter, 1);
    }

    pub(crate) fn add(&self, counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }
}
