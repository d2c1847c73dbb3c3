//! virtio-rng: the guest's `/dev/hwrng`, filled from the host kernel's
//! `getrandom`. The guest kernel mixes it into its own pool, so early boot
//! (and every `getrandom` in the guest) does not wait for entropy.

#[cfg(test)]
mod tests;

use std::io::Write;

use virtio_queue::{Queue, QueueT};

use crate::device::{ActivationContext, DeviceError, VirtioDevice};
use crate::worker::{Handler, Worker};
use crate::{device_id, GuestMemory, VIRTIO_F_VERSION_1};

/// UML's `virtio_uml` always sets up 256-entry queues.
const QUEUE_SIZE: u16 = 256;
/// Bytes given per request at most: a driver asking for more gets this
/// much (the used length says so) and asks again.
const MAX_PER_REQUEST: usize = 64 << 10;

/// Counters of a running rng device.
#[derive(Debug, Default)]
pub struct RngMetrics {
    /// Random bytes written into guest buffers.
    pub bytes: crate::metrics::Counter,
    /// Requests that were not writable buffers in guest memory.
    pub malformed: crate::metrics::Counter,
}

/// A virtio-rng device (one request queue, no configuration).
#[derive(Default)]
pub struct Rng {
    metrics: std::sync::Arc<RngMetrics>,
    worker: Option<Worker>,
}

impl Rng {
    /// A device that is not yet active.
    pub fn new() -> Self {
        Self::default()
    }

    /// Counters shared with the running device.
    pub fn metrics(&self) -> std::sync::Arc<RngMetrics> {
        self.metrics.clone()
    }
}

impl VirtioDevice for Rng {
    fn device_type(&self) -> u32 {
        device_id::RNG
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE]
    }

    fn features(&self) -> u64 {
        VIRTIO_F_VERSION_1
    }

    fn read_config(&self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }

    fn activate(&mut self, ctx: ActivationContext) -> Result<(), DeviceError> {
        ctx.validate(1)?;
        let handler = RngHandler {
            buf: vec![0; MAX_PER_REQUEST],
            metrics: self.metrics.clone(),
        };
        self.worker = Some(Worker::spawn(
            "virtio-rng",
            handler,
            ctx,
            Vec::new(),
            Some(&crate::seccomp::DEVICE),
        )?);
        Ok(())
    }

    fn reset(&mut self) -> Option<Vec<Queue>> {
        self.worker.take().map(Worker::stop)
    }

    fn counters(&self) -> Option<crate::CounterReader> {
        let m = self.metrics.clone();
        Some(crate::CounterReader::new(move || {
            crate::DeviceCounters::Rng(crate::counters::RngCounters {
                bytes: m.bytes.get(),
                malformed: m.malformed.get(),
            })
        }))
    }
}

#[cfg(feature = "fuzzing")]
pub(crate) fn fuzz_handler() -> impl Handler {
    RngHandler {
        buf: vec![0; MAX_PER_REQUEST],
        metrics: Default::default(),
    }
}

struct RngHandler {
    buf: Vec<u8>,
    metrics: std::sync::Arc<RngMetrics>,
}

/// Fills `buf` from the host kernel's random pool.
fn fill_random(buf: &mut [u8]) -> std::io::Result<()> {
    let mut done = 0;
    while done < buf.len() {
        let rest = &mut buf[done..];
        let n = random_chunk(rest);
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        done += n as usize;
    }
    Ok(())
}

/// Fills a prefix of `buf`; returns its length, or -1 with `errno` set.
#[cfg(target_os = "linux")]
fn random_chunk(buf: &mut [u8]) -> isize {
    // SAFETY: getrandom writes at most `buf.len()` bytes into `buf`.
    unsafe { libc::getrandom(buf.as_mut_ptr().cast(), buf.len(), 0) }
}

/// Fills a prefix of `buf` (at most 256 bytes, getentropy's limit);
/// returns its length, or -1 with `errno` set.
#[cfg(not(target_os = "linux"))]
fn random_chunk(buf: &mut [u8]) -> isize {
    let n = buf.len().min(256);
    // SAFETY: getentropy writes exactly `n` bytes into `buf`, which has them.
    if unsafe { libc::getentropy(buf.as_mut_ptr().cast(), n) } < 0 {
        return -1;
    }
    n as isize
}

impl Handler for RngHandler {
    fn queue_event(&mut self, idx: usize, queues: &mut [Queue], mem: &GuestMemory) -> u64 {
        let Some(queue) = queues.get_mut(idx) else {
            return 0;
        };
        let mut used_any = false;
        while let Some(chain) = queue.pop_descriptor_chain(mem) {
            let head = chain.head_index();
            let written = match chain.writer(mem) {
                Ok(w) if w.available_bytes() == 0 => {
                    self.metrics.malformed.inc();
                    0
                }
                Ok(mut w) => {
                    let n = w.available_bytes().min(self.buf.len());
                    let chunk = &mut self.buf[..n];
                    match fill_random(chunk).and_then(|()| w.write_all(chunk)) {
                        Ok(()) => n,
                        Err(e) => {
                            log::warn!("virtio-rng: {e}");
                            0
                        }
                    }
                }
                Err(_) => {
                    self.metrics.malformed.inc();
                    0
                }
            };
            self.metrics.bytes.add(written as u64);
            if queue.add_used(mem, head, written as u32).is_err() {
                self.metrics.malformed.inc();
                break;
            }
            used_any = true;
        }
        u64::from(used_any) << idx
    }
}
