//! Guest file system operations requested by the host.

use serde::{Deserialize, Serialize};

/// One file system operation. Paths are absolute guest paths as raw bytes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum FsOp {
    /// `lstat`: symlinks are not followed.
    Stat {
        /// The path.
        path: Vec<u8>,
    },
    /// List a directory with each entry's metadata (answered in
    /// [`crate::GuestMsg::FsEntries`] batches).
    ReadDir {
        /// The directory.
        path: Vec<u8>,
    },
    /// Read a file from `offset`, `length` bytes or to the end, as output
    /// chunks under the usual credit window.
    ReadFile {
        /// The file.
        path: Vec<u8>,
        /// Where to start.
        offset: u64,
        /// How much to read; `None` reads to the end.
        length: Option<u64>,
    },
    /// Create or truncate a file and write the bytes that follow as stdin
    /// chunks until `CloseStdin`.
    WriteFile {
        /// The file.
        path: Vec<u8>,
        /// Create missing parent directories first.
        create_parents: bool,
        /// Permission bits for a new file.
        mode: u32,
    },
    /// Create a directory.
    Mkdir {
        /// The directory.
        path: Vec<u8>,
        /// Create parents too and accept an existing directory.
        recursive: bool,
    },
    /// Remove a file, symlink or directory.
    Remove {
        /// The path.
        path: Vec<u8>,
        /// Remove a directory's contents too.
        recursive: bool,
        /// A missing path is not an error.
        force: bool,
    },
    /// One `rename(2)`; parents are not created.
    Rename {
        /// Current path.
        from: Vec<u8>,
        /// New path.
        to: Vec<u8>,
    },
}

/// What kind of file a path names.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum FileKind {
    /// A regular file.
    File,
    /// A directory.
    Dir,
    /// A symbolic link.
    Symlink,
    /// Anything else (device, fifo, socket).
    Other,
}

/// File metadata (from `lstat`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileStat {
    /// Kind.
    pub kind: FileKind,
    /// Size in bytes.
    pub size: u64,
    /// Permission and type bits (`st_mode`).
    pub mode: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Modification time, nanoseconds since the epoch.
    pub mtime_ns: i64,
    /// A symlink's target.
    pub link_target: Option<Vec<u8>>,
}

/// One directory entry.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DirEntry {
    /// The name, raw bytes.
    pub name: Vec<u8>,
    /// Its metadata.
    pub stat: FileStat,
}

/// The final answer to a file system request.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum FsReply {
    /// Done, nothing to return.
    Done,
    /// Metadata.
    Stat(FileStat),
}

/// A failed file system request.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FsError {
    /// The guest errno.
    pub errno: i32,
    /// Human-readable reason.
    pub message: String,
}
