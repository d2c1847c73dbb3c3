//! How the guest's root disk treats writes.

use std::sync::Arc;

use crate::{
    BlockStore, CowDisk, Disk, EventHook, Image, ImageFormat, MemOverlay, Qcow2Image, RawImage,
    RootfsError, StoreContext,
};

/// Default bound of an ephemeral overlay.
pub const DEFAULT_MAX_DIRTY_BYTES: u64 = 64 << 20;

#[derive(Clone)]
enum Mode {
    ReadOnly,
    Ephemeral {
        max_dirty_bytes: u64,
    },
    Cow {
        store: Arc<dyn BlockStore>,
        max_dirty_bytes: u64,
    },
}

impl std::fmt::Debug for Mode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Mode::ReadOnly => f.write_str("ReadOnly"),
            Mode::Ephemeral { max_dirty_bytes } => write!(f, "Ephemeral({max_dirty_bytes})"),
            Mode::Cow {
                max_dirty_bytes, ..
            } => write!(f, "Cow({max_dirty_bytes})"),
        }
    }
}

/// A root file system: an immutable base image plus a write policy.
#[derive(Clone, Debug)]
pub struct Rootfs {
    image: Image,
    mode: Mode,
}

impl Rootfs {
    /// Writes fail (the guest mounts its root read-only); the default.
    pub fn read_only(image: Image) -> Self {
        Self {
            image,
            mode: Mode::ReadOnly,
        }
    }

    /// Writes are kept in memory and dropped at shutdown, up to
    /// `max_dirty_bytes` (default 64 MiB); past that the guest gets I/O
    /// errors, never the host an out-of-memory.
    pub fn ephemeral(image: Image) -> Self {
        Self {
            image,
            mode: Mode::Ephemeral {
                max_dirty_bytes: DEFAULT_MAX_DIRTY_BYTES,
            },
        }
    }

    /// Writes go to `store`, a caller-owned [`BlockStore`]: a VM booted
    /// again on the same store sees them. Dirty blocks are batched in memory
    /// up to `max_dirty_bytes` (default 64 MiB) and written to the store
    /// when the batch is full, on guest FLUSH (`sync`) and at shutdown. Needs
    /// a multi-threaded tokio runtime (the store runs on it).
    pub fn cow(image: Image, store: Arc<dyn BlockStore>) -> Self {
        Self {
            image,
            mode: Mode::Cow {
                store,
                max_dirty_bytes: DEFAULT_MAX_DIRTY_BYTES,
            },
        }
    }

    /// Sets the bound of an ephemeral overlay or a cow batch (no effect on
    /// read-only).
    pub fn max_dirty_bytes(mut self, bytes: u64) -> Self {
        match &mut self.mode {
            Mode::Ephemeral { max_dirty_bytes }
            | Mode::Cow {
                max_dirty_bytes, ..
            } => {
                *max_dirty_bytes = bytes;
            }
            Mode::ReadOnly => {}
        }
        self
    }

    /// The base image.
    pub fn image(&self) -> &Image {
        &self.image
    }

    /// Whether the guest can write.
    pub fn writable(&self) -> bool {
        !matches!(self.mode, Mode::ReadOnly)
    }

    /// A description of the write mode, for environment facts.
    pub fn describe(&self) -> String {
        match self.mode {
            Mode::ReadOnly => "read-only: guest writes to / fail".into(),
            Mode::Ephemeral { max_dirty_bytes } => format!(
                "ephemeral: writes stay in memory (at most {} MiB) and vanish at shutdown",
                max_dirty_bytes >> 20
            ),
            Mode::Cow { .. } => "copy-on-write into a caller-owned block store".into(),
        }
    }

    /// Verifies the base image and opens the disk the guest will see;
    /// `events` hears about overlay conditions (a full ephemeral overlay).
    pub fn open(&self, events: Option<EventHook>) -> Result<Box<dyn Disk>, RootfsError> {
        self.image.verify()?;
        let io_err = |source| RootfsError::Io {
            what: format!("opening image {}", self.image.path.display()),
            source,
        };
        let base: Box<dyn Disk> = match self.image.format {
            ImageFormat::Raw => Box::new(RawImage::open(&self.image.path).map_err(io_err)?),
            ImageFormat::Qcow2 => Box::new(Qcow2Image::open(&self.image.path)?),
        };
        Ok(match &self.mode {
            Mode::ReadOnly => base,
            Mode::Cow {
                store,
                max_dirty_bytes,
            } => {
                let rt = tokio::runtime::Handle::try_current().map_err(|_| RootfsError::Io {
                    what: "Rootfs::cow needs a tokio runtime".into(),
                    source: std::io::Error::other("no runtime"),
                })?;
                let ctx = StoreContext {
                    base_name: self.image.name.clone(),
                    base_sha256: self.image.sha256.clone(),
                };
                let disk = CowDisk::open(base, store.clone(), ctx, rt, *max_dirty_bytes, events)
                    .map_err(|source| RootfsError::Io {
                        what: "opening the block store".into(),
                        source,
                    })?;
                Box::new(disk)
            }
            Mode::Ephemeral { max_dirty_bytes } => {
                let overlay = MemOverlay::new(base, *max_dirty_bytes);
                Box::new(match events {
                    Some(hook) => overlay.on_event(hook),
                    None => overlay,
                })
            }
        })
    }
}
