//! The persistent overlay against qemu-img's view of the same file.

use std::process::Command;

use super::*;
use crate::qcow2::tests::{run, Dir};
use crate::RawImage;

fn image(path: &Path, sha256: &str) -> Image {
    Image {
        name: "test-base".into(),
        path: path.to_path_buf(),
        format: ImageFormat::Raw,
        arch: "x86_64".into(),
        sha256: sha256.into(),
        size: std::fs::metadata(path).unwrap().len(),
        facts: Default::default(),
        run: Default::default(),
    }
}

fn base_bytes(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i / 512 * 7 + i) as u8).collect()
}

fn open(path: &Path, img: &Image, cs: u32) -> Result<Qcow2Overlay, RootfsError> {
    let base = Box::new(RawImage::open(&img.path).unwrap());
    let opts = OverlayOptions {
        cluster_size: cs,
        ..Default::default()
    };
    Qcow2Overlay::open(path, base, img, opts)
}

/// `qemu-img check`'s exit code (0 clean, 2 corrupt, 3 leaks only).
fn qemu_check(path: &Path) -> i32 {
    let out = Command::new("qemu-img")
        .args(["check", "-f", "qcow2"])
        .arg(path)
        .output()
        .unwrap();
    out.status.code().unwrap_or(-1)
}

/// Deterministic pseudo-random writes applied to the overlay and a model.
fn scribble(o: &mut Qcow2Overlay, model: &mut [u8], seed: u64, n: usize) {
    let mut x = seed;
    let mut next = || {
        x = x
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        x >> 33
    };
    for _ in 0..n {
        let len = (next() % 200_000 + 1) as usize;
        let offset = next() % (model.len() - len) as u64;
        let byte = next() as u8;
        o.write_at(offset, &vec![byte; len]).unwrap();
        model[offset as usize..offset as usize + len].fill(byte);
    }
}

fn assert_same(o: &mut Qcow2Overlay, model: &[u8]) {
    let mut got = vec![0u8; model.len()];
    o.read_at(0, &mut got).unwrap();
    assert!(got == model, "overlay content differs from the model");
}

#[test]
fn writes_survive_reopen_and_qemu_reads_the_same_bytes() {
    for cs in [4096u32, 65536] {
        let dir = Dir::new(&format!("overlay-{cs}"));
        let base = dir.path("base.raw");
        let mut model = base_bytes(6 << 20);
        std::fs::write(&base, &model).unwrap();
        let img = image(&base, &crate::sha256_file(&base).unwrap());
        let path = dir.path("state.qcow2");
        let mut o = open(&path, &img, cs).unwrap();
        scribble(&mut o, &mut model, u64::from(cs), 60);
        assert_same(&mut o, &model);
        o.flush().unwrap();
        drop(o);
        let mut o = open(&path, &img, cs).unwrap();
        assert_eq!(o.reclaimed_clusters(), 0);
        assert_same(&mut o, &model);
        drop(o);
        assert_eq!(qemu_check(&path), 0, "qemu-img check");
        let expected = dir.path("expected.raw");
        std::fs::write(&expected, &model).unwrap();
        run(Command::new("qemu-img")
            .args(["compare", "-q", "-f", "qcow2", "-F", "raw"])
            .arg(&path)
            .arg(&expected));
        assert_eq!(
            crate::sha256_file(&base).unwrap(),
            img.sha256,
            "base untouched"
        );
    }
}

#[test]
fn locked_while_open_and_bound_to_its_base() {
    let dir = Dir::new("overlay-lock");
    let base = dir.path("base.raw");
    std::fs::write(&base, base_bytes(1 << 20)).unwrap();
    let img = image(&base, &crate::sha256_file(&base).unwrap());
    let path = dir.path("state.qcow2");
    let first = open(&path, &img, 65536).unwrap();
    let second = open(&path, &img, 65536).err().expect("locked");
    assert!(matches!(second, RootfsError::Locked(_)), "{second}");
    assert!(second.to_string().contains("in use by another VM"));
    drop(first);
    open(&path, &img, 65536).expect("the lock went with the first VM");

    let other = image(&base, &"ab".repeat(32));
    let err = open(&path, &other, 65536).err().expect("other base");
    assert!(matches!(err, RootfsError::BaseMismatch { .. }), "{err}");
    let err = open(Path::new("rel/state.qcow2"), &img, 65536)
        .err()
        .unwrap();
    assert!(matches!(err, RootfsError::InvalidPath(_)), "{err}");

    let foreign = dir.path("foreign.qcow2");
    run(Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2", "-F", "raw", "-b"])
        .arg(&base)
        .arg(&foreign));
    let err = open(&foreign, &img, 65536).err().unwrap();
    assert!(matches!(err, RootfsError::NotOurOverlay(_)), "{err}");
}

#[test]
fn a_cluster_leaked_by_a_crash_is_reclaimed_at_the_next_open() {
    let dir = Dir::new("overlay-leak");
    let base = dir.path("base.raw");
    let mut model = base_bytes(2 << 20);
    std::fs::write(&base, &model).unwrap();
    let img = image(&base, &crate::sha256_file(&base).unwrap());
    let path = dir.path("state.qcow2");
    let mut o = open(&path, &img, 65536).unwrap();
    scribble(&mut o, &mut model, 7, 5);
    // What a kill between "refcount set" and "entry written" leaves.
    let idx = o.alloc();
    o.file.write_all_at(&[0xee; 65536], idx * o.cs).unwrap();
    o.set_refcount(idx, 1).unwrap();
    drop(o);
    assert_eq!(qemu_check(&path), 3, "qemu-img sees a leak, no corruption");
    let mut o = open(&path, &img, 65536).unwrap();
    assert_eq!(o.reclaimed_clusters(), 1);
    assert_same(&mut o, &model);
    drop(o);
    assert_eq!(qemu_check(&path), 0);
}

#[test]
fn many_refcount_blocks_on_a_large_sparse_disk() {
    let dir = Dir::new("overlay-large");
    let base = dir.path("base.raw");
    std::fs::File::create(&base)
        .unwrap()
        .set_len(512 << 20)
        .unwrap();
    // The digest is only recorded here, never checked.
    let img = image(&base, &"00".repeat(32));
    let path = dir.path("state.qcow2");
    let mut o = open(&path, &img, 4096).unwrap();
    // 4 KiB clusters: one refcount block covers 8 MiB of file.
    let chunk = vec![0x5a; 1 << 20];
    for i in 0..48u64 {
        o.write_at(i * (10 << 20) + 4096 * i, &chunk).unwrap();
    }
    drop(o);
    assert_eq!(qemu_check(&path), 0);
    let mut o = open(&path, &img, 4096).unwrap();
    let mut got = vec![0u8; 1 << 20];
    o.read_at(47 * (10 << 20) + 4096 * 47, &mut got).unwrap();
    assert!(got == chunk);
    o.read_at(5 << 20, &mut got[..4096]).unwrap();
    assert!(got[..4096].iter().all(|b| *b == 0));
}

#[test]
fn a_new_overlay_is_private_whatever_the_umask() {
    use std::os::unix::fs::PermissionsExt;
    let dir = Dir::new("overlay-mode");
    let base = dir.path("base.raw");
    std::fs::write(&base, base_bytes(1 << 20)).unwrap();
    let img = image(&base, &crate::sha256_file(&base).unwrap());
    let path = dir.path("state.qcow2");
    // SAFETY: umask only swaps the process's file mode mask.
    let old = unsafe { libc::umask(0) };
    let opened = open(&path, &img, 65536);
    // SAFETY: as above, restoring the previous mask.
    unsafe { libc::umask(old) };
    drop(opened.unwrap());
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "overlay mode {mode:o}");
}
