//! Lock-free counters of one block device.

use std::sync::atomic::{AtomicU64, Ordering};

/// Counters updated by the device worker and readable at any time.
#[derive(Debug, Default)]
pub struct BlockMetrics {
    /// Requests completed (any status).
    pub requests: AtomicU64,
    /// Bytes read by the guest.
    pub read_bytes: AtomicU64,
    /// Bytes written by the guest.
    pub write_bytes: AtomicU64,
    /// Requests answered with an I/O error.
    pub io_errors: AtomicU64,
    /// Descriptor chains that could not be parsed.
    pub malformed: AtomicU64,
}

impl BlockMetrics {
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
