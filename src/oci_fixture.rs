//! Container images built by the tests themselves: layer tars made with the
//! `tar` crate around the host's static busybox, packed as an OCI image
//! layout or a legacy `docker save` archive, and hostile variants.

use std::io::Write;
use std::path::{Path, PathBuf};

use serde_json::json;

/// The host's static busybox (Debian's busybox-static, which `cargo xtask`
/// installs for the minimal image).
pub const BUSYBOX: &str = "/bin/busybox";

/// Applets the images link.
const APPLETS: &[&str] = &[
    "sh", "ls", "cat", "stat", "echo", "id", "env", "pwd", "test", "readlink", "mount", "true",
];

/// A layer tar built entry by entry.
pub struct Layer(tar::Builder<Vec<u8>>);

impl Default for Layer {
    fn default() -> Self {
        Self::new()
    }
}

impl Layer {
    pub fn new() -> Self {
        Self(tar::Builder::new(Vec::new()))
    }
    fn header(kind: tar::EntryType, mode: u32, size: u64, uid: u64) -> tar::Header {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(kind);
        h.set_mode(mode);
        h.set_size(size);
        h.set_uid(uid);
        h.set_gid(uid);
        h.set_mtime(1_700_000_000);
        h
    }
    pub fn dir(mut self, path: &str) -> Self {
        let mut h = Self::header(tar::EntryType::Directory, 0o755, 0, 0);
        self.0.append_data(&mut h, path, &[][..]).unwrap();
        self
    }
    pub fn file(self, path: &str, body: &[u8]) -> Self {
        self.file_with(path, body, 0o644, 0)
    }
    /// A file with any name bytes, `..` and absolute paths included.
    pub fn file_with(mut self, path: &str, body: &[u8], mode: u32, uid: u64) -> Self {
        let mut h = Self::header(tar::EntryType::Regular, mode, body.len() as u64, uid);
        let old = h.as_old_mut();
        old.name = [0; 100];
        old.name[..path.len()].copy_from_slice(path.as_bytes());
        h.set_cksum();
        self.0.append(&h, body).unwrap();
        self
    }
    pub fn symlink(mut self, path: &str, target: &str) -> Self {
        let mut h = Self::header(tar::EntryType::Symlink, 0o777, 0, 0);
        self.0.append_link(&mut h, path, target).unwrap();
        self
    }
    pub fn hardlink(mut self, path: &str, target: &str) -> Self {
        let mut h = Self::header(tar::EntryType::Link, 0o644, 0, 0);
        self.0.append_link(&mut h, path, target).unwrap();
        self
    }
    pub fn char_device(mut self, path: &str, major: u32, minor: u32) -> Self {
        let mut h = Self::header(tar::EntryType::Char, 0o666, 0, 0);
        h.set_device_major(major).unwrap();
        h.set_device_minor(minor).unwrap();
        self.0.append_data(&mut h, path, &[][..]).unwrap();
        self
    }
    pub fn xattr(mut self, key: &str, value: &str) -> Self {
        self.0
            .append_pax_extensions([(format!("SCHILY.xattr.{key}").as_str(), value.as_bytes())])
            .unwrap();
        self
    }
    /// The base every image here starts from: busybox and its applets.
    pub fn busybox() -> Self {
        let bin = std::fs::read(BUSYBOX).unwrap_or_else(|e| panic!("{BUSYBOX}: {e}"));
        let mut l = Self::new()
            .dir("bin")
            .file_with("bin/busybox", &bin, 0o755, 0);
        for a in APPLETS {
            l = l.symlink(&format!("bin/{a}"), "busybox");
        }
        l.dir("etc")
            .file(
                "etc/passwd",
                b"root:x:0:0:root:/:/bin/sh\nuser:x:1000:1000::/:/bin/sh\n",
            )
            .file("etc/group", b"root:x:0:\nuser:x:1000:\n")
    }
    pub fn bytes(self) -> Vec<u8> {
        self.0.into_inner().unwrap()
    }
}

pub fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

pub fn sha256(data: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(data))
}

/// How a layer is stored in a layout.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Stored {
    Plain,
    Gzip,
}

/// An image to write: its layers (uncompressed) and config.
pub struct Spec {
    pub layers: Vec<(Vec<u8>, Stored)>,
    pub architecture: String,
    pub config: serde_json::Value,
    pub name: String,
}

impl Spec {
    pub fn new(name: &str, layers: Vec<(Vec<u8>, Stored)>) -> Self {
        Self {
            layers,
            architecture: "amd64".into(),
            config: json!({"Env": ["PATH=/bin", "GREETING=from-config"], "WorkingDir": "/data", "Cmd": ["sh"]}),
            name: name.into(),
        }
    }

    fn config_bytes(&self) -> Vec<u8> {
        let diff_ids: Vec<String> = self
            .layers
            .iter()
            .map(|(l, _)| format!("sha256:{}", sha256(l)))
            .collect();
        serde_json::to_vec(&json!({
            "architecture": self.architecture, "os": "linux", "config": self.config,
            "rootfs": {"type": "layers", "diff_ids": diff_ids}
        }))
        .unwrap()
    }

    /// Writes an OCI image layout into `dir`; returns the manifest digest
    /// (`sha256:...`).
    pub fn write_layout(&self, dir: &Path) -> String {
        let blobs = dir.join("blobs/sha256");
        std::fs::create_dir_all(&blobs).unwrap();
        let put = |b: &[u8]| {
            let d = sha256(b);
            std::fs::write(blobs.join(&d), b).unwrap();
            (format!("sha256:{d}"), b.len())
        };
        let layers: Vec<serde_json::Value> = self
            .layers
            .iter()
            .map(|(l, s)| {
                let (blob, mt) = match s {
                    Stored::Plain => (l.clone(), "application/vnd.oci.image.layer.v1.tar"),
                    Stored::Gzip => (gzip(l), "application/vnd.oci.image.layer.v1.tar+gzip"),
                };
                let (d, n) = put(&blob);
                json!({"mediaType": mt, "digest": d, "size": n})
            })
            .collect();
        let (cd, cn) = put(&self.config_bytes());
        let manifest = serde_json::to_vec(&json!({
            "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cd, "size": cn},
            "layers": layers
        }))
        .unwrap();
        let (md, mn) = put(&manifest);
        std::fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
        let index = json!({"schemaVersion": 2, "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": md, "size": mn,
            "annotations": {"org.opencontainers.image.ref.name": self.name}}]});
        std::fs::write(dir.join("index.json"), serde_json::to_vec(&index).unwrap()).unwrap();
        md
    }

    /// Writes a legacy `docker save` archive (`<id>/layer.tar`,
    /// `<config hex>.json`, `manifest.json`); returns the config digest.
    pub fn write_docker_archive(&self, out: &Path) -> String {
        let config = self.config_bytes();
        let ch = sha256(&config);
        let mut b = tar::Builder::new(std::fs::File::create(out).unwrap());
        let mut add = |name: &str, body: &[u8]| {
            let mut h = tar::Header::new_gnu();
            h.set_size(body.len() as u64);
            h.set_mode(0o644);
            h.set_cksum();
            b.append_data(&mut h, name, body).unwrap();
        };
        let mut names = Vec::new();
        for (i, (l, _)) in self.layers.iter().enumerate() {
            let name = format!("{:064x}/layer.tar", i + 1);
            add(&name, l);
            names.push(name);
        }
        add(&format!("{ch}.json"), &config);
        let manifest =
            json!([{"Config": format!("{ch}.json"), "RepoTags": [self.name], "Layers": names}]);
        add("manifest.json", &serde_json::to_vec(&manifest).unwrap());
        b.finish().unwrap();
        format!("sha256:{ch}")
    }
}

/// A scratch directory removed on drop.
pub struct Scratch(pub PathBuf);

impl Scratch {
    pub fn new(name: &str) -> Self {
        let p = std::env::temp_dir().join(format!("images-{name}-{}", std::process::id()));
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
