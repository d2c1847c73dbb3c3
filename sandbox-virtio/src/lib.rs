//! Virtio device logic, written once against `virtio-queue` and `vm-memory`
//! and reused by every backend.
//!
//! A device implements [`VirtioDevice`]: it advertises features and config
//! space and, at activation, is handed its queues, their kick descriptors and
//! an [`Interrupt`] to signal the guest. It never sees the transport. Two
//! transports own devices: [`vhost_user`] (User-Mode Linux's `virtio_uml`, or
//! any vhost-user front end) and [`mmio`] (in-process virtio-mmio, for the KVM
//! VMM).
//!
//! Devices: [`block::Block`] (virtio-blk over a [`sandbox_rootfs::Disk`]) and
//! [`vsock::Vsock`] (virtio-vsock, the agent's control
//! channel; host connections surface as Unix socket pairs) and
//! [`net::Net`] (virtio-net whose host side is a seqpacket socket of
//! Ethernet frames, fed to `sandbox-net`) and [`rng::Rng`] (virtio-rng from
//! the host's `getrandom`).
//!
//! On macOS the devices and the virtio-mmio transport build on
//! [`event`]'s pipe and kqueue; virtio-fs ([`fs`]: fuse-backend-rs's
//! passthrough is Linux-only) and [`vhost_user`] (the UML and QEMU front
//! ends) are Linux-only, and the seccomp allow-lists are empty there (no
//! seccomp).

pub mod block;
mod console_log;
pub mod counters;
mod device;
pub mod event;
#[cfg(target_os = "linux")]
pub mod fs;
#[cfg(all(feature = "fuzzing", target_os = "linux"))]
#[doc(hidden)]
pub mod fuzzing;
pub mod metrics;
pub mod mmio;
pub mod net;
pub mod rng;
pub mod seccomp;
pub mod sparse;
#[cfg(test)]
mod testutil;
#[cfg(target_os = "linux")]
pub mod vhost_user;
pub mod vsock;
mod worker;

pub use console_log::{last_lines, ConsoleLog};
pub use counters::{CounterReader, DeviceCounters};
pub use device::{ActivationContext, DeviceError, FdInterrupt, Interrupt, QueueKick, VirtioDevice};

/// Guest memory as devices see it.
pub type GuestMemory = vm_memory::GuestMemoryMmap<()>;

/// Virtio device ids (virtio spec 5), from `virtio-bindings`.
pub mod device_id {
    use virtio_bindings::virtio_ids;
    /// virtio-net.
    pub const NET: u32 = virtio_ids::VIRTIO_ID_NET;
    /// virtio-blk.
    pub const BLOCK: u32 = virtio_ids::VIRTIO_ID_BLOCK;
    /// virtio-rng (entropy source).
    pub const RNG: u32 = virtio_ids::VIRTIO_ID_RNG;
    /// virtio-vsock.
    pub const VSOCK: u32 = virtio_ids::VIRTIO_ID_VSOCK;
    /// virtio-fs.
    pub const FS: u32 = virtio_ids::VIRTIO_ID_FS;
}

/// The feature bit `bit` as a mask.
pub(crate) const fn feature(bit: u32) -> u64 {
    1 << bit
}

/// `VIRTIO_F_VERSION_1`.
pub const VIRTIO_F_VERSION_1: u64 = feature(virtio_bindings::virtio_config::VIRTIO_F_VERSION_1);
