//! [`EventFd`] where there is no eventfd (macOS): a non-blocking pipe. A
//! write puts 8 bytes in the pipe (a full pipe already holds a pending
//! wake-up, so it is not an error); a read empties it. The read end is the
//! descriptor to poll. Built on Linux too, for its tests.

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

/// A wake-up descriptor with vmm-sys-util's `EventFd` interface.
#[derive(Debug)]
pub struct EventFd {
    read: File,
    write: File,
}

fn set_flags(fd: RawFd) -> io::Result<()> {
    // SAFETY: fcntl on a descriptor this module owns; results checked.
    unsafe {
        let fl = libc::fcntl(fd, libc::F_GETFL);
        if fl < 0 || libc::fcntl(fd, libc::F_SETFL, fl | libc::O_NONBLOCK) < 0 {
            return Err(io::Error::last_os_error());
        }
        if libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

fn dup(f: &File) -> io::Result<File> {
    // SAFETY: F_DUPFD_CLOEXEC returns a new descriptor we own, or -1.
    let fd = unsafe { libc::fcntl(f.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is fresh and owned by nobody else.
    Ok(File::from(unsafe { OwnedFd::from_raw_fd(fd) }))
}

impl EventFd {
    /// A non-blocking, close-on-exec pipe with nothing pending.
    pub fn new() -> io::Result<Self> {
        let mut fds = [0; 2];
        // SAFETY: `fds` has room for the two descriptors pipe(2) writes.
        if unsafe { libc::pipe(fds.as_mut_ptr()) } < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: both descriptors are fresh and owned by nobody else.
        let (read, write) = unsafe { (File::from_raw_fd(fds[0]), File::from_raw_fd(fds[1])) };
        set_flags(fds[0])?;
        set_flags(fds[1])?;
        Ok(Self { read, write })
    }

    /// Adds a wake-up (the value only has to be non-zero).
    pub fn write(&self, v: u64) -> io::Result<()> {
        match (&self.write).write(&v.to_ne_bytes()) {
            Ok(_) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Takes every pending wake-up and returns how many there were; with
    /// none pending, fails with `WouldBlock` as a non-blocking eventfd does.
    pub fn read(&self) -> io::Result<u64> {
        let mut buf = [0u8; 512];
        let mut total = 0u64;
        loop {
            match (&self.read).read(&mut buf) {
                Ok(0) => break,
                Ok(n) => total += n as u64,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock && total > 0 => break,
                Err(e) => return Err(e),
            }
        }
        Ok(total.div_ceil(8))
    }

    /// Another handle on the same pipe.
    pub fn try_clone(&self) -> io::Result<Self> {
        Ok(Self {
            read: dup(&self.read)?,
            write: dup(&self.write)?,
        })
    }
}

impl AsRawFd for EventFd {
    /// The read end: readable while a wake-up is pending.
    fn as_raw_fd(&self) -> RawFd {
        self.read.as_raw_fd()
    }
}
