//! A frame port over a host socket that keeps message boundaries: the
//! host end of a virtio-net device (KVM here, Hypervisor.framework on a
//! Mac) and UML's `bess` connection.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};

use tokio::io::unix::AsyncFd;
use tokio::io::Interest;

use crate::frame::{FramePort, MAX_FRAME};
use crate::pool;

/// Frames queued in each direction.
const DEPTH: usize = 256;

/// Room for one message: a frame of [`MAX_FRAME`] and one byte more, so a
/// longer message shows as longer and is dropped.
const RECV_ROOM: usize = MAX_FRAME + 1;

/// `send` flags: no SIGPIPE for a peer that went away (macOS has no such
/// flag; a datagram socket raises no SIGPIPE there).
#[cfg(target_os = "linux")]
const NO_SIGNAL: libc::c_int = libc::MSG_NOSIGNAL;
#[cfg(not(target_os = "linux"))]
const NO_SIGNAL: libc::c_int = 0;

/// A frame port over a connected socket that keeps message boundaries
/// (one Ethernet frame per message): a UML `bess` link or the host end of
/// a virtio-net device (`SOCK_SEQPACKET` on Linux, `SOCK_DGRAM` on macOS). Must be called inside a tokio runtime. Messages longer than
/// [`MAX_FRAME`] are dropped.
pub fn frame_socket_port(conn: OwnedFd) -> io::Result<FramePort> {
    set_nonblocking(&conn)?;
    let conn = std::sync::Arc::new(register(conn, Interest::READABLE | Interest::WRITABLE)?);
    let (ours, theirs) = FramePort::pair(DEPTH);
    let FramePort {
        rx: mut to_guest,
        tx: from_guest,
    } = theirs;
    let reader = conn.clone();
    tokio::spawn(async move {
        // Large frames keep the buffer they were received into (pooled,
        // given back once the stack consumed them); small ones are copied
        // out and the buffer stays for the next message.
        let mut buf = pool::empty(RECV_ROOM);
        loop {
            let n = match reader
                .async_io(Interest::READABLE, |fd| recv_into(fd.as_raw_fd(), &mut buf))
                .await
            {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            if n > MAX_FRAME {
                continue;
            }
            let frame = if n >= pool::LARGE {
                std::mem::replace(&mut buf, pool::empty(RECV_ROOM))
            } else {
                buf[..n].to_vec()
            };
            if from_guest.send(frame).await.is_err() {
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
            pool::give(f);
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

pub(crate) fn register(fd: OwnedFd, interest: Interest) -> io::Result<AsyncFd<OwnedFd>> {
    // SAFETY: an OwnedFd's descriptor stays open and the same for as long
    // as the AsyncFd owns it.
    unsafe { AsyncFd::register_with_interest(fd, interest) }.map_err(|e| e.into_parts().1)
}

/// Receives one message into `buf` (replacing its contents), up to its
/// capacity; a longer message comes back cut to the capacity.
fn recv_into(fd: RawFd, buf: &mut Vec<u8>) -> io::Result<usize> {
    buf.clear();
    let room = buf.spare_capacity_mut();
    // SAFETY: `room` is valid for writes of its length.
    let n = unsafe { libc::recv(fd, room.as_mut_ptr().cast(), room.len(), 0) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: recv initialized the first `n` bytes of the spare capacity
    // (n <= its length).
    unsafe { buf.set_len(n as usize) };
    Ok(n as usize)
}

fn send(fd: RawFd, buf: &[u8]) -> io::Result<usize> {
    // SAFETY: buf is valid for reads of its length.
    let n = unsafe { libc::send(fd, buf.as_ptr().cast(), buf.len(), NO_SIGNAL) };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

impl crate::Network {
    /// Starts the stack on the host end of a virtio-net device (a
    /// connected socket that keeps frame boundaries,
    /// `sandbox_virtio::net::seqpacket_pair`; inside a tokio runtime).
    pub fn start_seqpacket(
        fd: std::os::fd::OwnedFd,
        opts: crate::NetworkOptions,
    ) -> Result<Self, crate::NetError> {
        let port = frame_socket_port(fd).map_err(|source| crate::NetError::Io {
            what: "attaching the frame socket".into(),
            source,
        })?;
        Self::start(port, opts)
    }
}

#[cfg(test)]
mod tests {
    use std::os::fd::FromRawFd;

    use super::*;

    fn pair(kind: libc::c_int) -> (OwnedFd, OwnedFd) {
        let mut fds = [0; 2];
        // SAFETY: socketpair writes two descriptors into `fds`.
        let rc = unsafe { libc::socketpair(libc::AF_UNIX, kind, 0, fds.as_mut_ptr()) };
        assert_eq!(rc, 0, "{}", io::Error::last_os_error());
        // SAFETY: both are fresh descriptors we own.
        unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) }
    }

    /// Seqpacket (the Linux device link) and datagram (macOS's) pairs
    /// both carry whole frames each way, the largest included.
    #[tokio::test]
    async fn frames_cross_a_seqpacket_or_datagram_pair_whole() {
        for kind in [libc::SOCK_SEQPACKET, libc::SOCK_DGRAM] {
            let (ours, device) = pair(kind);
            let size: libc::c_int = 1 << 20;
            // SAFETY: setsockopt with an int that lives across the call.
            unsafe {
                libc::setsockopt(
                    device.as_raw_fd(),
                    libc::SOL_SOCKET,
                    libc::SO_SNDBUF,
                    (&raw const size).cast(),
                    std::mem::size_of::<libc::c_int>() as libc::socklen_t,
                );
            }
            set_nonblocking(&device).unwrap();
            let mut port = frame_socket_port(ours).unwrap();
            for len in [60, 1514, 9000, 20000, 60, 65000] {
                let frame: Vec<u8> = (0..len).map(|i| i as u8).collect();
                assert_eq!(send(device.as_raw_fd(), &frame).unwrap(), len);
                let got = port.rx.recv().await.unwrap();
                assert_eq!(got, frame, "kind {kind}, {len} bytes from the device");
                port.tx.send(frame.clone()).await.unwrap();
                let mut buf = Vec::with_capacity(65536);
                let n = loop {
                    match recv_into(device.as_raw_fd(), &mut buf) {
                        Ok(n) => break n,
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                            tokio::task::yield_now().await
                        }
                        Err(e) => panic!("{e}"),
                    }
                };
                assert_eq!(
                    &buf[..n],
                    &frame[..],
                    "kind {kind}, {len} bytes to the device"
                );
            }
        }
    }
}
