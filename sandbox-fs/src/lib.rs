//! Host file systems served to the guest over virtio-fs (the device is
//! `sandbox_virtio::fs`; nothing here knows the transport).
//!
//! A file system here is a fuse-backend-rs [`FileSystem`] with `u64`
//! inodes and handles ([`FuseFs`]). [`bind`] serves a host directory
//! through fuse-backend-rs's passthrough, wrapped in [`Confined`], which
//! keeps the guest inside the directory and off the host's privileges.
//! [`vfs::FileSystem`] is the async trait an application implements to
//! serve a mount from its own code; [`Virtual`] serves one (with a deadline
//! per request), and [`MemoryFs`] is the library's own implementation.

mod adapter;
mod bind;
mod confined;
pub mod ids;
mod listing;
mod masked;
mod memory;
#[cfg(test)]
mod tests;
mod tracked;
#[cfg(test)]
mod tracked_tests;
pub mod vfs;
#[cfg(test)]
mod vfs_tests;

pub use adapter::{Virtual, DEFAULT_DEADLINE};
pub use bind::{bind, bind_masked, Access, BindError, CACHE_TIMEOUT};
pub use confined::Confined;
pub use fuse_backend_rs::api::filesystem::FileSystem;
pub use masked::{Masked, STORAGE};
pub use memory::{MemoryFs, DEFAULT_LIMIT};
pub use tracked::{Restored, Tracked};

/// FUSE options every served file system asks for: requests of up to 1
/// MiB (`BIG_WRITES`, `MAX_PAGES`; without them the guest writes 4 KiB per
/// request, measured 20x slower than virtiofsd on a 1 GiB write), reads
/// and directory operations in parallel, and cached data dropped when the
/// host changes a file's mtime (`AUTO_INVAL_DATA`).
pub const TRANSFER_OPTIONS: fuse_backend_rs::api::filesystem::FsOptions =
    fuse_backend_rs::api::filesystem::FsOptions::ASYNC_READ
        .union(fuse_backend_rs::api::filesystem::FsOptions::BIG_WRITES)
        .union(fuse_backend_rs::api::filesystem::FsOptions::MAX_PAGES)
        .union(fuse_backend_rs::api::filesystem::FsOptions::PARALLEL_DIROPS)
        .union(fuse_backend_rs::api::filesystem::FsOptions::AUTO_INVAL_DATA);

/// An errno as the error the FUSE server answers with.
pub(crate) fn err(code: i32) -> std::io::Error {
    std::io::Error::from_raw_os_error(code)
}

/// A file system the virtio-fs device can serve.
pub trait FuseFs: FileSystem<Inode = u64, Handle = u64> + Send + Sync + 'static {}

impl<T: FileSystem<Inode = u64, Handle = u64> + Send + Sync + 'static> FuseFs for T {}
