//! Immutable base images and their content digests.

use std::collections::BTreeMap;
use std::collections::HashMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use sha2::{Digest, Sha256};

use crate::verified::{self, FileId};
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
    /// Defaults for the processes a VM runs (an imported image's OCI
    /// config; empty for built-in images).
    pub run: crate::oci::RunDefaults,
}

/// Files whose digest was checked in this process, so each is hashed once
/// rather than at every boot (a changed file has another identity). Across
/// processes, verification records do the same (`verified.rs`).
static VERIFIED: Mutex<Option<HashMap<PathBuf, (FileId, String)>>> = Mutex::new(None);

impl Image {
    /// An image file the caller keeps, pinned by its sha256 (`sha256:<hex>`
    /// or bare hex): the file is hashed now and refused when it differs,
    /// and checked again at every boot (a changed file never boots). Raw
    /// or qcow2, told by the file's first bytes. When the file is an
    /// import's (an `image.json` beside it records the same sha256), the
    /// image's name, facts and run defaults come back with it.
    pub fn open(path: impl Into<PathBuf>, sha256: &str) -> Result<Image, RootfsError> {
        let path = path.into();
        let hex = sha256.strip_prefix("sha256:").unwrap_or(sha256);
        if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(RootfsError::InvalidOption(format!(
                "{sha256:?} is not a sha256 digest (sha256:<64 hex>)"
            )));
        }
        let io_err = |source| RootfsError::Io {
            what: format!("opening image {}", path.display()),
            source,
        };
        let size = std::fs::metadata(&path).map_err(io_err)?.len();
        let mut magic = [0u8; 4];
        let qcow2 = {
            use std::os::unix::fs::FileExt;
            let f = std::fs::File::open(&path).map_err(io_err)?;
            f.read_exact_at(&mut magic, 0).is_ok() && magic == *b"QFI\xfb"
        };
        let mut image = Image {
            name: path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
            path: path.clone(),
            format: if qcow2 {
                ImageFormat::Qcow2
            } else {
                ImageFormat::Raw
            },
            arch: std::env::consts::ARCH.into(),
            sha256: hex.to_ascii_lowercase(),
            size,
            facts: BTreeMap::from([("source".to_string(), "file".to_string())]),
            run: Default::default(),
        };
        image.verify()?;
        if let Some(record) = path
            .parent()
            .and_then(|d| std::fs::read(d.join("image.json")).ok())
            .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
            .filter(|r| r["sha256"].as_str() == Some(&image.sha256))
        {
            if let Some(name) = record["names"].get(0).and_then(|n| n.as_str()) {
                image.name = name.to_string();
                image.facts.insert("image.name".into(), name.to_string());
            }
            if let Some(d) = record["digest"].as_str() {
                image.facts.insert("image.digest".into(), d.to_string());
            }
            image.facts.insert("source".into(), "image".into());
            if let Ok(run) = serde_json::from_value(record["run"].clone()) {
                image.run = run;
            }
        }
        Ok(image)
    }

    /// The image as a read-only disk, verified first ([`Image::verify`]).
    pub fn open_disk(&self) -> Result<Box<dyn crate::Disk>, RootfsError> {
        crate::Source::open_base(self)
    }

    /// Checks the file against the recorded size and sha256 digest. A
    /// file already checked in this process, or recorded as checked by
    /// another (`<cache>/verified/`, see docs/images.md), is not hashed
    /// again while its identity (device, inode, size, mtime, ctime) is
    /// unchanged.
    pub fn verify(&self) -> Result<(), RootfsError> {
        let io_err = |source| RootfsError::Io {
            what: format!("reading image {}", self.path.display()),
            source,
        };
        let id = FileId::of(&self.path).map_err(io_err)?;
        let mut cache = VERIFIED.lock().unwrap_or_else(|e| e.into_inner());
        let known = cache.get_or_insert_with(HashMap::new);
        if known.get(&self.path) == Some(&(id, self.sha256.clone())) {
            return Ok(());
        }
        let records = verified::cache_dir().join("verified");
        if id.size() == self.size && verified::recorded(&records, &self.path, &self.sha256, &id) {
            known.insert(self.path.clone(), (id, self.sha256.clone()));
            return Ok(());
        }
        let actual = sha256_file(&self.path).map_err(io_err)?;
        if actual != self.sha256 || id.size() != self.size {
            return Err(RootfsError::DigestMismatch {
                path: self.path.clone(),
                expected: self.sha256.clone(),
                actual,
            });
        }
        verified::record(&records, &self.path, &actual, &id);
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
