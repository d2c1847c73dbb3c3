//! Immutable base images and their content digests.

use std::collections::BTreeMap;
use std::collections::HashMap;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use sha2::{Digest, Sha256};

use crate::RootfsError;

/// Container format of an image file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ImageFormat {
    /// A raw disk image.
    Raw,
    /// A qcow2 image (v2 or v3; zlib-compressed clusters and backing files
    /// are read, the image is never written).
    Qcow2,
}

/// An immutable root file system image.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Image {
    /// Name, e.g. `minimal`.
    pub name: String,
    /// Where the image file is.
    pub path: PathBuf,
    /// Container format.
    pub format: ImageFormat,
    /// Guest architecture, e.g. `x86_64`.
    pub arch: String,
    /// sha256 of the image file, lowercase hex.
    pub sha256: String,
    /// Size of the image file in bytes.
    pub size: u64,
    /// Facts about the image (distro, shell, package manager).
    pub facts: BTreeMap<String, String>,
}

/// Identity of a file as last verified: device, inode, size, mtime.
type FileId = (u64, u64, u64, i64, i64);

fn file_id(path: &Path) -> io::Result<FileId> {
    let m = std::fs::metadata(path)?;
    Ok((m.dev(), m.ino(), m.size(), m.mtime(), m.mtime_nsec()))
}

/// Files whose digest was checked in this process, so each is hashed once
/// rather than at every boot (a changed file has another identity).
static VERIFIED: Mutex<Option<HashMap<PathBuf, (FileId, String)>>> = Mutex::new(None);

impl Image {
    /// Checks the file against the recorded size and sha256 digest.
    pub fn verify(&self) -> Result<(), RootfsError> {
        let io_err = |source| RootfsError::Io {
            what: format!("reading image {}", self.path.display()),
            source,
        };
        let id = file_id(&self.path).map_err(io_err)?;
        let mut cache = VERIFIED.lock().unwrap_or_else(|e| e.into_inner());
        let known = cache.get_or_insert_with(HashMap::new);
        if known.get(&self.path) == Some(&(id, self.sha256.clone())) {
            return Ok(());
        }
        let actual = sha256_file(&self.path).map_err(io_err)?;
        if actual != self.sha256 || id.2 != self.size {
            return Err(RootfsError::DigestMismatch {
                path: self.path.clone(),
                expected: self.sha256.clone(),
                actual,
            });
        }
        known.insert(self.path.clone(), (id, actual));
        Ok(())
    }
}

/// sha256 of a file, lowercase hex.
pub fn sha256_file(path: &Path) -> io::Result<String> {
    let mut f = std::fs::File::open(path)?;
    let mut h = Sha256::new();
    io::copy(&mut f, &mut h)?;
    Ok(hex::encode(h.finalize()))
}
