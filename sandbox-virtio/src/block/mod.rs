//! virtio-blk: the guest's block devices, served from a [`Disk`].

mod metrics;
mod request;
#[cfg(test)]
mod tests;

use std::sync::Arc;

use virtio_queue::{Queue, QueueT};

use crate::device::{read_config_bytes, ActivationContext, DeviceError, VirtioDevice};
use crate::worker::{Handler, Worker};
use crate::{device_id, GuestMemory, VIRTIO_F_VERSION_1};
pub use metrics::BlockMetrics;
use sandbox_rootfs::{Disk, Written};

/// `VIRTIO_BLK_F_RO`.
const F_RO: u64 = crate::feature(virtio_bindings::virtio_blk::VIRTIO_BLK_F_RO);
/// `VIRTIO_BLK_F_FLUSH`.
const F_FLUSH: u64 = crate::feature(virtio_bindings::virtio_blk::VIRTIO_BLK_F_FLUSH);
/// Queue size offered to the driver.
const QUEUE_SIZE: u16 = 256;

/// A virtio-blk device with one request queue.
pub struct Block {
    disk: Option<Box<dyn Disk>>,
    config: [u8; 8],
    read_only: bool,
    id: String,
    metrics: Arc<BlockMetrics>,
    worker: Option<Worker>,
    /// A snapshot stores only the blocks the disk says differ from its
    /// base ([`Block::snapshot_written_only`]).
    written_only: bool,
}

impl Block {
    /// A device serving `disk`; `id` is what `GET_ID` returns (20 bytes max).
    pub fn new(disk: Box<dyn Disk>, id: &str) -> Self {
        let sectors = disk.size() / 512;
        Self {
            read_only: disk.read_only(),
            disk: Some(disk),
            config: sectors.to_le_bytes(),
            id: id.chars().take(20).collect(),
            metrics: Arc::default(),
            worker: None,
            written_only: false,
        }
    }

    /// Snapshots store only the disk's written blocks
    /// ([`Disk::written`]), at their offsets, and name them in the
    /// device state ([`VirtioDevice::save_state`], a [`Written`] as
    /// JSON); the restoring side must then open the same base again. A
    /// disk that cannot say (`written()` is `None`) is still copied whole,
    /// with no state.
    pub fn snapshot_written_only(mut self) -> Self {
        self.written_only = true;
        self
    }

    fn written(&self) -> Option<Written> {
        self.disk.as_ref().filter(|_| self.written_only)?.written()
    }

    /// Counters shared with the running device.
    pub fn metrics(&self) -> Arc<BlockMetrics> {
        self.metrics.clone()
    }
}

/// Bytes read from a disk per step when copying it.
const COPY_CHUNK: usize = 1 << 20;

/// Flushes `disk` and copies it into `out` (set to the disk's size, zero
/// pages left as holes): whole, or only the `written` blocks.
fn copy_disk(
    disk: &mut dyn Disk,
    written: Option<&Written>,
    out: &std::fs::File,
) -> std::io::Result<u64> {
    disk.flush()?;
    let size = disk.size();
    out.set_len(size)?;
    let ranges: Vec<(u64, u64)> = match written {
        Some(w) => w
            .runs
            .iter()
            .map(|&(start, count)| {
                let from = (start * w.block).min(size);
                (from, ((start + count) * w.block).min(size))
            })
            .collect(),
        None => vec![(0, size)],
    };
    let mut buf = vec![0u8; COPY_CHUNK];
    let mut stored = 0;
    for (mut offset, end) in ranges {
        while offset < end {
            let n = (end - offset).min(COPY_CHUNK as u64) as usize;
            disk.read_at(offset, &mut buf[..n])?;
            stored += crate::sparse::write_nonzero(&buf[..n], out, offset)?;
            offset += n as u64;
        }
    }
    out.sync_all()?;
    Ok(stored)
}

impl VirtioDevice for Block {
    fn device_type(&self) -> u32 {
        device_id::BLOCK
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE]
    }

    fn features(&self) -> u64 {
        VIRTIO_F_VERSION_1 | F_FLUSH | if self.read_only { F_RO } else { 0 }
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.config, offset, data);
    }

    fn activate(&mut self, ctx: ActivationContext) -> Result<(), DeviceError> {
        ctx.validate(1)?;
        // The disk moves into the worker and comes back on reset.
        let Some(disk) = self.disk.take() else {
            return Err(DeviceError::Worker(std::io::Error::other(
                "block device already active",
            )));
        };
        // A caller's block store may need any syscall: no filter then.
        let class = (!disk.runs_caller_code()).then_some(&crate::seccomp::DEVICE);
        let handler = BlockHandler {
            disk,
            id: self.id.clone(),
            metrics: self.metrics.clone(),
            bounce: Vec::new(),
        };
        self.worker = Some(Worker::spawn(
            "virtio-blk",
            handler,
            ctx,
            Vec::new(),
            class,
        )?);
        Ok(())
    }

    fn reset(&mut self) -> Option<Vec<Queue>> {
        // The disk stays with the stopped worker's handler; a block device is
        // activated once per VM, so it is not needed again.
        self.worker.take().map(Worker::stop)
    }

    fn save_disk(&mut self, out: &std::fs::File) -> Option<std::io::Result<u64>> {
        let written = self.written();
        let disk = self.disk.as_mut()?;
        Some(copy_disk(&mut **disk, written.as_ref(), out))
    }

    fn save_state(&self) -> Option<String> {
        serde_json::to_string(&self.written()?).ok()
    }

    fn quiesce(&mut self) -> Option<Vec<Queue>> {
        let (queues, handler) = self.worker.take()?.stop_keeping::<BlockHandler>();
        self.disk = handler.map(|h| h.disk);
        Some(queues)
    }

    fn counters(&self) -> Option<crate::CounterReader> {
        let m = self.metrics.clone();
        Some(crate::CounterReader::new(move || {
            crate::DeviceCounters::Block(crate::counters::BlockCounters {
                requests: m.requests.get(),
                read_bytes: m.read_bytes.get(),
                write_bytes: m.write_bytes.get(),
                io_errors: m.io_errors.get(),
                malformed: m.malformed.get(),
                flushes: m.flushes.get(),
                flush_time: std::time::Duration::from_micros(m.flush_micros.get()),
            })
        }))
    }
}

/// A handler outside any worker, for the fuzz targets.
#[cfg(feature = "fuzzing")]
pub(crate) fn fuzz_handler(disk: Box<dyn Disk>) -> impl Handler {
    BlockHandler {
        disk,
        id: "fuzz".into(),
        metrics: Arc::default(),
        bounce: Vec::new(),
    }
}

struct BlockHandler {
    disk: Box<dyn Disk>,
    id: String,
    metrics: Arc<BlockMetrics>,
    /// Reused for every request (allocated at the first one).
    bounce: Vec<u8>,
}

impl Handler for BlockHandler {
    fn queue_event(&mut self, _idx: usize, queues: &mut [Queue], mem: &GuestMemory) -> u64 {
        let Some(queue) = queues.first_mut() else {
            return 0;
        };
        let mut used_any = false;
        while let Some(chain) = queue.pop_descriptor_chain(mem) {
            let head = chain.head_index();
            if self.bounce.is_empty() {
                self.bounce = vec![0u8; request::CHUNK];
            }
            let len = request::execute(
                chain,
                mem,
                &mut *self.disk,
                &self.id,
                &self.metrics,
                &mut self.bounce,
            );
            if queue.add_used(mem, head, len).is_err() {
                self.metrics.malformed.inc();
                return 0;
            }
            used_any = true;
        }
        u64::from(used_any)
    }
}
