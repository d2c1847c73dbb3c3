//! The macOS backend's adapter (Hypervisor.framework, `sandbox-vmm-hvf`).
//!
//! The VMM runs vCPUs, PSCI, the GIC and the PL011 console, and
//! `sandbox-virtio` now builds for macOS, but the virtio-mmio devices are
//! not yet on the HVF bus (the root disk, the agent's vsock channel, the
//! network): a guest could boot to its root mount and no further. Booting
//! fails with this error until they are, rather than hanging until the
//! boot timeout. See docs/hvf-backend.md.

use super::{Machine, MachineSpec};
use crate::Error;

/// Starts a guest (not yet possible; see the module docs).
pub(crate) fn start(spec: MachineSpec) -> Result<Box<dyn Machine>, Error> {
    drop(spec);
    Err(Error::BackendUnavailable {
        requested: "hvf",
        reason: "the Hypervisor.framework backend is not finished: its VMM has no virtio \
                 devices (root disk, agent channel, network) on its bus yet, so no guest can \
                 reach its agent (docs/hvf-backend.md)"
            .into(),
    })
}
