//! Host file systems mounted in a real guest over virtio-fs
//! (`BootOptions::mount`): read-only and writable binds, escape attempts,
//! memory and application-implemented file systems, and the errors a bad
//! mount gets before anything starts.

use std::ffi::OsString;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use sandbox::minimal;
use sandbox_core::vfs::{
    Attr, DirEntry, Errno, FileKind, FileSystem, FsFuture, MemoryFs, SetAttr, ROOT,
};
use sandbox_core::{BootOptions, Error, Mount, MountError, Vm};

/// A host scratch tree: `src/` is bound, `outside.txt` sits next to it.
struct Host(PathBuf);

impl Host {
    fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("mounts-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("src/sub")).unwrap();
        std::fs::write(dir.join("src/hello.txt"), b"hello from the host\n").unwrap();
        std::fs::write(dir.join("src/sub/deep.txt"), b"deep\n").unwrap();
        std::fs::write(dir.join("outside.txt"), b"outside\n").unwrap();
        Self(dir)
    }
    fn src(&self) -> PathBuf {
        self.0.join("src")
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

async fn boot_with(opts: BootOptions) -> Vm {
    let vm = minimal().unwrap().boot(opts).await.unwrap();
    eprintln!("[harness] backend {:?}", vm.backend());
    vm
}

/// Runs `script` with `sh -c`; returns (exit code, stdout + stderr).
async fn sh(vm: &Vm, script: &str) -> (i32, String) {
    let out = vm.exec("sh", ["-c", script]).await.unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code.unwrap_or(-1), text)
}

fn fingerprint(p: &Path) -> (Vec<u8>, i64, i64) {
    let m = std::fs::metadata(p).unwrap();
    (std::fs::read(p).unwrap(), m.mtime(), m.mtime_nsec())
}

#[tokio::test]
async fn a_read_only_bind_shows_host_files_and_refuses_every_write() {
    let host = Host::new("ro");
    let vm = boot_with(
        BootOptions::default()
            .mount("/workspace", Mount::bind(host.src()).read_only())
            .cwd("/workspace"),
    )
    .await;
    // Relative to the default cwd, which is inside the mount.
    let (code, out) = sh(&vm, "cat hello.txt && cat sub/deep.txt && ls -a").await;
    assert_eq!(code, 0, "{out}");
    assert!(out.starts_with("hello from the host\ndeep\n"), "{out}");
    assert!(out.contains("hello.txt") && out.contains("sub"), "{out}");
    assert_eq!(
        vm.fs().read_file("/workspace/sub/deep.txt").await.unwrap(),
        b"deep\n"
    );
    for write in [
        "echo x > /workspace/new.txt",
        "echo x >> /workspace/hello.txt",
        "rm /workspace/hello.txt",
        "mkdir /workspace/d",
        "mv /workspace/hello.txt /workspace/moved.txt",
        "touch /workspace/hello.txt",
        "chmod 777 /workspace/hello.txt",
        "ln -s /etc /workspace/l",
    ] {
        let (code, out) = sh(&vm, write).await;
        assert_ne!(code, 0, "{write} must fail");
        assert!(out.contains("Read-only file system"), "{write}: {out}");
    }
    vm.shutdown().await.unwrap();
    let names: Vec<_> = std::fs::read_dir(host.src())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names.len(), 2, "{names:?}");
    assert_eq!(
        std::fs::read(host.src().join("hello.txt")).unwrap(),
        b"hello from the host\n"
    );
}

#[tokio::test]
async fn a_writable_bind_lands_on_the_host_owned_by_the_library_user() {
    let host = Host::new("rw");
    let vm =
        boot_with(BootOptions::default().mount("/workspace", Mount::bind(host.src()).writable()))
            .await;
    let script = "set -e; cd /workspace; mkdir -p out/nested; \
                  printf 'made in the guest' > out/nested/file.txt; \
                  mv hello.txt renamed.txt; rm sub/deep.txt; \
                  printf '#!/bin/sh\\n' > tool; chmod 6755 tool; \
                  chown 1234:1234 out/nested/file.txt 2>/dev/null || true; \
                  dd if=/dev/zero of=big bs=1M count=8 2>/dev/null; sync";
    let (code, out) = sh(&vm, script).await;
    assert_eq!(code, 0, "{out}");
    // Visible to the host at once (no shutdown needed).
    let made = host.src().join("out/nested/file.txt");
    assert_eq!(std::fs::read(&made).unwrap(), b"made in the guest");
    assert!(host.src().join("renamed.txt").exists());
    assert!(!host.src().join("hello.txt").exists());
    assert!(!host.src().join("sub/deep.txt").exists());
    assert_eq!(
        std::fs::metadata(host.src().join("big")).unwrap().len(),
        8 << 20
    );
    // SAFETY: geteuid cannot fail.
    let me = unsafe { libc::geteuid() };
    assert_eq!(std::fs::metadata(&made).unwrap().uid(), me);
    let tool = std::fs::metadata(host.src().join("tool")).unwrap();
    assert_eq!(tool.uid(), me);
    assert_eq!(
        tool.permissions().mode() & 0o7777,
        0o755,
        "no setuid/setgid on the host"
    );
    // A host change is seen by the guest's next open.
    std::fs::write(host.src().join("from-host.txt"), b"new on the host").unwrap();
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let (code, out) = sh(&vm, "cat /workspace/from-host.txt").await;
    assert_eq!((code, out.as_str()), (0, "new on the host"));
    vm.shutdown().await.unwrap();
}

#[tokio::test]
async fn escapes_from_the_guest_leave_the_host_untouched() {
    let host = Host::new("escape");
    let outside = host.0.join("outside.txt");
    let before = fingerprint(&outside);
    let vm =
        boot_with(BootOptions::default().mount("/workspace", Mount::bind(host.src()).writable()))
            .await;
    // Symlinks are resolved by the guest, in the guest: these point at
    // guest files, never at host ones.
    let script = format!(
        "cd /workspace; ln -s ../outside.txt up; ln -s {outside} abs; \
         echo pwned > up; echo pwned > abs; \
         ln /etc/hostname hard 2>&1; \
         mkdir -p {dir}; echo pwned > {outside_in_guest}; \
         cat /workspace/../outside.txt 2>&1; ls /workspace/.. >/dev/null; true",
        outside = outside.display(),
        dir = host.0.display(),
        outside_in_guest = outside.display(),
    );
    let (_, out) = sh(&vm, &script).await;
    assert!(
        !out.contains("outside\n"),
        "the guest read the host file: {out}"
    );
    // The links are stored as links on the host, with the guest's text.
    assert_eq!(
        std::fs::read_link(host.src().join("up")).unwrap(),
        Path::new("../outside.txt")
    );
    assert!(
        !host.src().join("hard").exists(),
        "no hard link across file systems"
    );
    vm.shutdown().await.unwrap();
    assert_eq!(
        fingerprint(&outside),
        before,
        "the host file outside is untouched"
    );
}

#[tokio::test]
async fn bad_mounts_are_refused_before_anything_starts() {
    let host = Host::new("bad");
    let sb = minimal().unwrap();
    let refused = |r: Result<Vm, Error>| match r {
        Err(Error::Mount(e)) => e,
        Err(other) => panic!("expected a mount error, got {other}"),
        Ok(_) => panic!("expected a mount error, the guest booted"),
    };
    let e = refused(
        sb.boot(
            BootOptions::default().mount("/w", Mount::bind(host.0.join("missing")).read_only()),
        )
        .await,
    );
    assert!(matches!(e, MountError::Source { .. }), "{e}");
    let e = refused(
        sb.boot(
            BootOptions::default()
                .mount("/w", Mount::bind(host.src().join("hello.txt")).writable()),
        )
        .await,
    );
    assert!(e.to_string().contains("directory"), "{e}");
    let e = refused(
        sb.boot(BootOptions::default().mount("/w", Mount::bind("relative/dir").read_only()))
            .await,
    );
    assert!(e.to_string().contains("absolute"), "{e}");
    let e = refused(
        sb.boot(BootOptions::default().mount("/proc/x", Mount::bind(host.src()).read_only()))
            .await,
    );
    assert!(matches!(e, MountError::GuestPath { .. }), "{e}");
    let e = refused(
        sb.boot(
            BootOptions::default()
                .mount("/w", Mount::bind(host.src()).read_only())
                .mount("/w/inner", Mount::bind(host.src()).read_only()),
        )
        .await,
    );
    assert!(e.to_string().contains("nested"), "{e}");
}

#[tokio::test]
async fn a_memory_mount_is_read_back_by_the_host_after_shutdown() {
    let scratch = MemoryFs::new()
        .size_limit(4 << 20)
        .file("/seed/input.txt", b"from the host\n")
        .unwrap()
        .dir("/out")
        .unwrap();
    let vm = boot_with(BootOptions::default().mount("/scratch", Mount::memory(&scratch))).await;
    let script = "set -e; cd /scratch; cat seed/input.txt; \
                  mkdir -p out/a/b; echo built > out/a/b/result.txt; \
                  ln -s a/b/result.txt out/link; mv seed/input.txt out/moved.txt; \
                  rmdir seed; ls -R /scratch";
    let (code, out) = sh(&vm, script).await;
    assert_eq!(code, 0, "{out}");
    assert!(out.starts_with("from the host\n"), "{out}");
    // Past the size limit: ENOSPC in the guest, the VM goes on.
    let (code, out) = sh(&vm, "dd if=/dev/zero of=/scratch/huge bs=1M count=8 2>&1").await;
    assert_ne!(code, 0);
    assert!(out.contains("No space left on device"), "{out}");
    assert!(scratch.used_bytes() <= 4 << 20);
    sh(&vm, "rm -f /scratch/huge").await;
    vm.shutdown().await.unwrap();
    assert_eq!(
        scratch.read_file("/out/a/b/result.txt").unwrap(),
        b"built\n"
    );
    assert_eq!(
        scratch.read_file("/out/moved.txt").unwrap(),
        b"from the host\n"
    );
    assert!(scratch.read_dir("/seed").is_err(), "removed in the guest");
    assert!(scratch.read_file("/huge").is_err());
}

/// A file system implemented in the test: one file, and names that panic
/// or stall; it counts lookups.
struct Served {
    lookups: Arc<AtomicUsize>,
}

fn attr(ino: u64, kind: FileKind, size: u64) -> Attr {
    Attr {
        ino,
        kind,
        size,
        perm: if kind == FileKind::Dir { 0o755 } else { 0o644 },
        nlink: 1,
        mtime: std::time::UNIX_EPOCH,
    }
}

const GREETING: &[u8] = b"served by the application\n";

impl FileSystem for Served {
    fn lookup(&self, parent: u64, name: OsString) -> FsFuture<'_, Attr> {
        self.lookups.fetch_add(1, Ordering::SeqCst);
        Box::pin(async move {
            match (parent, name.to_str()) {
                (ROOT, Some("greeting.txt")) => Ok(attr(2, FileKind::File, GREETING.len() as u64)),
                (ROOT, Some("panic")) => panic!("a bug in the application's file system"),
                (ROOT, Some("stall")) => {
                    tokio::time::sleep(Duration::from_secs(3600)).await;
                    Err(Errno::ENOENT)
                }
                _ => Err(Errno::ENOENT),
            }
        })
    }
    fn getattr(&self, ino: u64) -> FsFuture<'_, Attr> {
        Box::pin(async move {
            match ino {
                ROOT => Ok(attr(ROOT, FileKind::Dir, 0)),
                2 => Ok(attr(2, FileKind::File, GREETING.len() as u64)),
                _ => Err(Errno::ENOENT),
            }
        })
    }
    fn setattr(&self, _: u64, _: SetAttr) -> FsFuture<'_, Attr> {
        Box::pin(async { Err(Errno::EROFS) })
    }
    fn readdir(&self, _: u64) -> FsFuture<'_, Vec<DirEntry>> {
        Box::pin(async {
            Ok(vec![DirEntry {
                name: "greeting.txt".into(),
                ino: 2,
                kind: FileKind::File,
            }])
        })
    }
    fn read(&self, _: u64, offset: u64, size: u32) -> FsFuture<'_, Vec<u8>> {
        Box::pin(async move {
            let start = (offset as usize).min(GREETING.len());
            let end = (start + size as usize).min(GREETING.len());
            Ok(GREETING[start..end].to_vec())
        })
    }
    fn write(&self, _: u64, _: u64, _: Vec<u8>) -> FsFuture<'_, u32> {
        Box::pin(async { Err(Errno::EROFS) })
    }
    fn create(&self, _: u64, _: OsString, _: u32) -> FsFuture<'_, Attr> {
        Box::pin(async { Err(Errno::EROFS) })
    }
    fn mkdir(&self, _: u64, _: OsString, _: u32) -> FsFuture<'_, Attr> {
        Box::pin(async { Err(Errno::EROFS) })
    }
    fn unlink(&self, _: u64, _: OsString) -> FsFuture<'_, ()> {
        Box::pin(async { Err(Errno::EROFS) })
    }
    fn rmdir(&self, _: u64, _: OsString) -> FsFuture<'_, ()> {
        Box::pin(async { Err(Errno::EROFS) })
    }
    fn rename(&self, _: u64, _: OsString, _: u64, _: OsString) -> FsFuture<'_, ()> {
        Box::pin(async { Err(Errno::EROFS) })
    }
    fn symlink(&self, _: u64, _: OsString, _: OsString) -> FsFuture<'_, Attr> {
        Box::pin(async { Err(Errno::EROFS) })
    }
    fn readlink(&self, _: u64) -> FsFuture<'_, OsString> {
        Box::pin(async { Err(Errno::EINVAL) })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_virtual_fs_serves_the_guest_and_its_failures_are_eio() {
    let lookups = Arc::new(AtomicUsize::new(0));
    let fs = Served {
        lookups: lookups.clone(),
    };
    let vm = boot_with(BootOptions::default().mount(
        "/app",
        Mount::virtual_fs(fs).deadline(Duration::from_millis(500)),
    ))
    .await;
    let (code, out) = sh(&vm, "ls /app; cat /app/greeting.txt").await;
    assert_eq!(code, 0, "{out}");
    assert_eq!(out, "greeting.txt\nserved by the application\n");
    // The listing came with its attributes (readdirplus); a name not
    // listed is looked up in the application's code.
    let (code, _) = sh(&vm, "test -e /app/absent").await;
    assert_ne!(code, 0);
    assert!(lookups.load(Ordering::SeqCst) >= 1);
    let (code, out) = sh(&vm, "echo x > /app/new 2>&1").await;
    assert_ne!(code, 0);
    assert!(out.contains("Read-only file system"), "{out}");
    // A panicking and a stalling implementation: EIO, and the VM and the
    // mount go on.
    for name in ["panic", "stall"] {
        let t = std::time::Instant::now();
        let (code, out) = sh(&vm, &format!("cat /app/{name} 2>&1")).await;
        assert_ne!(code, 0);
        assert!(out.contains("Input/output error"), "{name}: {out}");
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "{name}: {:?}",
            t.elapsed()
        );
    }
    let (code, out) = sh(&vm, "cat /app/greeting.txt").await;
    assert_eq!((code, out.as_str()), (0, "served by the application\n"));
    vm.shutdown().await.unwrap();
    assert_eq!(sandbox_core::seccomp::violations(), vec![]);
}

/// A tree of `n` small files in `dir/t` (in 50 directories), its tarball
/// at `dir/tree.tar`, and the host's `find | sort | xargs sha256sum` of it.
fn small_file_tree(dir: &Path, n: usize) -> (Vec<u8>, String) {
    let t = dir.join("t");
    for i in 0..n {
        let sub = t.join(format!("d{:02}", i % 50));
        std::fs::create_dir_all(&sub).unwrap();
        let body = format!("file {i}\n{}\n", "x".repeat(i % 300));
        std::fs::write(sub.join(format!("f{i:05}.txt")), body).unwrap();
    }
    let tar = std::process::Command::new("tar")
        .args(["cf", "tree.tar", "t"])
        .current_dir(dir)
        .status()
        .unwrap();
    assert!(tar.success());
    let sums = std::process::Command::new("sh")
        .args(["-c", "find t -type f | LC_ALL=C sort | xargs sha256sum"])
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(sums.status.success());
    std::fs::remove_dir_all(&t).unwrap();
    (
        std::fs::read(dir.join("tree.tar")).unwrap(),
        String::from_utf8(sums.stdout).unwrap(),
    )
}

/// Untars, checksums and deletes the tree in `at` inside the guest;
/// returns the checksums.
async fn small_file_workload(vm: &Vm, at: &str) -> String {
    let t = std::time::Instant::now();
    let script = format!(
        "set -e; cd {at}; tar xf tree.tar; \
         find t -type f | LC_ALL=C sort | xargs sha256sum > sums; \
         rm -rf t; cat sums"
    );
    let (code, out) = sh(vm, &script).await;
    assert_eq!(code, 0, "{}", &out[..out.len().min(2000)]);
    eprintln!(
        "[mounts] 5,000-file untar + sha256 + delete on {at}: {:?}",
        t.elapsed()
    );
    out
}

#[tokio::test]
async fn a_git_like_workload_matches_the_host_on_a_bind_and_in_memory() {
    let host = Host::new("work");
    let (tar, expected) = small_file_tree(&host.0, 5000);
    std::fs::write(host.src().join("tree.tar"), &tar).unwrap();
    let memory = MemoryFs::new().file("/tree.tar", &tar).unwrap();
    let vm = boot_with(
        BootOptions::default()
            .mount("/workspace", Mount::bind(host.src()).writable())
            .mount("/scratch", Mount::memory(&memory)),
    )
    .await;
    assert_eq!(small_file_workload(&vm, "/workspace").await, expected);
    assert_eq!(small_file_workload(&vm, "/scratch").await, expected);
    // O_TRUNC truncates on both: the bind through the opened handle
    // (ATOMIC_O_TRUNC), the memory file system through a SETATTR; a guest
    // `sync` (FUSE_SYNCFS on the bind) succeeds.
    for dir in ["/workspace", "/scratch"] {
        let (code, out) = sh(
            &vm,
            &format!("echo a-longer-line > {dir}/t.txt && echo s > {dir}/t.txt && sync && cat {dir}/t.txt"),
        )
        .await;
        assert_eq!((code, out.as_str()), (0, "s\n"), "{dir}");
    }
    vm.shutdown().await.unwrap();
    assert_eq!(
        std::fs::read_to_string(host.src().join("t.txt")).unwrap(),
        "s\n"
    );
    assert_eq!(memory.read_file("/t.txt").unwrap(), b"s\n");
    // The checksums landed in each file system; the trees are gone.
    assert_eq!(
        std::fs::read_to_string(host.src().join("sums")).unwrap(),
        expected
    );
    assert!(!host.src().join("t").exists());
    assert_eq!(memory.read_file("/sums").unwrap(), expected.as_bytes());
    assert!(memory.read_dir("/t").is_err());
    // The virtio-fs worker ran the whole workload inside its syscall filter.
    assert_eq!(sandbox_core::seccomp::violations(), vec![]);
}

#[tokio::test]
async fn masks_hide_paths_of_a_read_only_bind() {
    let host = Host::new("masks");
    std::fs::create_dir_all(host.src().join(".git/objects")).unwrap();
    std::fs::write(host.src().join(".git/HEAD"), b"ref: refs/heads/main\n").unwrap();
    std::fs::create_dir_all(host.src().join("config")).unwrap();
    std::fs::write(host.src().join("config/.env"), b"TOKEN=secret\n").unwrap();
    std::fs::write(host.src().join("config/app.toml"), b"name = 'app'\n").unwrap();
    let vm = boot_with(
        BootOptions::default().mount(
            "/workspace",
            Mount::bind(host.src())
                .read_only()
                .mask(["/.git", "/config/.env"]),
        ),
    )
    .await;
    let (code, out) = sh(&vm, "cd /workspace; ls -a; ls -a config; find . | sort").await;
    assert_eq!(code, 0, "{out}");
    assert!(!out.contains(".git") && !out.contains(".env"), "{out}");
    assert!(
        out.contains("app.toml") && out.contains("hello.txt"),
        "{out}"
    );
    for probe in [
        "cat /workspace/.git/HEAD",
        "cat /workspace/config/.env",
        "ls /workspace/.git",
        "cd /workspace/config && cat .env",
    ] {
        let (code, out) = sh(&vm, &format!("{probe} 2>&1")).await;
        assert_ne!(code, 0, "{probe}: {out}");
        assert!(out.contains("No such file or directory"), "{probe}: {out}");
        assert!(
            !out.contains("secret") && !out.contains("refs/heads"),
            "{probe}: {out}"
        );
    }
    vm.shutdown().await.unwrap();
    // A writable bind with masks needs storage for what the guest creates
    // under them: refused before anything starts.
    let r = minimal()
        .unwrap()
        .boot(
            BootOptions::default().mount("/w", Mount::bind(host.src()).writable().mask(["/.git"])),
        )
        .await;
    match r {
        Err(Error::Mount(MountError::Mask { why, .. })) => {
            assert!(why.contains("mask_storage"), "{why}")
        }
        Err(other) => panic!("expected a mask error, got {other}"),
        Ok(_) => panic!("expected a mask error, the guest booted"),
    }
}

#[tokio::test]
async fn masks_of_a_writable_bind_redirect_to_storage() {
    let host = Host::new("maskstore");
    std::fs::create_dir_all(host.src().join(".git")).unwrap();
    std::fs::write(host.src().join(".git/HEAD"), b"ref: refs/heads/original\n").unwrap();
    std::fs::create_dir_all(host.src().join("node_modules/original-pkg")).unwrap();
    std::fs::write(
        host.src().join("node_modules/original-pkg/index.js"),
        b"old",
    )
    .unwrap();
    let storage = host.0.join("storage");
    std::fs::create_dir_all(&storage).unwrap();
    let vm = boot_with(
        BootOptions::default().mount(
            "/w",
            Mount::bind(host.src())
                .writable()
                .mask(["/.git", "/node_modules"])
                .mask_storage(&storage),
        ),
    )
    .await;
    // The originals are invisible; the masked paths start empty.
    let (code, out) = sh(
        &vm,
        "ls -a /w; cat /w/.git/HEAD 2>&1; ls /w/node_modules 2>&1",
    )
    .await;
    assert!(!out.contains("original"), "{out}");
    assert!(out.contains("No such file or directory"), "{code} {out}");
    // What the guest makes there lands in the storage, never the source.
    let script = "set -e; cd /w; mkdir .git; echo 'ref: refs/heads/guest' > .git/HEAD; \
                  mkdir -p node_modules/new-pkg; echo new > node_modules/new-pkg/index.js; \
                  echo top > top.txt; ls -a; ls node_modules; cat .git/HEAD";
    let (code, out) = sh(&vm, script).await;
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains(".git") && out.contains("node_modules"),
        "{out}"
    );
    assert!(
        out.contains("new-pkg") && !out.contains("original-pkg"),
        "{out}"
    );
    assert!(out.ends_with("ref: refs/heads/guest\n"), "{out}");
    // A move across the mask boundary is a copy (EXDEV for rename).
    let (code, out) = sh(&vm, "mv /w/node_modules/new-pkg /w/moved && ls /w/moved").await;
    assert_eq!((code, out.as_str()), (0, "index.js\n"));
    vm.shutdown().await.unwrap();
    assert_eq!(
        std::fs::read(storage.join(".git/HEAD")).unwrap(),
        b"ref: refs/heads/guest\n"
    );
    assert_eq!(
        std::fs::read(host.src().join(".git/HEAD")).unwrap(),
        b"ref: refs/heads/original\n",
        "the source's masked original is untouched"
    );
    assert!(!host.src().join("node_modules/new-pkg").exists());
    assert!(!storage.join("node_modules/new-pkg").exists(), "moved out");
    assert_eq!(
        std::fs::read(host.src().join("moved/index.js")).unwrap(),
        b"new\n"
    );
    assert_eq!(std::fs::read(host.src().join("top.txt")).unwrap(), b"top\n");
    assert_eq!(sandbox_core::seccomp::violations(), vec![]);
    assert!(host
        .src()
        .join("node_modules/original-pkg/index.js")
        .exists());
}
