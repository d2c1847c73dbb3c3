//! A guest TCP connection as a tokio byte stream, read and written straight
//! from its smoltcp socket buffers.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use smoltcp::iface::SocketHandle;
use smoltcp::socket::tcp::{Socket, State};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::OwnedSemaphorePermit;

use super::Shared;

/// One TCP connection of a smoltcp interface (on the host stack: one
/// accepted guest connection). Dropping it closes the connection (a FIN
/// once the send buffer drains).
pub struct SocketStream {
    shared: Arc<Shared>,
    handle: SocketHandle,
    _permit: Option<OwnedSemaphorePermit>,
}

impl SocketStream {
    pub(crate) fn new(
        shared: Arc<Shared>,
        handle: SocketHandle,
        permit: Option<OwnedSemaphorePermit>,
    ) -> Self {
        Self {
            shared,
            handle,
            _permit: permit,
        }
    }

    fn with<R>(&self, f: impl FnOnce(&mut Socket<'static>) -> R) -> R {
        let mut inner = self.shared.lock();
        f(inner.sockets.get_mut::<Socket<'static>>(self.handle))
    }
}

impl SocketStream {
    /// Waits until the handshake is done (`Ok`, also when the peer already
    /// closed its side), the connection was reset (`ConnectionRefused`) or
    /// `timeout` passed (`TimedOut`).
    pub async fn established(&self, timeout: std::time::Duration) -> io::Result<()> {
        let wait = std::future::poll_fn(|cx| {
            self.with(|s| match s.state() {
                State::Closed => Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::ConnectionRefused,
                    "reset",
                ))),
                st if handshaking(st) => {
                    s.register_send_waker(cx.waker());
                    Poll::Pending
                }
                _ => Poll::Ready(Ok(())),
            })
        });
        tokio::time::timeout(timeout, wait)
            .await
            .unwrap_or_else(|_| Err(io::Error::new(io::ErrorKind::TimedOut, "no handshake")))
    }
}

fn handshaking(s: State) -> bool {
    matches!(s, State::Listen | State::SynSent | State::SynReceived)
}

impl AsyncRead for SocketStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let r = self.with(|s| {
            if s.can_recv() {
                let n = s
                    .recv_slice(buf.initialize_unfilled())
                    .map_err(|e| io::Error::new(io::ErrorKind::ConnectionReset, e.to_string()))?;
                buf.advance(n);
                Ok(true)
            } else if !s.may_recv() && !handshaking(s.state()) {
                Ok(true) // end of stream
            } else {
                s.register_recv_waker(cx.waker());
                Ok(false)
            }
        });
        match r {
            Ok(true) => {
                // The window opened: let the stack tell the guest.
                self.shared.wake.notify_one();
                Poll::Ready(Ok(()))
            }
            Ok(false) => Poll::Pending,
            Err(e) => Poll::Ready(Err(e)),
        }
    }
}

impl AsyncWrite for SocketStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let r = self.with(|s| {
            if s.can_send() {
                s.send_slice(data)
                    .map(Some)
                    .map_err(|e| io::Error::new(io::ErrorKind::BrokenPipe, e.to_string()))
            } else if !s.may_send() && !handshaking(s.state()) {
                Err(io::Error::new(
                    io::ErrorKind::BrokenPipe,
                    "the guest closed the connection",
                ))
            } else {
                s.register_send_waker(cx.waker());
                Ok(None)
            }
        });
        match r {
            Ok(Some(n)) => {
                self.shared.wake.notify_one();
                Poll::Ready(Ok(n))
            }
            Ok(None) => Poll::Pending,
            Err(e) => Poll::Ready(Err(e)),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // Closing a socket that is still handshaking would discard the
        // connection (the replayed SYN may not even be processed yet):
        // wait for the handshake, then send the FIN.
        let waiting = self.with(|s| {
            if handshaking(s.state()) {
                s.register_send_waker(cx.waker());
                true
            } else {
                s.close();
                false
            }
        });
        if waiting {
            return Poll::Pending;
        }
        self.shared.wake.notify_one();
        Poll::Ready(Ok(()))
    }
}

impl Drop for SocketStream {
    fn drop(&mut self) {
        let mut inner = self.shared.lock();
        let s = inner.sockets.get_mut::<Socket<'static>>(self.handle);
        // Unread data: reset, as closing a Linux socket with unread data
        // does; else a graceful FIN once the send buffer drains.
        if s.recv_queue() > 0 {
            s.abort();
        } else {
            s.close();
        }
        inner.orphans.push(self.handle);
        drop(inner);
        self.shared.wake.notify_one();
    }
}
