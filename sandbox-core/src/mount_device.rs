//! How each mount is served: the virtio-fs device of a bind, memory or
//! virtual mount, every one wrapped in [`sandbox_fs::Tracked`] so that a
//! snapshot keeps the guest's ids, and what a snapshot records of the
//! mount to serve it again on restore (docs/snapshots.md).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use sandbox_fs::{vfs, Access, MemoryFs};

use crate::mount::{check_masks, MountError};

/// A mount as a snapshot records it.
pub(crate) enum Record {
    Bind(BindRecord),
    Memory(MemoryRecord),
    Virtual(MemoryRecord),
}

/// A memory or virtual mount as a snapshot records it (a memory mount's
/// content is saved next to the state; a virtual one's is the
/// application's).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub(crate) struct MemoryRecord {
    pub path: String,
    pub tag: String,
    pub deadline_ms: u64,
}

fn runtime() -> Result<tokio::runtime::Handle, crate::Error> {
    tokio::runtime::Handle::try_current().map_err(|_| {
        crate::Error::InvalidConfig(
            "a virtual or memory file system needs boot() to run inside a tokio runtime".into(),
        )
    })
}

/// What a snapshot keeps of a memory mount: the guest's ids and the
/// file system's content.
struct MemoryState<F> {
    tracked: Arc<sandbox_fs::Tracked<F>>,
    fs: MemoryFs,
}

impl<F: sandbox_fs::FuseFs> sandbox_virtio::fs::SavesState for MemoryState<F> {
    fn save(&self) -> String {
        self.tracked.save()
    }

    fn save_data(&self, out: &std::fs::File) -> Option<std::io::Result<u64>> {
        let mut w = std::io::BufWriter::new(out);
        Some(self.fs.save_image(&mut w))
    }
}

/// The virtio-fs device of a virtual mount serving the application's
/// `fs` under the confinement rules of a writable bind (single-component
/// names, no device nodes, no setuid bits); with `state` (from a
/// snapshot), the guest's ids are found again in it.
pub(crate) fn virtual_device(
    r: &MemoryRecord,
    fs: Arc<dyn vfs::FileSystem>,
    state: Option<&str>,
) -> Result<sandbox_virtio::fs::Fs, crate::Error> {
    let (device, tracked) = vfs_device(r, fs, state)?;
    Ok(device.saving(tracked))
}

/// The virtio-fs device of a memory mount serving `fs`; with `state`
/// (from a snapshot), the guest's ids are found again in it. A snapshot
/// also saves `fs`'s content.
pub(crate) fn memory_device(
    r: &MemoryRecord,
    fs: MemoryFs,
    state: Option<&str>,
) -> Result<sandbox_virtio::fs::Fs, crate::Error> {
    let (device, tracked) = vfs_device(r, Arc::new(fs.clone()), state)?;
    Ok(device.saving(Arc::new(MemoryState { tracked, fs })))
}

/// An application file system's device, and its tracked layer.
type TrackedVfs = sandbox_fs::Tracked<sandbox_fs::Confined<sandbox_fs::Virtual>>;

fn vfs_device(
    r: &MemoryRecord,
    fs: Arc<dyn vfs::FileSystem>,
    state: Option<&str>,
) -> Result<(sandbox_virtio::fs::Fs, Arc<TrackedVfs>), crate::Error> {
    let deadline = Duration::from_millis(r.deadline_ms);
    let served = sandbox_fs::Virtual::new(fs, runtime()?, deadline);
    let tracked = track(sandbox_fs::Confined::new(served, false), state, &r.path)?;
    let device = sandbox_virtio::fs::Fs::new(&r.tag, tracked.clone())
        .map_err(|e| crate::Error::InvalidConfig(format!("mount on {:?}: {e}", r.path)))?;
    Ok((device, tracked))
}

/// A bind mount as a snapshot records it: a restore serves the same
/// source again.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub(crate) struct BindRecord {
    pub path: String,
    pub tag: String,
    pub source: PathBuf,
    pub read_only: bool,
    pub masks: Vec<String>,
    pub mask_storage: Option<PathBuf>,
}

/// The virtio-fs device of a bind: the confined passthrough (with its
/// masks) in [`sandbox_fs::Tracked`], whose ids a snapshot keeps. With
/// `state` (from a snapshot), the guest's ids are found again in it.
pub(crate) fn bind_device(
    r: &BindRecord,
    state: Option<&str>,
) -> Result<sandbox_virtio::fs::Fs, crate::Error> {
    let source_err = |source| MountError::Source {
        path: r.path.clone(),
        source,
    };
    let access = if r.read_only {
        Access::ReadOnly
    } else {
        Access::Writable
    };
    let fs_err = |e: sandbox_virtio::DeviceError| {
        crate::Error::InvalidConfig(format!("mount on {:?}: {e}", r.path))
    };
    if r.masks.is_empty() {
        let fs = sandbox_fs::bind(&r.source, access).map_err(source_err)?;
        let fs = track(fs, state, &r.path)?;
        return Ok(
            sandbox_virtio::fs::Fs::with_syncfs(&r.tag, fs.clone(), &[&r.source])
                .map_err(fs_err)?
                .saving(fs),
        );
    }
    let masks = check_masks(&r.path, &r.masks, access, r.mask_storage.as_deref())?;
    let storage = match access {
        Access::Writable => r.mask_storage.as_deref(),
        Access::ReadOnly => None,
    };
    let fs = sandbox_fs::bind_masked(&r.source, access, masks, storage).map_err(source_err)?;
    let fs = track(fs, state, &r.path)?;
    let dirs: Vec<&Path> = std::iter::once(r.source.as_path()).chain(storage).collect();
    Ok(
        sandbox_virtio::fs::Fs::with_syncfs(&r.tag, fs.clone(), &dirs)
            .map_err(fs_err)?
            .saving(fs),
    )
}

/// `fs` with the guest's ids tracked, restored from `state` if given.
fn track<F: sandbox_fs::FuseFs>(
    fs: F,
    state: Option<&str>,
    path: &str,
) -> Result<Arc<sandbox_fs::Tracked<F>>, crate::Error> {
    let Some(state) = state else {
        return Ok(Arc::new(sandbox_fs::Tracked::new(fs)));
    };
    let (fs, restored) = sandbox_fs::Tracked::restore(fs, state)
        .map_err(|e| crate::Error::Snapshot(format!("serving the mount on {path:?} again: {e}")))?;
    log::debug!("mount on {path:?} restored: {restored:?}");
    if restored.inodes_stale + restored.handles_stale > 0 {
        log::info!(
            "mount on {path:?}: {} inodes and {} open files the guest held are gone from \
             the source (they answer ESTALE/EBADF)",
            restored.inodes_stale,
            restored.handles_stale
        );
    }
    Ok(Arc::new(fs))
}
