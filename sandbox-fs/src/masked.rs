//! [`Masked`]: paths of a bound directory the guest must not see (`.git`,
//! `.env`, `node_modules`...). A masked path is absent: `ENOENT` on
//! lookup, left out of every listing, and nothing can be created, moved or
//! linked onto it. A directory that contains a masked path cannot be
//! renamed (the masked content would move to a path that is not masked).
//!
//! Paths are tracked per inode from the entries this layer hands out
//! (lookups, creations, listings), relative to the bound directory.

use std::collections::{HashMap, HashSet};
use std::ffi::{CStr, OsStr};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use fuse_backend_rs::abi::fuse_abi::{stat64, statvfs64, CreateIn};
use fuse_backend_rs::api::filesystem::{
    Context, DirEntry, Entry, FileSystem, FsOptions, OpenOptions, SetattrValid, ZeroCopyReader,
    ZeroCopyWriter, ROOT_ID,
};

/// `F` with `masks` hidden.
pub struct Masked<F> {
    inner: F,
    /// Masked paths, relative to the root (`.git`, `a/.env`).
    masks: HashSet<PathBuf>,
    /// Where each inode handed out lives, relative to the root.
    paths: Mutex<HashMap<u64, PathBuf>>,
}

fn err(code: i32) -> io::Error {
    io::Error::from_raw_os_error(code)
}

impl<F> Masked<F> {
    /// Hides `masks` (relative paths, normalized) of `inner`.
    pub fn new(inner: F, masks: impl IntoIterator<Item = PathBuf>) -> Self {
        let mut paths = HashMap::new();
        paths.insert(ROOT_ID, PathBuf::new());
        Self {
            inner,
            masks: masks.into_iter().collect(),
            paths: Mutex::new(paths),
        }
    }

    fn paths(&self) -> MutexGuard<'_, HashMap<u64, PathBuf>> {
        self.paths.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The path of `name` in directory `parent`. An inode this layer never
    /// handed out has no known path: refused (fail closed).
    fn child(&self, parent: u64, name: &[u8]) -> io::Result<PathBuf> {
        let paths = self.paths();
        let dir = paths.get(&parent).ok_or_else(|| err(libc::ENOENT))?;
        Ok(dir.join(OsStr::from_bytes(name)))
    }

    fn masked(&self, path: &Path) -> bool {
        self.masks.contains(path)
    }

    /// Whether a masked path is `path` or inside it.
    fn holds_mask(&self, path: &Path) -> bool {
        self.masks.iter().any(|m| m.starts_with(path))
    }

    /// `name` in `parent` must not be masked (for creating onto it).
    fn free(&self, parent: u64, name: &CStr) -> io::Result<PathBuf> {
        let path = self.child(parent, name.to_bytes())?;
        if self.masked(&path) {
            return Err(err(libc::EACCES));
        }
        Ok(path)
    }

    fn record(&self, entry: &Entry, path: PathBuf) {
        if entry.inode != 0 && entry.inode != ROOT_ID {
            self.paths().insert(entry.inode, path);
        }
    }
}

impl<F: FileSystem<Inode = u64, Handle = u64>> FileSystem for Masked<F> {
    type Inode = u64;
    type Handle = u64;

    fn init(&self, capable: FsOptions) -> io::Result<FsOptions> {
        self.inner.init(capable)
    }

    fn destroy(&self) {
        self.inner.destroy()
    }

    fn lookup(&self, ctx: &Context, parent: u64, name: &CStr) -> io::Result<Entry> {
        let path = self.child(parent, name.to_bytes())?;
        if self.masked(&path) {
            return Err(err(libc::ENOENT));
        }
        let e = self.inner.lookup(ctx, parent, name)?;
        self.record(&e, path);
        Ok(e)
    }

    fn forget(&self, ctx: &Context, inode: u64, count: u64) {
        self.inner.forget(ctx, inode, count)
    }

    fn batch_forget(&self, ctx: &Context, requests: Vec<(u64, u64)>) {
        self.inner.batch_forget(ctx, requests)
    }

    fn getattr(
        &self,
        ctx: &Context,
        inode: u64,
        handle: Option<u64>,
    ) -> io::Result<(stat64, Duration)> {
        self.inner.getattr(ctx, inode, handle)
    }

    fn setattr(
        &self,
        ctx: &Context,
        inode: u64,
        attr: stat64,
        handle: Option<u64>,
        valid: SetattrValid,
    ) -> io::Result<(stat64, Duration)> {
        self.inner.setattr(ctx, inode, attr, handle, valid)
    }

    fn readlink(&self, ctx: &Context, inode: u64) -> io::Result<Vec<u8>> {
        self.inner.readlink(ctx, inode)
    }

    fn symlink(
        &self,
        ctx: &Context,
        linkname: &CStr,
        parent: u64,
        name: &CStr,
    ) -> io::Result<Entry> {
        let path = self.free(parent, name)?;
        let e = self.inner.symlink(ctx, linkname, parent, name)?;
        self.record(&e, path);
        Ok(e)
    }

    fn mknod(
        &self,
        ctx: &Context,
        parent: u64,
        name: &CStr,
        mode: u32,
        rdev: u32,
        umask: u32,
    ) -> io::Result<Entry> {
        let path = self.free(parent, name)?;
        let e = self.inner.mknod(ctx, parent, name, mode, rdev, umask)?;
        self.record(&e, path);
        Ok(e)
    }

    fn mkdir(
        &self,
        ctx: &Context,
        parent: u64,
        name: &CStr,
        mode: u32,
        umask: u32,
    ) -> io::Result<Entry> {
        let path = self.free(parent, name)?;
        let e = self.inner.mkdir(ctx, parent, name, mode, umask)?;
        self.record(&e, path);
        Ok(e)
    }

    fn unlink(&self, ctx: &Context, parent: u64, name: &CStr) -> io::Result<()> {
        self.free(parent, name)?;
        self.inner.unlink(ctx, parent, name)
    }

    fn rmdir(&self, ctx: &Context, parent: u64, name: &CStr) -> io::Result<()> {
        self.free(parent, name)?;
        self.inner.rmdir(ctx, parent, name)
    }

    fn rename(
        &self,
        ctx: &Context,
        olddir: u64,
        oldname: &CStr,
        newdir: u64,
        newname: &CStr,
        flags: u32,
    ) -> io::Result<()> {
        let from = self.free(olddir, oldname)?;
        let to = self.free(newdir, newname)?;
        // Moving (or replacing) a directory that holds masked content
        // would carry that content to an unmasked path.
        if self.holds_mask(&from) || self.holds_mask(&to) {
            return Err(err(libc::EBUSY));
        }
        self.inner
            .rename(ctx, olddir, oldname, newdir, newname, flags)?;
        // The moved inode and everything known under it get the new path.
        let mut paths = self.paths();
        for p in paths.values_mut() {
            if let Ok(rest) = p.strip_prefix(&from) {
                *p = to.join(rest);
            }
        }
        Ok(())
    }

    fn link(&self, ctx: &Context, inode: u64, newparent: u64, newname: &CStr) -> io::Result<Entry> {
        let path = self.free(newparent, newname)?;
        let e = self.inner.link(ctx, inode, newparent, newname)?;
        self.record(&e, path);
        Ok(e)
    }

    fn open(
        &self,
        ctx: &Context,
        inode: u64,
        flags: u32,
        fuse_flags: u32,
    ) -> io::Result<(Option<u64>, OpenOptions, Option<u32>)> {
        self.inner.open(ctx, inode, flags, fuse_flags)
    }

    fn create(
        &self,
        ctx: &Context,
        parent: u64,
        name: &CStr,
        args: CreateIn,
    ) -> io::Result<(Entry, Option<u64>, OpenOptions, Option<u32>)> {
        let path = self.free(parent, name)?;
        let r = self.inner.create(ctx, parent, name, args)?;
        self.record(&r.0, path);
        Ok(r)
    }

    #[allow(clippy::too_many_arguments)]
    fn read(
        &self,
        ctx: &Context,
        inode: u64,
        handle: u64,
        w: &mut dyn ZeroCopyWriter,
        size: u32,
        offset: u64,
        lock_owner: Option<u64>,
        flags: u32,
    ) -> io::Result<usize> {
        self.inner
            .read(ctx, inode, handle, w, size, offset, lock_owner, flags)
    }

    #[allow(clippy::too_many_arguments)]
    fn write(
        &self,
        ctx: &Context,
        inode: u64,
        handle: u64,
        r: &mut dyn ZeroCopyReader,
        size: u32,
        offset: u64,
        lock_owner: Option<u64>,
        delayed_write: bool,
        flags: u32,
        fuse_flags: u32,
    ) -> io::Result<usize> {
        self.inner.write(
            ctx,
            inode,
            handle,
            r,
            size,
            offset,
            lock_owner,
            delayed_write,
            flags,
            fuse_flags,
        )
    }

    fn flush(&self, ctx: &Context, inode: u64, handle: u64, lock_owner: u64) -> io::Result<()> {
        self.inner.flush(ctx, inode, handle, lock_owner)
    }

    fn fsync(&self, ctx: &Context, inode: u64, datasync: bool, handle: u64) -> io::Result<()> {
        self.inner.fsync(ctx, inode, datasync, handle)
    }

    fn fallocate(
        &self,
        ctx: &Context,
        inode: u64,
        handle: u64,
        mode: u32,
        offset: u64,
        length: u64,
    ) -> io::Result<()> {
        self.inner
            .fallocate(ctx, inode, handle, mode, offset, length)
    }

    #[allow(clippy::too_many_arguments)]
    fn release(
        &self,
        ctx: &Context,
        inode: u64,
        flags: u32,
        handle: u64,
        flush: bool,
        flock_release: bool,
        lock_owner: Option<u64>,
    ) -> io::Result<()> {
        self.inner
            .release(ctx, inode, flags, handle, flush, flock_release, lock_owner)
    }

    fn statfs(&self, ctx: &Context, inode: u64) -> io::Result<statvfs64> {
        self.inner.statfs(ctx, inode)
    }

    fn opendir(
        &self,
        ctx: &Context,
        inode: u64,
        flags: u32,
    ) -> io::Result<(Option<u64>, OpenOptions)> {
        self.inner.opendir(ctx, inode, flags)
    }

    fn readdir(
        &self,
        ctx: &Context,
        inode: u64,
        handle: u64,
        size: u32,
        offset: u64,
        add_entry: &mut dyn FnMut(DirEntry) -> io::Result<usize>,
    ) -> io::Result<()> {
        let dir = self.paths().get(&inode).cloned();
        let Some(dir) = dir else {
            return Err(err(libc::ENOENT));
        };
        self.inner
            .readdir(ctx, inode, handle, size, offset, &mut |e| {
                if self.masked(&dir.join(OsStr::from_bytes(e.name))) {
                    // Skipped; a non-zero size keeps the listing going.
                    return Ok(1);
                }
                add_entry(e)
            })
    }

    fn readdirplus(
        &self,
        ctx: &Context,
        inode: u64,
        handle: u64,
        size: u32,
        offset: u64,
        add_entry: &mut dyn FnMut(DirEntry, Entry) -> io::Result<usize>,
    ) -> io::Result<()> {
        let dir = self.paths().get(&inode).cloned();
        let Some(dir) = dir else {
            return Err(err(libc::ENOENT));
        };
        self.inner
            .readdirplus(ctx, inode, handle, size, offset, &mut |e, entry| {
                let path = dir.join(OsStr::from_bytes(e.name));
                if self.masked(&path) {
                    // The inner file system counted a lookup for this entry:
                    // give it back, as the guest never sees it.
                    self.inner.forget(ctx, entry.inode, 1);
                    return Ok(1);
                }
                self.record(&entry, path);
                add_entry(e, entry)
            })
    }

    fn fsyncdir(&self, ctx: &Context, inode: u64, datasync: bool, handle: u64) -> io::Result<()> {
        self.inner.fsyncdir(ctx, inode, datasync, handle)
    }

    fn releasedir(&self, ctx: &Context, inode: u64, flags: u32, handle: u64) -> io::Result<()> {
        self.inner.releasedir(ctx, inode, flags, handle)
    }

    fn access(&self, ctx: &Context, inode: u64, mask: u32) -> io::Result<()> {
        self.inner.access(ctx, inode, mask)
    }

    fn lseek(
        &self,
        ctx: &Context,
        inode: u64,
        handle: u64,
        offset: u64,
        whence: u32,
    ) -> io::Result<u64> {
        self.inner.lseek(ctx, inode, handle, offset, whence)
    }

    fn id_remap(&self, ctx: &mut Context) -> io::Result<()> {
        self.inner.id_remap(ctx)
    }
}
