//! Paths the host's file API refuses to remove: `/`, the API file systems
//! (`/proc`, `/sys`, `/dev`) and anything inside `/proc` and `/sys`, the
//! agent's own state (`/run/sandbox` and its files), and any mount point. A recursive removal is refused too when a mount point
//! lies beneath the directory (it would empty the mounted file system).
//! The check runs before anything is touched.

use std::fs;
use std::io;
use std::path::{Component, Path, PathBuf};

/// Never removed, nor any directory that contains them.
const PROTECTED: &[&str] = &["/proc", "/sys", "/dev", "/run/sandbox"];
/// Nothing inside these is removed either (`/dev` is left out: its
/// `shm` and `mqueue` hold the guest's own files).
const PROTECTED_TREES: &[&str] = &["/proc", "/sys", "/run/sandbox"];

/// Refuses the removal of `p` (with `recursive`) if it would touch a
/// protected path or a mounted file system.
pub fn check_remove(p: &Path, recursive: bool) -> io::Result<()> {
    let target = resolve(p)?;
    let refuse_as = |kind, why: String| {
        Err(io::Error::new(
            kind,
            format!("refusing to remove {}: {why}", target.display()),
        ))
    };
    let refuse = |why| refuse_as(io::ErrorKind::PermissionDenied, why);
    if target == Path::new("/") {
        return refuse("it is the root directory".into());
    }
    for prot in PROTECTED.iter().map(Path::new) {
        if target == prot || (recursive && prot.starts_with(&target)) {
            return refuse(format!("{} is needed by the running guest", prot.display()));
        }
    }
    for tree in PROTECTED_TREES.iter().map(Path::new) {
        if target.starts_with(tree) {
            return refuse(format!("{} belongs to the running guest", tree.display()));
        }
    }
    let mounts = fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    for m in mount_points(&mounts) {
        if m == target {
            return refuse_as(io::ErrorKind::ResourceBusy, "it is a mount point".into());
        }
        if recursive && m.starts_with(&target) {
            let why = format!("{} is mounted beneath it", m.display());
            return refuse_as(io::ErrorKind::ResourceBusy, why);
        }
    }
    Ok(())
}

/// `p` as the kernel would reach it for an unlink: the parent resolved
/// (symlinks and `..` included), the last component kept as is (removing
/// a symlink removes the link, not its target).
fn resolve(p: &Path) -> io::Result<PathBuf> {
    let mut lexical = PathBuf::from("/");
    for c in p.components() {
        match c {
            Component::ParentDir => {
                lexical.pop();
            }
            Component::Normal(n) => lexical.push(n),
            Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
        }
    }
    let (Some(parent), Some(name)) = (lexical.parent(), lexical.file_name()) else {
        return Ok(lexical);
    };
    // A missing parent leaves nothing to remove; the removal reports it.
    let parent = fs::canonicalize(parent).unwrap_or_else(|_| parent.to_path_buf());
    Ok(parent.join(name))
}

/// Mount targets of a mounts table (octal escapes decoded).
fn mount_points(table: &str) -> Vec<PathBuf> {
    table
        .lines()
        .filter_map(|l| l.split_whitespace().nth(1))
        .map(|t| PathBuf::from(unescape(t)))
        .collect()
}

fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let oct = b
            .get(i + 1..i + 4)
            .filter(|d| b[i] == b'\\' && d.iter().all(|c| (b'0'..=b'7').contains(c)));
        if let Some(d) = oct {
            let v = d.iter().fold(0u32, |a, c| a * 8 + u32::from(c - b'0'));
            out.push(v as u8);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_and_api_file_systems_are_refused() {
        for p in [
            "/",
            "//",
            "/.",
            "/tmp/..",
            "/proc",
            "/sys/",
            "/dev",
            "/run/sandbox",
        ] {
            assert!(check_remove(Path::new(p), true).is_err(), "{p}");
        }
        // A parent of a protected path only when recursive.
        assert!(check_remove(Path::new("/run"), true).is_err());
        // Inside the agent's own state and the kernel's file systems.
        assert!(check_remove(Path::new("/run/sandbox/ca.pem"), false).is_err());
        assert!(check_remove(Path::new("/proc/sys/kernel"), true).is_err());
    }

    #[test]
    fn mount_table_escapes_are_decoded() {
        let t = "a /mnt/with\\040space ext4 rw 0 0\nproc /proc proc rw 0 0\n";
        assert_eq!(
            mount_points(t),
            vec![PathBuf::from("/mnt/with space"), PathBuf::from("/proc")]
        );
    }
}
