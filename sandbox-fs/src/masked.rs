//! [`Masked`]: paths of a bound directory the guest must not see (`.git`,
//! `.env`, `node_modules`...). The original content at a masked path is
//! never shown, listed, moved or reached.
//!
//! - Without storage (read-only binds), a masked path is absent: `ENOENT`,
//!   never listed, and nothing can be created there.
//! - With storage (writable binds), a masked path is served from the
//!   storage directory instead, at the same relative path: what the guest
//!   creates there lands in the storage, never in the source. Storage
//!   inodes carry [`STORAGE`] in their number; a rename or link between
//!   the two file systems is `EXDEV` (the guest's `mv` copies instead).
//!
//! A directory of the source that holds a masked path cannot be renamed
//! (`EBUSY`): the masked content would move to a path that is not masked.
//! Paths are tracked per inode from the entries this layer hands out,
//! relative to the bound directory; an inode it never handed out is
//! refused (fail closed).

use std::collections::{HashMap, HashSet};
use std::ffi::{CStr, CString, OsStr};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use crate::err;
use crate::listing::Listings;
use fuse_backend_rs::abi::fuse_abi::{stat64, statvfs64, CreateIn};
use fuse_backend_rs::api::filesystem::{
    Context, DirEntry, Entry, FileSystem, FsOptions, OpenOptions, SetattrValid, ZeroCopyReader,
    ZeroCopyWriter, ROOT_ID,
};

/// The bit that marks an inode (or handle) of the storage file system.
pub const STORAGE: u64 = 1 << 63;

fn in_storage(ino: u64) -> bool {
    ino & STORAGE != 0
}

fn untag(ino: u64) -> u64 {
    ino & !STORAGE
}

fn tag(mut e: Entry) -> Entry {
    if e.inode != 0 {
        e.inode |= STORAGE;
        e.attr.st_ino |= STORAGE;
    }
    e
}

fn tag_attr(r: (stat64, Duration)) -> (stat64, Duration) {
    let (mut st, t) = r;
    st.st_ino |= STORAGE;
    (st, t)
}

/// Where a name lives.
enum Place {
    /// In the source, in this directory.
    Source(u64),
    /// In the storage, in this (untagged) directory.
    Storage(u64),
}

/// `F` with masked paths hidden, or served from a storage `F`.
pub struct Masked<F> {
    inner: F,
    storage: Option<F>,
    /// Masked paths, relative to the root (`.git`, `a/.env`).
    masks: HashSet<PathBuf>,
    /// Where each source inode handed out lives, relative to the root.
    paths: Mutex<HashMap<u64, PathBuf>>,
    /// Storage directories of mask parents, by relative path.
    storage_dirs: Mutex<HashMap<PathBuf, u64>>,
    /// Merged listings of open mask parents, by the source's dir handle.
    listings: Listings<(Vec<u8>, u64, u32)>,
}

impl<F> Masked<F> {
    /// Hides `masks` (relative paths, normalized) of `inner`; with
    /// `storage`, serves them from it (which must hold each mask's parent
    /// directory).
    pub fn new(inner: F, masks: impl IntoIterator<Item = PathBuf>, storage: Option<F>) -> Self {
        let mut paths = HashMap::new();
        paths.insert(ROOT_ID, PathBuf::new());
        Self {
            inner,
            storage,
            masks: masks.into_iter().collect(),
            paths: Mutex::new(paths),
            storage_dirs: Mutex::default(),
            listings: Listings::default(),
        }
    }

    fn paths(&self) -> MutexGuard<'_, HashMap<u64, PathBuf>> {
        self.paths.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The path of `name` in source directory `parent`.
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

    /// Whether some mask sits directly in directory `dir`.
    fn parent_of_mask(&self, dir: &Path) -> bool {
        self.masks.iter().any(|m| m.parent() == Some(dir))
    }

    fn record(&self, inode: u64, path: PathBuf) {
        if inode != 0 && inode != ROOT_ID && !in_storage(inode) {
            self.paths().insert(inode, path);
        }
    }

    /// The file system an inode belongs to, and its own number there.
    fn of(&self, ino: u64) -> io::Result<(&F, u64)> {
        if in_storage(ino) {
            Ok((
                self.storage.as_ref().ok_or_else(|| err(libc::ENOENT))?,
                untag(ino),
            ))
        } else {
            Ok((&self.inner, ino))
        }
    }
}

impl<F: FileSystem<Inode = u64, Handle = u64>> Masked<F> {
    /// The storage directory for source-relative `dir` (found once).
    fn storage_dir(&self, ctx: &Context, storage: &F, dir: &Path) -> io::Result<u64> {
        if let Some(&ino) = self
            .storage_dirs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(dir)
        {
            return Ok(ino);
        }
        let mut ino = ROOT_ID;
        for c in dir.components() {
            let name = CString::new(c.as_os_str().as_bytes()).map_err(|_| err(libc::EINVAL))?;
            ino = storage.lookup(ctx, ino, &name)?.inode;
        }
        self.storage_dirs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(dir.to_path_buf(), ino);
        Ok(ino)
    }

    /// Where `name` in `parent` lives; `hidden` is the error for a masked
    /// path without storage.
    fn place(&self, ctx: &Context, parent: u64, name: &CStr, hidden: i32) -> io::Result<Place> {
        if in_storage(parent) {
            return Ok(Place::Storage(untag(parent)));
        }
        let path = self.child(parent, name.to_bytes())?;
        if !self.masked(&path) {
            return Ok(Place::Source(parent));
        }
        let storage = self.storage.as_ref().ok_or_else(|| err(hidden))?;
        let dir = path.parent().unwrap_or(Path::new(""));
        Ok(Place::Storage(self.storage_dir(ctx, storage, dir)?))
    }

    /// An entry made or found at `name` in `parent`.
    fn made(
        &self,
        ctx: &Context,
        parent: u64,
        name: &CStr,
        hidden: i32,
        op: impl Fn(&F, u64) -> io::Result<Entry>,
    ) -> io::Result<Entry> {
        match self.place(ctx, parent, name, hidden)? {
            Place::Source(p) => {
                let e = op(&self.inner, p)?;
                self.record(e.inode, self.child(parent, name.to_bytes())?);
                Ok(e)
            }
            Place::Storage(sp) => {
                let storage = self.storage.as_ref().ok_or_else(|| err(hidden))?;
                op(storage, sp).map(tag)
            }
        }
    }

    /// Every entry of source directory `ino` (masked ones left out) and
    /// the storage entries of masks in it, in one list.
    fn merged_listing(
        &self,
        ctx: &Context,
        ino: u64,
        handle: u64,
        dir: &Path,
    ) -> io::Result<Vec<(Vec<u8>, u64, u32)>> {
        let mut out = Vec::new();
        let mut offset = 0;
        loop {
            let mut got = 0;
            self.inner
                .readdir(ctx, ino, handle, 65536, offset, &mut |e| {
                    offset = e.offset;
                    got += 1;
                    if !self.masked(&dir.join(OsStr::from_bytes(e.name))) {
                        out.push((e.name.to_vec(), e.ino, e.type_));
                    }
                    Ok(1)
                })?;
            if got == 0 {
                break;
            }
        }
        if let Some(storage) = &self.storage {
            for m in self.masks.iter().filter(|m| m.parent() == Some(dir)) {
                let Some(name) = m.file_name() else { continue };
                let Ok(sp) = self.storage_dir(ctx, storage, dir) else {
                    continue;
                };
                let cname = CString::new(name.as_bytes()).map_err(|_| err(libc::EINVAL))?;
                if let Ok(e) = storage.lookup(ctx, sp, &cname) {
                    storage.forget(ctx, e.inode, 1);
                    let kind = (e.attr.st_mode & libc::S_IFMT) >> 12;
                    out.push((name.as_bytes().to_vec(), e.inode | STORAGE, kind));
                }
            }
        }
        Ok(out)
    }
}

impl<F: FileSystem<Inode = u64, Handle = u64>> FileSystem for Masked<F> {
    type Inode = u64;
    type Handle = u64;

    fn init(&self, capable: FsOptions) -> io::Result<FsOptions> {
        if let Some(s) = &self.storage {
            s.init(capable)?;
        }
        // Listings of directories that hold masks are merged here, one
        // entry at a time: no readdirplus.
        let opts = self.inner.init(capable)?;
        Ok(opts - (FsOptions::DO_READDIRPLUS | FsOptions::READDIRPLUS_AUTO))
    }

    fn destroy(&self) {
        self.inner.destroy();
        if let Some(s) = &self.storage {
            s.destroy();
        }
    }

    fn lookup(&self, ctx: &Context, parent: u64, name: &CStr) -> io::Result<Entry> {
        self.made(ctx, parent, name, libc::ENOENT, |fs, p| {
            fs.lookup(ctx, p, name)
        })
    }

    fn forget(&self, ctx: &Context, inode: u64, count: u64) {
        if let Ok((fs, ino)) = self.of(inode) {
            fs.forget(ctx, ino, count)
        }
    }

    fn batch_forget(&self, ctx: &Context, requests: Vec<(u64, u64)>) {
        for (inode, count) in requests {
            self.forget(ctx, inode, count);
        }
    }

    fn getattr(
        &self,
        ctx: &Context,
        inode: u64,
        handle: Option<u64>,
    ) -> io::Result<(stat64, Duration)> {
        let (fs, ino) = self.of(inode)?;
        let r = fs.getattr(ctx, ino, handle)?;
        Ok(if in_storage(inode) { tag_attr(r) } else { r })
    }

    fn setattr(
        &self,
        ctx: &Context,
        inode: u64,
        attr: stat64,
        handle: Option<u64>,
        valid: SetattrValid,
    ) -> io::Result<(stat64, Duration)> {
        let (fs, ino) = self.of(inode)?;
        let r = fs.setattr(ctx, ino, attr, handle, valid)?;
        Ok(if in_storage(inode) { tag_attr(r) } else { r })
    }

    fn readlink(&self, ctx: &Context, inode: u64) -> io::Result<Vec<u8>> {
        let (fs, ino) = self.of(inode)?;
        fs.readlink(ctx, ino)
    }

    fn symlink(
        &self,
        ctx: &Context,
        linkname: &CStr,
        parent: u64,
        name: &CStr,
    ) -> io::Result<Entry> {
        self.made(ctx, parent, name, libc::EACCES, |fs, p| {
            fs.symlink(ctx, linkname, p, name)
        })
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
        self.made(ctx, parent, name, libc::EACCES, |fs, p| {
            fs.mknod(ctx, p, name, mode, rdev, umask)
        })
    }

    fn mkdir(
        &self,
        ctx: &Context,
        parent: u64,
        name: &CStr,
        mode: u32,
        umask: u32,
    ) -> io::Result<Entry> {
        self.made(ctx, parent, name, libc::EACCES, |fs, p| {
            fs.mkdir(ctx, p, name, mode, umask)
        })
    }

    fn unlink(&self, ctx: &Context, parent: u64, name: &CStr) -> io::Result<()> {
        match self.place(ctx, parent, name, libc::EACCES)? {
            Place::Source(p) => self.inner.unlink(ctx, p, name),
            Place::Storage(sp) => self.of(STORAGE)?.0.unlink(ctx, sp, name),
        }
    }

    fn rmdir(&self, ctx: &Context, parent: u64, name: &CStr) -> io::Result<()> {
        match self.place(ctx, parent, name, libc::EACCES)? {
            Place::Source(p) => self.inner.rmdir(ctx, p, name),
            Place::Storage(sp) => self.of(STORAGE)?.0.rmdir(ctx, sp, name),
        }
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
        let from = self.place(ctx, olddir, oldname, libc::EACCES)?;
        let to = self.place(ctx, newdir, newname, libc::EACCES)?;
        match (from, to) {
            (Place::Source(a), Place::Source(b)) => {
                let from = self.child(olddir, oldname.to_bytes())?;
                let to = self.child(newdir, newname.to_bytes())?;
                // Moving (or replacing) a directory that holds masked
                // content would carry it to an unmasked path.
                if self.holds_mask(&from) || self.holds_mask(&to) {
                    return Err(err(libc::EBUSY));
                }
                self.inner.rename(ctx, a, oldname, b, newname, flags)?;
                let mut paths = self.paths();
                for p in paths.values_mut() {
                    if let Ok(rest) = p.strip_prefix(&from) {
                        *p = to.join(rest);
                    }
                }
                Ok(())
            }
            (Place::Storage(a), Place::Storage(b)) => self
                .of(STORAGE)?
                .0
                .rename(ctx, a, oldname, b, newname, flags),
            _ => Err(err(libc::EXDEV)),
        }
    }

    fn link(&self, ctx: &Context, inode: u64, newparent: u64, newname: &CStr) -> io::Result<Entry> {
        let same = |fs_is_storage: bool| fs_is_storage == in_storage(inode);
        match self.place(ctx, newparent, newname, libc::EACCES)? {
            Place::Source(p) if same(false) => {
                let e = self.inner.link(ctx, inode, p, newname)?;
                self.record(e.inode, self.child(newparent, newname.to_bytes())?);
                Ok(e)
            }
            Place::Storage(sp) if same(true) => self
                .of(STORAGE)?
                .0
                .link(ctx, untag(inode), sp, newname)
                .map(tag),
            _ => Err(err(libc::EXDEV)),
        }
    }

    fn open(
        &self,
        ctx: &Context,
        inode: u64,
        flags: u32,
        fuse_flags: u32,
    ) -> io::Result<(Option<u64>, OpenOptions, Option<u32>)> {
        let (fs, ino) = self.of(inode)?;
        fs.open(ctx, ino, flags, fuse_flags)
    }

    fn create(
        &self,
        ctx: &Context,
        parent: u64,
        name: &CStr,
        args: CreateIn,
    ) -> io::Result<(Entry, Option<u64>, OpenOptions, Option<u32>)> {
        match self.place(ctx, parent, name, libc::EACCES)? {
            Place::Source(p) => {
                let r = self.inner.create(ctx, p, name, args)?;
                self.record(r.0.inode, self.child(parent, name.to_bytes())?);
                Ok(r)
            }
            Place::Storage(sp) => {
                let (e, h, o, x) = self.of(STORAGE)?.0.create(ctx, sp, name, args)?;
                Ok((tag(e), h, o, x))
            }
        }
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
        let (fs, ino) = self.of(inode)?;
        fs.read(ctx, ino, handle, w, size, offset, lock_owner, flags)
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
        let (fs, ino) = self.of(inode)?;
        fs.write(
            ctx,
            ino,
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
        let (fs, ino) = self.of(inode)?;
        fs.flush(ctx, ino, handle, lock_owner)
    }

    fn fsync(&self, ctx: &Context, inode: u64, datasync: bool, handle: u64) -> io::Result<()> {
        let (fs, ino) = self.of(inode)?;
        fs.fsync(ctx, ino, datasync, handle)
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
        let (fs, ino) = self.of(inode)?;
        fs.fallocate(ctx, ino, handle, mode, offset, length)
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
        let (fs, ino) = self.of(inode)?;
        fs.release(ctx, ino, flags, handle, flush, flock_release, lock_owner)
    }

    fn statfs(&self, ctx: &Context, inode: u64) -> io::Result<statvfs64> {
        let (fs, ino) = self.of(inode)?;
        fs.statfs(ctx, ino)
    }

    fn opendir(
        &self,
        ctx: &Context,
        inode: u64,
        flags: u32,
    ) -> io::Result<(Option<u64>, OpenOptions)> {
        let (fs, ino) = self.of(inode)?;
        fs.opendir(ctx, ino, flags)
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
        if in_storage(inode) {
            return self.of(inode)?.0.readdir(
                ctx,
                untag(inode),
                handle,
                size,
                offset,
                &mut |mut e| {
                    e.ino |= STORAGE;
                    add_entry(e)
                },
            );
        }
        let dir = self.paths().get(&inode).cloned();
        let Some(dir) = dir else {
            return Err(err(libc::ENOENT));
        };
        if self.storage.is_some() && self.parent_of_mask(&dir) {
            // Source entries and storage entries, with offsets of our own.
            let list = self.listings.get(handle, offset, || {
                self.merged_listing(ctx, inode, handle, &dir)
            })?;
            for (i, (name, ino, type_)) in list.iter().enumerate().skip(offset as usize) {
                let n = add_entry(DirEntry {
                    ino: *ino,
                    offset: i as u64 + 1,
                    type_: *type_,
                    name,
                })?;
                if n == 0 {
                    break;
                }
            }
            return Ok(());
        }
        self.inner
            .readdir(ctx, inode, handle, size, offset, &mut |e| {
                if self.masked(&dir.join(OsStr::from_bytes(e.name))) {
                    // Skipped; a non-zero size keeps the listing going.
                    return Ok(1);
                }
                add_entry(e)
            })
    }

    fn fsyncdir(&self, ctx: &Context, inode: u64, datasync: bool, handle: u64) -> io::Result<()> {
        let (fs, ino) = self.of(inode)?;
        fs.fsyncdir(ctx, ino, datasync, handle)
    }

    fn releasedir(&self, ctx: &Context, inode: u64, flags: u32, handle: u64) -> io::Result<()> {
        if !in_storage(inode) {
            self.listings.release(handle);
        }
        let (fs, ino) = self.of(inode)?;
        fs.releasedir(ctx, ino, flags, handle)
    }

    fn access(&self, ctx: &Context, inode: u64, mask: u32) -> io::Result<()> {
        let (fs, ino) = self.of(inode)?;
        fs.access(ctx, ino, mask)
    }

    fn lseek(
        &self,
        ctx: &Context,
        inode: u64,
        handle: u64,
        offset: u64,
        whence: u32,
    ) -> io::Result<u64> {
        let (fs, ino) = self.of(inode)?;
        fs.lseek(ctx, ino, handle, offset, whence)
    }

    fn id_remap(&self, ctx: &mut Context) -> io::Result<()> {
        self.inner.id_remap(ctx)
    }
}
