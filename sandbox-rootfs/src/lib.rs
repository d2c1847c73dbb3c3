//! Root file systems: block-level storage behind the guest's virtio-blk root.
//!
//! Today this crate holds the [`Disk`] trait the block device serves and
//! [`MemOverlay`]: a read-only base image file with writes kept in memory
//! (an ephemeral overlay). The full stack (qcow2 bases, persistent and
//! caller-owned overlays, compose, flatten, byte streaming) lands with the
//! root file system issue and plugs in behind the same trait.

mod overlay;

pub use overlay::MemOverlay;

use std::io;

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
}
