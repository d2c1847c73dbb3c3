//! Wake-up descriptors and a readiness poller, one interface per platform.
//!
//! On Linux these are vmm-sys-util's eventfd (which KVM's ioeventfds and
//! irqfds need) and epoll. Elsewhere (macOS) an [`EventFd`] is a
//! non-blocking pipe with the same methods, and the [`Poller`] is kqueue,
//! whose `EV_CLEAR` gives the edge-triggered reports epoll's `EPOLLET`
//! gives. Devices, workers and transports use only this module, so the
//! device logic builds for both.

use std::io;
use std::os::fd::RawFd;

#[cfg(target_os = "linux")]
mod epoll;
#[cfg(not(target_os = "linux"))]
mod kqueue;
#[cfg(any(test, not(target_os = "linux")))]
mod pipe;

#[cfg(target_os = "linux")]
pub use vmm_sys_util::eventfd::EventFd;

#[cfg(not(target_os = "linux"))]
pub use pipe::EventFd;

#[cfg(target_os = "linux")]
use epoll::{Sys, SysEvents};
#[cfg(not(target_os = "linux"))]
use kqueue::{Sys, SysEvents};

/// Makes a non-blocking [`EventFd`] with a zero count.
pub fn event_fd() -> io::Result<EventFd> {
    #[cfg(target_os = "linux")]
    return EventFd::new(libc::EFD_NONBLOCK);
    #[cfg(not(target_os = "linux"))]
    return EventFd::new();
}

/// What a [`Poller`] reports for a descriptor.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Interest {
    /// Readable, for as long as it stays readable (level-triggered): queue
    /// kicks and stop events, which the loop drains.
    Read,
    /// Became readable (edge-triggered): host descriptors a device may
    /// leave unread while the guest has no buffers.
    ReadEdge,
    /// Became readable or writable (edge-triggered).
    ReadWriteEdge,
}

/// A reusable buffer for [`Poller::wait`]'s reports.
pub struct Events(SysEvents);

impl Events {
    /// Room for `n` reports per wait (at least one).
    pub fn with_capacity(n: usize) -> Self {
        Self(SysEvents::with_capacity(n.max(1)))
    }

    /// The tokens of the last wait's reports.
    pub fn tokens(&self) -> impl Iterator<Item = u64> + '_ {
        self.0.tokens()
    }
}

/// A set of descriptors, each with a caller's token, waited on together.
/// The poller's own descriptor ([`Poller::fd`]) is readable while any of
/// them is ready, so one poller can be watched by another.
pub struct Poller(Sys);

impl Poller {
    /// An empty set.
    pub fn new() -> io::Result<Self> {
        Sys::new().map(Self)
    }

    /// Watches `fd` for `interest`, reporting `token`.
    pub fn add(&self, fd: RawFd, interest: Interest, token: u64) -> io::Result<()> {
        self.0.add(fd, interest, token)
    }

    /// Stops watching `fd` (closing it does too, on both platforms).
    pub fn delete(&self, fd: RawFd) -> io::Result<()> {
        self.0.delete(fd)
    }

    /// Waits up to `timeout_ms` (-1: without limit, 0: not at all) and
    /// fills `events` with what is ready (at most its capacity); returns
    /// how many. (kqueue may report a descriptor watched for reading and
    /// writing twice.)
    pub fn wait(&self, timeout_ms: i32, events: &mut Events) -> io::Result<usize> {
        self.0.wait(timeout_ms, &mut events.0)
    }

    /// The poller's own descriptor.
    pub fn fd(&self) -> RawFd {
        self.0.fd()
    }
}

#[cfg(test)]
mod tests;
