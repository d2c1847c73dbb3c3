//! Lock-free counters of one console device.

use std::sync::atomic::{AtomicU64, Ordering};

/// Counters updated by the device worker and readable at any time.
#[derive(Debug, Default)]
pub struct ConsoleMetrics {
    /// Bytes delivered into guest receive buffers.
    pub to_guest_bytes: AtomicU64,
    /// Bytes the guest transmitted.
    pub from_guest_bytes: AtomicU64,
    /// Descriptor chains that could not be parsed.
    pub malformed: AtomicU64,
}

impl ConsoleMetrics {
    pub(crate) fn inc(&self, counter: &AtomicU64) {
        self.add(counter, 1);
    }

    pub(crate) fn add(&self, counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    /// Reads a counter.
    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }
}
