//! Finding what `cargo xtask build` produced: manifests in the cache
//! (`$SANDBOX_CACHE`, default `~/.cache/sandbox`).

use std::path::PathBuf;

use crate::Error;

/// The cache directory shared with `cargo xtask`.
pub fn cache_dir() -> PathBuf {
    sandbox_rootfs::cache_dir()
}

/// Reads `manifest/<name>.json`.
pub fn manifest(name: &str, what: &str) -> Result<serde_json::Value, Error> {
    let path = cache_dir().join("manifest").join(format!("{name}.json"));
    let text = std::fs::read_to_string(&path).map_err(|_| Error::ArtifactMissing {
        what: what.to_string(),
        path: path.clone(),
    })?;
    serde_json::from_str(&text)
        .map_err(|e| Error::InvalidConfig(format!("{} is corrupt: {e}", path.display())))
}

/// The path a manifest records, checked to exist.
pub fn manifest_path(name: &str, what: &str) -> Result<PathBuf, Error> {
    let m = manifest(name, what)?;
    let path = PathBuf::from(m["path"].as_str().unwrap_or_default());
    if !path.is_file() {
        return Err(Error::ArtifactMissing {
            what: what.to_string(),
            path,
        });
    }
    Ok(path)
}
