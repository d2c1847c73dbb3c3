//! Lock-free counters of one console device.

use crate::metrics::Counter;

/// Counters updated by the device worker and readable at any time.
#[derive(Debug, Default)]
pub struct ConsoleMetrics {
    /// Bytes delivered into guest receive buffers.
    pub to_guest_bytes: Counter,
    /// Bytes the guest transmitted.
    pub from_guest_bytes: Counter,
    /// Descriptor chains that could not be parsed.
    pub malformed: Counter,
}
