//! Root file systems: block-level storage behind the guest's virtio-blk root.
//!
//! Today: [`Image`] (an immutable base with a verified sha256 digest),
//! [`Rootfs`] with the read-only and ephemeral write modes, the [`Disk`]
//! trait the block device serves, and [`MemOverlay`] (writes kept in
//! memory). The rest of the stack (qcow2 bases, persistent and caller-owned
//! overlays, compose, flatten, byte streaming) plugs in behind `Disk`.

mod flatten;
mod image;
mod memstore;
pub mod oci;
mod overlay;
pub mod qcow2;
mod raw;
mod rootfs;
mod source;
mod span;
mod store;
mod stream;
mod tmpfile;
mod verified;
mod written;

pub use flatten::{flatten, flatten_qcow2, FlatImage, Qcow2Options};
pub use image::{sha256_file, Image, ImageFormat};
pub use memstore::MemStore;
pub use overlay::MemOverlay;
pub use qcow2::{OverlayOptions, Qcow2Image, Qcow2Overlay};
pub use raw::RawImage;
pub use rootfs::{
    Rootfs, WriteMode, DEFAULT_EPHEMERAL_BLOCK, DEFAULT_EPHEMERAL_SPILL_BYTES,
    DEFAULT_MAX_DIRTY_BYTES,
};
pub use source::{Composed, Source};
pub use store::{BlockStore, CowDisk, StoreContext};
pub use stream::{bytes, ImageBytes};
pub use verified::cache_dir;
pub use written::{Layered, Written};

use std::io;
use std::path::PathBuf;

/// Something the host should know about a running root file system.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RootfsEvent {
    /// An ephemeral overlay is full: guest writes to new blocks now fail
    /// with I/O errors.
    DirtyLimitReached {
        /// The configured bound.
        max_dirty_bytes: u64,
    },
    /// A caller-owned block store failed; the guest saw an I/O error and
    /// the unwritten blocks are kept for a retry.
    StoreFailed {
        /// The store's error.
        message: String,
    },
}

/// Receives [`RootfsEvent`]s, on the device's thread: keep it short.
pub type EventHook = std::sync::Arc<dyn Fn(RootfsEvent) + Send + Sync>;

/// Errors preparing a root file system.
#[derive(Debug, thiserror::Error)]
pub enum RootfsError {
    /// The image file does not match its recorded digest.
    #[error("image {path} does not match its digest (expected sha256 {expected}, found {actual}); rebuild it (`cargo xtask build --rebuild`) or fix the descriptor")]
    DigestMismatch {
        /// The file.
        path: PathBuf,
        /// Recorded digest.
        expected: String,
        /// Actual digest.
        actual: String,
    },
    /// Host I/O failed.
    #[error("{what}")]
    Io {
        /// What was being done.
        what: String,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// A qcow2 image is malformed or uses something not supported.
    #[error("qcow2: {0}")]
    Qcow2(String),
    /// A setting is out of range.
    #[error("{0}")]
    InvalidOption(String),
    /// Another VM (or process) holds the persistent overlay.
    #[error("the persistent rootfs {0} is in use by another VM (its lock is held); shut that VM down or use another path")]
    Locked(PathBuf),
    /// A persistent overlay path must be absolute.
    #[error("the persistent rootfs path {0} must be absolute")]
    InvalidPath(PathBuf),
    /// The file exists but was not created as a persistent overlay.
    #[error(
        "{0} is not a sandbox persistent overlay (it records no base digest); choose a new path"
    )]
    NotOurOverlay(PathBuf),
    /// The overlay was created over another base image.
    #[error("the persistent rootfs {path} was created over base {recorded}, but image {image} is {actual}; boot it with its original base or use a new path")]
    BaseMismatch {
        /// The overlay.
        path: PathBuf,
        /// The digest it records.
        recorded: String,
        /// The image it was opened with.
        image: String,
        /// That image's digest.
        actual: String,
    },
}

/// A block device's storage as the virtio-blk device sees it: byte-addressed,
/// fixed size. Implementations validate ranges themselves; the device has
/// already checked them against [`Disk::size`].
pub trait Disk: Send {
    /// Size in bytes (a multiple of 512).
    fn size(&self) -> u64;
    /// Whether writes are refused.
    fn read_only(&self) -> bool;
    /// Reads `buf.len()` bytes at `offset`.
    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> io::Result<()>;
    /// Writes `data` at `offset`.
    fn write_at(&mut self, offset: u64, data: &[u8]) -> io::Result<()>;
    /// Makes completed writes durable.
    fn flush(&mut self) -> io::Result<()>;
    /// Whether I/O on this disk runs code the library does not control (a
    /// caller's `BlockStore`), which may need any system call: the device
    /// thread serving it then gets no syscall filter.
    fn runs_caller_code(&self) -> bool {
        false
    }
    /// The blocks that differ from the image under this disk: an
    /// ephemeral overlay's written blocks (with those of a [`Layered`]
    /// disk below it), nothing for a read-only view of the image; `None`
    /// when this disk cannot say (an image itself, a persistent overlay, a
    /// store). A snapshot stores only these when it can name the image.
    fn written(&self) -> Option<Written> {
        None
    }
}

/// A disk held entirely in memory (tests, fuzzing, scratch devices).
pub struct MemDisk {
    data: Vec<u8>,
}

impl MemDisk {
    /// A zeroed disk of `size` bytes, rounded down to whole sectors.
    pub fn new(size: usize) -> Self {
        Self {
            data: vec![0; size & !511],
        }
    }

    fn range(&self, offset: u64, len: usize) -> io::Result<std::ops::Range<usize>> {
        span::check(self.data.len() as u64, offset, len)?;
        Ok(offset as usize..offset as usize + len)
    }
}

impl Disk for MemDisk {
    fn size(&self) -> u64 {
        self.data.len() as u64
    }

    fn read_only(&self) -> bool {
        false
    }

    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        let r = self.range(offset, buf.len())?;
        buf.copy_from_slice(&self.data[r]);
        Ok(())
    }

    fn write_at(&mut self, offset: u64, data: &[u8]) -> io::Result<()> {
        let r = self.range(offset, data.len())?;
        self.data[r].copy_from_slice(data);
        Ok(())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}
