//! [`Tracked`] over a real bound directory: the guest's ids and handles
//! found again by a second file system serving the same source, as after
//! a snapshot and restore.

use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;

use fuse_backend_rs::abi::fuse_abi::CreateIn;
use fuse_backend_rs::api::filesystem::{Context, FileSystem, FsOptions, ROOT_ID};

use crate::{bind, Access, Tracked};

fn scratch() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("sandbox-fs-tracked-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("a/b")).unwrap();
    std::fs::write(dir.join("a/b/deep.txt"), b"deep\n").unwrap();
    std::fs::write(dir.join("gone.txt"), b"soon gone\n").unwrap();
    dir
}

fn errno(r: std::io::Result<impl Sized>) -> Option<i32> {
    r.err().and_then(|e| e.raw_os_error())
}

#[test]
fn a_restored_file_system_finds_the_guests_inodes_and_handles_again() {
    let dir = scratch();
    let ctx = Context::default();
    let fs = Tracked::new(bind(&dir, Access::Writable).unwrap());
    fs.init(FsOptions::empty()).unwrap();
    let a = fs.lookup(&ctx, ROOT_ID, c"a").unwrap().inode;
    let b = fs.lookup(&ctx, a, c"b").unwrap().inode;
    let deep = fs.lookup(&ctx, b, c"deep.txt").unwrap().inode;
    let gone = fs.lookup(&ctx, ROOT_ID, c"gone.txt").unwrap().inode;
    let (created, handle, ..) = fs
        .create(
            &ctx,
            b,
            c"new.txt",
            CreateIn {
                flags: (libc::O_CREAT | libc::O_TRUNC | libc::O_RDWR) as u32,
                mode: 0o644,
                umask: 0,
                fuse_flags: 0,
            },
        )
        .unwrap();
    let handle = handle.unwrap();
    std::fs::write(dir.join("a/b/new.txt"), b"written meanwhile\n").unwrap();
    // The guest renames `a` to `c`.
    fs.rename(&ctx, ROOT_ID, c"a", ROOT_ID, c"c", 0).unwrap();
    let state = fs.save();
    drop(fs);
    // Between snapshot and restore, the host removes a file.
    std::fs::remove_file(dir.join("gone.txt")).unwrap();

    let (fs, restored) = Tracked::restore(bind(&dir, Access::Writable).unwrap(), &state).unwrap();
    assert_eq!(restored.inodes, 4, "{restored:?}");
    assert_eq!(restored.inodes_stale, 1, "{restored:?}");
    assert_eq!(restored.handles, 1, "{restored:?}");
    let ino = |p: &str| std::fs::metadata(dir.join(p)).unwrap().ino();
    assert_eq!(
        fs.getattr(&ctx, deep, None).unwrap().0.st_ino,
        ino("c/b/deep.txt")
    );
    assert_eq!(
        fs.getattr(&ctx, created.inode, Some(handle))
            .unwrap()
            .0
            .st_ino,
        ino("c/b/new.txt")
    );
    // Reopening did not truncate what the host wrote.
    assert_eq!(
        std::fs::read(dir.join("c/b/new.txt")).unwrap(),
        b"written meanwhile\n"
    );
    assert_eq!(errno(fs.getattr(&ctx, gone, None)), Some(libc::ESTALE));
    assert_eq!(
        errno(fs.getattr(&ctx, deep, Some(handle + 1))),
        Some(libc::EBADF)
    );
    // New lookups get ids the guest never held; old names still resolve.
    let again = fs.lookup(&ctx, ROOT_ID, c"c").unwrap().inode;
    assert_eq!(again, a, "the same directory keeps its guest id");
    let fresh = fs.lookup(&ctx, b, c"deep.txt").unwrap().inode;
    assert_eq!(fresh, deep);
    std::fs::write(dir.join("later.txt"), b"x").unwrap();
    let later = fs.lookup(&ctx, ROOT_ID, c"later.txt").unwrap().inode;
    assert!(later > created.inode.max(gone), "{later}");
    fs.release(&ctx, created.inode, 0, handle, false, false, None)
        .unwrap();
    assert!(Tracked::restore(bind(&dir, Access::Writable).unwrap(), "{not json").is_err());
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_masked_bind_restores_through_its_masks_and_storage() {
    let dir = std::env::temp_dir().join(format!("sandbox-fs-tracked-mask-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let (src, storage) = (dir.join("src"), dir.join("storage"));
    std::fs::create_dir_all(src.join(".git")).unwrap();
    std::fs::create_dir_all(&storage).unwrap();
    std::fs::write(src.join(".git/config"), b"secret\n").unwrap();
    std::fs::write(src.join("code.rs"), b"fn main() {}\n").unwrap();
    let open =
        || crate::bind_masked(&src, Access::Writable, vec![".git".into()], Some(&storage)).unwrap();
    let ctx = Context::default();
    let fs = Tracked::new(open());
    fs.init(FsOptions::empty()).unwrap();
    let code = fs.lookup(&ctx, ROOT_ID, c"code.rs").unwrap().inode;
    // The guest's own .git lands in the storage, never in the source.
    let git = fs
        .mkdir(&ctx, ROOT_ID, c".git", 0o755, 0)
        .map(|e| e.inode)
        .or_else(|_| fs.lookup(&ctx, ROOT_ID, c".git").map(|e| e.inode))
        .unwrap();
    let (head, handle, ..) = fs
        .create(
            &ctx,
            git,
            c"HEAD",
            CreateIn {
                flags: (libc::O_CREAT | libc::O_WRONLY) as u32,
                mode: 0o644,
                umask: 0,
                fuse_flags: 0,
            },
        )
        .unwrap();
    let state = fs.save();
    drop(fs);

    let (fs, restored) = Tracked::restore(open(), &state).unwrap();
    assert_eq!(
        restored.inodes_stale + restored.handles_stale,
        0,
        "{restored:?}"
    );
    let ino = |p: &std::path::Path| std::fs::metadata(p).unwrap().ino();
    assert_eq!(
        fs.getattr(&ctx, code, None).unwrap().0.st_ino,
        ino(&src.join("code.rs"))
    );
    // The masked directory is still the storage's, not the source's (the
    // storage's inode numbers carry `STORAGE`).
    assert_eq!(
        fs.getattr(&ctx, head.inode, Some(handle.unwrap()))
            .unwrap()
            .0
            .st_ino,
        ino(&storage.join(".git/HEAD")) | crate::STORAGE
    );
    assert!(
        fs.lookup(&ctx, git, c"config").is_err(),
        "the source's .git stays hidden"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_readdirplus_entry_the_guest_never_got_is_not_held() {
    let dir = std::env::temp_dir().join(format!("sandbox-fs-tracked-rdp-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    for name in ["a", "b", "c"] {
        std::fs::write(dir.join(name), name).unwrap();
    }
    let ctx = Context::default();
    let fs = Tracked::new(bind(&dir, Access::ReadOnly).unwrap());
    fs.init(FsOptions::empty()).unwrap();
    let (handle, _) = fs.opendir(&ctx, ROOT_ID, 0).unwrap();
    let handle = handle.unwrap();
    // The guest's buffer takes one entry; the next does not fit.
    let mut got = Vec::new();
    fs.readdirplus(&ctx, ROOT_ID, handle, 4096, 0, &mut |d, e| {
        if got.is_empty() {
            got.push((d.name.to_vec(), e.inode));
            Ok(1)
        } else {
            Ok(0)
        }
    })
    .unwrap();
    assert_eq!(got.len(), 1);
    let saved: crate::ids::Saved = serde_json::from_str(&fs.save()).unwrap();
    assert_eq!(saved.nodes.len(), 1, "only the entry the guest got is held");
    assert_eq!(saved.nodes[0].0, got[0].1);
    assert_eq!(saved.nodes[0].1.lookups, 1);
    // A lookup of that name is the same inode, one more lookup.
    let name = std::ffi::CString::new(got[0].0.clone()).unwrap();
    assert_eq!(fs.lookup(&ctx, ROOT_ID, &name).unwrap().inode, got[0].1);
    fs.forget(&ctx, got[0].1, 2);
    let saved: crate::ids::Saved = serde_json::from_str(&fs.save()).unwrap();
    assert!(saved.nodes.is_empty(), "forgotten: {saved:?}");
    fs.releasedir(&ctx, ROOT_ID, 0, handle).unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
}
