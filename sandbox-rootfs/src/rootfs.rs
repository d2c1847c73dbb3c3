//! How the guest's root disk treats writes.

use std::io;
use std::path::PathBuf;
use std::sync::Arc;

use crate::source::{Composed, Source};
use crate::{
    BlockStore, CowDisk, Disk, EventHook, Image, MemOverlay, OverlayOptions, Qcow2Overlay,
    RootfsError,
};

/// Default bound of an in-memory ephemeral overlay, a cow batch, and
/// unsynced persistent writes (all held in host memory).
pub const DEFAULT_MAX_DIRTY_BYTES: u64 = 64 << 20;
/// Default bound of an ephemeral overlay spilled to a scratch file (the
/// default ephemeral kind): sparse, so it costs nothing until written.
pub const DEFAULT_EPHEMERAL_SPILL_BYTES: u64 = 4 << 30;

/// Where an ephemeral overlay keeps the guest's writes.
#[derive(Clone, Debug)]
enum Spill {
    /// Host memory.
    Memory,
    /// An unlinked sparse file in this directory (`None`: the system's
    /// temporary directory, `$TMPDIR` or `/tmp`).
    File(Option<PathBuf>),
}
/// Default block size of ephemeral overlays.
pub const DEFAULT_EPHEMERAL_BLOCK: u32 = 4096;

#[derive(Clone, Debug)]
enum Mode {
    ReadOnly,
    Ephemeral { block_size: u32, spill: Spill },
    Cow(Box<Composed>),
    Persistent { path: PathBuf, cluster_size: u32 },
}

/// How a root treats writes, as data (for environment facts and callers
/// that report on a definition).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WriteMode {
    /// Guest writes fail.
    ReadOnly,
    /// Writes are dropped at shutdown; at most `max_dirty_bytes` of them.
    Ephemeral {
        /// The bound on written bytes.
        max_dirty_bytes: u64,
    },
    /// Writes go to the qcow2 overlay at `path`.
    Persistent {
        /// The overlay file.
        path: PathBuf,
    },
    /// Writes go to a caller-owned block store.
    Cow,
}

impl WriteMode {
    /// A short name: `read-only`, `ephemeral`, `persistent` or `cow`.
    pub fn name(&self) -> &'static str {
        match self {
            WriteMode::ReadOnly => "read-only",
            WriteMode::Ephemeral { .. } => "ephemeral",
            WriteMode::Persistent { .. } => "persistent",
            WriteMode::Cow => "cow",
        }
    }
}

/// A root file system: what the disk holds ([`Source`]) plus a write policy.
#[derive(Clone, Debug)]
pub struct Rootfs {
    source: Source,
    mode: Mode,
    /// Set by the caller; otherwise the mode's default.
    max_dirty_bytes: Option<u64>,
}

impl Rootfs {
    fn new(source: Source, mode: Mode) -> Self {
        Self {
            source,
            mode,
            max_dirty_bytes: None,
        }
    }

    /// The bound on written bytes this root applies.
    fn dirty_limit(&self) -> u64 {
        self.max_dirty_bytes.unwrap_or(match &self.mode {
            Mode::Ephemeral {
                spill: Spill::File(_),
                ..
            } => DEFAULT_EPHEMERAL_SPILL_BYTES,
            _ => DEFAULT_MAX_DIRTY_BYTES,
        })
    }

    /// Writes fail (the guest mounts its root read-only); the default.
    pub fn read_only(source: impl Into<Source>) -> Self {
        Self::new(source.into(), Mode::ReadOnly)
    }

    /// Writes are dropped at shutdown. They go to an unlinked sparse
    /// scratch file (0600) in the system's temporary directory, up to
    /// `max_dirty_bytes` (default 4 GiB, [`DEFAULT_EPHEMERAL_SPILL_BYTES`]);
    /// past that the guest gets I/O errors and a kernel log line naming
    /// the limit. See [`Rootfs::in_memory`] and [`Rootfs::spill_dir`].
    pub fn ephemeral(source: impl Into<Source>) -> Self {
        Self::new(
            source.into(),
            Mode::Ephemeral {
                block_size: DEFAULT_EPHEMERAL_BLOCK,
                spill: Spill::File(None),
            },
        )
    }

    /// Ephemeral roots: keep the writes in host memory instead of a
    /// scratch file (default bound then 64 MiB). Other modes ignore it.
    pub fn in_memory(mut self) -> Self {
        if let Mode::Ephemeral { spill, .. } = &mut self.mode {
            *spill = Spill::Memory;
        }
        self
    }

    /// Ephemeral roots: create the scratch file in `dir` (for example a
    /// fast local disk) instead of the system's temporary directory.
    pub fn spill_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        if let Mode::Ephemeral { spill, .. } = &mut self.mode {
            *spill = Spill::File(Some(dir.into()));
        }
        self
    }

    /// Writes go to a qcow2 overlay file at `path` (absolute), created on
    /// first use with `image` as its backing file and `image`'s digest
    /// recorded: a VM booted again on the same file sees them. The file is
    /// locked while a VM uses it; reuse over another base fails. Guest
    /// `sync` is durable (acknowledged after `fdatasync`), a killed host
    /// leaves a consistent file, and `qemu-img` reads it.
    pub fn persistent(image: Image, path: impl Into<PathBuf>) -> Self {
        Self::new(
            Source::Image(image),
            Mode::Persistent {
                path: path.into(),
                cluster_size: OverlayOptions::default().cluster_size,
            },
        )
    }

    /// Writes go to `store`, a caller-owned [`BlockStore`]: a VM booted
    /// again on the same store sees them. Same as
    /// `Rootfs::from(Rootfs::compose(image, store))`. Dirty blocks are
    /// batched in memory up to `max_dirty_bytes` (default 64 MiB) and
    /// written to the store when the batch is full, on guest FLUSH (`sync`)
    /// and at shutdown. Needs a multi-threaded tokio runtime (the store
    /// runs on it).
    pub fn cow(image: Image, store: Arc<dyn BlockStore>) -> Self {
        Self::compose(image, store).into()
    }

    /// `base` with `overlay`'s blocks laid over it: boot it (`Rootfs::from`
    /// gives the cow root writing into `overlay`; `read_only`/`ephemeral`
    /// leave the store untouched) or `flatten` it into a standalone image.
    pub fn compose(base: Image, overlay: Arc<dyn BlockStore>) -> Composed {
        Composed { base, overlay }
    }

    /// Bounds memory held for writes: the ephemeral overlay, the cow
    /// batch, and (persistent) bytes written before an unrequested sync.
    pub fn max_dirty_bytes(mut self, bytes: u64) -> Self {
        self.max_dirty_bytes = Some(bytes);
        self
    }

    /// Block size of an ephemeral overlay, or cluster size of a persistent
    /// overlay created by this boot (an existing file keeps its own). A
    /// cow store sets its own block size; read-only ignores this.
    pub fn block_size(mut self, bytes: u32) -> Self {
        match &mut self.mode {
            Mode::Ephemeral { block_size, .. } => *block_size = bytes,
            Mode::Persistent { cluster_size, .. } => *cluster_size = bytes,
            Mode::ReadOnly | Mode::Cow(_) => {}
        }
        self
    }

    /// The base image.
    pub fn image(&self) -> &Image {
        self.source.base()
    }

    /// What the disk is made of (the persistent overlay included).
    pub fn source(&self) -> Source {
        match &self.mode {
            Mode::Persistent { path, .. } => Source::Persistent {
                image: self.image().clone(),
                path: path.clone(),
            },
            _ => self.source.clone(),
        }
    }

    /// Whether the guest can write.
    pub fn writable(&self) -> bool {
        !matches!(self.mode, Mode::ReadOnly)
    }

    /// The write mode, as data.
    pub fn write_mode(&self) -> WriteMode {
        match &self.mode {
            Mode::ReadOnly => WriteMode::ReadOnly,
            Mode::Ephemeral { .. } => WriteMode::Ephemeral {
                max_dirty_bytes: self.dirty_limit(),
            },
            Mode::Persistent { path, .. } => WriteMode::Persistent { path: path.clone() },
            Mode::Cow(_) => WriteMode::Cow,
        }
    }

    /// A description of the write mode, for environment facts.
    pub fn describe(&self) -> String {
        match &self.mode {
            Mode::ReadOnly => "read-only: guest writes to / fail".into(),
            Mode::Ephemeral { spill, .. } => format!(
                "ephemeral: writes go to {} (at most {} MiB) and vanish at shutdown",
                match spill {
                    Spill::Memory => "host memory".to_string(),
                    Spill::File(dir) => format!(
                        "an unlinked scratch file in {}",
                        dir.clone().unwrap_or_else(std::env::temp_dir).display()
                    ),
                },
                self.dirty_limit() >> 20
            ),
            Mode::Cow(_) => "copy-on-write into a caller-owned block store".into(),
            Mode::Persistent { path, .. } => {
                format!("persistent: writes go to the overlay {}", path.display())
            }
        }
    }

    /// Verifies the base image and opens the disk the guest will see;
    /// `events` hears about overlay conditions (a full ephemeral overlay,
    /// a failing store). Cow roots need a tokio runtime.
    pub fn open(&self, events: Option<EventHook>) -> Result<Box<dyn Disk>, RootfsError> {
        let rt = || {
            tokio::runtime::Handle::try_current().map_err(|_| RootfsError::Io {
                what: "a block store needs a tokio runtime".into(),
                source: io::Error::other("no runtime"),
            })
        };
        Ok(match (&self.mode, &self.source) {
            (Mode::Cow(c), _) => {
                let base = Source::open_base(&c.base)?;
                let disk = CowDisk::open(
                    base,
                    c.overlay.clone(),
                    c.context(),
                    rt()?,
                    self.dirty_limit(),
                    events,
                )
                .map_err(|source| RootfsError::Io {
                    what: "opening the block store".into(),
                    source,
                })?;
                Box::new(disk)
            }
            (Mode::Persistent { path, cluster_size }, _) => {
                let image = self.image();
                let opts = OverlayOptions {
                    cluster_size: *cluster_size,
                    max_unsynced_bytes: self.dirty_limit(),
                };
                let base = Source::open_base(image)?;
                Box::new(Qcow2Overlay::open(path, base, image, opts)?)
            }
            (Mode::ReadOnly, source) => Box::new(ReadOnly(self.open_source(source, rt)?)),
            (Mode::Ephemeral { block_size, spill }, source) => {
                let b = *block_size;
                if !crate::span::valid_block_size(u64::from(b)) {
                    return Err(RootfsError::InvalidOption(format!(
                        "ephemeral block size {b} must be a multiple of 512 up to 1 MiB"
                    )));
                }
                let base = self.open_source(source, rt)?;
                let limit = self.dirty_limit();
                let overlay = match spill {
                    Spill::Memory => MemOverlay::new(base, limit),
                    Spill::File(dir) => {
                        let dir = dir.clone().unwrap_or_else(std::env::temp_dir);
                        MemOverlay::spilled(base, limit, &dir).map_err(|source| {
                            RootfsError::Io {
                                what: format!(
                                    "creating the ephemeral scratch file in {} (choose \
                                     another with .spill_dir(..) or use .in_memory())",
                                    dir.display()
                                ),
                                source,
                            }
                        })?
                    }
                }
                .block_size(*block_size);
                Box::new(match events {
                    Some(hook) => overlay.on_event(hook),
                    None => overlay,
                })
            }
        })
    }

    fn open_source(
        &self,
        source: &Source,
        rt: impl Fn() -> Result<tokio::runtime::Handle, RootfsError>,
    ) -> Result<Box<dyn Disk>, RootfsError> {
        match source {
            Source::Image(image) => Source::open_base(image),
            other => other.open_read(&rt()?),
        }
    }
}

impl From<Composed> for Rootfs {
    /// The cow root: the guest's writes go into the composed overlay store.
    fn from(c: Composed) -> Self {
        Self::new(Source::Composed(c.clone()), Mode::Cow(Box::new(c)))
    }
}

/// Refuses writes to any disk.
struct ReadOnly(Box<dyn Disk>);

impl Disk for ReadOnly {
    fn runs_caller_code(&self) -> bool {
        self.0.runs_caller_code()
    }

    fn size(&self) -> u64 {
        self.0.size()
    }
    fn read_only(&self) -> bool {
        true
    }
    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        self.0.read_at(offset, buf)
    }
    fn write_at(&mut self, _offset: u64, _data: &[u8]) -> io::Result<()> {
        Err(io::Error::from_raw_os_error(libc::EROFS))
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
    fn written(&self) -> Option<crate::Written> {
        Some(crate::Written {
            block: u64::from(DEFAULT_EPHEMERAL_BLOCK),
            runs: Vec::new(),
        })
    }
}
