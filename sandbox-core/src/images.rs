//! Root file system images: immutable, described by an [`Image`] with a
//! content digest. Built-in images come from the project's own recipes
//! (`cargo xtask build`).

use std::collections::BTreeMap;
use std::path::PathBuf;

use crate::artifacts;
use crate::Error;

/// Container format of an image file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ImageFormat {
    /// A raw disk image.
    Raw,
    /// A qcow2 image (read support lands with the root file system work).
    Qcow2,
}

/// An immutable root file system image.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Image {
    /// Name, e.g. `minimal`.
    pub name: String,
    /// Where the image file is.
    pub path: PathBuf,
    /// Container format.
    pub format: ImageFormat,
    /// Guest architecture, e.g. `x86_64`.
    pub arch: String,
    /// sha256 of the image file, lowercase hex.
    pub sha256: String,
    /// Size of the image file in bytes.
    pub size: u64,
    /// Facts about the image (distro, shell, package manager).
    pub facts: BTreeMap<String, String>,
}

/// A built-in image by name. Only `minimal` exists so far.
pub fn builtin(name: &str) -> Result<Image, Error> {
    if name != "minimal" {
        return Err(Error::InvalidConfig(format!(
            "no built-in image {name:?}; available: minimal"
        )));
    }
    let m = artifacts::manifest(
        &format!("image-{name}"),
        &format!("built-in image {name:?}"),
    )?;
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
    };
    if !image.path.is_file() {
        return Err(Error::ArtifactMissing {
            what: format!("built-in image {name:?}"),
            path: image.path,
        });
    }
    Ok(image)
}
