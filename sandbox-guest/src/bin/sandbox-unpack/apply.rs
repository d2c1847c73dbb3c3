//! Applying tar entries with OCI layer semantics: whiteouts (`.wh.NAME`
//! removes NAME from the layers below, `.wh..wh..opq` empties a directory
//! of what the layers below put there), then regular files (holes kept),
//! directories, symlinks, hardlinks, device nodes and FIFOs with their
//! owner, mode (setuid bits included), xattrs and mtime.

use std::collections::HashSet;
use std::ffi::CString;
use std::io::{self, Read};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};

use tar::{Entry, EntryType};

use crate::root::{self, components, cstr, Components, Root};

const WHITEOUT: &[u8] = b".wh.";
const OPAQUE: &[u8] = b".wh..wh..opq";
/// Zero blocks of this size are left as holes.
const BLOCK: usize = 4096;

/// What a directory gets once the layer is done (its children change its
/// mtime as they arrive).
struct DirMeta {
    path: Components,
    meta: Meta,
}

#[derive(Clone)]
struct Meta {
    uid: u32,
    gid: u32,
    mode: u32,
    mtime: i64,
    xattrs: Vec<(Vec<u8>, Vec<u8>)>,
}

pub struct Layer<'a> {
    root: &'a Root,
    /// Paths this layer created: whiteouts and opaque markers only remove
    /// what the layers below put there.
    created: HashSet<Components>,
    dirs: Vec<DirMeta>,
    pub entries: u64,
}

fn check(r: libc::c_int) -> io::Result<()> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

fn meta<R: Read>(entry: &mut Entry<'_, R>) -> io::Result<Meta> {
    let h = entry.header();
    let mut m = Meta {
        // Empty numeric fields (some writers leave them so, PAX then
        // carries the value) read as 0.
        uid: h.uid().unwrap_or(0) as u32,
        gid: h.gid().unwrap_or(0) as u32,
        mode: h.mode()? & 0o7777,
        mtime: h.mtime().unwrap_or(0) as i64,
        xattrs: Vec::new(),
    };
    if let Some(pax) = entry.pax_extensions()? {
        for ext in pax {
            let ext = ext?;
            let key = ext.key_bytes();
            let value = ext.value_bytes();
            let num = || {
                std::str::from_utf8(value)
                    .ok()
                    .and_then(|v| v.split('.').next()?.parse::<i64>().ok())
            };
            match key {
                b"uid" => m.uid = num().unwrap_or(m.uid as i64) as u32,
                b"gid" => m.gid = num().unwrap_or(m.gid as i64) as u32,
                b"mtime" => m.mtime = num().unwrap_or(m.mtime),
                k if k.starts_with(b"SCHILY.xattr.") => m
                    .xattrs
                    .push((k[b"SCHILY.xattr.".len()..].to_vec(), value.to_vec())),
                _ => {}
            }
        }
    }
    Ok(m)
}

impl<'a> Layer<'a> {
    pub fn new(root: &'a Root) -> Self {
        Self {
            root,
            created: HashSet::new(),
            dirs: Vec::new(),
            entries: 0,
        }
    }

    pub fn entry<R: Read>(&mut self, entry: &mut Entry<'_, R>) -> io::Result<()> {
        self.entries += 1;
        let path = components(&entry.path_bytes());
        let Some((name, parent)) = path.split_last() else {
            return Ok(()); // the root itself: its metadata stays ours
        };
        if name.as_slice() == OPAQUE {
            return self.opaque(parent);
        }
        if let Some(hidden) = name.strip_prefix(WHITEOUT) {
            let mut target = parent.to_vec();
            target.push(hidden.to_vec());
            // Nothing below to hide when the directory is not there.
            if !self.created.contains(&target) && !hidden.is_empty() {
                if let Some(dir) = self.root.find_dir(parent)? {
                    root::remove_all(dir.as_raw_fd(), &cstr(hidden)?)?;
                }
            }
            return Ok(());
        }
        let dir = self.root.dir(parent)?;
        let d = dir.as_raw_fd();
        let cname = cstr(name)?;
        let m = meta(entry)?;
        let kind = entry.header().entry_type();
        match kind {
            EntryType::Directory => {
                if root::kind(d, &cname)? != Some(libc::S_IFDIR) {
                    root::remove_all(d, &cname)?;
                    // SAFETY: mkdirat relative to a directory we hold.
                    check(unsafe { libc::mkdirat(d, cname.as_ptr(), 0o700) })?;
                }
                self.dirs.push(DirMeta {
                    path: path.clone(),
                    meta: m,
                });
            }
            EntryType::Regular | EntryType::Continuous | EntryType::GNUSparse => {
                root::remove_all(d, &cname)?;
                let fd = root::create(d, &cname, 0o600)?;
                write_sparse(&fd, entry)?;
                set_meta_fd(&fd, &m)?;
                set_times(d, &cname, m.mtime)?;
            }
            EntryType::Symlink => {
                let target = entry.link_name_bytes().ok_or_else(|| {
                    io::Error::new(io::ErrorKind::InvalidData, "a symlink without a target")
                })?;
                root::remove_all(d, &cname)?;
                let t = cstr(&target)?;
                // SAFETY: symlinkat relative to a directory we hold; the
                // target is stored as text, never followed here.
                check(unsafe { libc::symlinkat(t.as_ptr(), d, cname.as_ptr()) })?;
                lchown(d, &cname, &m)?;
                set_times(d, &cname, m.mtime)?;
            }
            EntryType::Link => {
                let target = entry.link_name_bytes().ok_or_else(|| {
                    io::Error::new(io::ErrorKind::InvalidData, "a hardlink without a target")
                })?;
                let tpath = components(&target);
                let Some((tname, tparent)) = tpath.split_last() else {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "a hardlink to the root",
                    ));
                };
                let tdir = self.root.dir(tparent)?;
                let tname = cstr(tname)?;
                if tpath != path {
                    root::remove_all(d, &cname)?;
                    // SAFETY: linkat between directories we hold, without
                    // following a symlink at the source.
                    check(unsafe {
                        libc::linkat(tdir.as_raw_fd(), tname.as_ptr(), d, cname.as_ptr(), 0)
                    })?;
                }
            }
            EntryType::Char | EntryType::Block | EntryType::Fifo => {
                let h = entry.header();
                let (fmt, dev) = match kind {
                    EntryType::Char => (libc::S_IFCHR, dev(h)?),
                    EntryType::Block => (libc::S_IFBLK, dev(h)?),
                    _ => (libc::S_IFIFO, 0),
                };
                root::remove_all(d, &cname)?;
                // SAFETY: mknodat relative to a directory we hold.
                check(unsafe { libc::mknodat(d, cname.as_ptr(), fmt | 0o600, dev) })?;
                lchown(d, &cname, &m)?;
                // SAFETY: fchmodat of the node just made (not a symlink).
                check(unsafe { libc::fchmodat(d, cname.as_ptr(), m.mode, 0) })?;
                set_xattrs(d, &cname, &m)?;
                set_times(d, &cname, m.mtime)?;
            }
            // PAX and GNU long-name headers are consumed by the reader;
            // anything else (sockets are not in tars) is skipped.
            _ => return Ok(()),
        }
        self.created.insert(path);
        Ok(())
    }

    /// Empties `dir` of what the layers below put there.
    fn opaque(&mut self, dir: &[Vec<u8>]) -> io::Result<()> {
        let fd = self.root.dir(dir)?;
        let listing = std::fs::read_dir(format!("/proc/self/fd/{}", fd.as_raw_fd()))?;
        for child in listing {
            let name =
                std::os::unix::ffi::OsStrExt::as_bytes(child?.file_name().as_os_str()).to_vec();
            let mut p = dir.to_vec();
            p.push(name.clone());
            if !self.created.contains(&p) {
                root::remove_all(fd.as_raw_fd(), &cstr(&name)?)?;
            }
        }
        Ok(())
    }

    /// Directory metadata, deepest first (setting a child's mtime would
    /// not change its parent's, but creating entries does).
    pub fn finish(&mut self) -> io::Result<()> {
        self.dirs.sort_by_key(|d| std::cmp::Reverse(d.path.len()));
        for d in std::mem::take(&mut self.dirs) {
            let Some((name, parent)) = d.path.split_last() else {
                continue;
            };
            let dir = self.root.dir(parent)?;
            let cname = cstr(name)?;
            if root::kind(dir.as_raw_fd(), &cname)? != Some(libc::S_IFDIR) {
                continue; // replaced later in the same layer
            }
            lchown(dir.as_raw_fd(), &cname, &d.meta)?;
            // SAFETY: fchmodat of a directory (not a symlink).
            check(unsafe { libc::fchmodat(dir.as_raw_fd(), cname.as_ptr(), d.meta.mode, 0) })?;
            set_xattrs(dir.as_raw_fd(), &cname, &d.meta)?;
            set_times(dir.as_raw_fd(), &cname, d.meta.mtime)?;
        }
        Ok(())
    }
}

fn dev(h: &tar::Header) -> io::Result<libc::dev_t> {
    let major = h.device_major()?.unwrap_or(0);
    let minor = h.device_minor()?.unwrap_or(0);
    Ok(libc::makedev(major, minor))
}

/// The file's data, with runs of zero blocks left as holes.
fn write_sparse<R: Read>(fd: &OwnedFd, r: &mut R) -> io::Result<()> {
    let mut buf = vec![0u8; 1 << 20];
    let mut off: u64 = 0;
    loop {
        let mut n = 0;
        while n < buf.len() {
            match r.read(&mut buf[n..])? {
                0 => break,
                k => n += k,
            }
        }
        if n == 0 {
            break;
        }
        for chunk in buf[..n].chunks(BLOCK) {
            if chunk.iter().any(|b| *b != 0) {
                let mut done = 0;
                while done < chunk.len() {
                    // SAFETY: pwrite from a live buffer.
                    let w = unsafe {
                        libc::pwrite(
                            fd.as_raw_fd(),
                            chunk[done..].as_ptr().cast(),
                            chunk.len() - done,
                            (off + done as u64) as libc::off_t,
                        )
                    };
                    if w < 0 {
                        return Err(io::Error::last_os_error());
                    }
                    done += w as usize;
                }
            }
            off += chunk.len() as u64;
        }
        if n < buf.len() {
            break;
        }
    }
    // SAFETY: ftruncate of our own file sets its length (trailing holes).
    check(unsafe { libc::ftruncate(fd.as_raw_fd(), off as libc::off_t) })
}

fn set_meta_fd(fd: &OwnedFd, m: &Meta) -> io::Result<()> {
    // SAFETY: fchown/fchmod of our own file; chown first, since it clears
    // setuid bits.
    unsafe {
        check(libc::fchown(fd.as_raw_fd(), m.uid, m.gid))?;
        check(libc::fchmod(fd.as_raw_fd(), m.mode))?;
    }
    for (k, v) in &m.xattrs {
        let k = cstr(k)?;
        // SAFETY: fsetxattr with a C string and a live buffer.
        check(unsafe {
            libc::fsetxattr(fd.as_raw_fd(), k.as_ptr(), v.as_ptr().cast(), v.len(), 0)
        })?;
    }
    Ok(())
}

fn lchown(dir: RawFd, name: &CString, m: &Meta) -> io::Result<()> {
    // SAFETY: fchownat relative to a directory we hold, not following.
    check(unsafe { libc::fchownat(dir, name.as_ptr(), m.uid, m.gid, libc::AT_SYMLINK_NOFOLLOW) })
}

fn set_xattrs(dir: RawFd, name: &CString, m: &Meta) -> io::Result<()> {
    if m.xattrs.is_empty() {
        return Ok(());
    }
    let path = root::proc_path(dir, name);
    let p = cstr(std::os::unix::ffi::OsStrExt::as_bytes(path.as_os_str()))?;
    for (k, v) in &m.xattrs {
        let k = cstr(k)?;
        // SAFETY: lsetxattr with C strings and a live buffer.
        check(unsafe { libc::lsetxattr(p.as_ptr(), k.as_ptr(), v.as_ptr().cast(), v.len(), 0) })?;
    }
    Ok(())
}

fn set_times(dir: RawFd, name: &CString, mtime: i64) -> io::Result<()> {
    let t = libc::timespec {
        tv_sec: mtime as libc::time_t,
        tv_nsec: 0,
    };
    let times = [t, t];
    // SAFETY: utimensat relative to a directory we hold, not following.
    check(unsafe {
        libc::utimensat(
            dir,
            name.as_ptr(),
            times.as_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
        )
    })
}
