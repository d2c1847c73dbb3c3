//! Non-blocking reads and signal-safe blocking writes on the host stream.

use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;

/// Reads up to `max` bytes without blocking: `Ok(None)` if nothing is ready,
/// `Ok(Some(empty))` at end of stream.
pub(super) fn recv_nonblocking(s: &UnixStream, max: usize) -> io::Result<Option<Vec<u8>>> {
    let mut buf = vec![0u8; max];
    loop {
        // SAFETY: `buf` is valid for `max` writable bytes and the fd is open.
        let n = unsafe {
            libc::recv(
                s.as_raw_fd(),
                buf.as_mut_ptr().cast(),
                max,
                libc::MSG_DONTWAIT,
            )
        };
        if n >= 0 {
            buf.truncate(n as usize);
            return Ok(Some(buf));
        }
        let err = io::Error::last_os_error();
        match err.kind() {
            io::ErrorKind::Interrupted => continue,
            io::ErrorKind::WouldBlock => return Ok(None),
            _ => return Err(err),
        }
    }
}

/// Writes all of `data`, blocking while the peer is slow; never raises
/// SIGPIPE when the peer is gone.
pub(super) fn send_all(s: &UnixStream, mut data: &[u8]) -> io::Result<()> {
    while !data.is_empty() {
        // SAFETY: `data` is valid for its length and the fd is open.
        let n = unsafe {
            libc::send(
                s.as_raw_fd(),
                data.as_ptr().cast(),
                data.len(),
                libc::MSG_NOSIGNAL,
            )
        };
        if n < 0 {
            let err = io::Error::last_os_error();
            if err.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(err);
        }
        data = &data[n as usize..];
    }
    Ok(())
}
