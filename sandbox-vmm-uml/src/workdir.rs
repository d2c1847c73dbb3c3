//! Per-VM working directories under `$TMPDIR`: `sbx-<pid>-<n>` (vhost-user
//! sockets and UML's `uml_dir`) and `sbx-net-<pid>-<n>` (the network link
//! socket), both private (0700), and the removal of those left behind by
//! host processes that were killed before they could clean up.

use std::fs;
use std::io;
use std::os::unix::fs::{DirBuilderExt, MetadataExt};
use std::path::{Path, PathBuf};

/// The process id a working directory name carries, if it is one of ours.
fn owner_pid(name: &str) -> Option<u32> {
    let rest = name.strip_prefix("sbx-")?;
    let rest = rest.strip_prefix("net-").unwrap_or(rest);
    let (pid, n) = rest.split_once('-')?;
    n.parse::<u64>().ok()?;
    pid.parse().ok()
}

/// Removes every working directory under `tmp` whose process is gone (a
/// process killed with SIGKILL never removes its own). Directories of live
/// processes, ours included, are kept. (A process in another pid namespace
/// sharing `tmp` looks gone; its sockets are connected by then, so only
/// the names go.)
pub fn sweep_stale(tmp: &Path) {
    let Ok(entries) = fs::read_dir(tmp) else {
        return;
    };
    for e in entries.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(owner_pid) else {
            continue;
        };
        if pid == std::process::id() || Path::new(&format!("/proc/{pid}")).exists() {
            continue;
        }
        let _ = fs::remove_dir_all(e.path());
    }
}

/// Creates the private (0700) working directory `id` under `tmp`, after
/// sweeping stale ones. One with the same name can only be left over from
/// an earlier process with our pid (names are never reused within a
/// process): it is replaced if it is ours, and refused if another user
/// made it.
pub fn create(tmp: &Path, id: &str) -> io::Result<PathBuf> {
    sweep_stale(tmp);
    let dir = tmp.join(id);
    if let Ok(meta) = fs::symlink_metadata(&dir) {
        // SAFETY: getuid has no preconditions.
        if meta.uid() != unsafe { libc::getuid() } || !meta.is_dir() {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!("{} exists and is not ours", dir.display()),
            ));
        }
        fs::remove_dir_all(&dir)?;
    }
    fs::DirBuilder::new().mode(0o700).create(&dir)?;
    Ok(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_parsed_strictly() {
        assert_eq!(owner_pid("sbx-123-0"), Some(123));
        assert_eq!(owner_pid("sbx-net-123-4"), Some(123));
        assert_eq!(owner_pid("sbx-123-x"), None);
        assert_eq!(owner_pid("sbx-abc-0"), None);
        assert_eq!(owner_pid("other-123-0"), None);
    }

    #[test]
    fn dead_processes_dirs_go_and_live_ones_stay() {
        let tmp = std::env::temp_dir().join(format!("workdir-sweep-{}", std::process::id()));
        let _ = fs::remove_dir_all(&tmp);
        // Above any pid_max (at most 2^22), so never a live process.
        let dead = tmp.join("sbx-999999999-0");
        let dead_net = tmp.join("sbx-net-999999999-3");
        let init = tmp.join("sbx-1-0");
        let ours = tmp.join(format!("sbx-{}-7", std::process::id()));
        let unrelated = tmp.join("keep-me");
        for d in [&dead, &dead_net, &init, &ours, &unrelated] {
            fs::create_dir_all(d.join("sub")).unwrap();
            fs::write(d.join("blk.sock"), b"").unwrap();
        }
        let fresh = create(&tmp, &format!("sbx-{}-7", std::process::id())).unwrap();
        assert!(
            !dead.exists() && !dead_net.exists(),
            "a dead process's directories go"
        );
        assert!(init.exists() && unrelated.exists());
        assert_eq!(fresh, ours);
        assert!(
            ours.is_dir() && !ours.join("blk.sock").exists(),
            "replaced empty"
        );
        fs::remove_dir_all(&tmp).unwrap();
    }
}
