//! Container images from outside: an OCI image layout (a directory, or the
//! same packed as a tar) or a `docker save` archive, resolved to one
//! manifest for one platform, with every document checked against its
//! digest. Nothing here unpacks a layer: layers are untrusted tar streams,
//! applied inside a helper VM (sandbox-core's `images::import`). The host
//! only reads, hashes and copies their bytes.

mod digest;
mod resolve;
mod schema;
mod store;

use std::io;

pub use digest::Digest;
pub use resolve::{resolve, Platform, Selector};
pub use store::Location;

/// How a layer blob is compressed, as its media type (or, for legacy
/// `docker save` layers, its first bytes) says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Compression {
    /// A plain tar.
    None,
    /// gzip.
    Gzip,
    /// zstd.
    Zstd,
}

impl Compression {
    /// Recognizes a compressed stream by its magic bytes.
    pub fn sniff(head: &[u8]) -> Self {
        if head.starts_with(&[0x1f, 0x8b]) {
            Compression::Gzip
        } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
            Compression::Zstd
        } else {
            Compression::None
        }
    }
}

/// One layer, in application order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Layer {
    /// Digest of the blob as stored (compressed, if it is).
    pub digest: Digest,
    /// Digest of the uncompressed tar (the config's `diff_ids`), which the
    /// unpacker checks.
    pub diff_id: Digest,
    /// Where the blob is.
    pub location: Location,
    /// Its compression.
    pub compression: Compression,
}

/// The run defaults an image's configuration carries.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RunDefaults {
    /// `Env` (`NAME=value`).
    pub env: Vec<String>,
    /// `WorkingDir`.
    pub working_dir: Option<String>,
    /// `User` (`name`, `uid`, `uid:gid`, ...).
    pub user: Option<String>,
    /// `Entrypoint`.
    pub entrypoint: Vec<String>,
    /// `Cmd`.
    pub cmd: Vec<String>,
}

/// The kind of source an image came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SourceFormat {
    /// An OCI image layout (a directory or a tar of one).
    OciLayout,
    /// A `docker save` archive without an OCI index (Docker before 25).
    DockerArchive,
}

/// One image, resolved and its documents verified.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Resolved {
    /// What the source was.
    pub format: SourceFormat,
    /// The image's identity: the manifest's digest, or for a legacy
    /// `docker save` archive (which has no manifest) the config's digest,
    /// Docker's image id. Imports are cached by it.
    pub digest: Digest,
    /// The config's digest.
    pub config_digest: Digest,
    /// Its platform.
    pub platform: Platform,
    /// The names the source gives it (`ref.name` annotations, `RepoTags`).
    pub names: Vec<String>,
    /// Its layers, bottom first.
    pub layers: Vec<Layer>,
    /// Its run defaults.
    pub defaults: RunDefaults,
}

/// Why an image source cannot be imported.
#[derive(Debug, thiserror::Error)]
pub enum OciError {
    /// Host I/O failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// A document or the archive is not what the format requires.
    #[error("malformed image: {0}")]
    Malformed(String),
    /// A file the image refers to is not in the source.
    #[error("the image source has no {0} (a manifest or index points at a blob that is missing)")]
    Missing(String),
    /// Not a `sha256:<64 hex>` digest.
    #[error("{0:?} is not a sha256 digest (expected sha256:<64 lowercase hex>)")]
    BadDigest(String),
    /// A digest algorithm other than sha256.
    #[error("digest algorithm {0:?} is not supported (only sha256)")]
    UnsupportedDigest(String),
    /// Content does not match its digest.
    #[error("{what} does not match its digest: expected {expected}, found {actual}{}", size_note(*.expected_size, *.actual_size))]
    DigestMismatch {
        /// What was checked.
        what: String,
        /// Its recorded digest.
        expected: Digest,
        /// The content's digest.
        actual: Digest,
        /// The recorded size, if any.
        expected_size: Option<u64>,
        /// The content's size.
        actual_size: u64,
    },
    /// A document is larger than the import reads.
    #[error("{what} is {size} bytes, more than the {max} allowed")]
    TooLarge {
        /// Which document.
        what: String,
        /// Its size.
        size: u64,
        /// The limit.
        max: u64,
    },
    /// Nothing in the source matches the selection.
    #[error("no image matches {wanted}; the source has: {available}")]
    NotFound {
        /// What was asked for.
        wanted: String,
        /// What there is.
        available: String,
    },
    /// More than one image matches.
    #[error("{wanted} matches several images ({available}); select one by name or digest")]
    Ambiguous {
        /// What was asked for.
        wanted: String,
        /// The candidates.
        available: String,
    },
    /// Something valid but not supported.
    #[error("unsupported: {0}")]
    Unsupported(String),
}

fn size_note(expected: Option<u64>, actual: u64) -> String {
    match expected {
        Some(e) if e != actual => format!(" (and its size is {actual} bytes, not {e})"),
        _ => String::new(),
    }
}

impl OciError {
    pub(crate) fn io(what: impl Into<String>, source: io::Error) -> Self {
        OciError::Io {
            what: what.into(),
            source,
        }
    }
}

/// Copies the blob at `location` to `out`, hashing it on the way; fails
/// (after the copy, which the caller then discards) when it is not
/// `expected`. This is how layer bytes are verified: in the pass that
/// copies them for the unpacker, so what is verified is what is used.
pub fn copy_verified(
    what: &str,
    location: &Location,
    expected: &Digest,
    out: &mut impl io::Write,
) -> Result<u64, OciError> {
    struct Tee<'a, W: io::Write> {
        out: &'a mut W,
    }
    impl<W: io::Write> io::Write for Tee<'_, W> {
        fn write(&mut self, b: &[u8]) -> io::Result<usize> {
            self.out.write_all(b)?;
            Ok(b.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            self.out.flush()
        }
    }
    let reader = location.open()?;
    let mut hashing = HashingReader::new(reader);
    io::copy(&mut hashing, &mut Tee { out })
        .map_err(|e| OciError::io(format!("copying {what}"), e))?;
    let (actual, n) = hashing.finish();
    if n != location.size {
        return Err(OciError::Malformed(format!(
            "{what} is truncated ({n} of {} bytes)",
            location.size
        )));
    }
    if &actual != expected {
        return Err(OciError::DigestMismatch {
            what: what.to_string(),
            expected: expected.clone(),
            actual,
            expected_size: None,
            actual_size: n,
        });
    }
    Ok(n)
}

/// A reader that hashes what passes through it.
pub(crate) struct HashingReader<R> {
    inner: R,
    hash: sha2::Sha256,
    n: u64,
}

impl<R: io::Read> HashingReader<R> {
    pub(crate) fn new(inner: R) -> Self {
        use sha2::Digest as _;
        Self {
            inner,
            hash: sha2::Sha256::new(),
            n: 0,
        }
    }
    pub(crate) fn finish(self) -> (Digest, u64) {
        use sha2::Digest as _;
        (Digest::from_hash(&self.hash.finalize()), self.n)
    }
}

impl<R: io::Read> io::Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        use sha2::Digest as _;
        let k = self.inner.read(buf)?;
        self.hash.update(&buf[..k]);
        self.n += k as u64;
        Ok(k)
    }
}

#[cfg(test)]
mod tests;
