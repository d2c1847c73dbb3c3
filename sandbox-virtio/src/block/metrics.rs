//! Lock-free counters of one block device.

use crate::metrics::Counter;

/// Counters updated by the device worker and readable at any time.
#[derive(Debug, Default)]
pub struct BlockMetrics {
    /// Requests completed (any status).
    pub requests: Counter,
    /// Bytes read by the guest.
    pub read_bytes: Counter,
    /// Bytes written by the guest.
    pub write_bytes: Counter,
    /// Requests answered with an I/O error.
    pub io_errors: Counter,
    /// Descriptor chains that could not be parsed.
    pub malformed: Counter,
    /// Flush requests completed.
    pub flushes: Counter,
    /// Time spent in those flushes, in microseconds.
    pub flush_micros: Counter,
}
