//! Sources built here (OCI layouts, their tars, legacy `docker save`
//! archives) resolved, and the ways a source can be wrong.

use std::io::Write;
use std::path::{Path, PathBuf};

use serde_json::json;

use super::*;

struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str) -> Self {
        let p = std::env::temp_dir().join(format!("oci-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        Self(p)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A tar holding one file.
fn layer_tar(name: &str, body: &[u8]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_gnu();
    h.set_size(body.len() as u64);
    h.set_mode(0o644);
    h.set_cksum();
    b.append_data(&mut h, name, body).unwrap();
    b.into_inner().unwrap()
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

fn put(dir: &Path, bytes: &[u8]) -> (String, usize) {
    let d = Digest::of(bytes);
    let blobs = dir.join("blobs/sha256");
    std::fs::create_dir_all(&blobs).unwrap();
    std::fs::write(blobs.join(d.hex()), bytes).unwrap();
    (d.to_string(), bytes.len())
}

fn config_json(arch: &str, diff_ids: &[String]) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "architecture": arch, "os": "linux",
        "config": {"Env": ["PATH=/bin", "A=1"], "WorkingDir": "/app", "User": "1000:1000",
                   "Entrypoint": ["/bin/sh", "-c"], "Cmd": ["echo hi"]},
        "rootfs": {"type": "layers", "diff_ids": diff_ids}
    }))
    .unwrap()
}

/// Writes a manifest of two layers (plain and gzip) for `arch` into the
/// layout at `dir`; returns its descriptor.
fn manifest(dir: &Path, arch: &str) -> serde_json::Value {
    let l1 = layer_tar("a.txt", format!("one {arch}").as_bytes());
    let l2 = layer_tar("b.txt", b"two");
    let diffs = vec![Digest::of(&l1).to_string(), Digest::of(&l2).to_string()];
    let (l1d, l1n) = put(dir, &l1);
    let (l2d, l2n) = put(dir, &gzip(&l2));
    let (cd, cn) = put(dir, &config_json(arch, &diffs));
    let m = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cd, "size": cn},
        "layers": [
            {"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": l1d, "size": l1n},
            {"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": l2d, "size": l2n},
        ]
    }))
    .unwrap();
    let (md, mn) = put(dir, &m);
    json!({"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": md, "size": mn,
           "platform": {"architecture": arch, "os": "linux"}})
}

fn write_index(dir: &Path, manifests: Vec<serde_json::Value>) {
    std::fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
    let index = json!({"schemaVersion": 2, "manifests": manifests});
    std::fs::write(dir.join("index.json"), serde_json::to_vec(&index).unwrap()).unwrap();
}

fn named(mut desc: serde_json::Value, name: &str) -> serde_json::Value {
    desc["annotations"] = json!({"org.opencontainers.image.ref.name": name});
    desc
}

fn amd64() -> Platform {
    Platform::parse("linux/amd64").unwrap()
}

/// A tar of everything under `dir`.
fn pack(dir: &Path, out: &Path) {
    let mut b = tar::Builder::new(std::fs::File::create(out).unwrap());
    b.append_dir_all(".", dir).unwrap();
    b.finish().unwrap();
}

#[test]
fn an_oci_layout_resolves_as_a_directory_and_as_a_tar() {
    let s = Scratch::new("layout");
    let dir = s.0.join("layout");
    let desc = manifest(&dir, "amd64");
    write_index(&dir, vec![named(desc.clone(), "v1")]);
    let r = resolve(&dir, &Selector::Only, &amd64()).unwrap();
    assert_eq!(r.format, SourceFormat::OciLayout);
    assert_eq!(r.digest.to_string(), desc["digest"].as_str().unwrap());
    assert_eq!(r.names, vec!["v1".to_string()]);
    assert_eq!(r.layers.len(), 2);
    assert_eq!(r.layers[0].compression, Compression::None);
    assert_eq!(r.layers[1].compression, Compression::Gzip);
    assert_eq!(r.defaults.working_dir.as_deref(), Some("/app"));
    assert_eq!(r.defaults.entrypoint, vec!["/bin/sh", "-c"]);
    // Every layer copies out verified, and equals its blob.
    for l in &r.layers {
        let mut out = Vec::new();
        copy_verified("layer", &l.location, &l.digest, &mut out).unwrap();
        assert_eq!(Digest::of(&out), l.digest);
    }
    let tar = s.0.join("layout.tar");
    pack(&dir, &tar);
    let t = resolve(&tar, &Selector::Name("v1".into()), &amd64()).unwrap();
    assert_eq!(t.digest, r.digest);
    assert_eq!(t.layers[1].location.file, tar);
    let mut out = Vec::new();
    copy_verified(
        "layer",
        &t.layers[1].location,
        &t.layers[1].digest,
        &mut out,
    )
    .unwrap();
}

#[test]
fn a_multi_platform_index_yields_the_asked_platform() {
    let s = Scratch::new("multi");
    let dir = &s.0;
    let a = manifest(dir, "amd64");
    let b = manifest(dir, "arm64");
    let nested = serde_json::to_vec(&json!({"schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json", "manifests": [a.clone(), b.clone()]}))
    .unwrap();
    let (nd, nn) = put(dir, &nested);
    write_index(
        dir,
        vec![named(
            json!({"mediaType": "application/vnd.oci.image.index.v1+json", "digest": nd, "size": nn}),
            "app:1",
        )],
    );
    let r = resolve(dir, &Selector::Name("app:1".into()), &amd64()).unwrap();
    assert_eq!(r.digest.to_string(), a["digest"].as_str().unwrap());
    let arm = resolve(
        dir,
        &Selector::Only,
        &Platform::parse("linux/arm64").unwrap(),
    )
    .unwrap();
    assert_eq!(arm.digest.to_string(), b["digest"].as_str().unwrap());
    assert_eq!(arm.platform.kernel_arch(), "aarch64");
    // The index's digest selects too; the platform still decides.
    let by_index = resolve(
        dir,
        &Selector::Digest(Digest::parse(&nd).unwrap()),
        &amd64(),
    )
    .unwrap();
    assert_eq!(by_index.digest, r.digest);
    let err = resolve(
        dir,
        &Selector::Only,
        &Platform::parse("linux/riscv64").unwrap(),
    )
    .unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, OciError::NotFound { .. }), "{msg}");
    assert!(
        msg.contains("linux/amd64") && msg.contains("linux/arm64"),
        "{msg}"
    );
}

#[test]
fn several_images_need_a_selection() {
    let s = Scratch::new("several");
    let dir = &s.0;
    let one = named(manifest(dir, "amd64"), "one");
    let mut two = manifest(dir, "amd64");
    // Another image: change the config so the manifest differs.
    two = named(two, "two");
    write_index(dir, vec![one.clone(), two]);
    let err = resolve(dir, &Selector::Only, &amd64()).unwrap_err();
    assert!(matches!(err, OciError::Ambiguous { .. }), "{err}");
    assert!(err.to_string().contains("one"), "{err}");
    let r = resolve(dir, &Selector::Name("one".into()), &amd64()).unwrap();
    assert_eq!(r.digest.to_string(), one["digest"].as_str().unwrap());
    let err = resolve(dir, &Selector::Name("three".into()), &amd64()).unwrap_err();
    assert!(matches!(err, OciError::NotFound { .. }), "{err}");
}

#[test]
fn tampered_missing_and_linked_blobs_are_refused() {
    let s = Scratch::new("tampered");
    let dir = &s.0;
    let desc = manifest(dir, "amd64");
    write_index(dir, vec![desc.clone()]);
    let r = resolve(dir, &Selector::Only, &amd64()).unwrap();
    // A layer changed after resolution: the copy's check catches it.
    let layer = &r.layers[0];
    let mut bytes = std::fs::read(&layer.location.file).unwrap();
    bytes[600] ^= 1;
    std::fs::write(&layer.location.file, &bytes).unwrap();
    let err =
        copy_verified("layer 0", &layer.location, &layer.digest, &mut Vec::new()).unwrap_err();
    assert!(matches!(err, OciError::DigestMismatch { .. }), "{err}");
    // A changed manifest.
    let mpath = dir
        .join("blobs/sha256")
        .join(&desc["digest"].as_str().unwrap()[7..]);
    let orig = std::fs::read(&mpath).unwrap();
    let mut m = orig.clone();
    m.push(b' ');
    std::fs::write(&mpath, &m).unwrap();
    let err = resolve(dir, &Selector::Only, &amd64()).unwrap_err();
    assert!(matches!(err, OciError::DigestMismatch { .. }), "{err}");
    assert!(err.to_string().contains("manifest"), "{err}");
    // A missing one.
    std::fs::remove_file(&mpath).unwrap();
    let err = resolve(dir, &Selector::Only, &amd64()).unwrap_err();
    assert!(matches!(err, OciError::Missing(_)), "{err}");
    // A symlink to a host file in its place.
    std::os::unix::fs::symlink("/etc/hostname", &mpath).unwrap();
    let err = resolve(dir, &Selector::Only, &amd64()).unwrap_err();
    assert!(err.to_string().contains("symbolic link"), "{err}");
    // Not a digest at all.
    write_index(
        dir,
        vec![
            json!({"mediaType": "application/vnd.oci.image.manifest.v1+json",
                    "digest": "sha256:../../etc/passwd", "size": 1}),
        ],
    );
    let err = resolve(dir, &Selector::Only, &amd64()).unwrap_err();
    assert!(matches!(err, OciError::BadDigest(_)), "{err}");
}

/// A `docker save` archive as Docker before 25 wrote it: `<id>/layer.tar`
/// (the second image's copy of a shared layer a symlink), `<hex>.json`.
fn legacy_archive(out: &Path, arch: &str) -> Digest {
    let l1 = layer_tar("a.txt", b"one");
    let l2 = layer_tar("b.txt", b"two");
    let diffs = vec![Digest::of(&l1).to_string(), Digest::of(&l2).to_string()];
    let config = config_json(arch, &diffs);
    let cd = Digest::of(&config);
    let manifest = serde_json::to_vec(&json!([{
        "Config": format!("{}.json", cd.hex()),
        "RepoTags": ["example/app:1.0"],
        "Layers": ["aaa/layer.tar", "bbb/layer.tar"]
    }]))
    .unwrap();
    let mut b = tar::Builder::new(std::fs::File::create(out).unwrap());
    let mut add = |name: &str, body: &[u8]| {
        let mut h = tar::Header::new_gnu();
        h.set_size(body.len() as u64);
        h.set_mode(0o644);
        h.set_cksum();
        b.append_data(&mut h, name, body).unwrap();
    };
    add("aaa/layer.tar", &l1);
    add("ccc/layer.tar", &l2);
    add(&format!("{}.json", cd.hex()), &config);
    add("manifest.json", &manifest);
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Symlink);
    h.set_size(0);
    h.set_mode(0o777);
    b.append_link(&mut h, "bbb/layer.tar", "../ccc/layer.tar")
        .unwrap();
    b.finish().unwrap();
    cd
}

#[test]
fn a_legacy_docker_archive_resolves_with_linked_layers() {
    let s = Scratch::new("legacy");
    let tar = s.0.join("app.tar");
    let cd = legacy_archive(&tar, "amd64");
    let r = resolve(&tar, &Selector::Name("example/app:1.0".into()), &amd64()).unwrap();
    assert_eq!(r.format, SourceFormat::DockerArchive);
    assert_eq!(r.digest, cd);
    assert_eq!(r.names, vec!["example/app:1.0".to_string()]);
    for l in &r.layers {
        assert_eq!(l.digest, l.diff_id);
        let mut out = Vec::new();
        copy_verified("layer", &l.location, &l.digest, &mut out).unwrap();
    }
    assert!(resolve(&tar, &Selector::Digest(cd), &amd64()).is_ok());
    let err = resolve(
        &tar,
        &Selector::Only,
        &Platform::parse("linux/arm64").unwrap(),
    )
    .unwrap_err();
    assert!(err.to_string().contains("platforms linux/amd64"), "{err}");
}

#[test]
fn garbage_is_a_clear_error() {
    let s = Scratch::new("garbage");
    let f = s.0.join("junk");
    std::fs::write(&f, vec![7u8; 4096]).unwrap();
    assert!(resolve(&f, &Selector::Only, &amd64()).is_err());
    std::fs::write(s.0.join("index.json"), b"{\"schemaVersion\": 2}").unwrap();
    let err = resolve(&s.0, &Selector::Only, &amd64()).unwrap_err();
    assert!(matches!(err, OciError::Malformed(_)), "{err}");
    assert!(err.to_string().contains("manifests"), "{err}");
}
