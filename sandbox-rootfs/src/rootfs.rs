//! How the guest's root disk treats writes.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;

use crate::{Disk, Image, MemOverlay, RootfsError};

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

    /// Verifies the base image and opens the disk the guest will see.
    pub fn open(&self) -> Result<Box<dyn Disk>, RootfsError> {
        self.image.verify()?;
        let io_err = |source| RootfsError::Io {
            what: format!("opening image {}", self.image.path.display()),
            source,
        };
        Ok(match self.mode {
            Mode::ReadOnly => Box::new(ReadOnlyDisk::open(&self.image).map_err(io_err)?),
            Mode::Ephemeral { max_dirty_bytes } => {
                Box::new(MemOverlay::open(&self.image.path, max_dirty_bytes).map_err(io_err)?)
            }
        })
    }
}

/// The base image served as is; writes fail.
struct ReadOnlyDisk {
    file: File,
    size: u64,
}

impl ReadOnlyDisk {
    fn open(image: &Image) -> io::Result<Self> {
        let file = File::open(&image.path)?;
        let size = file.metadata()?.len() & !511;
        Ok(Self { file, size })
    }
}

impl Disk for ReadOnlyDisk {
    fn size(&self) -> u64 {
        self.size
    }

    fn read_only(&self) -> bool {
        true
    }

    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        self.file.read_exact_at(buf, offset)
    }

    fn write_at(&mut self, _offset: u64, _data: &[u8]) -> io::Result<()> {
        Err(io::Error::from_raw_os_error(libc::EROFS))
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}
