//! The vhost-user transport: serves one [`VirtioDevice`] to a vhost-user front
//! end (UML's `virtio_uml`, or any VMM) over a Unix socket, using rust-vmm's
//! `vhost` crate for the wire protocol.
//!
//! The adapter keeps the vring setup the front end sends and activates the
//! device, with real `virtio_queue::Queue`s over the shared guest memory, once
//! every queue has a kick descriptor and is enabled.

mod backend;
#[cfg(test)]
mod tests;

use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use vhost::vhost_user::BackendReqHandler;

pub use backend::VhostUserBackend;

use crate::{seccomp, VirtioDevice};

/// A device being served on a socket; [`Served::stop`] ends it.
pub struct Served {
    stop: Arc<AtomicBool>,
    conn: Arc<Mutex<Option<Arc<UnixStream>>>>,
    thread: Option<JoinHandle<Result<(), sandbox_thread::Panicked>>>,
}

impl Served {
    /// Disconnects the front end, stops the device and joins the thread.
    pub fn stop(mut self) {
        self.halt();
    }

    fn halt(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(c) = self.conn.lock().unwrap_or_else(|e| e.into_inner()).as_ref() {
            let _ = c.shutdown(std::net::Shutdown::Both);
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        self.halt();
    }
}

/// Accepts one front end on `listener` and serves `device` to it on a new
/// thread until the front end disconnects or [`Served::stop`] is called.
pub fn serve<D: VirtioDevice + 'static>(
    name: &str,
    listener: UnixListener,
    device: D,
) -> io::Result<Served> {
    listener.set_nonblocking(true)?;
    let stop = Arc::new(AtomicBool::new(false));
    let conn: Arc<Mutex<Option<Arc<UnixStream>>>> = Arc::default();
    let (stop2, conn2) = (stop.clone(), conn.clone());
    let thread = sandbox_thread::spawn(format!("vhost-user-{name}"), None, move || {
        let Some(stream) = accept(&listener, &stop2) else {
            return;
        };
        drop(listener);
        let Ok(clone) = stream.try_clone() else {
            log::warn!("vhost-user {}: cannot keep the connection", thread_name());
            return;
        };
        let clone = Arc::new(clone);
        *conn2.lock().unwrap_or_else(|e| e.into_inner()) = Some(clone.clone());
        // From here on everything is driven by the front end, which is the
        // guest kernel under UML: confine the thread before the first
        // message.
        seccomp::confine(&seccomp::VHOST_USER);
        let mut backend = VhostUserBackend::new(device);
        // A device that fails (its worker panicked) ends the session: the
        // front end sees the device go away instead of waiting on it.
        backend.set_on_failure(Arc::new(move || {
            let _ = clone.shutdown(std::net::Shutdown::Both);
        }));
        let backend = Arc::new(Mutex::new(backend));
        let mut handler = BackendReqHandler::from_stream(stream, backend.clone());
        // A panic while handling a message is a failed device too.
        let _ = sandbox_thread::contain(|| {
            while !stop2.load(Ordering::SeqCst) {
                if let Err(e) = handler.handle_request() {
                    if !matches!(
                        e,
                        vhost::vhost_user::Error::Disconnected
                            | vhost::vhost_user::Error::PartialMessage
                    ) && !stop2.load(Ordering::SeqCst)
                    {
                        log::warn!("vhost-user {}: {e}", thread_name());
                    }
                    break;
                }
            }
        });
        let _ = sandbox_thread::contain(|| {
            backend.lock().unwrap_or_else(|e| e.into_inner()).shutdown();
        });
        // A request we refused ends the session: close the connection (the
        // handler's copy is gone, this is the other) so the front end sees
        // the device fail instead of waiting for a reply.
        if let Some(c) = conn2.lock().unwrap_or_else(|e| e.into_inner()).take() {
            let _ = c.shutdown(std::net::Shutdown::Both);
        }
    })?;
    Ok(Served {
        stop,
        conn,
        thread: Some(thread),
    })
}

fn accept(listener: &UnixListener, stop: &AtomicBool) -> Option<UnixStream> {
    while !stop.load(Ordering::SeqCst) {
        match listener.accept() {
            Ok((s, _)) => {
                let _ = s.set_nonblocking(false);
                return Some(s);
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                let mut pfd = libc::pollfd {
                    fd: listener.as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                };
                // SAFETY: `pfd` is a valid pollfd for the duration of the call.
                unsafe { libc::poll(&mut pfd, 1, Duration::from_millis(50).as_millis() as i32) };
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => {
                log::warn!("vhost-user accept: {e}");
                return None;
            }
        }
    }
    None
}

fn thread_name() -> String {
    std::thread::current()
        .name()
        .unwrap_or("vhost-user")
        .to_string()
}
