//! The device side of the transport split: what a device offers and what it
//! is given when the driver activates it.

use std::fs::File;
use std::io::{self, Write};
use std::sync::Arc;

use virtio_queue::Queue;

use crate::GuestMemory;

/// Errors activating a device.
#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    /// The driver activated a different number of queues.
    #[error("expected {expected} queues, driver set up {got}")]
    QueueCount {
        /// Queues the device has.
        expected: usize,
        /// Queues the driver configured.
        got: usize,
    },
    /// A queue's addresses or size do not fit guest memory.
    #[error("queue {0} is not valid for guest memory")]
    InvalidQueue(usize),
    /// The device's worker thread could not start.
    #[error("cannot start the device worker")]
    Worker(#[source] io::Error),
    /// The device's configuration is not valid (says why).
    #[error("{0}")]
    Config(String),
}

/// Signals the guest that a queue has new used buffers.
pub trait Interrupt: Send + Sync {
    /// Raises the interrupt of queue `queue`.
    fn signal_used_queue(&self, queue: usize);
    /// The device failed (its worker panicked) and serves no more
    /// requests: the transport tells the driver (virtio-mmio sets
    /// `DEVICE_NEEDS_RESET` and raises a configuration interrupt).
    fn device_failed(&self) {}
}

/// The descriptor a driver writes to when it adds buffers to a queue (an
/// eventfd, or a pipe under UML). Reading it clears the notification.
pub struct QueueKick(pub File);

impl QueueKick {
    /// Consumes pending notifications without blocking.
    pub fn drain(&self) {
        let mut buf = [0u8; 64];
        // Non-blocking eventfds return 8 bytes at most; pipes may hold more.
        while let Ok(n) = io::Read::read(&mut &self.0, &mut buf) {
            if n < buf.len() {
                break;
            }
        }
    }
}

/// An [`Interrupt`] that writes an 8-byte counter to one descriptor per
/// queue: an eventfd (KVM irqfd) or a pipe (UML's call fd).
pub struct FdInterrupt {
    fds: Vec<Option<File>>,
    on_failure: Option<FailureReport>,
}

/// How a transport without a status register reports a failed device (for
/// vhost-user: ending the session, which the front end sees as the device
/// going away).
pub type FailureReport = Arc<dyn Fn() + Send + Sync>;

impl FdInterrupt {
    /// One optional descriptor per queue.
    pub fn new(fds: Vec<Option<File>>) -> Self {
        Self {
            fds,
            on_failure: None,
        }
    }

    /// Reports a failed device through `report`.
    pub fn on_failure(mut self, report: Option<FailureReport>) -> Self {
        self.on_failure = report;
        self
    }
}

impl Interrupt for FdInterrupt {
    fn signal_used_queue(&self, queue: usize) {
        if let Some(Some(fd)) = self.fds.get(queue) {
            // A full pipe means an interrupt is already pending: ignore EAGAIN.
            let _ = (&*fd).write(&1u64.to_ne_bytes());
        }
    }

    fn device_failed(&self) {
        if let Some(report) = &self.on_failure {
            report();
        }
    }
}

/// What a device receives when the driver sets it to DRIVER_OK.
pub struct ActivationContext {
    /// Guest memory, shared with the transport.
    pub mem: Arc<GuestMemory>,
    /// The configured queues, in queue-index order.
    pub queues: Vec<Queue>,
    /// One kick descriptor per queue.
    pub kicks: Vec<QueueKick>,
    /// How to signal the guest.
    pub interrupt: Arc<dyn Interrupt>,
    /// Features the driver acknowledged.
    pub acked_features: u64,
}

impl ActivationContext {
    /// Checks the driver set up `expected` queues that fit guest memory.
    pub fn validate(&self, expected: usize) -> Result<(), DeviceError> {
        self.validate_optional(expected, expected)
    }

    /// Like [`Self::validate`], but queues from index `required` on may be
    /// left unset (not ready): a front end that serves them itself.
    pub fn validate_optional(&self, expected: usize, required: usize) -> Result<(), DeviceError> {
        if self.queues.len() != expected || self.kicks.len() != expected {
            return Err(DeviceError::QueueCount {
                expected,
                got: self.queues.len(),
            });
        }
        for (i, q) in self.queues.iter().enumerate() {
            if i >= required && !virtio_queue::QueueT::ready(q) {
                continue;
            }
            if !virtio_queue::QueueT::is_valid(q, &*self.mem) {
                return Err(DeviceError::InvalidQueue(i));
            }
        }
        Ok(())
    }
}

/// A virtio device, independent of its transport.
pub trait VirtioDevice: Send {
    /// The virtio device id (see [`crate::device_id`]).
    fn device_type(&self) -> u32;
    /// Maximum size of each queue; the length is the number of queues.
    fn queue_max_sizes(&self) -> &[u16];
    /// How many queues, from index 0, a vhost-user front end must set up
    /// before the device starts; the others are optional (QEMU's
    /// vhost-user-vsock keeps the event queue to itself). All by default.
    fn required_queues(&self) -> usize {
        self.queue_max_sizes().len()
    }
    /// Feature bits offered to the driver.
    fn features(&self) -> u64;
    /// Reads device config space at `offset`; bytes past its end read as zero.
    fn read_config(&self, offset: u64, data: &mut [u8]);
    /// Starts serving the queues.
    fn activate(&mut self, ctx: ActivationContext) -> Result<(), DeviceError>;
    /// Stops serving and returns the queues (for their indices), if active.
    fn reset(&mut self) -> Option<Vec<Queue>>;
    /// Stops serving like [`VirtioDevice::reset`] but keeps the device's
    /// host-side state (open disk, connections, held frames), so that a
    /// later `activate` with the returned queues goes on where it stopped
    /// (a snapshot of a running VM). Devices without such state need not
    /// implement it.
    fn quiesce(&mut self) -> Option<Vec<Queue>> {
        self.reset()
    }
    /// A block device that is not serving (quiesced or never activated)
    /// copies its whole disk into `out`, sparsely, and returns the bytes
    /// written; a virtio-fs device serving a memory file system copies
    /// that file system's image. Other devices return `None`.
    fn save_disk(&mut self, _out: &File) -> Option<io::Result<u64>> {
        None
    }
    /// A quiesced device's own host-side state that a restore needs to
    /// serve the guest again (a virtio-fs server's inode and handle ids),
    /// as text; `None` for devices without any.
    fn save_state(&self) -> Option<String> {
        None
    }
    /// A reader of this device's counters, if it keeps any.
    fn counters(&self) -> Option<crate::CounterReader> {
        None
    }
}

/// Copies `config` bytes from `offset` into `data`, zero-filling the rest.
pub(crate) fn read_config_bytes(config: &[u8], offset: u64, data: &mut [u8]) {
    data.fill(0);
    let Ok(start) = usize::try_from(offset) else {
        return;
    };
    if let Some(src) = config.get(start..) {
        let n = src.len().min(data.len());
        data[..n].copy_from_slice(&src[..n]);
    }
}
