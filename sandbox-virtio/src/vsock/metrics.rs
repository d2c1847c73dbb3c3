//! Lock-free counters of one vsock device.

use crate::metrics::Counter;

/// Counters updated by the device worker and readable at any time.
#[derive(Debug, Default)]
pub struct VsockMetrics {
    /// Connections established.
    pub connections: Counter,
    /// Stream bytes delivered to the guest.
    pub to_guest_bytes: Counter,
    /// Stream bytes received from the guest.
    pub from_guest_bytes: Counter,
    /// Packets or chains that could not be parsed, or broke the protocol.
    pub malformed: Counter,
    /// Times a connection's guest credit ran out (the host had to wait for
    /// the guest to read).
    pub credit_stalls: Counter,
}
