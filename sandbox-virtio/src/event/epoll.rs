//! [`super::Poller`] on Linux: epoll.

use std::io;
use std::os::fd::{AsRawFd, RawFd};

use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};

use super::Interest;

pub(super) struct Sys(Epoll);

pub(super) struct SysEvents {
    buf: Vec<EpollEvent>,
    len: usize,
}

impl SysEvents {
    pub fn with_capacity(n: usize) -> Self {
        Self {
            buf: vec![EpollEvent::default(); n],
            len: 0,
        }
    }

    pub fn tokens(&self) -> impl Iterator<Item = u64> + '_ {
        self.buf[..self.len].iter().map(EpollEvent::data)
    }
}

impl Sys {
    pub fn new() -> io::Result<Self> {
        Epoll::new().map(Self)
    }

    pub fn add(&self, fd: RawFd, interest: Interest, token: u64) -> io::Result<()> {
        let events = match interest {
            Interest::Read => EventSet::IN,
            Interest::ReadEdge => EventSet::IN | EventSet::EDGE_TRIGGERED,
            Interest::ReadWriteEdge => EventSet::IN | EventSet::OUT | EventSet::EDGE_TRIGGERED,
        };
        self.0
            .ctl(ControlOperation::Add, fd, EpollEvent::new(events, token))
    }

    pub fn delete(&self, fd: RawFd) -> io::Result<()> {
        self.0
            .ctl(ControlOperation::Delete, fd, EpollEvent::default())
    }

    pub fn wait(&self, timeout_ms: i32, events: &mut SysEvents) -> io::Result<usize> {
        events.len = 0;
        events.len = self.0.wait(timeout_ms, &mut events.buf)?;
        Ok(events.len)
    }

    pub fn fd(&self) -> RawFd {
        self.0.as_raw_fd()
    }
}
