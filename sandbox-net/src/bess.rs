//! UML's vector `bess` transport: the guest kernel connects a
//! `SOCK_SEQPACKET` Unix socket to a path we listen on and exchanges one
//! Ethernet frame per message.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use tokio::io::Interest;

use crate::frame::FramePort;
use crate::frame_socket::{frame_socket_port, register};

/// A listening seqpacket socket for one guest's `bess` interface.
pub struct BessListener {
    fd: OwnedFd,
    path: PathBuf,
}

fn cvt(rc: libc::c_int) -> io::Result<libc::c_int> {
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

impl BessListener {
    /// Binds `path` (which must not exist).
    pub fn bind(path: &Path) -> io::Result<Self> {
        // SAFETY: plain socket(2) call; the result is checked.
        let fd = cvt(unsafe {
            libc::socket(
                libc::AF_UNIX,
                libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK,
                0,
            )
        })?;
        // SAFETY: fd is a fresh descriptor we own.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let bytes = path.as_os_str().as_encoded_bytes();
        // SAFETY: sockaddr_un is plain old data; all-zero is valid.
        let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
        if bytes.len() >= addr.sun_path.len() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("socket path too long: {}", path.display()),
            ));
        }
        addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
        for (d, s) in addr.sun_path.iter_mut().zip(bytes) {
            *d = *s as libc::c_char;
        }
        let len = std::mem::size_of::<libc::sockaddr_un>() as libc::socklen_t;
        // SAFETY: addr is a valid sockaddr_un of `len` bytes.
        cvt(unsafe { libc::bind(fd.as_raw_fd(), (&raw const addr).cast(), len) })?;
        // SAFETY: listen on our own socket.
        cvt(unsafe { libc::listen(fd.as_raw_fd(), 1) })?;
        Ok(Self {
            fd,
            path: path.to_path_buf(),
        })
    }

    /// The path the guest connects to.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Waits for the guest to connect and returns its frame port (inside a
    /// tokio runtime). Frames longer than [`crate::MAX_FRAME`] are dropped.
    pub async fn accept(self) -> io::Result<FramePort> {
        let fd = self.fd.try_clone()?;
        let listener = register(fd, Interest::READABLE)?;
        let conn = loop {
            let mut guard = listener.readable().await?;
            // SAFETY: accept4 on our listening socket; null address is allowed.
            let rc = unsafe {
                libc::accept4(
                    listener.as_raw_fd(),
                    std::ptr::null_mut(),
                    std::ptr::null_mut(),
                    libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK,
                )
            };
            if rc >= 0 {
                // SAFETY: a fresh descriptor we own.
                break unsafe { OwnedFd::from_raw_fd(rc) };
            }
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::WouldBlock {
                guard.clear_ready();
                continue;
            }
            return Err(e);
        };
        let _ = std::fs::remove_file(&self.path);
        frame_socket_port(conn)
    }
}

impl Drop for BessListener {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

impl crate::Network {
    /// Starts the stack for a UML guest that will connect to `listener`
    /// (inside a tokio runtime).
    pub fn start_bess(
        listener: BessListener,
        opts: crate::NetworkOptions,
    ) -> Result<Self, crate::NetError> {
        Self::start_on(listener.accept(), opts)
    }
}
