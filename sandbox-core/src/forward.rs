//! Reaching guest services from the host: [`crate::Vm::forward_tcp`]
//! listens on a host address and carries each accepted connection to a
//! guest TCP port over the agent link (vsock on KVM, the control channel
//! on UML), so it works with or without a guest network.
//!
//! Each connection is one request on the link: bytes to the guest travel
//! like a process's stdin, bytes from it like its stdout, under the same
//! credit windows, so a slow side blocks the other instead of growing host
//! memory (at most [`sandbox_protocol::INITIAL_WINDOW`] per direction per
//! connection is in flight). Half-closes travel both ways.

use std::net::SocketAddr;
use std::time::Duration;

use sandbox_protocol::HostMsg;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;

use crate::client::{AbortOnDrop, Ended, Link};
use crate::process::{self, Console};
use crate::Error;

/// Options of a port forward.
#[derive(Clone, Copy, Debug, Default)]
pub struct ForwardOptions {
    non_loopback: bool,
}

impl ForwardOptions {
    /// Allows a host address other than loopback: the guest service
    /// becomes reachable from other machines. Off by default.
    pub fn allow_non_loopback(mut self) -> Self {
        self.non_loopback = true;
        self
    }
}

/// A guest TCP port exposed on a host address. Dropping it (or
/// [`Forward::close`]) stops listening and resets its open connections.
#[derive(Debug)]
pub struct Forward {
    local: SocketAddr,
    guest_port: u16,
    task: tokio::task::JoinHandle<()>,
}

impl Forward {
    /// The host address it listens on (with the port the system chose
    /// when asked for port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// The guest port it reaches.
    pub fn guest_port(&self) -> u16 {
        self.guest_port
    }

    /// Stops listening and resets the open connections.
    pub fn close(self) {}
}

impl Drop for Forward {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Binds `host` and starts accepting (on the calling runtime).
pub(crate) fn start(
    link: Link,
    ended: Ended,
    console: Console,
    host: SocketAddr,
    guest_port: u16,
    options: ForwardOptions,
) -> Result<Forward, Error> {
    if guest_port == 0 {
        return Err(Error::InvalidConfig(
            "forward_tcp: guest port 0 is not a port a guest service listens on".into(),
        ));
    }
    if !host.ip().is_loopback() && !options.non_loopback {
        return Err(Error::InvalidConfig(format!(
            "forward_tcp: {host} is not a loopback address; exposing a guest port to other \
             machines must be asked for with ForwardOptions::allow_non_loopback()"
        )));
    }
    let listener = std::net::TcpListener::bind(host)
        .and_then(|l| {
            l.set_nonblocking(true)?;
            Ok(l)
        })
        .map_err(|e| Error::InvalidConfig(format!("forward_tcp: cannot listen on {host}: {e}")))?;
    let local = listener
        .local_addr()
        .map_err(|e| Error::InvalidConfig(format!("forward_tcp: {host}: {e}")))?;
    let listener = TcpListener::from_std(listener).map_err(|e| {
        Error::InvalidConfig(format!(
            "forward_tcp needs a Tokio runtime with I/O enabled: {e}"
        ))
    })?;
    let task = tokio::spawn(accept_loop(listener, link, ended, console, guest_port));
    Ok(Forward {
        local,
        guest_port,
        task,
    })
}

async fn accept_loop(
    listener: TcpListener,
    link: Link,
    mut ended: Ended,
    console: Console,
    port: u16,
) {
    // Aborting this task drops the set, which aborts every connection.
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((socket, _)) => {
                    connections.spawn(connection(socket, link.clone(), console.clone(), port));
                }
                Err(e) => {
                    // Out of descriptors and the like: wait instead of spinning.
                    log::warn!("forward to guest port {port}: accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
            // The guest is gone: stop listening, so new connections are refused.
            _ = guest_ended(&mut ended) => return,
        }
    }
}

async fn guest_ended(ended: &mut Ended) {
    let _ = ended.wait_for(|e| *e).await;
}

/// Carries one host connection to the guest port until both sides are done.
async fn connection(socket: TcpStream, link: Link, console: Console, port: u16) {
    let Ok(req) = link.register() else {
        return;
    };
    let id = req.id;
    // Reset the guest side if this task is aborted (the forward dropped).
    let mut guard = AbortOnDrop::new(link.clone(), id);
    let label = format!("guest port {port}");
    let (state, mut to_guest, mut from_guest) =
        process::connection(req, label, link.clone(), console);
    if link.send(HostMsg::Connect { id, port }).is_err() || state.opened().await.is_err() {
        // No listener in the guest (or no guest): the host connection
        // is closed at once by dropping it.
        guard.disarm();
        return;
    }
    let _ = socket.set_nodelay(true);
    let (mut from_host, mut to_host) = socket.into_split();
    let down = async {
        match tokio::io::copy(&mut from_guest, &mut to_host).await {
            Ok(_) => {
                let _ = to_host.shutdown().await;
            }
            // The host side reset: reset the guest side too.
            Err(_) => guard.abort(),
        }
    };
    let up = async {
        match tokio::io::copy(&mut from_host, &mut to_guest).await {
            Ok(_) => {
                let _ = to_guest.shutdown().await;
            }
            Err(_) => guard.abort(),
        }
    };
    // Host-to-guest stops when the guest closed the connection; the
    // guest's last bytes are still written to the host.
    let up_until_closed = async {
        tokio::select! {
            _ = up => {}
            _ = state.closed() => {}
        }
    };
    tokio::join!(down, up_until_closed);
    let _ = state.closed().await;
    guard.disarm();
}
