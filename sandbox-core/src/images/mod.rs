//! Root file system images: immutable, described by an [`Image`] with a
//! content digest. Built-in images come from the project's own recipes
//! (`cargo xtask build`).

use std::path::PathBuf;

mod import;
pub use import::{
    import, ImportOptions, DEFAULT_MAX_IMAGE_BYTES, DEFAULT_MAX_UNPACKED_BYTES,
    DEFAULT_UNPACK_TIMEOUT,
};
pub use sandbox_rootfs::oci::{OciError, RunDefaults};

use crate::artifacts;
use crate::Error;
pub use sandbox_rootfs::{Image, ImageFormat};

/// Names of the built-in images.
pub const BUILTIN: &[&str] = &["minimal", "debian:12", "debian:12-docker"];

/// A built-in image by name: `minimal` (busybox and bash), `debian:12`
/// (bookworm with bash, coreutils, curl, git, python3, jq and more) or
/// `debian:12-docker` (`debian:12` plus Docker, containerd and runc; its
/// facts carry the `docker` version; see docs/docker.md). The image is
/// for this host's architecture: on arm64 hosts (a Mac) that is
/// [`builtin_arch`]`(name, "aarch64")`.
pub fn builtin(name: &str) -> Result<Image, Error> {
    builtin_arch(name, std::env::consts::ARCH)
}

fn builtin_x86_64(name: &str) -> Result<Image, Error> {
    if !BUILTIN.contains(&name) {
        return Err(Error::InvalidConfig(format!(
            "no built-in image {name:?}; available: {}",
            BUILTIN.join(", ")
        )));
    }
    from_manifest(name, &format!("image-{}", name.replace(':', "-")))
}

/// Built-in images for arm64 guests (`cargo xtask build --arch arm64`).
pub const BUILTIN_AARCH64: &[&str] = &["minimal"];

/// A built-in image for guest architecture `arch`: `x86_64` has every
/// image of [`BUILTIN`]; `aarch64` has `minimal` (for [`crate::BackendKind::QemuArm64`]
/// and the macOS backend).
pub fn builtin_arch(name: &str, arch: &str) -> Result<Image, Error> {
    match arch {
        "x86_64" => builtin_x86_64(name),
        "aarch64" if BUILTIN_AARCH64.contains(&name) => {
            from_manifest(name, &format!("image-{}-aarch64", name.replace(':', "-"))).map_err(|e| {
                match e {
                    Error::ArtifactMissing { what, path } => Error::ArtifactMissing {
                        what: format!("{what} (run `cargo xtask build --arch arm64`)"),
                        path,
                    },
                    other => other,
                }
            })
        }
        "aarch64" => Err(Error::InvalidConfig(format!(
            "no built-in aarch64 image {name:?}; available: {}",
            BUILTIN_AARCH64.join(", ")
        ))),
        other => Err(Error::InvalidConfig(format!(
            "no built-in images for architecture {other:?}; there are x86_64 and aarch64"
        ))),
    }
}

fn from_manifest(name: &str, manifest: &str) -> Result<Image, Error> {
    let m = artifacts::manifest(manifest, &format!("built-in image {name:?}"))?;
    let text = |k: &str| m[k].as_str().unwrap_or_default().to_string();
    let image = Image {
        name: text("name"),
        path: PathBuf::from(text("path")),
        format: match text("format").as_str() {
            "qcow2" => ImageFormat::Qcow2,
            _ => ImageFormat::Raw,
        },
        arch: text("arch"),
        sha256: text("sha256"),
        size: m["size"].as_u64().unwrap_or_default(),
        facts: m["facts"]
            .as_object()
            .map(|o| {
                o.iter()
                    .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string()))
                    .collect()
            })
            .unwrap_or_default(),
        run: Default::default(),
    };
    if !image.path.is_file() {
        return Err(Error::ArtifactMissing {
            what: format!("built-in image {name:?}"),
            path: image.path,
        });
    }
    Ok(image)
}
