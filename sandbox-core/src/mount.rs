//! Host file systems mounted in the guest (`BootOptions::mount`): a host
//! directory bound read-only or writable through virtio-fs. Validated
//! before anything starts; each becomes a virtio-fs device the agent mounts
//! before it reports ready (docs/mounts.md).

use std::path::PathBuf;
use std::sync::Arc;

use std::time::Duration;

use sandbox_fs::{vfs, Access, MemoryFs};

pub(crate) use crate::mount_device::{
    bind_device, memory_device, virtual_device, BindRecord, MemoryRecord, Record,
};

/// A file system to mount in the guest.
#[derive(Clone)]
pub struct Mount {
    kind: Kind,
    /// Masks given to a mount that is not a bind (refused at boot).
    stray_masks: Vec<String>,
}

#[derive(Clone)]
enum Kind {
    Bind {
        source: PathBuf,
        access: Access,
        /// Paths inside the source the guest must not see (`/.git`).
        masks: Vec<String>,
        /// Where a writable bind's guest puts entries under masked paths.
        mask_storage: Option<PathBuf>,
    },
    /// An application's file system (a `MemoryFs` is one).
    Virtual {
        fs: Arc<dyn vfs::FileSystem>,
        deadline: Duration,
        /// The same file system when it is a [`MemoryFs`] (snapshots
        /// save its content).
        memory: Option<MemoryFs>,
    },
    /// An external vhost-user-fs daemon's socket, and the tag it serves.
    External { socket: PathBuf, tag: String },
}

impl std::fmt::Debug for Mount {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.kind {
            Kind::Bind {
                source,
                access,
                masks,
                mask_storage,
            } => f
                .debug_struct("Bind")
                .field("source", source)
                .field("access", access)
                .field("masks", masks)
                .field("mask_storage", mask_storage)
                .finish(),
            Kind::Virtual { deadline, .. } => f
                .debug_struct("Virtual")
                .field("deadline", deadline)
                .finish_non_exhaustive(),
            Kind::External { socket, tag } => f
                .debug_struct("External")
                .field("socket", socket)
                .field("tag", tag)
                .finish(),
        }
    }
}

/// A host directory to bind, before its access is chosen (there is no
/// default: say [`Bind::read_only`] or [`Bind::writable`]).
#[derive(Clone, Debug)]
#[must_use = "choose the access with .read_only() or .writable()"]
pub struct Bind {
    source: PathBuf,
}

impl Mount {
    /// Binds the absolute host directory `source`.
    pub fn bind(source: impl Into<PathBuf>) -> Bind {
        Bind {
            source: source.into(),
        }
    }

    /// Serves `fs`, a file system in host memory: the guest reads and
    /// writes it, and the application reads what it wrote through its own
    /// handle (a clone of `fs`), during the VM's life or after. Writes past
    /// its size limit fail with `ENOSPC`.
    pub fn memory(fs: &MemoryFs) -> Mount {
        let mut mount = Self::virtual_fs(fs.clone());
        if let Kind::Virtual { memory, .. } = &mut mount.kind {
            *memory = Some(fs.clone());
        }
        mount
    }

    /// Serves the application's own file system. Each guest request runs
    /// as a task on the runtime that called `boot()`; one that panics or
    /// takes longer than the deadline ([`Mount::deadline`], 10 s by
    /// default) fails with `EIO` in the guest, and the VM goes on.
    pub fn virtual_fs(fs: impl vfs::FileSystem) -> Mount {
        Mount {
            kind: Kind::Virtual {
                fs: Arc::new(fs),
                deadline: sandbox_fs::DEFAULT_DEADLINE,
                memory: None,
            },
            stray_masks: Vec::new(),
        }
    }

    /// Hides `paths` of a bound directory (absolute within it: `/.git`,
    /// `/node_modules`, `/config/.env`): the original content there is
    /// never shown, listed or reached, and a directory that holds one
    /// cannot be renamed. On a read-only bind they are absent (`ENOENT`).
    /// A writable bind needs [`Mount::mask_storage`]: the guest sees the
    /// storage's content there, and what it creates there lands in the
    /// storage. Refused at boot for other mounts.
    pub fn mask<S: Into<String>>(mut self, paths: impl IntoIterator<Item = S>) -> Mount {
        let extra: Vec<String> = paths.into_iter().map(Into::into).collect();
        match &mut self.kind {
            Kind::Bind { masks, .. } => masks.extend(extra),
            Kind::Virtual { .. } | Kind::External { .. } => self.stray_masks.extend(extra),
        }
        self
    }

    /// The host directory that receives what the guest creates under a
    /// writable bind's masked paths (the source never does).
    pub fn mask_storage(mut self, dir: impl Into<PathBuf>) -> Mount {
        if let Kind::Bind { mask_storage, .. } = &mut self.kind {
            *mask_storage = Some(dir.into());
        }
        self
    }

    /// A file system served by an external vhost-user-fs daemon listening
    /// on `socket` under mount tag `tag` (for example `virtiofsd
    /// --socket-path SOCKET --tag TAG`; the daemon must answer the
    /// front end's `GET_CONFIG` with its tag). The daemon's own rules
    /// apply, not this library's. UML backend only.
    pub fn vhost_user_fs(socket: impl Into<PathBuf>, tag: impl Into<String>) -> Mount {
        Mount {
            kind: Kind::External {
                socket: socket.into(),
                tag: tag.into(),
            },
            stray_masks: Vec::new(),
        }
    }

    /// The deadline of one guest request to a virtual or memory file
    /// system (no effect on binds).
    pub fn deadline(mut self, d: Duration) -> Mount {
        if let Kind::Virtual { deadline, .. } = &mut self.kind {
            *deadline = d;
        }
        self
    }
}

impl Bind {
    /// The guest reads; every change is refused with `EROFS`.
    pub fn read_only(self) -> Mount {
        self.with(Access::ReadOnly)
    }

    /// The guest's changes land in the host directory, owned by the user
    /// running the library.
    pub fn writable(self) -> Mount {
        self.with(Access::Writable)
    }

    fn with(self, access: Access) -> Mount {
        Mount {
            kind: Kind::Bind {
                source: self.source,
                access,
                masks: Vec::new(),
                mask_storage: None,
            },
            stray_masks: Vec::new(),
        }
    }
}

/// Why a mount was refused (before anything started).
#[derive(Debug, thiserror::Error)]
pub enum MountError {
    /// The guest path is not usable as a mount point.
    #[error("mount point {path:?}: {why}")]
    GuestPath {
        /// The guest path.
        path: String,
        /// What is wrong with it.
        why: String,
    },
    /// A mask is not a usable path inside the source, is given to a mount
    /// that is not a bind, or lacks the storage a writable bind needs.
    #[error("mount on {path:?}: mask {mask:?}: {why}")]
    Mask {
        /// The guest path of the mount.
        path: String,
        /// The mask.
        mask: String,
        /// What is wrong.
        why: String,
    },
    /// The host side cannot be served.
    #[error("mount on {path:?}: {source}")]
    Source {
        /// The guest path.
        path: String,
        /// Why.
        #[source]
        source: sandbox_fs::BindError,
    },
}

/// Guest trees the library or the kernel owns.
const RESERVED: [&str; 4] = ["/proc", "/sys", "/dev", "/run/sandbox"];

/// Checks one guest path: absolute, normalized, not `/`, not in a reserved
/// tree.
fn check_path(path: &str) -> Result<(), String> {
    if !path.starts_with('/') {
        return Err("must be an absolute guest path".into());
    }
    if path == "/" {
        return Err("cannot mount over the root".into());
    }
    if path.contains('\0') {
        return Err("contains NUL".into());
    }
    if !normalized(path) {
        return Err(
            "must be normalized (no empty, '.' or '..' components, no trailing '/')".into(),
        );
    }
    if let Some(r) = RESERVED.iter().find(|r| under(path, r)) {
        return Err(format!("{r} belongs to the guest kernel and the agent"));
    }
    Ok(())
}

/// Whether `path` is `dir` or inside it.
fn under(path: &str, dir: &str) -> bool {
    path == dir
        || path
            .strip_prefix(dir)
            .is_some_and(|rest| rest.starts_with('/'))
}

/// Checks every guest path and that no two are the same or nested.
pub(crate) fn validate(mounts: &[(String, Mount)]) -> Result<(), MountError> {
    for (i, (path, _)) in mounts.iter().enumerate() {
        check_path(path).map_err(|why| MountError::GuestPath {
            path: path.clone(),
            why,
        })?;
        for (other, _) in &mounts[..i] {
            if under(path, other) || under(other, path) {
                return Err(MountError::GuestPath {
                    path: path.clone(),
                    why: if path == other {
                        "mounted twice".into()
                    } else {
                        format!("nested with the mount on {other:?}")
                    },
                });
            }
        }
    }
    Ok(())
}

/// A mount ready for a backend: what serves it and where the agent mounts
/// it.
pub(crate) struct Prepared {
    /// The guest path.
    pub path: String,
    /// What serves it, under `tag`.
    pub served: Served,
    /// The mount tag.
    pub tag: String,
    /// The file system of a memory mount.
    pub memory: Option<MemoryFs>,
}

/// The application's file system and deadline of a `Mount::virtual_fs`
/// (or `Mount::memory`); `None` for other mounts.
pub(crate) fn virtual_fs_of(m: &Mount) -> Option<(Arc<dyn vfs::FileSystem>, Duration)> {
    match &m.kind {
        Kind::Virtual { fs, deadline, .. } => Some((fs.clone(), *deadline)),
        _ => None,
    }
}

/// What serves a mount.
pub(crate) enum Served {
    /// Our virtio-fs device, and how a snapshot records the mount.
    Device(sandbox_virtio::fs::Fs, Record),
    /// An external vhost-user-fs daemon's socket.
    External(PathBuf),
}

/// The masks of the bind on `path` as paths relative to its source.
pub(crate) fn check_masks(
    path: &str,
    masks: &[String],
    access: Access,
    storage: Option<&std::path::Path>,
) -> Result<Vec<PathBuf>, MountError> {
    let bad = |mask: &String, why: String| MountError::Mask {
        path: path.into(),
        mask: mask.clone(),
        why,
    };
    let mut out = Vec::new();
    for m in masks {
        check_inside(m).map_err(|why| bad(m, why))?;
        out.push(PathBuf::from(&m[1..]));
    }
    if access == Access::Writable && storage.is_none() {
        return Err(bad(
            &masks[0],
            "a writable bind with masks needs .mask_storage(dir) for what the guest creates \
             under them"
                .into(),
        ));
    }
    Ok(out)
}

/// A path inside a mount: absolute, normalized, not the root itself.
fn check_inside(path: &str) -> Result<(), String> {
    if !path.starts_with('/') || path == "/" {
        return Err("must be an absolute path inside the source, other than \"/\"".into());
    }
    if path.contains('\0') || !normalized(path) {
        return Err("must be normalized (no empty, '.' or '..' components)".into());
    }
    Ok(())
}

/// Whether absolute `path` has no empty, `.` or `..` components (nor a
/// trailing `/`).
fn normalized(path: &str) -> bool {
    path[1..]
        .split('/')
        .all(|c| !c.is_empty() && c != "." && c != "..")
}

/// Opens the host side of every mount (validated first).
pub(crate) fn prepare(mounts: &[(String, Mount)]) -> Result<Vec<Prepared>, crate::Error> {
    validate(mounts)?;
    let mut out = Vec::new();
    for (i, (path, mount)) in mounts.iter().enumerate() {
        if let Some(m) = mount.stray_masks.first() {
            return Err(MountError::Mask {
                path: path.clone(),
                mask: m.clone(),
                why: "masks apply to bind mounts only".into(),
            }
            .into());
        }
        if let Kind::External { socket, tag } = &mount.kind {
            let plain = tag
                .bytes()
                .all(|b| b.is_ascii_graphic() && b != b',' && b != b':');
            if tag.is_empty() || tag.len() > sandbox_virtio::fs::MAX_TAG_LEN || !plain {
                return Err(crate::Error::InvalidConfig(format!(
                    "mount on {path:?}: the tag {tag:?} must be 1 to 36 printable bytes \
                     without ',' or ':'"
                )));
            }
            out.push(Prepared {
                path: path.clone(),
                served: Served::External(socket.clone()),
                tag: tag.clone(),
                memory: None,
            });
            continue;
        }
        let tag = format!("sbxfs{i}");
        let record_of = |deadline: &Duration| MemoryRecord {
            path: path.clone(),
            tag: tag.clone(),
            deadline_ms: deadline.as_millis() as u64,
        };
        let (device, record) = match &mount.kind {
            Kind::Bind {
                source,
                access,
                masks,
                mask_storage,
            } => {
                let r = BindRecord {
                    path: path.clone(),
                    tag: tag.clone(),
                    source: source.clone(),
                    read_only: *access == Access::ReadOnly,
                    masks: masks.clone(),
                    mask_storage: mask_storage.clone(),
                };
                (bind_device(&r, None)?, Record::Bind(r))
            }
            Kind::Virtual {
                memory: Some(memory),
                deadline,
                ..
            } => {
                let r = record_of(deadline);
                (memory_device(&r, memory.clone(), None)?, Record::Memory(r))
            }
            Kind::Virtual { fs, deadline, .. } => {
                let r = record_of(deadline);
                (virtual_device(&r, fs.clone(), None)?, Record::Virtual(r))
            }
            // Pushed above.
            Kind::External { .. } => continue,
        };
        let memory = match &mount.kind {
            Kind::Virtual { memory, .. } => memory.clone(),
            _ => None,
        };
        out.push(Prepared {
            path: path.clone(),
            served: Served::Device(device, record),
            tag,
            memory,
        });
    }
    Ok(out)
}

/// The agent's kernel parameter naming where each device is mounted.
pub(crate) fn agent_param(prepared: &[Prepared]) -> Option<String> {
    use sandbox_protocol::cmdline;
    (!prepared.is_empty()).then(|| {
        cmdline::param(
            cmdline::MOUNTS,
            cmdline::mounts(prepared.iter().map(|p| (p.tag.as_str(), p.path.as_str()))),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m() -> Mount {
        Mount::bind("/tmp").read_only()
    }

    fn check(paths: &[&str]) -> Result<(), String> {
        let list: Vec<(String, Mount)> = paths.iter().map(|p| (p.to_string(), m())).collect();
        validate(&list).map_err(|e| e.to_string())
    }

    #[test]
    fn guest_paths_are_validated() {
        assert!(check(&["/workspace", "/data/cache", "/procfs"]).is_ok());
        for bad in [
            "workspace",
            "/",
            "/a//b",
            "/a/./b",
            "/a/../b",
            "/a/",
            "/proc",
            "/proc/x",
            "/sys/fs",
            "/dev",
            "/run/sandbox/ca",
        ] {
            assert!(check(&[bad]).is_err(), "{bad}");
        }
        let dup = check(&["/w", "/w"]).unwrap_err();
        assert!(dup.contains("mounted twice"), "{dup}");
        let nested = check(&["/w", "/w/sub"]).unwrap_err();
        assert!(nested.contains("nested"), "{nested}");
        assert!(check(&["/w/sub", "/w"]).is_err());
        assert!(check(&["/w", "/wx"]).is_ok());
    }
}
