//! Upstream TCP dials that skip the reactor when the handshake is already
//! done.
//!
//! A non-blocking `connect(2)` to an address of the host itself (loopback,
//! the host's own interfaces: local proxies, model gateways, test origins)
//! returns `EINPROGRESS` although the kernel finished the handshake inside
//! the call: the SYN and the listener's SYN-ACK are processed as the SYN
//! is sent, and the connecting socket takes the SYN-ACK (and sends its
//! ACK) when `connect` releases the socket lock, before it returns.
//! `tokio::net::TcpStream::connect` then still waits for the reactor to
//! report the socket writable, one scheduler round (a worker's
//! `epoll_wait` and a wake-up) on the path of every guest connection,
//! whose SYN-ACK waits for the dial. [`tcp`] asks the socket directly
//! with a zero-timeout `poll(2)` first and only falls back to the reactor
//! while the handshake is really in flight.

use std::io;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;

use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::TcpStream;

/// Connects to `dst`: an established stream, or the connect's error
/// (`ConnectionRefused` for a reset).
pub(crate) async fn tcp(dst: SocketAddr) -> io::Result<TcpStream> {
    // close-on-exec is socket2's default.
    let sock = Socket::new(Domain::for_address(dst), Type::STREAM, Some(Protocol::TCP))?;
    sock.set_nonblocking(true)?;
    match sock.connect(&dst.into()) {
        Ok(()) => return TcpStream::from_std(sock.into()),
        Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
        Err(e) => return Err(e),
    }
    if writable_now(&sock)? {
        if let Some(e) = sock.take_error()? {
            return Err(e);
        }
        return TcpStream::from_std(sock.into());
    }
    let stream = TcpStream::from_std(sock.into())?;
    stream.writable().await?;
    if let Some(e) = stream.take_error()? {
        return Err(e);
    }
    Ok(stream)
}

/// Whether the connecting `sock` finished (or failed) its handshake, not
/// waiting.
fn writable_now(sock: &Socket) -> io::Result<bool> {
    let mut fd = libc::pollfd {
        fd: sock.as_raw_fd(),
        events: libc::POLLOUT,
        revents: 0,
    };
    loop {
        // SAFETY: one valid pollfd for the duration of the call; timeout 0.
        let n = unsafe { libc::poll(&mut fd, 1, 0) };
        if n >= 0 {
            return Ok(n == 1 && fd.revents & (libc::POLLOUT | libc::POLLERR | libc::POLLHUP) != 0);
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn loopback_dial_is_established_and_carries_bytes() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let mut s = tcp(addr).await.unwrap();
        assert_eq!(s.peer_addr().unwrap(), addr);
        let (mut a, _) = l.accept().await.unwrap();
        s.write_all(b"ping").await.unwrap();
        let mut buf = [0u8; 4];
        a.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"ping");
    }

    /// The premise of the fast path: on Linux a loopback handshake is
    /// done when `connect(2)` returns `EINPROGRESS`.
    #[cfg(target_os = "linux")]
    #[test]
    fn a_loopback_handshake_is_done_inside_connect() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let sock = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
        sock.set_nonblocking(true).unwrap();
        let e = sock.connect(&addr.into()).expect_err("non-blocking");
        assert_eq!(e.raw_os_error(), Some(libc::EINPROGRESS));
        assert!(writable_now(&sock).unwrap());
        assert!(sock.take_error().unwrap().is_none());
    }

    #[tokio::test]
    async fn a_refused_dial_is_connection_refused() {
        // A port that was just free: nothing listens there.
        let addr = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let e = tcp(addr).await.expect_err("nothing listens");
        assert_eq!(e.kind(), io::ErrorKind::ConnectionRefused, "{e}");
    }

    #[test]
    fn a_handshake_in_flight_waits_for_the_reactor() {
        // A listener whose accept queue is full drops further SYNs, so the
        // second dial is still in SYN_SENT when connect(2) returns: the
        // reactor path. Accepting the first frees the queue and the SYN's
        // retransmission (after about 1 s) completes the second.
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let sock = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
            sock.bind(&"127.0.0.1:0".parse::<SocketAddr>().unwrap().into())
                .unwrap();
            sock.listen(0).unwrap();
            let l: std::net::TcpListener = sock.into();
            let addr = l.local_addr().unwrap();
            let _first = tcp(addr).await.unwrap();
            let second = tokio::spawn(tcp(addr));
            tokio::time::sleep(Duration::from_millis(200)).await;
            assert!(!second.is_finished(), "the queue was full");
            let _accepted = l.accept().unwrap();
            let second = tokio::time::timeout(Duration::from_secs(10), second)
                .await
                .expect("the retransmitted SYN was accepted")
                .unwrap()
                .unwrap();
            assert_eq!(second.peer_addr().unwrap(), addr);
        });
    }
}
