//! [`Confined`]: the rules every host-backed file system is served under,
//! whatever the guest sends.
//!
//! - Names are single path components: empty names, `.`, `..` and names
//!   with `/` are refused (fuse-backend-rs's passthrough opens a looked-up
//!   `..` relative to its root, which would reach the source's parent).
//! - No device nodes: `mknod` makes regular files, FIFOs and sockets only.
//! - No setuid or setgid bits reach the host: they are cleared from every
//!   mode the guest sets or creates with.
//! - Extended attributes only in the `user.` namespace.
//! - No `ioctl`, no `bmap`, no DAX mappings.
//! - Every request runs as the host user that runs the library (the guest's
//!   uids do not become host uids), so what the guest creates belongs to
//!   that user; a guest `chown` succeeds and changes nothing on the host.
//! - Read-only: every change is refused with `EROFS`, and so is opening for
//!   writing.

use std::collections::HashMap;
use std::ffi::CStr;
use std::io;
use std::sync::Mutex;
use std::time::Duration;

use crate::err;
use fuse_backend_rs::abi::fuse_abi::{stat64, statvfs64, CreateIn};
use fuse_backend_rs::abi::virtio_fs::RemovemappingOne;
use fuse_backend_rs::api::filesystem::{
    Context, DirEntry, Entry, FileLock, FileSystem, FsOptions, GetxattrReply, IoctlData,
    ListxattrReply, OpenOptions, SetattrValid, ZeroCopyReader, ZeroCopyWriter,
};
use fuse_backend_rs::transport::FsCacheReqHandler;

/// `F` served under the confinement rules (module docs).
pub struct Confined<F> {
    inner: F,
    read_only: bool,
    /// Ask for `FUSE_ATOMIC_O_TRUNC` (the inner file system truncates on
    /// `open(O_TRUNC)` itself, as the passthrough does).
    atomic_o_trunc: bool,
    uid: u32,
    gid: u32,
    /// Each open handle's flags as opened. A READ or WRITE carries flags
    /// of the guest's choosing, and the passthrough `fcntl(F_SETFL)`s them
    /// onto the host file when they differ; when that fails, fuse-backend-rs
    /// 0.14 returns early and drops the borrowed descriptor it wrapped in
    /// a `File`, closing the handle's host descriptor while the handle
    /// still owns it (a double close; found by the `virtio_fs` fuzz
    /// target). Passing the flags the handle was opened with never takes
    /// that path.
    open_flags: Mutex<HashMap<u64, u32>>,
}

/// A single path component other than `.` and `..`.
fn check_name(name: &CStr) -> io::Result<()> {
    let b = name.to_bytes();
    if b.is_empty() || b == b"." || b == b".." || b.contains(&b'/') {
        return Err(err(libc::EINVAL));
    }
    Ok(())
}

/// `mode` without setuid and setgid.
fn strip(mode: u32) -> u32 {
    mode & !(libc::S_ISUID | libc::S_ISGID)
}

/// Linux's largest extended attribute value and name list (`XATTR_SIZE_MAX`,
/// `XATTR_LIST_MAX` in `linux/limits.h`).
const XATTR_SIZE_MAX: u32 = 65536;
const XATTR_LIST_MAX: u32 = 65536;

fn check_xattr(name: &CStr) -> io::Result<()> {
    if name.to_bytes().starts_with(b"user.") {
        Ok(())
    } else {
        Err(err(libc::EOPNOTSUPP))
    }
}

impl<F> Confined<F> {
    /// Serves `inner` under the rules, read-only if `read_only`.
    pub fn new(inner: F, read_only: bool) -> Self {
        // SAFETY: geteuid and getegid cannot fail.
        let (uid, gid) = unsafe { (libc::geteuid(), libc::getegid()) };
        Self {
            inner,
            read_only,
            atomic_o_trunc: false,
            uid,
            gid,
            open_flags: Mutex::default(),
        }
    }

    fn lock_flags(&self) -> std::sync::MutexGuard<'_, HashMap<u64, u32>> {
        self.open_flags.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn remember(&self, handle: u64, flags: u32) {
        self.lock_flags().insert(handle, flags);
    }

    /// The flags `handle` was opened with, if it is open.
    fn flags_of(&self, handle: u64) -> Option<u32> {
        self.lock_flags().get(&handle).copied()
    }

    /// Negotiates `FUSE_ATOMIC_O_TRUNC`: only for an inner file system whose
    /// `open` honours `O_TRUNC` (the passthrough; the virtual adapter does
    /// not, and keeps the separate SETATTR).
    pub fn with_atomic_o_trunc(mut self) -> Self {
        self.atomic_o_trunc = true;
        self
    }

    /// The wrapped file system.
    pub fn inner(&self) -> &F {
        &self.inner
    }

    fn writable(&self) -> io::Result<()> {
        if self.read_only {
            Err(err(libc::EROFS))
        } else {
            Ok(())
        }
    }

    /// Opening with `flags` is allowed (no writing on a read-only mount).
    fn check_open(&self, flags: u32) -> io::Result<()> {
        let flags = flags as i32;
        let writes = matches!(flags & libc::O_ACCMODE, libc::O_WRONLY | libc::O_RDWR)
            || flags & (libc::O_TRUNC | libc::O_APPEND | libc::O_CREAT) != 0;
        if writes {
            self.writable()
        } else {
            Ok(())
        }
    }
}

impl<F: FileSystem<Inode = u64, Handle = u64>> FileSystem for Confined<F> {
    type Inode = u64;
    type Handle = u64;

    /// With [`Confined::with_atomic_o_trunc`], adds `ATOMIC_O_TRUNC` to
    /// what the passthrough asks for, as
    /// virtiofsd does: an `open(O_TRUNC)` truncates through the handle it
    /// opens. Without it the guest sends a separate SETATTR that the
    /// passthrough serves on a second, short-lived descriptor, and ext4's
    /// replace-via-truncate heuristic (write-out started when the
    /// truncating descriptor closes) fires on that empty descriptor
    /// instead of after the data: a rewritten file then stays dirty on
    /// the host until the next sync (measured: 1 GiB dirty after `dd`, a
    /// 0.5 s guest `sync`, against none on virtiofsd).
    fn init(&self, capable: FsOptions) -> io::Result<FsOptions> {
        let atomic = if self.atomic_o_trunc {
            capable & FsOptions::ATOMIC_O_TRUNC
        } else {
            FsOptions::empty()
        };
        Ok(self.inner.init(capable)? | (capable & crate::TRANSFER_OPTIONS) | atomic)
    }

    fn destroy(&self) {
        self.inner.destroy()
    }

    fn lookup(&self, ctx: &Context, parent: u64, name: &CStr) -> io::Result<Entry> {
        check_name(name)?;
        self.inner.lookup(ctx, parent, name)
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
        mut attr: stat64,
        handle: Option<u64>,
        valid: SetattrValid,
    ) -> io::Result<(stat64, Duration)> {
        self.writable()?;
        if valid.contains(SetattrValid::MODE) {
            attr.st_mode = strip(attr.st_mode);
        }
        // Ownership stays with the library's user: a guest `chown`
        // succeeds and changes nothing on the host.
        let valid = valid - (SetattrValid::UID | SetattrValid::GID);
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
        self.writable()?;
        check_name(name)?;
        // The target is stored as text and resolved by the guest, never by
        // the host.
        self.inner.symlink(ctx, linkname, parent, name)
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
        self.writable()?;
        check_name(name)?;
        match mode & libc::S_IFMT {
            libc::S_IFREG | libc::S_IFIFO | libc::S_IFSOCK => {}
            _ => return Err(err(libc::EPERM)),
        }
        self.inner
            .mknod(ctx, parent, name, strip(mode), rdev, umask)
    }

    fn mkdir(
        &self,
        ctx: &Context,
        parent: u64,
        name: &CStr,
        mode: u32,
        umask: u32,
    ) -> io::Result<Entry> {
        self.writable()?;
        check_name(name)?;
        self.inner.mkdir(ctx, parent, name, strip(mode), umask)
    }

    fn unlink(&self, ctx: &Context, parent: u64, name: &CStr) -> io::Result<()> {
        self.writable()?;
        check_name(name)?;
        self.inner.unlink(ctx, parent, name)
    }

    fn rmdir(&self, ctx: &Context, parent: u64, name: &CStr) -> io::Result<()> {
        self.writable()?;
        check_name(name)?;
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
        self.writable()?;
        check_name(oldname)?;
        check_name(newname)?;
        self.inner
            .rename(ctx, olddir, oldname, newdir, newname, flags)
    }

    fn link(&self, ctx: &Context, inode: u64, newparent: u64, newname: &CStr) -> io::Result<Entry> {
        self.writable()?;
        check_name(newname)?;
        self.inner.link(ctx, inode, newparent, newname)
    }

    fn open(
        &self,
        ctx: &Context,
        inode: u64,
        flags: u32,
        fuse_flags: u32,
    ) -> io::Result<(Option<u64>, OpenOptions, Option<u32>)> {
        self.check_open(flags)?;
        let opened = self.inner.open(ctx, inode, flags, fuse_flags)?;
        if let Some(handle) = opened.0 {
            self.remember(handle, flags);
        }
        Ok(opened)
    }

    fn create(
        &self,
        ctx: &Context,
        parent: u64,
        name: &CStr,
        mut args: CreateIn,
    ) -> io::Result<(Entry, Option<u64>, OpenOptions, Option<u32>)> {
        self.writable()?;
        check_name(name)?;
        args.mode = strip(args.mode);
        let flags = args.flags;
        let created = self.inner.create(ctx, parent, name, args)?;
        if let Some(handle) = created.1 {
            self.remember(handle, flags);
        }
        Ok(created)
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
        let flags = self.flags_of(handle).unwrap_or(flags);
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
        self.writable()?;
        let flags = self.flags_of(handle).unwrap_or(flags);
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
        self.writable()?;
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
        self.lock_flags().remove(&handle);
        self.inner
            .release(ctx, inode, flags, handle, flush, flock_release, lock_owner)
    }

    fn statfs(&self, ctx: &Context, inode: u64) -> io::Result<statvfs64> {
        self.inner.statfs(ctx, inode)
    }

    fn setxattr(
        &self,
        ctx: &Context,
        inode: u64,
        name: &CStr,
        value: &[u8],
        flags: u32,
    ) -> io::Result<()> {
        self.writable()?;
        check_xattr(name)?;
        self.inner.setxattr(ctx, inode, name, value, flags)
    }

    fn getxattr(
        &self,
        ctx: &Context,
        inode: u64,
        name: &CStr,
        size: u32,
    ) -> io::Result<GetxattrReply> {
        check_xattr(name)?;
        // The passthrough allocates the guest's `size` up front; no value
        // is longer than the kernel's limit, so ask for no more.
        self.inner
            .getxattr(ctx, inode, name, size.min(XATTR_SIZE_MAX))
    }

    fn listxattr(&self, ctx: &Context, inode: u64, size: u32) -> io::Result<ListxattrReply> {
        self.inner.listxattr(ctx, inode, size.min(XATTR_LIST_MAX))
    }

    fn removexattr(&self, ctx: &Context, inode: u64, name: &CStr) -> io::Result<()> {
        self.writable()?;
        check_xattr(name)?;
        self.inner.removexattr(ctx, inode, name)
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
        self.inner
            .readdir(ctx, inode, handle, size, offset, add_entry)
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
        self.inner
            .readdirplus(ctx, inode, handle, size, offset, add_entry)
    }

    fn fsyncdir(&self, ctx: &Context, inode: u64, datasync: bool, handle: u64) -> io::Result<()> {
        self.inner.fsyncdir(ctx, inode, datasync, handle)
    }

    fn releasedir(&self, ctx: &Context, inode: u64, flags: u32, handle: u64) -> io::Result<()> {
        self.inner.releasedir(ctx, inode, flags, handle)
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
        Err(err(libc::ENOSYS))
    }

    fn removemapping(
        &self,
        _ctx: &Context,
        _inode: u64,
        _requests: Vec<RemovemappingOne>,
        _vu_req: &mut dyn FsCacheReqHandler,
    ) -> io::Result<()> {
        Err(err(libc::ENOSYS))
    }

    fn access(&self, ctx: &Context, inode: u64, mask: u32) -> io::Result<()> {
        if mask & libc::W_OK as u32 != 0 {
            self.writable()?;
        }
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

    fn getlk(
        &self,
        ctx: &Context,
        inode: u64,
        handle: u64,
        owner: u64,
        lock: FileLock,
        flags: u32,
    ) -> io::Result<FileLock> {
        self.inner.getlk(ctx, inode, handle, owner, lock, flags)
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
        self.inner.setlk(ctx, inode, handle, owner, lock, flags)
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
        self.inner.setlkw(ctx, inode, handle, owner, lock, flags)
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
        Err(err(libc::ENOTTY))
    }

    fn bmap(&self, _ctx: &Context, _inode: u64, _block: u64, _blocksize: u32) -> io::Result<u64> {
        Err(err(libc::ENOSYS))
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
        self.inner.poll(ctx, inode, handle, khandle, flags, events)
    }

    fn notify_reply(&self) -> io::Result<()> {
        self.inner.notify_reply()
    }

    fn id_remap(&self, ctx: &mut Context) -> io::Result<()> {
        // Every request acts as the library's own user.
        ctx.uid = self.uid;
        ctx.gid = self.gid;
        Ok(())
    }
}
