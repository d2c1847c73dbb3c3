//! Files under /etc that the agent owns at every boot: the hostname, the
//! loopback names in /etc/hosts, and (for the network) the resolver and the
//! trust store. On a writable root they are written in place; on a
//! read-only root a copy in /run/sandbox is bind-mounted over the image's.

use std::ffi::CString;
use std::fs;
use std::io;
use std::path::Path;

/// Where the agent keeps its generated files (tmpfs).
pub const RUN_DIR: &str = "/run/sandbox";

/// First and last line of the block the agent manages in /etc/hosts.
const HOSTS_BEGIN: &str = "# sandbox: loopback names, rewritten at every boot";
const HOSTS_END: &str = "# sandbox: end";

/// Addresses whose names the agent owns in /etc/hosts: lines of the image
/// that name them are dropped so the guest's own name cannot be stale.
const OWNED_ADDRESSES: &[&str] = &["127.0.0.1", "127.0.1.1", "::1"];

/// Writes `/etc/hostname` and the loopback block of `/etc/hosts` for `name`.
pub fn install_hostname(name: &str) -> io::Result<()> {
    install_file(Path::new("/etc/hostname"), &format!("{name}\n"))?;
    let old = fs::read_to_string("/etc/hosts").unwrap_or_default();
    install_file(Path::new("/etc/hosts"), &hosts(&old, name))
}

/// `/etc/hosts` for `name`: the image's other lines kept, the loopback
/// names ours (`localhost` resolves to 127.0.0.1 and ::1, `name` to
/// 127.0.1.1, as Debian lays it out).
pub fn hosts(old: &str, name: &str) -> String {
    let mut out = String::new();
    out.push_str(HOSTS_BEGIN);
    out.push('\n');
    out.push_str(&format!("127.0.0.1\tlocalhost\n127.0.1.1\t{name}\n"));
    out.push_str("::1\tlocalhost ip6-localhost ip6-loopback\n");
    out.push_str(HOSTS_END);
    out.push('\n');
    let mut managed = false;
    for line in old.lines() {
        if line == HOSTS_BEGIN {
            managed = true;
            continue;
        }
        if managed {
            managed = line != HOSTS_END;
            continue;
        }
        let first = line.split_whitespace().next().unwrap_or("");
        if OWNED_ADDRESSES.contains(&first) {
            continue;
        }
        out.push_str(line);
        out.push('\n');
    }
    out
}

/// Makes `path` read `content`: written in place when the root is
/// writable, else a file in the tmpfs bind-mounted over it (following a
/// dangling symlink into /run, as systemd-resolved images have).
pub fn install_file(path: &Path, content: &str) -> io::Result<()> {
    let staged = Path::new(RUN_DIR).join(path.file_name().unwrap_or_default());
    fs::create_dir_all(RUN_DIR)?;
    fs::write(&staged, content)?;
    if let Ok(target) = fs::read_link(path) {
        let target = if target.is_absolute() {
            target
        } else {
            path.parent().unwrap_or(Path::new("/")).join(target)
        };
        if !target.exists() {
            if let Some(dir) = target.parent() {
                fs::create_dir_all(dir)?;
            }
            return fs::write(&target, content);
        }
    }
    if fs::write(path, content).is_ok() {
        return Ok(());
    }
    if !path.exists() {
        return Err(io::Error::new(
            io::ErrorKind::ReadOnlyFilesystem,
            "read-only root and no file to mount over",
        ));
    }
    let (src, dst) = (cstr(&staged)?, cstr(path)?);
    // SAFETY: both are valid NUL-terminated paths; a bind mount takes no data.
    let rc = unsafe {
        libc::mount(
            src.as_ptr(),
            dst.as_ptr(),
            std::ptr::null(),
            libc::MS_BIND,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn cstr(p: &Path) -> io::Result<CString> {
    CString::new(p.as_os_str().as_encoded_bytes())
        .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_names_the_guest_on_loopback_and_keeps_other_lines() {
        let image = "127.0.0.1 localhost\n127.0.1.1 oldname\n10.1.2.3 db\n";
        let first = hosts(image, "agent-42");
        assert!(first.contains("127.0.0.1\tlocalhost\n"));
        assert!(first.contains("127.0.1.1\tagent-42\n"));
        assert!(first.contains("10.1.2.3 db\n"));
        assert!(!first.contains("oldname"));
        // A second boot with another name replaces the block, once.
        let second = hosts(&first, "b");
        assert_eq!(second.matches(HOSTS_BEGIN).count(), 1);
        assert!(second.contains("127.0.1.1\tb\n"));
        assert!(!second.contains("agent-42"));
        assert!(second.contains("10.1.2.3 db\n"));
    }
}
