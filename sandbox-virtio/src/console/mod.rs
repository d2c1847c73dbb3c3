//! virtio-console with a single port (no multiport): the guest sees it as
//! `/dev/hvc0`; the host side is one end of a Unix stream socket pair, handed
//! to the caller as a plain byte stream. Under UML this carries the agent's
//! control protocol.

mod metrics;
mod stream;
#[cfg(test)]
mod tests;

use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::sync::Arc;

use virtio_queue::{Queue, QueueT};

use crate::device::{read_config_bytes, ActivationContext, DeviceError, VirtioDevice};
use crate::worker::{RxTx, Worker};
use crate::{device_id, GuestMemory, VIRTIO_F_VERSION_1};
pub use metrics::ConsoleMetrics;

const QUEUE_SIZE: u16 = 256;
/// Bytes read from the host stream at a time.
const HOLD: usize = 64 << 10;

/// A single-port virtio-console device.
pub struct Console {
    host: Option<UnixStream>,
    metrics: Arc<ConsoleMetrics>,
    worker: Option<Worker>,
}

impl Console {
    /// Creates the device and returns the host end of its byte stream.
    pub fn new() -> std::io::Result<(Self, UnixStream)> {
        let (device_end, host_end) = UnixStream::pair()?;
        Ok((
            Self {
                host: Some(device_end),
                metrics: Arc::default(),
                worker: None,
            },
            host_end,
        ))
    }

    /// Counters shared with the running device.
    pub fn metrics(&self) -> Arc<ConsoleMetrics> {
        self.metrics.clone()
    }
}

impl VirtioDevice for Console {
    fn device_type(&self) -> u32 {
        device_id::CONSOLE
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE, QUEUE_SIZE]
    }

    fn features(&self) -> u64 {
        VIRTIO_F_VERSION_1
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        // cols, rows, max_nr_ports, emerg_wr: all zero without multiport.
        read_config_bytes(&[0u8; 12], offset, data);
    }

    fn activate(&mut self, ctx: ActivationContext) -> Result<(), DeviceError> {
        ctx.validate(2)?;
        let Some(host) = self.host.take() else {
            return Err(DeviceError::Worker(std::io::Error::other(
                "console already active",
            )));
        };
        let fd = host.as_raw_fd();
        let handler = ConsoleHandler {
            host,
            held: Vec::new(),
            host_closed: false,
            metrics: self.metrics.clone(),
        };
        self.worker = Some(Worker::spawn("virtio-console", handler, ctx, vec![fd])?);
        Ok(())
    }

    fn reset(&mut self) -> Option<Vec<Queue>> {
        self.worker.take().map(Worker::stop)
    }
}

struct ConsoleHandler {
    host: UnixStream,
    /// Bytes read from the host that no guest buffer has taken yet.
    held: Vec<u8>,
    host_closed: bool,
    metrics: Arc<ConsoleMetrics>,
}

impl RxTx for ConsoleHandler {
    /// Moves host bytes into the guest's receive buffers until either runs out.
    fn fill_rx(&mut self, queue: &mut Queue, mem: &GuestMemory) -> bool {
        let mut used_any = false;
        loop {
            if self.held.is_empty() && !self.host_closed {
                match stream::recv_nonblocking(&self.host, HOLD) {
                    Ok(Some(bytes)) if bytes.is_empty() => self.host_closed = true,
                    Ok(Some(bytes)) => self.held = bytes,
                    Ok(None) => {}
                    Err(_) => self.host_closed = true,
                }
            }
            if self.held.is_empty() {
                return used_any;
            }
            let Some(chain) = queue.pop_descriptor_chain(mem) else {
                return used_any; // the guest's next rx kick resumes here
            };
            let head = chain.head_index();
            let written = match chain.writer(mem) {
                Ok(mut w) => {
                    let n = w.available_bytes().min(self.held.len());
                    match w.write_all(&self.held[..n]) {
                        Ok(()) => n,
                        Err(_) => 0,
                    }
                }
                Err(_) => {
                    self.metrics.malformed.inc();
                    0
                }
            };
            self.held.drain(..written);
            self.metrics.to_guest_bytes.add(written as u64);
            if queue.add_used(mem, head, written as u32).is_err() {
                self.metrics.malformed.inc();
                return used_any;
            }
            used_any = true;
        }
    }

    /// Forwards everything the guest transmitted to the host stream.
    fn drain_tx(&mut self, queue: &mut Queue, mem: &GuestMemory) -> bool {
        let mut used_any = false;
        let mut buf = Vec::new();
        while let Some(chain) = queue.pop_descriptor_chain(mem) {
            let head = chain.head_index();
            buf.clear();
            match chain.reader(mem) {
                Ok(mut r) => {
                    if r.read_to_end(&mut buf).is_err() {
                        self.metrics.malformed.inc();
                        buf.clear();
                    }
                }
                Err(_) => self.metrics.malformed.inc(),
            }
            if !buf.is_empty() && !self.host_closed {
                if stream::send_all(&self.host, &buf).is_err() {
                    self.host_closed = true;
                }
                self.metrics.from_guest_bytes.add(buf.len() as u64);
            }
            if queue.add_used(mem, head, 0).is_err() {
                self.metrics.malformed.inc();
                return used_any;
            }
            used_any = true;
        }
        used_any
    }
}
