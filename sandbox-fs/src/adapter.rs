//! [`Virtual`]: serves an application's [`vfs::FileSystem`] to the FUSE
//! server. Each request runs as a task on the application's runtime under a
//! deadline; a request that panics or runs past it is answered `EIO` (and
//! the task aborted), and the next request is served as usual.

use std::ffi::{CStr, OsStr, OsString};
use std::io;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::sync::mpsc::RecvTimeoutError;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fuse_backend_rs::abi::fuse_abi::{stat64, statvfs64, CreateIn};
use fuse_backend_rs::api::filesystem::{
    Context, DirEntry, Entry, FileSystem, FsOptions, OpenOptions, SetattrValid, ZeroCopyReader,
    ZeroCopyWriter,
};

use crate::listing::Listings;
use crate::vfs::{self, Attr, Errno, FileKind, FsFuture};
use fuse_backend_rs::api::server::MAX_BUFFER_SIZE;

/// How long the guest caches names and attributes.
const TTL: Duration = crate::CACHE_TIMEOUT;

/// The default deadline of one request.
pub const DEFAULT_DEADLINE: Duration = Duration::from_secs(10);

/// An application's file system as fuse-backend-rs serves it.
pub struct Virtual {
    fs: Arc<dyn vfs::FileSystem>,
    rt: tokio::runtime::Handle,
    deadline: Duration,
    /// Listings of open directories, by the handles `opendir` hands out.
    listings: Listings<vfs::DirEntry>,
    next_handle: std::sync::atomic::AtomicU64,
}

fn os(name: &CStr) -> OsString {
    OsStr::from_bytes(name.to_bytes()).to_os_string()
}

fn to_io(e: Errno) -> io::Error {
    crate::err(e.0)
}

fn eio() -> io::Error {
    crate::err(libc::EIO)
}

fn stat(a: &Attr) -> stat64 {
    // SAFETY: stat64 is plain old data; all zeros is a valid value.
    let mut st: stat64 = unsafe { std::mem::zeroed() };
    let kind = match a.kind {
        FileKind::File => libc::S_IFREG,
        FileKind::Dir => libc::S_IFDIR,
        FileKind::Symlink => libc::S_IFLNK,
    };
    let t = a.mtime.duration_since(UNIX_EPOCH).unwrap_or_default();
    st.st_ino = a.ino;
    st.st_mode = kind | (a.perm & 0o7777);
    // u64 on x86_64, u32 on aarch64.
    #[allow(clippy::useless_conversion)]
    {
        st.st_nlink = a.nlink.into();
    }
    st.st_size = i64::try_from(a.size).unwrap_or(i64::MAX);
    st.st_blksize = 4096;
    st.st_blocks = st.st_size.saturating_add(511) / 512;
    st.st_mtime = i64::try_from(t.as_secs()).unwrap_or(i64::MAX);
    st.st_mtime_nsec = t.subsec_nanos().into();
    st.st_ctime = st.st_mtime;
    st.st_ctime_nsec = st.st_mtime_nsec;
    st.st_atime = st.st_mtime;
    st.st_atime_nsec = st.st_mtime_nsec;
    st
}

/// Attributes fetched per trip to the application's file system while
/// answering a readdirplus (a reply holds about 4 KiB of entries).
const ATTR_BATCH: usize = 64;

fn entry(a: &Attr) -> Entry {
    Entry {
        inode: a.ino,
        generation: 0,
        attr: stat(a),
        attr_flags: 0,
        attr_timeout: TTL,
        entry_timeout: TTL,
    }
}

/// Entry `i` of a listing as FUSE sends it (offsets resume after it).
fn dir_entry(e: &vfs::DirEntry, i: usize) -> DirEntry<'_> {
    DirEntry {
        ino: e.ino,
        offset: i as u64 + 1,
        type_: dtype(e.kind),
        name: e.name.as_bytes(),
    }
}

fn dtype(k: FileKind) -> u32 {
    u32::from(match k {
        FileKind::File => libc::DT_REG,
        FileKind::Dir => libc::DT_DIR,
        FileKind::Symlink => libc::DT_LNK,
    })
}

impl Virtual {
    /// Serves `fs`, running its requests on `rt`, each within `deadline`.
    pub fn new(
        fs: Arc<dyn vfs::FileSystem>,
        rt: tokio::runtime::Handle,
        deadline: Duration,
    ) -> Self {
        Self {
            fs,
            rt,
            deadline,
            listings: Listings::default(),
            next_handle: std::sync::atomic::AtomicU64::new(1),
        }
    }

    /// The listing of directory `inode` open as `handle`, kept between the
    /// calls that read it at increasing offsets.
    fn listing(&self, inode: u64, handle: u64, offset: u64) -> io::Result<Arc<Vec<vfs::DirEntry>>> {
        self.listings.get(handle, offset, || {
            self.call("readdir", move |fs| fs.readdir(inode))
        })
    }

    /// Runs one request (called from the device's worker thread).
    fn call<T, F>(&self, what: &'static str, f: F) -> io::Result<T>
    where
        T: Send + 'static,
        F: for<'a> FnOnce(&'a dyn vfs::FileSystem) -> FsFuture<'a, T> + Send + 'static,
    {
        // The answer comes back over a plain channel and the deadline is a
        // plain timed wait, so neither depends on the runtime's timers: a
        // runtime whose threads are all busy costs the guest an EIO after
        // the deadline, not a hang.
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        let fs = self.fs.clone();
        let task = self.rt.spawn(async move {
            let r = f(&*fs).await;
            let _ = tx.send(r);
        });
        match rx.recv_timeout(self.deadline) {
            Ok(r) => r.map_err(to_io),
            Err(RecvTimeoutError::Disconnected) => {
                log::warn!(
                    "virtual file system: {what} panicked (or its runtime is gone); \
                     the guest gets EIO"
                );
                Err(eio())
            }
            Err(RecvTimeoutError::Timeout) => {
                task.abort();
                log::warn!(
                    "virtual file system: {what} did not finish within {:?}; the guest gets EIO",
                    self.deadline
                );
                Err(eio())
            }
        }
    }

    fn attr(&self, ino: u64) -> io::Result<Attr> {
        self.call("getattr", move |fs| fs.getattr(ino))
    }
}

impl FileSystem for Virtual {
    type Inode = u64;
    type Handle = u64;

    fn init(&self, capable: FsOptions) -> io::Result<FsOptions> {
        // readdirplus: a listing's attributes come in the same replies
        // instead of one guest lookup per entry.
        let plus = FsOptions::DO_READDIRPLUS | FsOptions::READDIRPLUS_AUTO;
        Ok(capable & (crate::TRANSFER_OPTIONS | plus))
    }

    fn lookup(&self, _ctx: &Context, parent: u64, name: &CStr) -> io::Result<Entry> {
        let name = os(name);
        let a = self.call("lookup", move |fs| fs.lookup(parent, name))?;
        Ok(entry(&a))
    }

    fn getattr(
        &self,
        _ctx: &Context,
        inode: u64,
        _handle: Option<u64>,
    ) -> io::Result<(stat64, Duration)> {
        Ok((stat(&self.attr(inode)?), TTL))
    }

    fn setattr(
        &self,
        _ctx: &Context,
        inode: u64,
        attr: stat64,
        _handle: Option<u64>,
        valid: SetattrValid,
    ) -> io::Result<(stat64, Duration)> {
        let mut set = vfs::SetAttr::default();
        if valid.contains(SetattrValid::MODE) {
            set.perm = Some(attr.st_mode & 0o7777);
        }
        if valid.contains(SetattrValid::SIZE) {
            set.size = Some(u64::try_from(attr.st_size).map_err(|_| to_io(Errno::EINVAL))?);
        }
        if valid.contains(SetattrValid::MTIME_NOW) {
            set.mtime = Some(SystemTime::now());
        } else if valid.contains(SetattrValid::MTIME) {
            let secs = u64::try_from(attr.st_mtime).unwrap_or(0);
            let nanos = u32::try_from(attr.st_mtime_nsec).unwrap_or(0);
            set.mtime = Some(UNIX_EPOCH + Duration::new(secs, nanos.min(999_999_999)));
        }
        let a = self.call("setattr", move |fs| fs.setattr(inode, set))?;
        Ok((stat(&a), TTL))
    }

    fn readlink(&self, _ctx: &Context, inode: u64) -> io::Result<Vec<u8>> {
        let t = self.call("readlink", move |fs| fs.readlink(inode))?;
        Ok(t.into_vec())
    }

    fn symlink(
        &self,
        _ctx: &Context,
        linkname: &CStr,
        parent: u64,
        name: &CStr,
    ) -> io::Result<Entry> {
        let (target, name) = (os(linkname), os(name));
        let a = self.call("symlink", move |fs| fs.symlink(parent, name, target))?;
        Ok(entry(&a))
    }

    fn mknod(
        &self,
        _ctx: &Context,
        parent: u64,
        name: &CStr,
        mode: u32,
        _rdev: u32,
        umask: u32,
    ) -> io::Result<Entry> {
        if mode & libc::S_IFMT != libc::S_IFREG {
            return Err(to_io(Errno(libc::EPERM)));
        }
        let (name, perm) = (os(name), mode & !umask & 0o7777);
        let a = self.call("create", move |fs| fs.create(parent, name, perm))?;
        Ok(entry(&a))
    }

    fn mkdir(
        &self,
        _ctx: &Context,
        parent: u64,
        name: &CStr,
        mode: u32,
        umask: u32,
    ) -> io::Result<Entry> {
        let (name, perm) = (os(name), mode & !umask & 0o7777);
        let a = self.call("mkdir", move |fs| fs.mkdir(parent, name, perm))?;
        Ok(entry(&a))
    }

    fn unlink(&self, _ctx: &Context, parent: u64, name: &CStr) -> io::Result<()> {
        let name = os(name);
        self.call("unlink", move |fs| fs.unlink(parent, name))
    }

    fn rmdir(&self, _ctx: &Context, parent: u64, name: &CStr) -> io::Result<()> {
        let name = os(name);
        self.call("rmdir", move |fs| fs.rmdir(parent, name))
    }

    fn rename(
        &self,
        _ctx: &Context,
        olddir: u64,
        oldname: &CStr,
        newdir: u64,
        newname: &CStr,
        flags: u32,
    ) -> io::Result<()> {
        if flags != 0 {
            return Err(to_io(Errno::EINVAL));
        }
        let (from, to) = (os(oldname), os(newname));
        self.call("rename", move |fs| fs.rename(olddir, from, newdir, to))
    }

    fn link(
        &self,
        _ctx: &Context,
        _inode: u64,
        _newparent: u64,
        _newname: &CStr,
    ) -> io::Result<Entry> {
        Err(to_io(Errno(libc::EPERM)))
    }

    fn open(
        &self,
        _ctx: &Context,
        _inode: u64,
        _flags: u32,
        _fuse_flags: u32,
    ) -> io::Result<(Option<u64>, OpenOptions, Option<u32>)> {
        Ok((None, OpenOptions::empty(), None))
    }

    fn create(
        &self,
        _ctx: &Context,
        parent: u64,
        name: &CStr,
        args: CreateIn,
    ) -> io::Result<(Entry, Option<u64>, OpenOptions, Option<u32>)> {
        let (name, perm) = (os(name), args.mode & !args.umask & 0o7777);
        let a = self.call("create", move |fs| fs.create(parent, name, perm))?;
        Ok((entry(&a), None, OpenOptions::empty(), None))
    }

    #[allow(clippy::too_many_arguments)]
    fn read(
        &self,
        _ctx: &Context,
        inode: u64,
        _handle: u64,
        w: &mut dyn ZeroCopyWriter,
        size: u32,
        offset: u64,
        _lock_owner: Option<u64>,
        _flags: u32,
    ) -> io::Result<usize> {
        // The guest's kernel never asks for more than one buffer; a size
        // beyond it (a forged request) is not passed on to the application.
        let size = size.min(MAX_BUFFER_SIZE);
        let data = self.call("read", move |fs| fs.read(inode, offset, size))?;
        let data = &data[..data.len().min(size as usize)];
        w.write_all(data)?;
        Ok(data.len())
    }

    #[allow(clippy::too_many_arguments)]
    fn write(
        &self,
        _ctx: &Context,
        inode: u64,
        _handle: u64,
        r: &mut dyn ZeroCopyReader,
        size: u32,
        offset: u64,
        _lock_owner: Option<u64>,
        _delayed_write: bool,
        _flags: u32,
        _fuse_flags: u32,
    ) -> io::Result<usize> {
        // The size comes from the guest: never allocate past one buffer,
        // and only as much as the request really carries.
        if size > MAX_BUFFER_SIZE {
            return Err(crate::err(libc::EINVAL));
        }
        let mut data = Vec::new();
        io::Read::read_to_end(&mut io::Read::take(&mut *r, u64::from(size)), &mut data)?;
        if data.len() != size as usize {
            return Err(crate::err(libc::EINVAL));
        }
        let n = self.call("write", move |fs| fs.write(inode, offset, data))?;
        Ok((n as usize).min(size as usize))
    }

    fn flush(&self, _ctx: &Context, _inode: u64, _handle: u64, _owner: u64) -> io::Result<()> {
        Ok(())
    }

    fn fsync(&self, _ctx: &Context, _inode: u64, _datasync: bool, _handle: u64) -> io::Result<()> {
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    fn release(
        &self,
        _ctx: &Context,
        _inode: u64,
        _flags: u32,
        _handle: u64,
        _flush: bool,
        _flock_release: bool,
        _lock_owner: Option<u64>,
    ) -> io::Result<()> {
        Ok(())
    }

    fn statfs(&self, _ctx: &Context, _inode: u64) -> io::Result<statvfs64> {
        // SAFETY: statvfs64 is plain old data; all zeros is a valid value.
        let mut st: statvfs64 = unsafe { std::mem::zeroed() };
        st.f_bsize = 4096;
        st.f_frsize = 4096;
        st.f_namemax = 255;
        Ok(st)
    }

    fn opendir(
        &self,
        _ctx: &Context,
        _inode: u64,
        _flags: u32,
    ) -> io::Result<(Option<u64>, OpenOptions)> {
        let handle = self
            .next_handle
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Ok((Some(handle), OpenOptions::empty()))
    }

    fn readdir(
        &self,
        _ctx: &Context,
        inode: u64,
        handle: u64,
        _size: u32,
        offset: u64,
        add_entry: &mut dyn FnMut(DirEntry) -> io::Result<usize>,
    ) -> io::Result<()> {
        let entries = self.listing(inode, handle, offset)?;
        for (i, e) in entries.iter().enumerate().skip(offset as usize) {
            let n = add_entry(dir_entry(e, i))?;
            if n == 0 {
                break;
            }
        }
        Ok(())
    }

    fn readdirplus(
        &self,
        _ctx: &Context,
        inode: u64,
        handle: u64,
        _size: u32,
        offset: u64,
        add_entry: &mut dyn FnMut(DirEntry, Entry) -> io::Result<usize>,
    ) -> io::Result<()> {
        let entries = self.listing(inode, handle, offset)?;
        let mut next = offset as usize;
        while next < entries.len() {
            let inos: Vec<u64> = entries[next..]
                .iter()
                .take(ATTR_BATCH)
                .map(|e| e.ino)
                .collect();
            let attrs = self.call("readdirplus", move |fs| {
                Box::pin(async move {
                    let mut attrs = Vec::with_capacity(inos.len());
                    for ino in inos {
                        attrs.push(fs.getattr(ino).await.ok());
                    }
                    Ok(attrs)
                })
            })?;
            for (i, attr) in attrs.iter().enumerate() {
                let e = &entries[next + i];
                // An entry removed since the listing was taken is skipped.
                let Some(attr) = attr else { continue };
                let n = add_entry(dir_entry(e, next + i), entry(attr))?;
                if n == 0 {
                    return Ok(());
                }
            }
            next += attrs.len();
        }
        Ok(())
    }

    fn fsyncdir(
        &self,
        _ctx: &Context,
        _inode: u64,
        _datasync: bool,
        _handle: u64,
    ) -> io::Result<()> {
        Ok(())
    }

    fn releasedir(&self, _ctx: &Context, _inode: u64, _flags: u32, handle: u64) -> io::Result<()> {
        self.listings.release(handle);
        Ok(())
    }

    fn access(&self, _ctx: &Context, _inode: u64, _mask: u32) -> io::Result<()> {
        Ok(())
    }
}
