//! The target directory as a root: paths resolve inside it as if it were
//! `/` (`openat2(RESOLVE_IN_ROOT)`), and changes are made relative to the
//! resolved parent directory, never through a path the layer controls.

use std::ffi::{CStr, CString};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::Path;

/// An absolute-looking path inside the root, as plain components.
pub type Components = Vec<Vec<u8>>;

/// Splits a layer's path into components: `.` and empty ones dropped, `..`
/// climbing at most to the root (it cannot leave it).
pub fn components(raw: &[u8]) -> Components {
    let mut out: Components = Vec::new();
    for c in raw.split(|b| *b == b'/') {
        match c {
            b"" | b"." => {}
            b".." => {
                out.pop();
            }
            c => out.push(c.to_vec()),
        }
    }
    out
}

pub fn cstr(bytes: &[u8]) -> io::Result<CString> {
    CString::new(bytes)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "a path holds a NUL byte"))
}

fn check(r: libc::c_int) -> io::Result<()> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

pub struct Root {
    fd: OwnedFd,
}

/// Opens `path` under `dir` with `flags`, resolved inside `root`'s tree
/// when `dir` is the root.
fn openat2(dir: RawFd, path: &CStr, flags: libc::c_int) -> io::Result<OwnedFd> {
    /// `struct open_how` (libc's is non-exhaustive).
    #[repr(C)]
    struct OpenHow {
        flags: u64,
        mode: u64,
        resolve: u64,
    }
    let how = OpenHow {
        flags: (flags | libc::O_CLOEXEC) as u64,
        mode: 0,
        resolve: libc::RESOLVE_IN_ROOT | libc::RESOLVE_NO_MAGICLINKS,
    };
    // SAFETY: openat2 with a valid C string and a struct we own; the size
    // passed is that struct's.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_openat2,
            dir,
            path.as_ptr(),
            &how as *const OpenHow,
            std::mem::size_of::<OpenHow>(),
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a fresh descriptor nobody else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

fn join(parts: &[Vec<u8>]) -> Vec<u8> {
    if parts.is_empty() {
        return b".".to_vec();
    }
    parts.join(&b'/')
}

impl Root {
    pub fn open(path: &Path) -> io::Result<Self> {
        let p = cstr(path.as_os_str().as_encoded_bytes())?;
        // SAFETY: open with a valid C string.
        let fd = unsafe {
            libc::open(
                p.as_ptr(),
                libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: a fresh descriptor.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok(Self { fd })
    }

    /// The directory `parts` names, if it exists (resolved inside the
    /// root).
    pub fn find_dir(&self, parts: &[Vec<u8>]) -> io::Result<Option<OwnedFd>> {
        match openat2(
            self.fd.as_raw_fd(),
            &cstr(&join(parts))?,
            libc::O_PATH | libc::O_DIRECTORY,
        ) {
            Ok(fd) => Ok(Some(fd)),
            Err(e) if matches!(e.raw_os_error(), Some(libc::ENOENT) | Some(libc::ENOTDIR)) => {
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    /// The directory `parts` names (resolved inside the root), created
    /// with its missing ancestors (mode 0755, root-owned) when absent.
    pub fn dir(&self, parts: &[Vec<u8>]) -> io::Result<OwnedFd> {
        let flags = libc::O_PATH | libc::O_DIRECTORY;
        match openat2(self.fd.as_raw_fd(), &cstr(&join(parts))?, flags) {
            Ok(fd) => return Ok(fd),
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {}
            Err(e) if e.raw_os_error() == Some(libc::ENOTDIR) => {}
            Err(e) => return Err(e),
        }
        let mut parent = openat2(self.fd.as_raw_fd(), c".", flags)?;
        for i in 0..parts.len() {
            let here = cstr(&join(&parts[..=i]))?;
            parent = match openat2(self.fd.as_raw_fd(), &here, flags) {
                Ok(fd) => fd,
                Err(e) if matches!(e.raw_os_error(), Some(libc::ENOENT) | Some(libc::ENOTDIR)) => {
                    let name = cstr(&parts[i])?;
                    // Something that is not a directory is in the way (a
                    // file, a dangling symlink): a later layer's directory
                    // replaces it, as a directory entry would.
                    remove_all(parent.as_raw_fd(), &name)?;
                    // SAFETY: mkdirat relative to a directory we hold.
                    check(unsafe { libc::mkdirat(parent.as_raw_fd(), name.as_ptr(), 0o755) })?;
                    openat2(self.fd.as_raw_fd(), &here, flags)?
                }
                Err(e) => return Err(e),
            };
        }
        Ok(parent)
    }

    /// Creates the directories the agent mounts over and installs the
    /// agent as `/sbin/sandbox-guest`.
    pub fn prepare_for_agent(&self, agent: Option<&Path>) -> io::Result<()> {
        for (d, mode) in [
            (&b"proc"[..], 0o555),
            (b"sys", 0o555),
            (b"dev", 0o755),
            (b"run", 0o755),
            (b"tmp", 0o1777),
            (b"etc", 0o755),
        ] {
            let name = cstr(d)?;
            let root = self.dir(&[])?;
            let mut st = std::mem::MaybeUninit::<libc::stat>::uninit();
            // SAFETY: fstatat into a local buffer.
            let exists =
                unsafe { libc::fstatat(root.as_raw_fd(), name.as_ptr(), st.as_mut_ptr(), 0) } == 0;
            if !exists {
                self.dir(&[d.to_vec()])?;
                // SAFETY: fchmodat of a directory we just made.
                check(unsafe { libc::fchmodat(root.as_raw_fd(), name.as_ptr(), mode, 0) })?;
            }
        }
        // The files the agent writes at boot: on a read-only root it binds
        // its own over them, so they must exist (a symlink, even a
        // dangling one, is left as the image has it).
        let etc = self.dir(&[b"etc".to_vec()])?;
        for f in [c"hostname", c"hosts", c"resolv.conf"] {
            if kind(etc.as_raw_fd(), f)?.is_none() {
                drop(create(etc.as_raw_fd(), f, 0o644)?);
            }
        }
        if let Some(agent) = agent {
            let bytes = std::fs::read(agent)?;
            let sbin = self.dir(&[b"sbin".to_vec()])?;
            let name = c"sandbox-guest";
            remove_all(sbin.as_raw_fd(), name)?;
            let fd = create(sbin.as_raw_fd(), name, 0o755)?;
            let mut f = std::fs::File::from(fd);
            std::io::Write::write_all(&mut f, &bytes)?;
            f.sync_all()?;
        }
        Ok(())
    }
}

/// Creates a new regular file `name` in `dir` (nothing may be there).
pub fn create(dir: RawFd, name: &CStr, mode: u32) -> io::Result<OwnedFd> {
    // SAFETY: openat relative to a directory we hold.
    let fd = unsafe {
        libc::openat(
            dir,
            name.as_ptr(),
            libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL | libc::O_NOFOLLOW | libc::O_CLOEXEC,
            mode,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a fresh descriptor.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// The type bits of `name` in `dir` (not following a symlink), if it
/// exists.
pub fn kind(dir: RawFd, name: &CStr) -> io::Result<Option<u32>> {
    let mut st = std::mem::MaybeUninit::<libc::stat>::uninit();
    // SAFETY: fstatat into a local buffer.
    let r = unsafe {
        libc::fstatat(
            dir,
            name.as_ptr(),
            st.as_mut_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
        )
    };
    if r < 0 {
        let e = io::Error::last_os_error();
        return if e.raw_os_error() == Some(libc::ENOENT) {
            Ok(None)
        } else {
            Err(e)
        };
    }
    // SAFETY: fstatat succeeded, so it filled the buffer.
    Ok(Some(unsafe { st.assume_init() }.st_mode & libc::S_IFMT))
}

/// The path of `name` in `dir` through `/proc/self/fd`, for calls that
/// only take paths (`remove_dir_all`, `lsetxattr`). The directory part is
/// a descriptor we hold, so nothing in it is resolved again.
pub fn proc_path(dir: RawFd, name: &CStr) -> std::path::PathBuf {
    let mut p = std::path::PathBuf::from(format!("/proc/self/fd/{dir}"));
    p.push(<std::ffi::OsStr as std::os::unix::ffi::OsStrExt>::from_bytes(name.to_bytes()));
    p
}

/// Removes `name` in `dir`, recursively if it is a directory; absent is
/// fine.
pub fn remove_all(dir: RawFd, name: &CStr) -> io::Result<()> {
    match kind(dir, name)? {
        None => Ok(()),
        Some(libc::S_IFDIR) => std::fs::remove_dir_all(proc_path(dir, name)),
        Some(_) => {
            // SAFETY: unlinkat relative to a directory we hold.
            check(unsafe { libc::unlinkat(dir, name.as_ptr(), 0) })
        }
    }
}
