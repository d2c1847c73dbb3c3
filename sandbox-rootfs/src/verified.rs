//! Verification records: an image file whose sha256 was checked once is
//! not hashed again by a later process while it is provably unchanged.
//!
//! A record `<cache>/verified/<sha256 of the path>.json` holds the path,
//! the digest and the file's identity when it was hashed: device, inode,
//! size, mtime and ctime with nanoseconds. It is written (atomically, by
//! rename) only when the identity did not change while the file was
//! hashed, and a later check accepts the file without hashing only when
//! the whole identity still matches.
//!
//! Threat model: a write to the file changes its ctime, which no
//! unprivileged call can set back (`utimensat` sets mtime and atime, and
//! itself moves ctime), so an ordinary writer, including one that restores
//! the mtime, makes the file hash again. Not covered: a clock set back
//! around the write (root), edits of the raw block device under the file
//! system (root), and whoever can write the cache directory, who can
//! equally replace the built images there.

use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// A file's identity: what any write to it changes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct FileId {
    dev: u64,
    ino: u64,
    size: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
}

impl FileId {
    pub(crate) fn of(path: &Path) -> io::Result<Self> {
        let m = std::fs::metadata(path)?;
        Ok(Self {
            dev: m.dev(),
            ino: m.ino(),
            size: m.size(),
            mtime: (m.mtime(), m.mtime_nsec()),
            ctime: (m.ctime(), m.ctime_nsec()),
        })
    }

    pub(crate) fn size(&self) -> u64 {
        self.size
    }
}

#[derive(Serialize, Deserialize)]
struct Record {
    path: PathBuf,
    sha256: String,
    id: FileId,
}

/// The cache directory shared with `cargo xtask` (`$SANDBOX_CACHE`,
/// default `~/.cache/sandbox`).
pub fn cache_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("SANDBOX_CACHE") {
        return PathBuf::from(dir);
    }
    let home = std::env::var_os("HOME").unwrap_or_else(|| "/root".into());
    PathBuf::from(home).join(".cache/sandbox")
}

fn record_path(dir: &Path, file: &Path) -> PathBuf {
    let key = hex::encode(Sha256::digest(file.as_os_str().as_encoded_bytes()));
    dir.join(format!("{key}.json"))
}

/// Whether `dir` holds a record saying `file`, with identity `id`, has
/// digest `sha256`.
pub(crate) fn recorded(dir: &Path, file: &Path, sha256: &str, id: &FileId) -> bool {
    std::fs::read(record_path(dir, file))
        .ok()
        .and_then(|b| serde_json::from_slice::<Record>(&b).ok())
        .is_some_and(|r| r.path == file && r.sha256 == sha256 && r.id == *id)
}

/// Records that `file` had digest `sha256` while its identity was `id`,
/// if it still has that identity. Failures are ignored: the record only
/// saves a later process the hashing.
pub(crate) fn record(dir: &Path, file: &Path, sha256: &str, id: &FileId) {
    if FileId::of(file).ok().as_ref() != Some(id) {
        return; // changed while it was hashed
    }
    let record = Record {
        path: file.to_path_buf(),
        sha256: sha256.to_string(),
        id: *id,
    };
    let Ok(text) = serde_json::to_vec(&record) else {
        return;
    };
    if std::fs::create_dir_all(dir).is_err() {
        return;
    }
    let target = record_path(dir, file);
    let tmp = target.with_extension(format!("tmp.{}", std::process::id()));
    if std::fs::write(&tmp, text).is_ok() && std::fs::rename(&tmp, &target).is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("verified-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn a_record_holds_until_the_file_changes() {
        let d = scratch("holds");
        let (file, records) = (d.join("image.raw"), d.join("verified"));
        std::fs::write(&file, b"some image bytes").unwrap();
        let id = FileId::of(&file).unwrap();
        assert!(!recorded(&records, &file, "abc", &id));
        record(&records, &file, "abc", &id);
        assert!(recorded(&records, &file, "abc", &id));
        assert!(!recorded(&records, &file, "abd", &id), "another digest");
        assert!(
            !recorded(&records, &d.join("other.raw"), "abc", &id),
            "another path"
        );
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn a_rewrite_with_the_old_mtime_restored_is_caught_by_ctime() {
        let d = scratch("ctime");
        let (file, records) = (d.join("image.raw"), d.join("verified"));
        std::fs::write(&file, b"original").unwrap();
        let id = FileId::of(&file).unwrap();
        record(&records, &file, "abc", &id);
        let mtime = std::fs::metadata(&file).unwrap().modified().unwrap();
        // Let the clock move past the ctime's granularity.
        std::thread::sleep(std::time::Duration::from_millis(20));
        std::fs::write(&file, b"Original").unwrap(); // same size
        std::fs::File::options()
            .write(true)
            .open(&file)
            .unwrap()
            .set_modified(mtime)
            .unwrap();
        let now = FileId::of(&file).unwrap();
        assert_eq!((now.size, now.mtime), (id.size, id.mtime));
        assert!(!recorded(&records, &file, "abc", &now));
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn nothing_is_recorded_for_a_file_that_changed_while_hashed() {
        let d = scratch("moved");
        let (file, records) = (d.join("image.raw"), d.join("verified"));
        std::fs::write(&file, b"one").unwrap();
        let id = FileId::of(&file).unwrap();
        std::fs::write(&file, b"three").unwrap();
        record(&records, &file, "abc", &id);
        assert!(!record_path(&records, &file).exists());
        std::fs::remove_dir_all(&d).unwrap();
    }
}
