//! A host directory served through fuse-backend-rs's passthrough, under
//! [`Confined`]'s rules.

use std::path::{Path, PathBuf};
use std::time::Duration;

use fuse_backend_rs::passthrough::{CachePolicy, Config, PassthroughFs};

use crate::{Confined, Masked};

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
    /// The mask storage cannot be used.
    #[error("mask storage {path}: {why}")]
    Storage {
        /// The storage directory.
        path: PathBuf,
        /// What is wrong.
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
    Ok(Confined::new(fs, access == Access::ReadOnly).with_atomic_o_trunc())
}

/// Serves `source` with `masks` (paths relative to it) hidden, or, with
/// `storage`, served from that host directory (each mask's parent is
/// created there). The storage must not overlap the source.
pub fn bind_masked(
    source: &Path,
    access: Access,
    masks: Vec<PathBuf>,
    storage: Option<&Path>,
) -> Result<Masked<Confined<PassthroughFs>>, BindError> {
    let served = bind(source, access)?;
    let storage = match storage {
        None => None,
        Some(dir) => {
            let bad = |why: String| BindError::Storage {
                path: dir.to_path_buf(),
                why,
            };
            let real = std::fs::canonicalize(dir).map_err(|e| bad(e.to_string()))?;
            let src = std::fs::canonicalize(source).map_err(|e| bad(e.to_string()))?;
            if real.starts_with(&src) || src.starts_with(&real) {
                return Err(bad(format!(
                    "must not overlap the source {}",
                    source.display()
                )));
            }
            for m in &masks {
                if let Some(parent) = m.parent() {
                    std::fs::create_dir_all(real.join(parent)).map_err(|e| bad(e.to_string()))?;
                }
            }
            Some(bind(&real, Access::Writable)?)
        }
    };
    Ok(Masked::new(served, masks, storage))
}
