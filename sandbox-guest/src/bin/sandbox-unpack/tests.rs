//! Layers built here applied onto a scratch directory: OCI semantics, and
//! layers that try to leave the target.

use std::io::Write;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::layer::{self, Spec};
use crate::root::Root;

struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str) -> Self {
        let p = std::env::temp_dir().join(format!("unpack-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(p.join("target")).unwrap();
        Self(p)
    }
    fn target(&self) -> PathBuf {
        self.0.join("target")
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// A tar built entry by entry.
struct Tar(tar::Builder<Vec<u8>>);

impl Tar {
    fn new() -> Self {
        Self(tar::Builder::new(Vec::new()))
    }
    fn header(kind: tar::EntryType, mode: u32, size: u64) -> tar::Header {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(kind);
        h.set_mode(mode);
        h.set_size(size);
        h.set_mtime(1_600_000_000);
        h.set_uid(0);
        h.set_gid(0);
        h
    }
    fn dir(mut self, path: &str) -> Self {
        let mut h = Self::header(tar::EntryType::Directory, 0o755, 0);
        self.0.append_data(&mut h, path, &[][..]).unwrap();
        self
    }
    fn file(self, path: &str, body: &[u8]) -> Self {
        self.file_as(path, body, 0o644, 0)
    }
    fn file_as(mut self, path: &str, body: &[u8], mode: u32, uid: u64) -> Self {
        let mut h = Self::header(tar::EntryType::Regular, mode, body.len() as u64);
        h.set_uid(uid);
        h.set_gid(uid);
        // set_path refuses `..`; write the name bytes directly.
        let name = h.as_old_mut();
        name.name = [0; 100];
        name.name[..path.len()].copy_from_slice(path.as_bytes());
        h.set_cksum();
        self.0.append(&h, body).unwrap();
        self
    }
    fn link(mut self, kind: tar::EntryType, path: &str, target: &str) -> Self {
        let mut h = Self::header(kind, 0o777, 0);
        self.0.append_link(&mut h, path, target).unwrap();
        self
    }
    fn node(mut self, path: &str, major: u32, minor: u32) -> Self {
        let mut h = Self::header(tar::EntryType::Char, 0o666, 0);
        h.set_device_major(major).unwrap();
        h.set_device_minor(minor).unwrap();
        self.0.append_data(&mut h, path, &[][..]).unwrap();
        self
    }
    fn xattr_file(mut self, path: &str, body: &[u8], key: &str, value: &str) -> Self {
        self.0
            .append_pax_extensions([(format!("SCHILY.xattr.{key}").as_str(), value.as_bytes())])
            .unwrap();
        self.file(path, body)
    }
    fn bytes(self) -> Vec<u8> {
        self.0.into_inner().unwrap()
    }
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

fn zstd(data: &[u8]) -> Vec<u8> {
    ruzstd::encoding::compress_to_vec(data, ruzstd::encoding::CompressionLevel::Fastest)
}

fn hex(data: &[u8]) -> String {
    Sha256::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Writes the blobs one after another into a source file; applies them.
fn apply_all(s: &Scratch, layers: &[(Vec<u8>, Vec<u8>)], budget: u64) -> Result<(), String> {
    let src = s.0.join("source");
    let mut f = std::fs::File::create(&src).unwrap();
    let mut specs = Vec::new();
    let mut off = 0;
    for (plain, blob) in layers {
        f.write_all(blob).unwrap();
        specs.push(Spec::parse(&format!("{off}:{}:{}", blob.len(), hex(plain))).unwrap());
        off += blob.len();
    }
    let root = Root::open(&s.target()).unwrap();
    let mut budget = budget;
    for spec in &specs {
        layer::apply(&src, spec, &root, &mut budget)?;
    }
    root.prepare_for_agent(None).map_err(|e| e.to_string())
}

#[test]
fn three_layers_apply_with_oci_semantics() {
    let s = Scratch::new("semantics");
    let l1 = Tar::new()
        .dir("etc")
        .file("etc/a", b"A")
        .file("etc/gone", b"deleted later")
        .dir("opq")
        .file("opq/old", b"old")
        .link(tar::EntryType::Symlink, "link", "/etc/a")
        .file_as("bin/su", b"suid", 0o4755, 0)
        .file_as("home/user/f", b"mine", 0o600, 1000)
        .xattr_file("etc/x", b"x", "user.test", "value")
        .node("dev/null", 1, 3)
        .bytes();
    let l2 = Tar::new()
        .file("etc/.wh.gone", b"")
        .file("nowhere/deep/.wh.x", b"")
        .file("opq/new", b"new")
        .file("opq/.wh..wh..opq", b"")
        .link(tar::EntryType::Link, "etc/b", "etc/a")
        .bytes();
    let mut big = Tar::new();
    big = big.file("zero", &vec![0u8; 8 << 20]);
    let l3 = big.file("etc/a", b"A2").bytes();
    let layers = [
        (l1.clone(), l1),
        (l2.clone(), gzip(&l2)),
        (l3.clone(), zstd(&l3)),
    ];
    apply_all(&s, &layers, 1 << 30).unwrap();
    let t = s.target();
    assert!(!t.join("etc/gone").exists(), "whiteout removed it");
    assert!(!t.join("nowhere").exists(), "a whiteout creates nothing");
    assert!(
        !t.join("opq/old").exists(),
        "opaque dir hid the lower entry"
    );
    assert_eq!(
        std::fs::read(t.join("opq/new")).unwrap(),
        b"new",
        "same-layer entry kept"
    );
    assert_eq!(
        std::fs::read_link(t.join("link")).unwrap(),
        Path::new("/etc/a")
    );
    // etc/b was a hardlink of etc/a in layer 2; layer 3 replaced etc/a.
    assert_eq!(std::fs::read(t.join("etc/b")).unwrap(), b"A");
    assert_eq!(std::fs::read(t.join("etc/a")).unwrap(), b"A2");
    let su = std::fs::metadata(t.join("bin/su")).unwrap();
    assert_eq!(su.permissions().mode() & 0o7777, 0o4755);
    assert_eq!(su.mtime(), 1_600_000_000);
    let zero = std::fs::metadata(t.join("zero")).unwrap();
    assert_eq!(zero.len(), 8 << 20);
    assert!(
        zero.blocks() < 64,
        "zeros left as holes: {} blocks",
        zero.blocks()
    );
    for d in ["proc", "sys", "dev", "run", "tmp"] {
        assert!(t.join(d).is_dir(), "{d}");
    }
    for f in ["hostname", "hosts", "resolv.conf"] {
        assert!(t.join("etc").join(f).is_file(), "{f}");
    }
    if is_root() {
        let f = std::fs::metadata(t.join("home/user/f")).unwrap();
        assert_eq!((f.uid(), f.gid()), (1000, 1000));
        let null = std::fs::metadata(t.join("dev/null")).unwrap();
        assert!(null.file_type().is_char_device());
        assert_eq!(null.rdev(), libc::makedev(1, 3));
    }
    let mut v = [0u8; 16];
    let p = std::ffi::CString::new(t.join("etc/x").into_os_string().into_encoded_bytes()).unwrap();
    // SAFETY: getxattr into a local buffer.
    let n = unsafe {
        libc::getxattr(
            p.as_ptr(),
            c"user.test".as_ptr(),
            v.as_mut_ptr().cast(),
            v.len(),
        )
    };
    // tmpfs takes user. xattrs only from kernel 6.6; where it refuses them
    // the layer would have failed above.
    assert_eq!(&v[..n.max(0) as usize], b"value");
}

#[test]
fn escaping_layers_stay_inside_the_target() {
    let s = Scratch::new("escape");
    let outside = s.0.join("outside");
    std::fs::write(&outside, b"untouched").unwrap();
    let l1 = Tar::new()
        .link(tar::EntryType::Symlink, "up", "../..")
        .link(tar::EntryType::Symlink, "abs", "/")
        .link(tar::EntryType::Symlink, "out", "../outside")
        .bytes();
    let l2 = Tar::new()
        .file("../../outside", b"dotdot")
        .file("/outside", b"absolute")
        .file("up/outside", b"via relative symlink")
        .file("abs/outside2", b"via absolute symlink")
        .link(tar::EntryType::Link, "hard", "../outside")
        .bytes();
    apply_all(&s, &[(l1.clone(), l1), (l2.clone(), l2)], 1 << 30).unwrap();
    assert_eq!(std::fs::read(&outside).unwrap(), b"untouched");
    assert!(!s.0.join("outside2").exists());
    let t = s.target();
    // Everything landed inside, resolved as if the target were /.
    assert_eq!(
        std::fs::read(t.join("outside")).unwrap(),
        b"via relative symlink"
    );
    assert_eq!(
        std::fs::read(t.join("outside2")).unwrap(),
        b"via absolute symlink"
    );
    assert_eq!(
        std::fs::read(t.join("hard")).unwrap(),
        b"via relative symlink"
    );
    // A symlink written over by a file entry is replaced, not followed.
    let l3 = Tar::new().file("out", b"replaced").bytes();
    apply_all(&s, &[(l3.clone(), l3)], 1 << 30).unwrap();
    assert_eq!(std::fs::read(&outside).unwrap(), b"untouched");
    assert_eq!(std::fs::read(t.join("out")).unwrap(), b"replaced");
}

#[test]
fn bombs_bad_digests_and_truncation_are_errors() {
    let s = Scratch::new("bad");
    let bomb = Tar::new().file("big", &vec![0u8; 32 << 20]).bytes();
    let err = apply_all(&s, &[(bomb.clone(), gzip(&bomb))], 4 << 20).unwrap_err();
    assert!(err.contains("max_unpacked_bytes"), "{err}");
    let l = Tar::new().file("a", b"a").bytes();
    let err = apply_all(&s, &[(b"other".to_vec(), l)], 1 << 30).unwrap_err();
    assert!(err.contains("image config says"), "{err}");
    let l = Tar::new().file("a", &[7u8; 100_000]).bytes();
    let gz = gzip(&l);
    let err = apply_all(&s, &[(l, gz[..gz.len() / 2].to_vec())], 1 << 30).unwrap_err();
    assert!(!err.is_empty());
}
