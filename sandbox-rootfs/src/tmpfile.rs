//! Unlinked private files for guest data that must not outlive the VM:
//! `O_TMPFILE` where the file system has it, else a fresh name removed at
//! once. Mode 0600 whatever the umask.

use std::fs::{File, OpenOptions, Permissions};
use std::io;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

/// A new unlinked read-write file in `dir`.
pub fn unlinked(dir: &Path) -> io::Result<File> {
    let file = match anonymous(dir) {
        Ok(f) => f,
        Err(e) if matches!(e.raw_os_error(), Some(libc::EOPNOTSUPP | libc::EISDIR)) => {
            named_then_unlinked(dir)?
        }
        Err(e) => {
            return Err(io::Error::new(
                e.kind(),
                format!("creating a scratch file in {}: {e}", dir.display()),
            ))
        }
    };
    file.set_permissions(Permissions::from_mode(0o600))?;
    Ok(file)
}

/// An `O_TMPFILE` file in `dir`.
#[cfg(target_os = "linux")]
fn anonymous(dir: &Path) -> io::Result<File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .mode(0o600)
        .custom_flags(libc::O_TMPFILE | libc::O_CLOEXEC)
        .open(dir)
}

/// No `O_TMPFILE` here (macOS): the caller falls back to a named file.
#[cfg(not(target_os = "linux"))]
fn anonymous(_dir: &Path) -> io::Result<File> {
    Err(io::Error::from_raw_os_error(libc::EOPNOTSUPP))
}

fn named_then_unlinked(dir: &Path) -> io::Result<File> {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let name = dir.join(format!(
        ".sandbox-scratch-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ));
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&name)?;
    std::fs::remove_file(&name)?;
    Ok(file)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::FileExt;

    #[test]
    fn private_sparse_and_nameless() {
        let dir = std::env::temp_dir();
        let f = unlinked(&dir).unwrap();
        let m = f.metadata().unwrap();
        assert_eq!(m.permissions().mode() & 0o777, 0o600);
        assert_eq!(std::os::unix::fs::MetadataExt::nlink(&m), 0);
        f.write_all_at(b"x", 1 << 30).unwrap();
        let m = f.metadata().unwrap();
        assert_eq!(m.len(), (1 << 30) + 1);
        assert!(std::os::unix::fs::MetadataExt::blocks(&m) < 1024, "sparse");
        let fallback = named_then_unlinked(&dir).unwrap();
        assert_eq!(
            std::os::unix::fs::MetadataExt::nlink(&fallback.metadata().unwrap()),
            0
        );
    }
}
