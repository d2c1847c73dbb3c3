//! The memory file system, and application file systems served through
//! [`crate::Virtual`] (a panicking one, a stalling one, one that counts).

use std::ffi::OsString;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use fuse_backend_rs::abi::fuse_abi::CreateIn;
use fuse_backend_rs::api::filesystem::{Context, FileSystem as Fuse, ROOT_ID};

use crate::vfs::{Attr, DirEntry, Errno, FileSystem, FsFuture, Ino, SetAttr, ROOT};
use crate::{Confined, MemoryFs, Virtual};

/// Runs a future of the memory file system (which answers at once).
fn block<T>(f: FsFuture<'_, T>) -> Result<T, Errno> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    rt.block_on(f)
}

#[test]
fn the_memory_fs_is_posix_enough_and_bounded() {
    let fs = MemoryFs::new()
        .size_limit(64 << 10)
        .file("/seed/a.txt", b"seeded")
        .unwrap()
        .dir("/empty")
        .unwrap();
    let seed = block(fs.lookup(ROOT, "seed".into())).unwrap();
    let a = block(fs.lookup(seed.ino, "a.txt".into())).unwrap();
    assert_eq!(block(fs.read(a.ino, 2, 100)).unwrap(), b"eded");
    // Create, write past the end (a hole of zeros), truncate.
    let f = block(fs.create(ROOT, "f".into(), 0o644)).unwrap();
    assert_eq!(block(fs.write(f.ino, 4, b"xy".to_vec())).unwrap(), 2);
    assert_eq!(block(fs.read(f.ino, 0, 10)).unwrap(), b"\0\0\0\0xy");
    let set = SetAttr {
        size: Some(1),
        ..Default::default()
    };
    assert_eq!(block(fs.setattr(f.ino, set)).unwrap().size, 1);
    // Names: taken, invalid.
    assert_eq!(
        block(fs.create(ROOT, "f".into(), 0o644)).unwrap_err(),
        Errno::EEXIST
    );
    for bad in ["..", ".", "a/b", ""] {
        assert_eq!(
            block(fs.mkdir(ROOT, bad.into(), 0o755)).unwrap_err(),
            Errno::EINVAL
        );
    }
    // Directories: not empty, moved, not into themselves.
    assert_eq!(
        block(fs.rmdir(ROOT, "seed".into())).unwrap_err(),
        Errno::ENOTEMPTY
    );
    let empty = block(fs.lookup(ROOT, "empty".into())).unwrap();
    assert_eq!(
        block(fs.rename(ROOT, "seed".into(), seed.ino, "inner".into())).unwrap_err(),
        Errno::EINVAL
    );
    block(fs.rename(ROOT, "seed".into(), empty.ino, "moved".into())).unwrap();
    assert_eq!(fs.read_file("/empty/moved/a.txt").unwrap(), b"seeded");
    // Replacing rename of a file.
    block(fs.rename(ROOT, "f".into(), empty.ino, "moved2".into())).unwrap();
    let names: Vec<OsString> = fs
        .read_dir("/empty")
        .unwrap()
        .into_iter()
        .map(|e: DirEntry| e.name)
        .collect();
    assert_eq!(names, ["moved", "moved2"]);
    // Symlinks keep their text.
    let l = block(fs.symlink(ROOT, "l".into(), "/etc/passwd".into())).unwrap();
    assert_eq!(block(fs.readlink(l.ino)).unwrap(), "/etc/passwd");
    // The limit: a write past it fails, and nothing of it is kept.
    let used = fs.used_bytes();
    let big = block(fs.create(ROOT, "big".into(), 0o644)).unwrap();
    assert_eq!(
        block(fs.write(big.ino, 0, vec![1; 128 << 10])).unwrap_err(),
        Errno::ENOSPC
    );
    assert_eq!(block(fs.getattr(big.ino)).unwrap().size, 0);
    // Freed space is usable again.
    block(fs.unlink(ROOT, "big".into())).unwrap();
    assert_eq!(fs.used_bytes(), used);
    assert!(block(fs.write(a.ino, 0, vec![2; 32 << 10])).is_ok());
}

/// An application file system that counts calls, and panics or stalls on
/// names that ask for it.
struct Tricky {
    calls: Arc<AtomicUsize>,
}

impl FileSystem for Tricky {
    fn lookup(&self, _parent: Ino, name: OsString) -> FsFuture<'_, Attr> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        Box::pin(async move {
            match name.to_str() {
                Some("panic") => panic!("a bug in the application's file system"),
                Some("stall") => {
                    tokio::time::sleep(Duration::from_secs(3600)).await;
                    Err(Errno::ENOENT)
                }
                _ => Err(Errno::ENOENT),
            }
        })
    }
    fn getattr(&self, ino: Ino) -> FsFuture<'_, Attr> {
        Box::pin(async move {
            Ok(Attr {
                ino,
                kind: crate::vfs::FileKind::Dir,
                size: 0,
                perm: 0o755,
                nlink: 2,
                mtime: std::time::UNIX_EPOCH,
            })
        })
    }
    fn setattr(&self, _: Ino, _: SetAttr) -> FsFuture<'_, Attr> {
        Box::pin(async { Err(Errno::ENOSYS) })
    }
    fn readdir(&self, _: Ino) -> FsFuture<'_, Vec<DirEntry>> {
        Box::pin(async { Ok(Vec::new()) })
    }
    fn read(&self, _: Ino, _: u64, _: u32) -> FsFuture<'_, Vec<u8>> {
        Box::pin(async { Err(Errno::EISDIR) })
    }
    fn write(&self, _: Ino, _: u64, _: Vec<u8>) -> FsFuture<'_, u32> {
        Box::pin(async { Err(Errno::EISDIR) })
    }
    fn create(&self, _: Ino, _: OsString, _: u32) -> FsFuture<'_, Attr> {
        Box::pin(async { Err(Errno::EROFS) })
    }
    fn mkdir(&self, _: Ino, _: OsString, _: u32) -> FsFuture<'_, Attr> {
        Box::pin(async { Err(Errno::EROFS) })
    }
    fn unlink(&self, _: Ino, _: OsString) -> FsFuture<'_, ()> {
        Box::pin(async { Err(Errno::EROFS) })
    }
    fn rmdir(&self, _: Ino, _: OsString) -> FsFuture<'_, ()> {
        Box::pin(async { Err(Errno::EROFS) })
    }
    fn rename(&self, _: Ino, _: OsString, _: Ino, _: OsString) -> FsFuture<'_, ()> {
        Box::pin(async { Err(Errno::EROFS) })
    }
    fn symlink(&self, _: Ino, _: OsString, _: OsString) -> FsFuture<'_, Attr> {
        Box::pin(async { Err(Errno::EROFS) })
    }
    fn readlink(&self, _: Ino) -> FsFuture<'_, OsString> {
        Box::pin(async { Err(Errno::EINVAL) })
    }
}

fn errno(r: std::io::Result<impl Sized>) -> Option<i32> {
    r.err().and_then(|e| e.raw_os_error())
}

#[test]
fn a_panicking_or_stalling_application_fs_fails_the_request_not_the_server() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let calls = Arc::new(AtomicUsize::new(0));
    let fs = Confined::new(
        Virtual::new(
            Arc::new(Tricky {
                calls: calls.clone(),
            }),
            rt.handle().clone(),
            // Long enough that a loaded machine (CI builds in parallel)
            // still answers the calls that do not stall in time.
            Duration::from_millis(1000),
        ),
        false,
    );
    let ctx = Context::default();
    assert_eq!(errno(fs.lookup(&ctx, ROOT_ID, c"panic")), Some(libc::EIO));
    let t = Instant::now();
    assert_eq!(errno(fs.lookup(&ctx, ROOT_ID, c"stall")), Some(libc::EIO));
    let waited = t.elapsed();
    assert!(
        waited >= Duration::from_millis(1000) && waited < Duration::from_secs(6),
        "{waited:?}"
    );
    // Served as usual afterwards; names are checked before the
    // application sees them.
    assert_eq!(
        errno(fs.lookup(&ctx, ROOT_ID, c"plain")),
        Some(libc::ENOENT)
    );
    assert_eq!(errno(fs.lookup(&ctx, ROOT_ID, c"..")), Some(libc::EINVAL));
    assert_eq!(calls.load(Ordering::SeqCst), 3);
    // Errors the application returns reach the guest as they are.
    let args = CreateIn {
        flags: 0,
        mode: 0o644,
        umask: 0,
        fuse_flags: 0,
    };
    assert_eq!(
        errno(fs.create(&ctx, ROOT_ID, c"new", args)),
        Some(libc::EROFS)
    );
}

#[test]
fn memory_fs_through_fuse_calls_round_trips() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let mem = MemoryFs::new();
    let fs = Confined::new(
        Virtual::new(
            Arc::new(mem.clone()),
            rt.handle().clone(),
            crate::DEFAULT_DEADLINE,
        ),
        false,
    );
    let ctx = Context::default();
    let args = CreateIn {
        flags: 0,
        mode: libc::S_IFREG | libc::S_ISUID | 0o755,
        umask: 0o022,
        fuse_flags: 0,
    };
    let (e, _, _, _) = fs.create(&ctx, ROOT_ID, c"tool", args).unwrap();
    assert_eq!(e.attr.st_mode & 0o7777, 0o755, "no setuid");
    let d = fs.mkdir(&ctx, ROOT_ID, c"dir", 0o755, 0).unwrap();
    assert_eq!(d.attr.st_mode & libc::S_IFMT, libc::S_IFDIR);
    assert_eq!(
        errno(fs.mknod(&ctx, ROOT_ID, c"dev", libc::S_IFCHR | 0o600, 0, 0)),
        Some(libc::EPERM)
    );
    let mut seen = Vec::new();
    fs.readdir(&ctx, ROOT_ID, 0, 4096, 0, &mut |e| {
        seen.push(String::from_utf8_lossy(e.name).to_string());
        Ok(1)
    })
    .unwrap();
    assert_eq!(seen, ["dir", "tool"]);
    assert_eq!(mem.read_file("/tool").unwrap(), b"");
}

/// A request's data as the FUSE server hands it to `write`.
struct Carried<'a>(&'a [u8]);

impl std::io::Read for Carried<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        std::io::Read::read(&mut self.0, buf)
    }
}

impl fuse_backend_rs::api::filesystem::ZeroCopyReader for Carried<'_> {
    fn read_to(
        &mut self,
        _f: &mut dyn fuse_backend_rs::file_traits::FileReadWriteVolatile,
        _count: usize,
        _off: u64,
    ) -> std::io::Result<usize> {
        Err(std::io::Error::from_raw_os_error(libc::ENOSYS))
    }
}

/// Found by the `virtio_fs` fuzz target: a write whose size field says
/// 2.7 GiB made the adapter allocate that much before reading anything.
#[test]
fn a_forged_write_size_is_refused_without_allocating_it() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let mem = MemoryFs::new().file("/f", b"old").unwrap();
    let fs = Virtual::new(
        Arc::new(mem.clone()),
        rt.handle().clone(),
        crate::DEFAULT_DEADLINE,
    );
    let ctx = Context::default();
    let f = Fuse::lookup(&fs, &ctx, ROOT_ID, c"f").unwrap();
    let write = |size: u32, data: &[u8]| {
        Fuse::write(
            &fs,
            &ctx,
            f.inode,
            0,
            &mut Carried(data),
            size,
            0,
            None,
            false,
            0,
            0,
        )
    };
    for size in [0xa6a6_a6a6, u32::MAX, (1 << 20) + 1] {
        let e = write(size, b"new").unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EINVAL), "size {size:#x}");
    }
    // A size larger than the data the request carries is refused too.
    let e = write(64, b"new").unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EINVAL));
    assert_eq!(mem.read_file("/f").unwrap(), b"old");
    assert_eq!(write(3, b"new").unwrap(), 3);
    assert_eq!(mem.read_file("/f").unwrap(), b"new");
}
