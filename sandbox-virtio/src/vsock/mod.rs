//! virtio-vsock: the control channel between host and guest agent.
//!
//! The host opens stream connections to guest ports with
//! [`VsockConnector::connect`]; each one comes back as one end of a Unix
//! socket pair, so the library sees a plain byte stream. Guests cannot open
//! connections to the host. Credit flow control is honoured both ways: a
//! guest that sends past the credit it was given loses the connection, and
//! the host never sends more than the guest advertised.

mod conn;
mod handler;
mod metrics;
mod packet;
#[cfg(test)]
mod tests;

use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::sync::mpsc::{self, Sender};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::event::EventFd;
use virtio_queue::Queue;

use crate::device::{read_config_bytes, ActivationContext, DeviceError, VirtioDevice};
use crate::worker::Worker;
use crate::{device_id, VIRTIO_F_VERSION_1};
use handler::{ConnectRequest, VsockHandler};
pub use metrics::VsockMetrics;

const QUEUE_SIZE: u16 = 256;

/// A handler outside any worker, for the fuzz targets.
#[cfg(feature = "fuzzing")]
pub(crate) fn fuzz_handler(
    guest_cid: u64,
    requests: mpsc::Receiver<ConnectRequest>,
    wake: EventFd,
) -> io::Result<impl crate::worker::Handler> {
    VsockHandler::new(guest_cid, requests, wake, Arc::default())
}

/// A virtio-vsock device (rx, tx and event queues).
pub struct Vsock {
    guest_cid: u64,
    handler: Option<VsockHandler>,
    metrics: Arc<VsockMetrics>,
    worker: Option<Worker>,
}

/// Opens host-to-guest connections; cheap to clone.
#[derive(Clone)]
pub struct VsockConnector {
    requests: Arc<Mutex<Sender<ConnectRequest>>>,
    wake: Arc<EventFd>,
}

impl VsockConnector {
    /// Connects to guest `port`. Fails with `ConnectionRefused` when nothing
    /// listens there yet and `TimedOut` when the guest does not answer.
    pub fn connect(&self, port: u32, timeout: Duration) -> io::Result<UnixStream> {
        let (reply, result) = mpsc::channel();
        self.requests
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .send(ConnectRequest { port, reply })
            .map_err(|_| io::Error::new(io::ErrorKind::NotConnected, "the vsock device is gone"))?;
        self.wake.write(1)?;
        match result.recv_timeout(timeout) {
            Ok(r) => r,
            Err(mpsc::RecvTimeoutError::Timeout) => Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("guest vsock port {port} did not answer in {timeout:?}"),
            )),
            Err(mpsc::RecvTimeoutError::Disconnected) => Err(io::Error::new(
                io::ErrorKind::NotConnected,
                "the vsock device stopped",
            )),
        }
    }
}

impl VsockConnector {
    /// Connects to guest `port` once something listens there: retries every
    /// `retry` while the port refuses, until `timeout` passes (`TimedOut`)
    /// or `stopped` says why the guest is gone (`NotConnected`, with that
    /// reason).
    pub fn connect_when_listening(
        &self,
        port: u32,
        timeout: Duration,
        retry: Duration,
        mut stopped: impl FnMut() -> Option<String>,
    ) -> io::Result<UnixStream> {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            if let Some(why) = stopped() {
                return Err(io::Error::new(
                    io::ErrorKind::NotConnected,
                    format!("{why} before its agent listened"),
                ));
            }
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!(
                        "the guest agent did not listen on vsock port {port} within {timeout:?}"
                    ),
                ));
            }
            match self.connect(port, left.min(Duration::from_millis(500))) {
                Ok(stream) => return Ok(stream),
                Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => std::thread::sleep(retry),
                Err(e) if e.kind() == io::ErrorKind::TimedOut => {}
                Err(e) => return Err(e),
            }
        }
    }
}

impl Vsock {
    /// A device giving the guest `guest_cid` (3 or more), with its connector.
    pub fn new(guest_cid: u64) -> io::Result<(Self, VsockConnector)> {
        let (tx, rx) = mpsc::channel();
        let wake = crate::event::event_fd()?;
        let metrics: Arc<VsockMetrics> = Arc::default();
        let handler = VsockHandler::new(guest_cid, rx, wake.try_clone()?, metrics.clone())?;
        Ok((
            Self {
                guest_cid,
                handler: Some(handler),
                metrics,
                worker: None,
            },
            VsockConnector {
                requests: Arc::new(Mutex::new(tx)),
                wake: Arc::new(wake),
            },
        ))
    }

    /// Counters shared with the running device.
    /// Marks a device that continues a snapshot's vsock: on activation it
    /// tells the guest that every connection it had is gone (the host
    /// ends of those connections did not survive the snapshot), so the
    /// guest's sockets fail and its listeners accept new connections.
    pub fn reset_guest_connections(mut self) -> Self {
        if let Some(h) = self.handler.as_mut() {
            h.reset_transport = true;
        }
        self
    }

    pub fn metrics(&self) -> Arc<VsockMetrics> {
        self.metrics.clone()
    }
}

impl VirtioDevice for Vsock {
    fn device_type(&self) -> u32 {
        device_id::VSOCK
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE, QUEUE_SIZE, QUEUE_SIZE]
    }

    fn features(&self) -> u64 {
        VIRTIO_F_VERSION_1
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.guest_cid.to_le_bytes(), offset, data);
    }

    fn activate(&mut self, ctx: ActivationContext) -> Result<(), DeviceError> {
        // The event queue only carries transport resets after a snapshot
        // restore; a vhost-user front end may keep it to itself.
        ctx.validate_optional(3, 2)?;
        let Some(handler) = self.handler.take() else {
            return Err(DeviceError::Worker(io::Error::other(
                "vsock already active",
            )));
        };
        let extra = vec![handler.wake.as_raw_fd(), handler.sockets.fd()];
        self.worker = Some(Worker::spawn(
            "virtio-vsock",
            handler,
            ctx,
            extra,
            Some(&crate::seccomp::DEVICE),
        )?);
        Ok(())
    }

    fn required_queues(&self) -> usize {
        2
    }

    fn reset(&mut self) -> Option<Vec<Queue>> {
        self.worker.take().map(Worker::stop)
    }

    fn quiesce(&mut self) -> Option<Vec<Queue>> {
        let (queues, handler) = self.worker.take()?.stop_keeping::<VsockHandler>();
        self.handler = handler;
        Some(queues)
    }

    fn counters(&self) -> Option<crate::CounterReader> {
        let m = self.metrics.clone();
        Some(crate::CounterReader::new(move || {
            crate::DeviceCounters::Vsock(crate::counters::VsockCounters {
                connections: m.connections.get(),
                to_guest_bytes: m.to_guest_bytes.get(),
                from_guest_bytes: m.from_guest_bytes.get(),
                credit_stalls: m.credit_stalls.get(),
                malformed: m.malformed.get(),
            })
        }))
    }
}
