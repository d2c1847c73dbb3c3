//! The confinement rules, checked by calling a bound directory's file
//! system directly (as the FUSE server would for a guest request).

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::PathBuf;

use fuse_backend_rs::abi::fuse_abi::CreateIn;
use fuse_backend_rs::api::filesystem::{Context, FileSystem, FsOptions, ROOT_ID};

use crate::{bind, Access};

struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("sandbox-fs-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("src/sub")).unwrap();
        std::fs::write(dir.join("src/hello.txt"), b"hello\n").unwrap();
        std::fs::write(dir.join("secret.txt"), b"outside\n").unwrap();
        Self(dir)
    }
    fn src(&self) -> PathBuf {
        self.0.join("src")
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn errno(r: std::io::Result<impl Sized>) -> Option<i32> {
    r.err().and_then(|e| e.raw_os_error())
}

fn create_args(mode: u32) -> CreateIn {
    CreateIn {
        flags: (libc::O_CREAT | libc::O_WRONLY) as u32,
        mode,
        umask: 0,
        fuse_flags: 0,
    }
}

#[test]
fn names_that_leave_the_directory_are_refused() {
    let s = Scratch::new("names");
    let fs = bind(&s.src(), Access::Writable).unwrap();
    fs.init(FsOptions::empty()).unwrap();
    let ctx = Context::default();
    for name in [c"..", c".", c"", c"../secret.txt", c"sub/../../secret.txt"] {
        assert_eq!(
            errno(fs.lookup(&ctx, ROOT_ID, name)),
            Some(libc::EINVAL),
            "{name:?}"
        );
        assert_eq!(
            errno(fs.mkdir(&ctx, ROOT_ID, name, 0o755, 0)),
            Some(libc::EINVAL),
            "{name:?}"
        );
    }
    assert!(fs.lookup(&ctx, ROOT_ID, c"hello.txt").is_ok());
    let sub = fs.lookup(&ctx, ROOT_ID, c"sub").unwrap().inode;
    assert_eq!(errno(fs.lookup(&ctx, sub, c"..")), Some(libc::EINVAL));
    // A rename or link cannot name a way out either.
    let hello = fs.lookup(&ctx, ROOT_ID, c"hello.txt").unwrap().inode;
    assert_eq!(
        errno(fs.rename(&ctx, ROOT_ID, c"hello.txt", ROOT_ID, c"../moved", 0)),
        Some(libc::EINVAL)
    );
    assert_eq!(errno(fs.link(&ctx, hello, sub, c"..")), Some(libc::EINVAL));
    assert_eq!(std::fs::read(s.0.join("secret.txt")).unwrap(), b"outside\n");
    assert!(!s.0.join("moved").exists());
}

#[test]
fn a_read_only_bind_refuses_every_change() {
    let s = Scratch::new("ro");
    let fs = bind(&s.src(), Access::ReadOnly).unwrap();
    fs.init(FsOptions::empty()).unwrap();
    let ctx = Context::default();
    let hello = fs.lookup(&ctx, ROOT_ID, c"hello.txt").unwrap().inode;
    let erofs = Some(libc::EROFS);
    assert_eq!(
        errno(fs.create(&ctx, ROOT_ID, c"new", create_args(0o644))),
        erofs
    );
    assert_eq!(errno(fs.mkdir(&ctx, ROOT_ID, c"d", 0o755, 0)), erofs);
    assert_eq!(errno(fs.unlink(&ctx, ROOT_ID, c"hello.txt")), erofs);
    assert_eq!(
        errno(fs.rename(&ctx, ROOT_ID, c"hello.txt", ROOT_ID, c"x", 0)),
        erofs
    );
    assert_eq!(errno(fs.symlink(&ctx, c"/etc", ROOT_ID, c"l")), erofs);
    for flags in [libc::O_WRONLY, libc::O_RDWR, libc::O_RDONLY | libc::O_TRUNC] {
        assert_eq!(
            errno(fs.open(&ctx, hello, flags as u32, 0)),
            erofs,
            "{flags:#x}"
        );
    }
    assert!(fs.open(&ctx, hello, libc::O_RDONLY as u32, 0).is_ok());
    assert_eq!(
        std::fs::read(s.src().join("hello.txt")).unwrap(),
        b"hello\n"
    );
    assert!(!s.src().join("new").exists());
}

#[test]
fn no_device_nodes_and_no_setuid_bits_reach_the_host() {
    let s = Scratch::new("modes");
    let fs = bind(&s.src(), Access::Writable).unwrap();
    fs.init(FsOptions::empty()).unwrap();
    let ctx = Context::default();
    let dev = libc::S_IFCHR | 0o666;
    assert_eq!(
        errno(fs.mknod(&ctx, ROOT_ID, c"null", dev, 0x0103, 0)),
        Some(libc::EPERM)
    );
    let blk = libc::S_IFBLK | 0o666;
    assert_eq!(
        errno(fs.mknod(&ctx, ROOT_ID, c"sda", blk, 0x0800, 0)),
        Some(libc::EPERM)
    );
    assert!(fs
        .mknod(&ctx, ROOT_ID, c"fifo", libc::S_IFIFO | 0o644, 0, 0)
        .is_ok());
    let suid = libc::S_IFREG | libc::S_ISUID | libc::S_ISGID | 0o755;
    fs.create(&ctx, ROOT_ID, c"tool", create_args(suid))
        .unwrap();
    let meta = std::fs::metadata(s.src().join("tool")).unwrap();
    assert_eq!(meta.permissions().mode() & 0o7777, 0o755);
    assert!(!s.src().join("null").exists() && !s.src().join("sda").exists());
    // Owned by the user running the library, whatever uid the guest sent.
    let guest = Context {
        uid: 1000,
        gid: 1000,
        ..Context::default()
    };
    let mut remapped = guest;
    fs.id_remap(&mut remapped).unwrap();
    // SAFETY: geteuid cannot fail.
    let me = unsafe { libc::geteuid() };
    assert_eq!(remapped.uid, me);
    assert_eq!(meta.uid(), me);
    // A chown from the guest changes nothing on the host.
    let tool = fs.lookup(&ctx, ROOT_ID, c"tool").unwrap().inode;
    let mut attr = fs.getattr(&ctx, tool, None).unwrap().0;
    attr.st_uid = 4321;
    attr.st_gid = 4321;
    let valid = fuse_backend_rs::api::filesystem::SetattrValid::UID
        | fuse_backend_rs::api::filesystem::SetattrValid::GID;
    fs.setattr(&guest, tool, attr, None, valid).unwrap();
    let meta = std::fs::metadata(s.src().join("tool")).unwrap();
    // SAFETY: getegid cannot fail.
    let my_gid = unsafe { libc::getegid() };
    assert_eq!((meta.uid(), meta.gid()), (me, my_gid));
}

#[test]
fn sources_are_validated() {
    let s = Scratch::new("sources");
    assert!(matches!(
        bind(std::path::Path::new("relative/dir"), Access::ReadOnly),
        Err(crate::BindError::NotAbsolute(_))
    ));
    assert!(matches!(
        bind(&s.0.join("missing"), Access::ReadOnly),
        Err(crate::BindError::NotADirectory { .. })
    ));
    assert!(matches!(
        bind(&s.src().join("hello.txt"), Access::ReadOnly),
        Err(crate::BindError::NotADirectory { .. })
    ));
}

#[test]
fn masked_paths_are_absent_unlisted_and_unreachable() {
    let s = Scratch::new("masks");
    std::fs::create_dir_all(s.src().join(".git/objects")).unwrap();
    std::fs::write(s.src().join(".git/HEAD"), b"ref: main\n").unwrap();
    std::fs::write(s.src().join("sub/.env"), b"SECRET=1\n").unwrap();
    std::fs::write(s.src().join("sub/ok.txt"), b"ok\n").unwrap();
    let fs = crate::Masked::new(
        bind(&s.src(), Access::Writable).unwrap(),
        [PathBuf::from(".git"), PathBuf::from("sub/.env")],
        None,
    );
    fs.init(FsOptions::empty()).unwrap();
    let ctx = Context::default();
    assert_eq!(errno(fs.lookup(&ctx, ROOT_ID, c".git")), Some(libc::ENOENT));
    let sub = fs.lookup(&ctx, ROOT_ID, c"sub").unwrap().inode;
    assert_eq!(errno(fs.lookup(&ctx, sub, c".env")), Some(libc::ENOENT));
    assert!(fs.lookup(&ctx, sub, c"ok.txt").is_ok());
    // Listings leave them out.
    let list = |ino| {
        let (h, _) = fs.opendir(&ctx, ino, 0).unwrap();
        let mut names = Vec::new();
        fs.readdir(&ctx, ino, h.unwrap_or(0), 65536, 0, &mut |e| {
            names.push(String::from_utf8_lossy(e.name).to_string());
            Ok(1)
        })
        .unwrap();
        names.sort();
        names
    };
    assert_eq!(list(ROOT_ID), ["hello.txt", "sub"]);
    assert_eq!(list(sub), ["ok.txt"]);
    // Nothing can be made or moved onto a masked path, and the directory
    // holding one cannot move (its masked content would follow).
    assert_eq!(
        errno(fs.mkdir(&ctx, ROOT_ID, c".git", 0o755, 0)),
        Some(libc::EACCES)
    );
    assert_eq!(
        errno(fs.rename(&ctx, sub, c"ok.txt", sub, c".env", 0)),
        Some(libc::EACCES)
    );
    assert_eq!(
        errno(fs.rename(&ctx, ROOT_ID, c"sub", ROOT_ID, c"moved", 0)),
        Some(libc::EBUSY)
    );
    // Other renames work, and masks still apply by path afterwards.
    fs.rename(&ctx, sub, c"ok.txt", ROOT_ID, c"ok2.txt", 0)
        .unwrap();
    assert_eq!(
        std::fs::read(s.src().join("sub/.env")).unwrap(),
        b"SECRET=1\n"
    );
    assert_eq!(
        std::fs::read(s.src().join(".git/HEAD")).unwrap(),
        b"ref: main\n"
    );
}

#[test]
fn mask_storage_must_not_overlap_the_source() {
    let s = Scratch::new("overlap");
    let inside = s.src().join("sub");
    let r = crate::bind_masked(
        &s.src(),
        Access::Writable,
        vec![PathBuf::from(".git")],
        Some(&inside),
    );
    assert!(matches!(r, Err(crate::BindError::Storage { .. })));
    let r = crate::bind_masked(
        &s.src(),
        Access::Writable,
        vec![PathBuf::from(".git")],
        Some(&s.0),
    );
    assert!(matches!(r, Err(crate::BindError::Storage { .. })));
    let store = s.0.join("store");
    std::fs::create_dir_all(&store).unwrap();
    let masks = vec![PathBuf::from("a/b/.env")];
    assert!(crate::bind_masked(&s.src(), Access::Writable, masks, Some(&store)).is_ok());
    assert!(
        store.join("a/b").is_dir(),
        "the mask's parent is made in the storage"
    );
}

#[test]
fn xattrs_are_not_served_whatever_size_the_guest_names() {
    let s = Scratch::new("xattr");
    let fs = bind(&s.src(), Access::Writable).unwrap();
    fs.init(FsOptions::empty()).unwrap();
    let ctx = Context::default();
    let e = fs.lookup(&ctx, ROOT_ID, c"hello.txt").unwrap();
    // The passthrough runs without xattr support, so nothing is allocated
    // for the guest's size (up to 4 GiB): refused before that.
    for size in [0, 2, u32::MAX] {
        assert_eq!(
            errno(fs.getxattr(&ctx, e.inode, c"user.tag", size)),
            Some(libc::ENOSYS)
        );
        assert_eq!(errno(fs.listxattr(&ctx, e.inode, size)), Some(libc::ENOSYS));
    }
    // Namespaces other than `user.` are refused by name first.
    assert_eq!(
        errno(fs.getxattr(&ctx, e.inode, c"security.capability", u32::MAX)),
        Some(libc::EOPNOTSUPP)
    );
}
