//! A host directory served through fuse-backend-rs's passthrough, under
//! [`Confined`]'s rules.

use std::path::{Path, PathBuf};
use std::time::Duration;

use fuse_backend_rs::passthrough::{CachePolicy, Config, PassthroughFs};

use crate::Confined;

/// What the guest may do with a bound directory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// Read only: every change is `EROFS`.
    ReadOnly,
    /// Reads and writes land in the source directory.
    Writable,
}

/// Why a directory cannot be bound.
#[derive(Debug, thiserror::Error)]
pub enum BindError {
    /// The source is not an absolute path.
    #[error("the source of a bind mount must be an absolute host path, not {0}")]
    NotAbsolute(PathBuf),
    /// The source does not exist or is not a directory.
    #[error("the source of a bind mount must be an existing directory: {path}: {why}")]
    NotADirectory {
        /// The source.
        path: PathBuf,
        /// What was found instead.
        why: String,
    },
    /// The passthrough could not open the source.
    #[error("cannot serve {path}: {source}")]
    Open {
        /// The source.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
}

/// How long the guest may cache names and attributes before asking again
/// (the staleness window for changes made on the host).
pub const CACHE_TIMEOUT: Duration = Duration::from_secs(1);

/// Serves `source` (an absolute host directory) with `access`.
pub fn bind(source: &Path, access: Access) -> Result<Confined<PassthroughFs>, BindError> {
    if !source.is_absolute() {
        return Err(BindError::NotAbsolute(source.to_path_buf()));
    }
    match std::fs::metadata(source) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => {
            return Err(BindError::NotADirectory {
                path: source.to_path_buf(),
                why: "not a directory".into(),
            })
        }
        Err(e) => {
            return Err(BindError::NotADirectory {
                path: source.to_path_buf(),
                why: e.to_string(),
            })
        }
    }
    let root_dir = source
        .to_str()
        .ok_or_else(|| BindError::NotADirectory {
            path: source.to_path_buf(),
            why: "the path is not UTF-8".into(),
        })?
        .to_string();
    let open = |source: std::io::Error| BindError::Open {
        path: PathBuf::from(&root_dir),
        source,
    };
    let fs = PassthroughFs::<()>::new(Config {
        root_dir: root_dir.clone(),
        do_import: true,
        xattr: false,
        writeback: false,
        cache_policy: CachePolicy::Auto,
        attr_timeout: CACHE_TIMEOUT,
        entry_timeout: CACHE_TIMEOUT,
        ..Default::default()
    })
    .map_err(open)?;
    fs.import().map_err(open)?;
    Ok(Confined::new(fs, access == Access::ReadOnly))
}
