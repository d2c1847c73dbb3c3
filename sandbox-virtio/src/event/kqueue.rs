//! [`super::Poller`] where there is no epoll (macOS): kqueue. Edge-triggered
//! interests use `EV_CLEAR`, which reports a filter once per change as
//! `EPOLLET` does. Type-checked here (no macOS host); the same calls serve
//! the BSDs.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::ptr;

use super::Interest;

pub(super) struct Sys(OwnedFd);

pub(super) struct SysEvents {
    buf: Vec<libc::kevent>,
    len: usize,
}

// SAFETY: a kevent is !Send only for its `udata` pointer, which here holds
// a caller's token as an integer and is never dereferenced.
unsafe impl Send for SysEvents {}

fn change(fd: RawFd, filter: i16, flags: u16, token: u64) -> libc::kevent {
    // SAFETY: kevent is plain data; all-zero is a valid value.
    let mut ev: libc::kevent = unsafe { std::mem::zeroed() };
    ev.ident = fd as usize;
    ev.filter = filter;
    ev.flags = flags;
    ev.udata = token as usize as *mut libc::c_void;
    ev
}

impl SysEvents {
    pub fn with_capacity(n: usize) -> Self {
        Self {
            // SAFETY: as in `change`.
            buf: vec![unsafe { std::mem::zeroed() }; n],
            len: 0,
        }
    }

    pub fn tokens(&self) -> impl Iterator<Item = u64> + '_ {
        self.buf[..self.len].iter().map(|e| e.udata as usize as u64)
    }
}

impl Sys {
    pub fn new() -> io::Result<Self> {
        // SAFETY: kqueue(2) takes no arguments; the result is checked.
        let fd = unsafe { libc::kqueue() };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` is a fresh descriptor owned by nobody else.
        let owned = unsafe { OwnedFd::from_raw_fd(fd) };
        // SAFETY: fcntl on the descriptor just made.
        if unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) } < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Self(owned))
    }

    fn apply(&self, changes: &[libc::kevent]) -> io::Result<()> {
        // SAFETY: `changes` is a valid array of its length; no event list.
        let r = unsafe {
            libc::kevent(
                self.0.as_raw_fd(),
                changes.as_ptr(),
                changes.len() as libc::c_int,
                ptr::null_mut(),
                0,
                ptr::null(),
            )
        };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    pub fn add(&self, fd: RawFd, interest: Interest, token: u64) -> io::Result<()> {
        let add = libc::EV_ADD | libc::EV_ENABLE;
        match interest {
            Interest::Read => self.apply(&[change(fd, libc::EVFILT_READ, add, token)]),
            Interest::ReadEdge => {
                self.apply(&[change(fd, libc::EVFILT_READ, add | libc::EV_CLEAR, token)])
            }
            Interest::ReadWriteEdge => self.apply(&[
                change(fd, libc::EVFILT_READ, add | libc::EV_CLEAR, token),
                change(fd, libc::EVFILT_WRITE, add | libc::EV_CLEAR, token),
            ]),
        }
    }

    pub fn delete(&self, fd: RawFd) -> io::Result<()> {
        // One filter may not be registered (ENOENT): delete each on its own.
        let read = self.apply(&[change(fd, libc::EVFILT_READ, libc::EV_DELETE, 0)]);
        let write = self.apply(&[change(fd, libc::EVFILT_WRITE, libc::EV_DELETE, 0)]);
        read.or(write)
    }

    pub fn wait(&self, timeout_ms: i32, events: &mut SysEvents) -> io::Result<usize> {
        events.len = 0;
        let ts;
        let timeout = if timeout_ms < 0 {
            ptr::null()
        } else {
            ts = libc::timespec {
                tv_sec: libc::time_t::from(timeout_ms / 1000),
                tv_nsec: libc::c_long::from(timeout_ms % 1000) * 1_000_000,
            };
            &ts as *const libc::timespec
        };
        // SAFETY: the event list is a valid array of its length, `timeout`
        // null or a live timespec.
        let n = unsafe {
            libc::kevent(
                self.0.as_raw_fd(),
                ptr::null(),
                0,
                events.buf.as_mut_ptr(),
                events.buf.len() as libc::c_int,
                timeout,
            )
        };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        events.len = n as usize;
        Ok(events.len)
    }

    pub fn fd(&self) -> RawFd {
        self.0.as_raw_fd()
    }
}
