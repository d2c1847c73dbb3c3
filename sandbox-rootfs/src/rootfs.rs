//! How the guest's root disk treats writes.

use crate::{Disk, EventHook, Image, ImageFormat, MemOverlay, Qcow2Image, RawImage, RootfsError};

/// Default bound of an ephemeral overlay.
pub const DEFAULT_MAX_DIRTY_BYTES: u64 = 64 << 20;

#[derive(Clone, Debug, PartialEq, Eq)]
enum Mode {
    ReadOnly,
    Ephemeral { max_dirty_bytes: u64 },
}

/// A root file system: an immutable base image plus a write policy.
#[derive(Clone, Debug, PartialEq, Eq)]
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

    /// Sets the bound of an ephemeral overlay (no effect on read-only).
    pub fn max_dirty_bytes(mut self, bytes: u64) -> Self {
        if let Mode::Ephemeral { max_dirty_bytes } = &mut self.mode {
            *max_dirty_bytes = bytes;
        }
        self
    }

    /// The base image.
    pub fn image(&self) -> &Image {
        &self.image
    }

    /// Whether the guest can write.
    pub fn writable(&self) -> bool {
        self.mode != Mode::ReadOnly
    }

    /// A description of the write mode, for environment facts.
    pub fn describe(&self) -> String {
        match self.mode {
            Mode::ReadOnly => "read-only: guest writes to / fail".into(),
            Mode::Ephemeral { max_dirty_bytes } => format!(
                "ephemeral: writes stay in memory (at most {} MiB) and vanish at shutdown",
                max_dirty_bytes >> 20
            ),
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
        Ok(match self.mode {
            Mode::ReadOnly => base,
            Mode::Ephemeral { max_dirty_bytes } => {
                let overlay = MemOverlay::new(base, max_dirty_bytes);
                Box::new(match events {
                    Some(hook) => overlay.on_event(hook),
                    None => overlay,
                })
            }
        })
    }
}
