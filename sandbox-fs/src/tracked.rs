//! [`Tracked`]: a served file system whose inode and handle ids belong to
//! the guest's side ([`crate::ids`]), so that they survive a snapshot. A
//! restore serves the same source again, finds each inode the guest held
//! by the name it had, reopens each open handle, and answers for ids that
//! are gone with `ESTALE` (inodes) or `EBADF` (handles).

use std::ffi::CStr;
use std::io;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use fuse_backend_rs::abi::fuse_abi::{stat64, statvfs64, CreateIn};
use fuse_backend_rs::abi::virtio_fs::RemovemappingOne;
use fuse_backend_rs::api::filesystem::{
    Context, DirEntry, Entry, FileLock, FileSystem, FsOptions, GetxattrReply, IoctlData,
    ListxattrReply, OpenOptions, SetattrValid, ZeroCopyReader, ZeroCopyWriter,
};
use fuse_backend_rs::transport::FsCacheReqHandler;

use crate::ids::{Saved, Table};
use crate::FuseFs;

/// `RENAME_EXCHANGE` from `linux/fs.h`.
const RENAME_EXCHANGE: u32 = 2;

/// What a restore found again.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Restored {
    pub inodes: usize,
    pub inodes_stale: usize,
    pub handles: usize,
    pub handles_stale: usize,
}

/// `F` with the guest's ids kept apart (module docs).
pub struct Tracked<F> {
    inner: F,
    table: Mutex<Table>,
}

impl<F: FuseFs> Tracked<F> {
    pub fn new(inner: F) -> Self {
        Self {
            inner,
            table: Mutex::default(),
        }
    }

    fn table(&self) -> MutexGuard<'_, Table> {
        self.table.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The state a snapshot keeps (JSON): the guest's ids, the names they
    /// were reached by, the open handles and the FUSE INIT options.
    pub fn save(&self) -> String {
        serde_json::to_string(&self.table().save()).unwrap_or_default()
    }

    /// Serves `inner` to a guest restored with `state` (from
    /// [`Tracked::save`]): INIT as the guest negotiated it, every inode
    /// looked up again by name, every handle reopened.
    pub fn restore(inner: F, state: &str) -> io::Result<(Self, Restored)> {
        let saved: Saved = serde_json::from_str(state).map_err(|e| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("the file system state does not parse: {e}"),
            )
        })?;
        let mut table = Table::from_saved(saved);
        if let Some(bits) = table.init {
            inner.init(FsOptions::from_bits_truncate(bits))?;
        }
        let mut ctx = Context::new();
        inner.id_remap(&mut ctx)?;
        let (inodes_held, handles_held) = table.len();
        let inodes = table.resolve(|parent, name| {
            let name = std::ffi::CString::new(name).map_err(|_| crate::err(libc::EINVAL))?;
            Ok(inner.lookup(&ctx, parent, &name)?.inode)
        });
        for unwanted in table.take_unwanted() {
            inner.forget(&ctx, unwanted, 1);
        }
        let handles = table.reopen(|inode, flags, dir| {
            let handle = if dir {
                inner.opendir(&ctx, inode, flags)?.0
            } else {
                // Reopening must not change the file.
                let keep = !(libc::O_TRUNC | libc::O_CREAT | libc::O_EXCL) as u32;
                inner.open(&ctx, inode, flags & keep, 0)?.0
            };
            Ok(handle.unwrap_or(0))
        });
        let restored = Restored {
            inodes,
            inodes_stale: inodes_held - inodes,
            handles,
            handles_stale: handles_held - handles,
        };
        Ok((
            Self {
                inner,
                table: Mutex::new(table),
            },
            restored,
        ))
    }

    fn inode(&self, guest: u64) -> io::Result<u64> {
        self.table().inode(guest)
    }

    fn handle(&self, guest: u64) -> io::Result<u64> {
        self.table().handle(guest)
    }

    /// The served handle a release of `guest` gives back: 0 (no handle)
    /// stays 0; `None` for a handle the served file system does not hold.
    fn released(&self, guest: u64) -> Option<u64> {
        if guest == 0 {
            return Some(0);
        }
        self.table().released(guest)
    }

    /// `entry` from the served file system as the guest sees it.
    fn entered(&self, parent: u64, name: &CStr, mut entry: Entry) -> Entry {
        entry.inode = self.table().entered(parent, name.to_bytes(), entry.inode);
        entry
    }

    /// The guest forgot `requests`: the served ids and lookups to forget.
    fn forget_all(&self, requests: &[(u64, u64)]) -> Vec<(u64, u64)> {
        let mut table = self.table();
        requests
            .iter()
            .filter_map(|&(inode, count)| table.forget(inode, count))
            .collect()
    }
}

impl<F: FuseFs> FileSystem for Tracked<F> {
    type Inode = u64;
    type Handle = u64;

    fn init(&self, capable: FsOptions) -> io::Result<FsOptions> {
        self.table().init = Some(capable.bits());
        self.inner.init(capable)
    }

    fn destroy(&self) {
        self.inner.destroy()
    }

    fn lookup(&self, ctx: &Context, parent: u64, name: &CStr) -> io::Result<Entry> {
        let entry = self.inner.lookup(ctx, self.inode(parent)?, name)?;
        Ok(self.entered(parent, name, entry))
    }

    fn forget(&self, ctx: &Context, inode: u64, count: u64) {
        for (inner, count) in self.forget_all(&[(inode, count)]) {
            self.inner.forget(ctx, inner, count);
        }
    }

    fn batch_forget(&self, ctx: &Context, requests: Vec<(u64, u64)>) {
        let inner = self.forget_all(&requests);
        if !inner.is_empty() {
            self.inner.batch_forget(ctx, inner);
        }
    }

    fn getattr(
        &self,
        ctx: &Context,
        inode: u64,
        handle: Option<u64>,
    ) -> io::Result<(stat64, Duration)> {
        let handle = handle.map(|h| self.handle(h)).transpose()?;
        self.inner.getattr(ctx, self.inode(inode)?, handle)
    }

    fn setattr(
        &self,
        ctx: &Context,
        inode: u64,
        attr: stat64,
        handle: Option<u64>,
        valid: SetattrValid,
    ) -> io::Result<(stat64, Duration)> {
        let handle = handle.map(|h| self.handle(h)).transpose()?;
        self.inner
            .setattr(ctx, self.inode(inode)?, attr, handle, valid)
    }

    fn readlink(&self, ctx: &Context, inode: u64) -> io::Result<Vec<u8>> {
        self.inner.readlink(ctx, self.inode(inode)?)
    }

    fn symlink(
        &self,
        ctx: &Context,
        linkname: &CStr,
        parent: u64,
        name: &CStr,
    ) -> io::Result<Entry> {
        let entry = self
            .inner
            .symlink(ctx, linkname, self.inode(parent)?, name)?;
        Ok(self.entered(parent, name, entry))
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
        let entry = self
            .inner
            .mknod(ctx, self.inode(parent)?, name, mode, rdev, umask)?;
        Ok(self.entered(parent, name, entry))
    }

    fn mkdir(
        &self,
        ctx: &Context,
        parent: u64,
        name: &CStr,
        mode: u32,
        umask: u32,
    ) -> io::Result<Entry> {
        let entry = self
            .inner
            .mkdir(ctx, self.inode(parent)?, name, mode, umask)?;
        Ok(self.entered(parent, name, entry))
    }

    fn unlink(&self, ctx: &Context, parent: u64, name: &CStr) -> io::Result<()> {
        self.inner.unlink(ctx, self.inode(parent)?, name)?;
        self.table().unlinked(parent, name.to_bytes());
        Ok(())
    }

    fn rmdir(&self, ctx: &Context, parent: u64, name: &CStr) -> io::Result<()> {
        self.inner.rmdir(ctx, self.inode(parent)?, name)?;
        self.table().unlinked(parent, name.to_bytes());
        Ok(())
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
        let (old_inner, new_inner) = (self.inode(olddir)?, self.inode(newdir)?);
        self.inner
            .rename(ctx, old_inner, oldname, new_inner, newname, flags)?;
        self.table().renamed(
            olddir,
            oldname.to_bytes(),
            newdir,
            newname.to_bytes(),
            flags & RENAME_EXCHANGE != 0,
        );
        Ok(())
    }

    fn link(&self, ctx: &Context, inode: u64, newparent: u64, newname: &CStr) -> io::Result<Entry> {
        let entry = self
            .inner
            .link(ctx, self.inode(inode)?, self.inode(newparent)?, newname)?;
        Ok(self.entered(newparent, newname, entry))
    }

    fn open(
        &self,
        ctx: &Context,
        inode: u64,
        flags: u32,
        fuse_flags: u32,
    ) -> io::Result<(Option<u64>, OpenOptions, Option<u32>)> {
        let (handle, opts, passthrough) =
            self.inner
                .open(ctx, self.inode(inode)?, flags, fuse_flags)?;
        let handle = handle.map(|h| self.table().opened(inode, h, flags, false));
        Ok((handle, opts, passthrough))
    }

    fn create(
        &self,
        ctx: &Context,
        parent: u64,
        name: &CStr,
        args: CreateIn,
    ) -> io::Result<(Entry, Option<u64>, OpenOptions, Option<u32>)> {
        let flags = args.flags;
        let (entry, handle, opts, passthrough) =
            self.inner.create(ctx, self.inode(parent)?, name, args)?;
        let entry = self.entered(parent, name, entry);
        let handle = handle.map(|h| self.table().opened(entry.inode, h, flags, false));
        Ok((entry, handle, opts, passthrough))
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
        self.inner.read(
            ctx,
            self.inode(inode)?,
            self.handle(handle)?,
            w,
            size,
            offset,
            lock_owner,
            flags,
        )
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
            self.inode(inode)?,
            self.handle(handle)?,
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
        self.inner
            .flush(ctx, self.inode(inode)?, self.handle(handle)?, lock_owner)
    }

    fn fsync(&self, ctx: &Context, inode: u64, datasync: bool, handle: u64) -> io::Result<()> {
        self.inner
            .fsync(ctx, self.inode(inode)?, datasync, self.handle(handle)?)
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
        self.inner.fallocate(
            ctx,
            self.inode(inode)?,
            self.handle(handle)?,
            mode,
            offset,
            length,
        )
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
        let Some(inner) = self.released(handle) else {
            return Ok(());
        };
        self.inner.release(
            ctx,
            self.inode(inode)?,
            flags,
            inner,
            flush,
            flock_release,
            lock_owner,
        )
    }

    fn statfs(&self, ctx: &Context, inode: u64) -> io::Result<statvfs64> {
        self.inner.statfs(ctx, self.inode(inode)?)
    }

    fn setxattr(
        &self,
        ctx: &Context,
        inode: u64,
        name: &CStr,
        value: &[u8],
        flags: u32,
    ) -> io::Result<()> {
        self.inner
            .setxattr(ctx, self.inode(inode)?, name, value, flags)
    }

    fn getxattr(
        &self,
        ctx: &Context,
        inode: u64,
        name: &CStr,
        size: u32,
    ) -> io::Result<GetxattrReply> {
        self.inner.getxattr(ctx, self.inode(inode)?, name, size)
    }

    fn listxattr(&self, ctx: &Context, inode: u64, size: u32) -> io::Result<ListxattrReply> {
        self.inner.listxattr(ctx, self.inode(inode)?, size)
    }

    fn removexattr(&self, ctx: &Context, inode: u64, name: &CStr) -> io::Result<()> {
        self.inner.removexattr(ctx, self.inode(inode)?, name)
    }

    fn opendir(
        &self,
        ctx: &Context,
        inode: u64,
        flags: u32,
    ) -> io::Result<(Option<u64>, OpenOptions)> {
        let (handle, opts) = self.inner.opendir(ctx, self.inode(inode)?, flags)?;
        let handle = handle.map(|h| self.table().opened(inode, h, flags, true));
        Ok((handle, opts))
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
        self.inner.readdir(
            ctx,
            self.inode(inode)?,
            self.handle(handle)?,
            size,
            offset,
            add_entry,
        )
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
        let mut translate = |dirent: DirEntry, mut entry: Entry| {
            let guest = self.table().entered(inode, dirent.name, entry.inode);
            entry.inode = guest;
            let added = add_entry(dirent, entry);
            if guest != 0 && !matches!(added, Ok(n) if n > 0) {
                // The guest never saw it; the served file system takes
                // back its own lookup.
                self.table().unentered(guest);
            }
            added
        };
        self.inner.readdirplus(
            ctx,
            self.inode(inode)?,
            self.handle(handle)?,
            size,
            offset,
            &mut translate,
        )
    }

    fn fsyncdir(&self, ctx: &Context, inode: u64, datasync: bool, handle: u64) -> io::Result<()> {
        self.inner
            .fsyncdir(ctx, self.inode(inode)?, datasync, self.handle(handle)?)
    }

    fn releasedir(&self, ctx: &Context, inode: u64, flags: u32, handle: u64) -> io::Result<()> {
        let Some(inner) = self.released(handle) else {
            return Ok(());
        };
        self.inner.releasedir(ctx, self.inode(inode)?, flags, inner)
    }

    #[allow(clippy::too_many_arguments)]
    fn setupmapping(
        &self,
        _ctx: &Context,
        _inode: u64,
        _handle: u64,
        _foffset: u64,
        _len: u64,
        _flags: u64,
        _moffset: u64,
        _vu_req: &mut dyn FsCacheReqHandler,
    ) -> io::Result<()> {
        Err(crate::err(libc::ENOSYS))
    }

    fn removemapping(
        &self,
        _ctx: &Context,
        _inode: u64,
        _requests: Vec<RemovemappingOne>,
        _vu_req: &mut dyn FsCacheReqHandler,
    ) -> io::Result<()> {
        Err(crate::err(libc::ENOSYS))
    }

    fn access(&self, ctx: &Context, inode: u64, mask: u32) -> io::Result<()> {
        self.inner.access(ctx, self.inode(inode)?, mask)
    }

    fn lseek(
        &self,
        ctx: &Context,
        inode: u64,
        handle: u64,
        offset: u64,
        whence: u32,
    ) -> io::Result<u64> {
        self.inner.lseek(
            ctx,
            self.inode(inode)?,
            self.handle(handle)?,
            offset,
            whence,
        )
    }

    fn getlk(
        &self,
        ctx: &Context,
        inode: u64,
        handle: u64,
        owner: u64,
        lock: FileLock,
        flags: u32,
    ) -> io::Result<FileLock> {
        self.inner.getlk(
            ctx,
            self.inode(inode)?,
            self.handle(handle)?,
            owner,
            lock,
            flags,
        )
    }

    fn setlk(
        &self,
        ctx: &Context,
        inode: u64,
        handle: u64,
        owner: u64,
        lock: FileLock,
        flags: u32,
    ) -> io::Result<()> {
        self.inner.setlk(
            ctx,
            self.inode(inode)?,
            self.handle(handle)?,
            owner,
            lock,
            flags,
        )
    }

    fn setlkw(
        &self,
        ctx: &Context,
        inode: u64,
        handle: u64,
        owner: u64,
        lock: FileLock,
        flags: u32,
    ) -> io::Result<()> {
        self.inner.setlkw(
            ctx,
            self.inode(inode)?,
            self.handle(handle)?,
            owner,
            lock,
            flags,
        )
    }

    #[allow(clippy::too_many_arguments)]
    fn ioctl(
        &self,
        _ctx: &Context,
        _inode: u64,
        _handle: u64,
        _flags: u32,
        _cmd: u32,
        _data: IoctlData,
        _out_size: u32,
    ) -> io::Result<IoctlData<'_>> {
        Err(crate::err(libc::ENOTTY))
    }

    fn bmap(&self, _ctx: &Context, _inode: u64, _block: u64, _blocksize: u32) -> io::Result<u64> {
        Err(crate::err(libc::ENOSYS))
    }

    fn poll(
        &self,
        ctx: &Context,
        inode: u64,
        handle: u64,
        khandle: u64,
        flags: u32,
        events: u32,
    ) -> io::Result<u32> {
        self.inner.poll(
            ctx,
            self.inode(inode)?,
            self.handle(handle)?,
            khandle,
            flags,
            events,
        )
    }

    fn notify_reply(&self) -> io::Result<()> {
        self.inner.notify_reply()
    }

    fn id_remap(&self, ctx: &mut Context) -> io::Result<()> {
        self.inner.id_remap(ctx)
    }
}
