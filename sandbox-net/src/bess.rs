//! UML's vector `bess` transport: the guest kernel connects a
//! `SOCK_SEQPACKET` Unix socket to a path we listen on and exchanges one
//! Ethernet frame per message.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};

use tokio::io::unix::AsyncFd;
use tokio::io::Interest;

use crate::frame::{FramePort, MAX_FRAME};

/// Frames queued in each direction.
const DEPTH: usize = 256;

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
    /// tokio runtime). Frames longer than [`MAX_FRAME`] are dropped.
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
        seqpacket_port(conn)
    }
}

/// A frame port over a connected `SOCK_SEQPACKET` socket (one Ethernet
/// frame per message): a UML `bess` link, or the host end of a virtio-net
/// device. Must be called inside a tokio runtime. Messages longer than
/// [`MAX_FRAME`] are dropped.
pub fn seqpacket_port(conn: OwnedFd) -> io::Result<FramePort> {
    set_nonblocking(&conn)?;
    let conn = std::sync::Arc::new(register(conn, Interest::READABLE | Interest::WRITABLE)?);
    let (ours, theirs) = FramePort::pair(DEPTH);
    let FramePort {
        rx: mut to_guest,
        tx: from_guest,
    } = theirs;
    let reader = conn.clone();
    tokio::spawn(async move {
        let mut buf = vec![0u8; 65536];
        loop {
            let n = match reader
                .async_io(Interest::READABLE, |fd| recv(fd.as_raw_fd(), &mut buf))
                .await
            {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            if n > MAX_FRAME {
                continue;
            }
            if from_guest.send(buf[..n].to_vec()).await.is_err() {
                return;
            }
        }
    });
    tokio::spawn(async move {
        while let Some(f) = to_guest.recv().await {
            if conn
                .async_io(Interest::WRITABLE, |fd| send(fd.as_raw_fd(), &f))
                .await
                .is_err()
            {
                return;
            }
        }
    });
    Ok(ours)
}

fn set_nonblocking(fd: &OwnedFd) -> io::Result<()> {
    // SAFETY: fcntl on a descriptor we own; no memory arguments.
    let flags = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GETFL) };
    if flags < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: as above.
    let rc = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETFL, flags | libc::O_NONBLOCK) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

impl Drop for BessListener {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

fn register(fd: OwnedFd, interest: Interest) -> io::Result<AsyncFd<OwnedFd>> {
    // SAFETY: an OwnedFd's descriptor stays open and the same for as long
    // as the AsyncFd owns it.
    unsafe { AsyncFd::register_with_interest(fd, interest) }.map_err(|e| e.into_parts().1)
}

fn recv(fd: RawFd, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: buf is valid for writes of its length.
    let n = unsafe { libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), 0) };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

fn send(fd: RawFd, buf: &[u8]) -> io::Result<usize> {
    // SAFETY: buf is valid for reads of its length.
    let n = unsafe { libc::send(fd, buf.as_ptr().cast(), buf.len(), libc::MSG_NOSIGNAL) };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
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

    /// Starts the stack on the host end of a virtio-net device (a
    /// connected seqpacket socket; inside a tokio runtime).
    pub fn start_seqpacket(
        fd: std::os::fd::OwnedFd,
        opts: crate::NetworkOptions,
    ) -> Result<Self, crate::NetError> {
        let port = seqpacket_port(fd).map_err(|source| crate::NetError::Io {
            what: "attaching the frame socket".into(),
            source,
        })?;
        Self::start(port, opts)
    }
}
