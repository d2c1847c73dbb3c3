//! The file system an application implements to serve a mount from its own
//! code (`Mount::virtual_fs`). The library's memory file system
//! ([`crate::MemoryFs`]) is one implementation.
//!
//! Inode numbers are the implementation's ([`ROOT`] is the root); names are
//! single path components as bytes. Every method returns a boxed future, so
//! an implementation may await anything (a database, the network). Each
//! guest request is run as a task on the runtime that booted the VM, under
//! a deadline: a request that panics or does not finish in time fails with
//! `EIO` in the guest, and the VM and host go on.

use std::ffi::OsString;
use std::future::Future;
use std::pin::Pin;
use std::time::SystemTime;

/// An inode number.
pub type Ino = u64;

/// The root directory's inode number.
pub const ROOT: Ino = 1;

/// An error as the guest sees it: a Linux errno.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Errno(pub i32);

impl Errno {
    /// No such file or directory.
    pub const ENOENT: Errno = Errno(libc::ENOENT);
    /// The file exists.
    pub const EEXIST: Errno = Errno(libc::EEXIST);
    /// Not a directory.
    pub const ENOTDIR: Errno = Errno(libc::ENOTDIR);
    /// Is a directory.
    pub const EISDIR: Errno = Errno(libc::EISDIR);
    /// The directory is not empty.
    pub const ENOTEMPTY: Errno = Errno(libc::ENOTEMPTY);
    /// No space left.
    pub const ENOSPC: Errno = Errno(libc::ENOSPC);
    /// Invalid argument.
    pub const EINVAL: Errno = Errno(libc::EINVAL);
    /// Input/output error.
    pub const EIO: Errno = Errno(libc::EIO);
    /// Permission denied.
    pub const EACCES: Errno = Errno(libc::EACCES);
    /// Read-only file system.
    pub const EROFS: Errno = Errno(libc::EROFS);
    /// Not supported.
    pub const ENOSYS: Errno = Errno(libc::ENOSYS);
}

impl std::fmt::Display for Errno {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", std::io::Error::from_raw_os_error(self.0))
    }
}

impl std::error::Error for Errno {}

/// A result of a file system call.
pub type FsResult<T> = Result<T, Errno>;

/// What every method returns.
pub type FsFuture<'a, T> = Pin<Box<dyn Future<Output = FsResult<T>> + Send + 'a>>;

/// The kind of an inode.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FileKind {
    /// A regular file.
    File,
    /// A directory.
    Dir,
    /// A symbolic link.
    Symlink,
}

/// An inode's attributes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Attr {
    /// Inode number.
    pub ino: Ino,
    /// Kind.
    pub kind: FileKind,
    /// Size in bytes (a symlink: its target's length).
    pub size: u64,
    /// Permission bits (`0o644`...).
    pub perm: u32,
    /// Number of names.
    pub nlink: u32,
    /// Last change of the content.
    pub mtime: SystemTime,
}

/// One directory entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DirEntry {
    /// The name, one component.
    pub name: OsString,
    /// Its inode.
    pub ino: Ino,
    /// Its kind.
    pub kind: FileKind,
}

/// Changes to an inode's attributes (`None`: unchanged).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SetAttr {
    /// New permission bits.
    pub perm: Option<u32>,
    /// New size (truncate or extend with zeros).
    pub size: Option<u64>,
    /// New modification time.
    pub mtime: Option<SystemTime>,
}

/// A file system served to the guest from the application's code.
pub trait FileSystem: Send + Sync + 'static {
    /// The entry `name` in directory `parent`.
    fn lookup(&self, parent: Ino, name: OsString) -> FsFuture<'_, Attr>;
    /// The attributes of `ino`.
    fn getattr(&self, ino: Ino) -> FsFuture<'_, Attr>;
    /// Changes attributes of `ino`; returns the new ones.
    fn setattr(&self, ino: Ino, set: SetAttr) -> FsFuture<'_, Attr>;
    /// Every entry of directory `ino` (without `.` and `..`).
    fn readdir(&self, ino: Ino) -> FsFuture<'_, Vec<DirEntry>>;
    /// Up to `size` bytes of file `ino` from `offset` (fewer at the end).
    fn read(&self, ino: Ino, offset: u64, size: u32) -> FsFuture<'_, Vec<u8>>;
    /// Writes `data` into file `ino` at `offset`; returns the bytes written.
    fn write(&self, ino: Ino, offset: u64, data: Vec<u8>) -> FsFuture<'_, u32>;
    /// Creates an empty file `name` in `parent`.
    fn create(&self, parent: Ino, name: OsString, perm: u32) -> FsFuture<'_, Attr>;
    /// Creates a directory `name` in `parent`.
    fn mkdir(&self, parent: Ino, name: OsString, perm: u32) -> FsFuture<'_, Attr>;
    /// Removes the file or symlink `name` from `parent`.
    fn unlink(&self, parent: Ino, name: OsString) -> FsFuture<'_, ()>;
    /// Removes the empty directory `name` from `parent`.
    fn rmdir(&self, parent: Ino, name: OsString) -> FsFuture<'_, ()>;
    /// Moves `name` in `parent` to `new_name` in `new_parent`, replacing
    /// what is there as POSIX `rename` does.
    fn rename(
        &self,
        parent: Ino,
        name: OsString,
        new_parent: Ino,
        new_name: OsString,
    ) -> FsFuture<'_, ()>;
    /// Creates a symlink `name` in `parent` pointing at `target`.
    fn symlink(&self, parent: Ino, name: OsString, target: OsString) -> FsFuture<'_, Attr>;
    /// The target of symlink `ino`.
    fn readlink(&self, ino: Ino) -> FsFuture<'_, OsString>;
}
