//! virtio-fs (device id 26): FUSE requests over virtqueues, served by
//! fuse-backend-rs's `api::server::Server` over any of its `FileSystem`s
//! (a confined passthrough of a host directory, or the library's own).
//!
//! Queue 0 is the high-priority queue (FORGET, INTERRUPT), queue 1 the one
//! request queue. Each request is parsed and answered in place in guest
//! memory ([`bridge`] gives fuse-backend-rs views of our memory and rings).
//! No DAX window: UML's `virtio_uml` has no shared-memory regions, and the
//! KVM transport does not offer one either.

mod bridge;
#[cfg(test)]
mod tests;

use std::sync::Arc;

use fuse_backend_rs::api::server::Server;
use fuse_backend_rs::transport::{Reader, VirtioFsWriter, Writer};
use sandbox_fs::FuseFs;
use virtio_queue::Queue;
use virtio_queue_fuse::QueueT as _;

use crate::device::{ActivationContext, DeviceError, Interrupt, VirtioDevice};
use crate::worker::{Handler, Worker};
use crate::{GuestMemory, VIRTIO_F_VERSION_1};

/// virtio-fs's device id (virtio spec 5.11).
pub const DEVICE_ID: u32 = virtio_bindings::virtio_ids::VIRTIO_ID_FS;
/// The longest mount tag the config space holds.
pub const MAX_TAG_LEN: usize = 36;
/// UML's `virtio_uml` always sets up 256-entry queues.
const QUEUE_SIZE: u16 = 256;
/// The high-priority queue and one request queue.
const QUEUES: usize = 2;
/// `VIRTIO_RING_F_EVENT_IDX`: the driver kicks and the device interrupts
/// only when the other side asked to hear about that index.
const EVENT_IDX: u64 = crate::feature(virtio_bindings::virtio_ring::VIRTIO_RING_F_EVENT_IDX);

/// Counters of a running virtio-fs device.
#[derive(Debug, Default)]
pub struct FsMetrics {
    /// Requests answered.
    pub requests: crate::metrics::Counter,
    /// Requests that could not be parsed or answered (the chain is
    /// returned with nothing written).
    pub malformed: crate::metrics::Counter,
}

/// A FUSE server over some file system (the device does not need to know
/// which).
trait Serve: Send + Sync {
    /// Answers the request in `r` into `w`; returns the bytes written.
    fn serve(&self, r: Reader<'_, ()>, w: Writer<'_, ()>) -> Result<usize, String>;
}

/// FUSE_SYNCFS (Linux 5.15+), which fuse-backend-rs 0.14 does not know.
const FUSE_SYNCFS: u32 = 50;

/// fuse-backend-rs's server plus the host directories a guest `sync`
/// makes durable.
struct Served<F: FuseFs> {
    server: Server<Arc<F>>,
    sync_dirs: Vec<std::fs::File>,
}

impl<F: FuseFs> Served<F> {
    fn new(fs: Arc<F>, sync_dirs: Vec<std::fs::File>) -> Self {
        Self {
            server: Server::new(fs),
            sync_dirs,
        }
    }

    /// Answers FUSE_SYNCFS request `unique` with `syncfs(2)` of every
    /// directory's host file system (ENOSYS without any: the guest then
    /// stops asking).
    fn syncfs(&self, unique: u64, w: &mut Writer<'_, ()>) -> Result<usize, String> {
        use std::io::Write as _;
        use std::os::fd::AsRawFd as _;
        let mut error = if self.sync_dirs.is_empty() {
            -libc::ENOSYS
        } else {
            0
        };
        for dir in &self.sync_dirs {
            // SAFETY: syncfs has no memory arguments; `dir` is open.
            if unsafe { libc::syncfs(dir.as_raw_fd()) } < 0 {
                error = -std::io::Error::last_os_error()
                    .raw_os_error()
                    .unwrap_or(libc::EIO);
            }
        }
        let mut out = [0u8; 16];
        out[..4].copy_from_slice(&16u32.to_le_bytes());
        out[4..8].copy_from_slice(&error.to_le_bytes());
        out[8..].copy_from_slice(&unique.to_le_bytes());
        w.write_all(&out).map_err(|e| e.to_string())?;
        w.commit(None).map_err(|e| e.to_string())?;
        Ok(out.len())
    }
}

impl<F: FuseFs> Serve for Served<F> {
    fn serve(&self, r: Reader<'_, ()>, mut w: Writer<'_, ()>) -> Result<usize, String> {
        // The in-header starts with len, opcode and unique.
        let mut head = [0u8; 16];
        if std::io::Read::read_exact(&mut r.clone(), &mut head).is_ok()
            && u32::from_le_bytes([head[4], head[5], head[6], head[7]]) == FUSE_SYNCFS
        {
            let unique = u64::from_le_bytes(head[8..].try_into().unwrap_or_default());
            return self.syncfs(unique, &mut w);
        }
        self.server
            .handle_message(r, w, None, None)
            .map_err(|e| e.to_string())
    }
}

/// A served file system whose state a snapshot keeps (see
/// [`sandbox_fs::Tracked`]).
pub trait SavesState: Send + Sync {
    /// The state, as text.
    fn save(&self) -> String;
    /// Content the host keeps for the guest (a memory file system's
    /// files), copied into `out` with the bytes written; `None` for a
    /// file system whose content is the host's own (a bind's source).
    fn save_data(&self, _out: &std::fs::File) -> Option<std::io::Result<u64>> {
        None
    }
}

impl<F: FuseFs> SavesState for sandbox_fs::Tracked<F> {
    fn save(&self) -> String {
        sandbox_fs::Tracked::save(self)
    }
}

/// A virtio-fs device serving a file system under a mount tag.
pub struct Fs {
    config: Vec<u8>,
    server: Arc<dyn Serve>,
    state: Option<Arc<dyn SavesState>>,
    metrics: Arc<FsMetrics>,
    worker: Option<Worker>,
}

impl Fs {
    /// A device that serves `fs` under `tag` (1 to 36 bytes, no NUL).
    pub fn new<F: FuseFs>(tag: &str, fs: Arc<F>) -> Result<Self, DeviceError> {
        Self::with_syncfs(tag, fs, &[])
    }

    /// Like [`Fs::new`], and a guest `sync` (FUSE_SYNCFS) runs `syncfs(2)`
    /// on the host file system of each of `dirs` (a bind's source and its
    /// mask storage), as virtiofsd does: what the guest synced is durable
    /// on the host.
    pub fn with_syncfs<F: FuseFs>(
        tag: &str,
        fs: Arc<F>,
        dirs: &[&std::path::Path],
    ) -> Result<Self, DeviceError> {
        if tag.is_empty() || tag.len() > MAX_TAG_LEN || tag.contains('\0') {
            return Err(DeviceError::Config(format!(
                "a virtio-fs tag is 1 to {MAX_TAG_LEN} bytes without NUL, not {tag:?}"
            )));
        }
        let sync_dirs = dirs
            .iter()
            .map(|d| {
                std::fs::File::open(d)
                    .map_err(|e| DeviceError::Config(format!("{}: {e}", d.display())))
            })
            .collect::<Result<_, _>>()?;
        // struct virtio_fs_config: tag[36], le32 num_request_queues.
        let mut config = vec![0u8; MAX_TAG_LEN + 4];
        config[..tag.len()].copy_from_slice(tag.as_bytes());
        config[MAX_TAG_LEN..].copy_from_slice(&1u32.to_le_bytes());
        Ok(Self {
            config,
            server: Arc::new(Served::new(fs, sync_dirs)),
            state: None,
            metrics: Arc::default(),
            worker: None,
        })
    }

    /// A snapshot of the machine keeps `state` (the served file system,
    /// wrapped in [`sandbox_fs::Tracked`]) with the device.
    pub fn saving(mut self, state: Arc<dyn SavesState>) -> Self {
        self.state = Some(state);
        self
    }

    /// Counters shared with the running device.
    pub fn metrics(&self) -> Arc<FsMetrics> {
        self.metrics.clone()
    }
}

impl VirtioDevice for Fs {
    fn device_type(&self) -> u32 {
        DEVICE_ID
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE; QUEUES]
    }

    fn features(&self) -> u64 {
        VIRTIO_F_VERSION_1 | EVENT_IDX
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        crate::device::read_config_bytes(&self.config, offset, data);
    }

    fn activate(&mut self, ctx: ActivationContext) -> Result<(), DeviceError> {
        ctx.validate(QUEUES)?;
        let mut handler = FsHandler::new(
            self.server.clone(),
            &ctx.mem,
            &ctx.queues,
            self.metrics.clone(),
        )
        .map_err(DeviceError::Config)?;
        if ctx.acked_features & EVENT_IDX != 0 {
            handler.use_event_idx();
        }
        // The file system opens and creates host files: a filter of its
        // own (docs/security.md).
        self.worker = Some(Worker::spawn(
            "virtio-fs",
            handler,
            ctx,
            Vec::new(),
            Some(&crate::seccomp::FS),
        )?);
        Ok(())
    }

    fn reset(&mut self) -> Option<Vec<Queue>> {
        self.worker.take().map(Worker::stop)
    }

    fn save_state(&self) -> Option<String> {
        self.state.as_ref().map(|s| s.save())
    }

    fn save_disk(&mut self, out: &std::fs::File) -> Option<std::io::Result<u64>> {
        self.state.as_ref()?.save_data(out)
    }
}

/// A handler outside any worker over `fs`, for the fuzz targets.
#[cfg(feature = "fuzzing")]
pub(crate) fn fuzz_handler<F: FuseFs>(
    fs: Arc<F>,
    mem: &Arc<GuestMemory>,
    queues: &[Queue],
) -> Option<impl Handler> {
    FsHandler::new(
        Arc::new(Served::new(fs, Vec::new())),
        mem,
        queues,
        Arc::default(),
    )
    .ok()
}

/// The worker's state: the server, and views of memory and rings in
/// fuse-backend-rs's types.
struct FsHandler {
    server: Arc<dyn Serve>,
    /// Keeps the mappings `mem` aliases alive.
    _owner: Arc<GuestMemory>,
    mem: bridge::Memory,
    queues: Vec<bridge::FuseQueue>,
    metrics: Arc<FsMetrics>,
    event_idx: bool,
}

impl FsHandler {
    fn new(
        server: Arc<dyn Serve>,
        mem: &Arc<GuestMemory>,
        queues: &[Queue],
        metrics: Arc<FsMetrics>,
    ) -> Result<Self, String> {
        Ok(Self {
            server,
            _owner: mem.clone(),
            mem: bridge::alias_memory(mem)?,
            queues: queues.iter().map(bridge::queue).collect::<Result<_, _>>()?,
            metrics,
            event_idx: false,
        })
    }

    /// The driver acknowledged `VIRTIO_RING_F_EVENT_IDX`.
    fn use_event_idx(&mut self) {
        self.event_idx = true;
        for q in &mut self.queues {
            q.set_event_idx(true);
        }
    }

    /// Answers one request; returns the bytes written into the chain.
    fn answer(
        server: &dyn Serve,
        mem: &bridge::Memory,
        chain: virtio_queue_fuse::DescriptorChain<&bridge::Memory>,
    ) -> Result<usize, String> {
        let reader =
            Reader::from_descriptor_chain(mem, chain.clone()).map_err(|e| e.to_string())?;
        let writer = VirtioFsWriter::new(mem, chain).map_err(|e| e.to_string())?;
        server.serve(reader, writer.into())
    }
}

impl FsHandler {
    /// Answers every request on queue `idx`. With event indices, each
    /// answer whose index the driver asked to hear about is signalled
    /// through `signal` at once: the guest's FUSE requests are mostly
    /// synchronous (one `write(2)`, one request, one wait), so the next
    /// one can arrive while this loop still runs and is then taken without
    /// a kick or a wake-up. Returns the queues still to interrupt.
    fn drain(&mut self, idx: usize, queues: &mut [Queue], signal: &mut dyn FnMut(usize)) -> u64 {
        let (Some(q), Some(ours)) = (self.queues.get_mut(idx), queues.get_mut(idx)) else {
            return 0;
        };
        let mut unsignalled = false;
        loop {
            // With event indices, the driver is told not to kick while the
            // queue is drained, and asked for a kick past the last
            // request taken; requests that arrived meanwhile are taken
            // before waiting.
            if self.event_idx {
                let _ = q.disable_notification(&self.mem);
            }
            while let Some(chain) = q.pop_descriptor_chain(&self.mem) {
                let head = chain.head_index();
                let written = match Self::answer(&*self.server, &self.mem, chain) {
                    Ok(n) => {
                        self.metrics.requests.inc();
                        n
                    }
                    Err(e) => {
                        log::debug!("virtio-fs: a request failed: {e}");
                        self.metrics.malformed.inc();
                        0
                    }
                };
                if q.add_used(&self.mem, head, written as u32).is_err() {
                    self.metrics.malformed.inc();
                }
                unsignalled = true;
                if self.event_idx && q.needs_notification(&self.mem).unwrap_or(true) {
                    signal(idx);
                    unsignalled = false;
                }
            }
            if !self.event_idx || !q.enable_notification(&self.mem).unwrap_or(false) {
                break;
            }
        }
        bridge::sync_back(q, ours);
        if unsignalled && q.needs_notification(&self.mem).unwrap_or(true) {
            1 << idx
        } else {
            0
        }
    }
}

impl Handler for FsHandler {
    fn queue_event(&mut self, idx: usize, queues: &mut [Queue], _mem: &GuestMemory) -> u64 {
        let mut pending = 0;
        let raised = self.drain(idx, queues, &mut |i| pending |= 1 << i);
        raised | pending
    }

    fn queue_event_eager(
        &mut self,
        idx: usize,
        queues: &mut [Queue],
        _mem: &GuestMemory,
        interrupt: &dyn Interrupt,
    ) -> u64 {
        self.drain(idx, queues, &mut |i| interrupt.signal_used_queue(i))
    }
}
