//! [`MemoryFs`]: a POSIX-ish file system in host memory (files,
//! directories, symlinks), with a size limit. The application keeps a
//! handle and reads what the guest wrote, during the VM's life or after.

use std::collections::{BTreeMap, HashMap};
use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::OsStrExt;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::SystemTime;

#[path = "memory_image.rs"]
mod image;

use crate::vfs::{
    Attr, DirEntry, Errno, FileKind, FileSystem, FsFuture, FsResult, Ino, SetAttr, ROOT,
};

/// The default size limit (bytes of content, names and per-inode
/// overhead).
pub const DEFAULT_LIMIT: u64 = 256 << 20;
/// What each inode costs against the limit besides its content.
const INODE_COST: u64 = 128;

enum Content {
    File(Vec<u8>),
    Dir(BTreeMap<OsString, Ino>),
    Symlink(OsString),
}

struct Node {
    content: Content,
    perm: u32,
    mtime: SystemTime,
    nlink: u32,
    /// The containing directory (for directories: `..`).
    parent: Ino,
}

struct Tree {
    nodes: HashMap<Ino, Node>,
    next: Ino,
    used: u64,
    limit: u64,
}

/// An in-memory file system; clones share it.
#[derive(Clone)]
pub struct MemoryFs {
    tree: Arc<Mutex<Tree>>,
}

impl Default for MemoryFs {
    fn default() -> Self {
        Self::new()
    }
}

fn kind(c: &Content) -> FileKind {
    match c {
        Content::File(_) => FileKind::File,
        Content::Dir(_) => FileKind::Dir,
        Content::Symlink(_) => FileKind::Symlink,
    }
}

fn check_name(name: &OsStr) -> FsResult<()> {
    let b = name.as_bytes();
    if b.is_empty() || b == b"." || b == b".." || b.contains(&b'/') || b.contains(&0) {
        return Err(Errno::EINVAL);
    }
    if b.len() > 255 {
        return Err(Errno(libc::ENAMETOOLONG));
    }
    Ok(())
}

impl Tree {
    fn node(&self, ino: Ino) -> FsResult<&Node> {
        self.nodes.get(&ino).ok_or(Errno::ENOENT)
    }

    fn node_mut(&mut self, ino: Ino) -> FsResult<&mut Node> {
        self.nodes.get_mut(&ino).ok_or(Errno::ENOENT)
    }

    fn attr(&self, ino: Ino) -> FsResult<Attr> {
        let n = self.node(ino)?;
        let size = match &n.content {
            Content::File(d) => d.len() as u64,
            Content::Dir(e) => e.len() as u64,
            Content::Symlink(t) => t.len() as u64,
        };
        Ok(Attr {
            ino,
            kind: kind(&n.content),
            size,
            perm: n.perm,
            nlink: n.nlink,
            mtime: n.mtime,
        })
    }

    fn dir(&self, ino: Ino) -> FsResult<&BTreeMap<OsString, Ino>> {
        match &self.node(ino)?.content {
            Content::Dir(e) => Ok(e),
            _ => Err(Errno::ENOTDIR),
        }
    }

    fn dir_mut(&mut self, ino: Ino) -> FsResult<&mut BTreeMap<OsString, Ino>> {
        match &mut self.node_mut(ino)?.content {
            Content::Dir(e) => Ok(e),
            _ => Err(Errno::ENOTDIR),
        }
    }

    /// Reserves `bytes` against the limit.
    fn charge(&mut self, bytes: u64) -> FsResult<()> {
        let used = self.used.checked_add(bytes).ok_or(Errno::ENOSPC)?;
        if used > self.limit {
            return Err(Errno::ENOSPC);
        }
        self.used = used;
        Ok(())
    }

    fn refund(&mut self, bytes: u64) {
        self.used = self.used.saturating_sub(bytes);
    }

    fn lookup(&self, parent: Ino, name: &OsStr) -> FsResult<Ino> {
        self.dir(parent)?.get(name).copied().ok_or(Errno::ENOENT)
    }

    /// Adds a new inode `name` in `parent`.
    fn add(&mut self, parent: Ino, name: OsString, content: Content, perm: u32) -> FsResult<Ino> {
        check_name(&name)?;
        if self.dir(parent)?.contains_key(&name) {
            return Err(Errno::EEXIST);
        }
        let extra = match &content {
            Content::File(d) => d.len() as u64,
            Content::Symlink(t) => t.len() as u64,
            Content::Dir(_) => 0,
        };
        self.charge(INODE_COST + name.len() as u64 + extra)?;
        let ino = self.next;
        self.next += 1;
        let is_dir = matches!(content, Content::Dir(_));
        self.nodes.insert(
            ino,
            Node {
                content,
                perm: perm & 0o7777,
                mtime: SystemTime::now(),
                nlink: if is_dir { 2 } else { 1 },
                parent,
            },
        );
        self.dir_mut(parent)?.insert(name, ino);
        let p = self.node_mut(parent)?;
        p.mtime = SystemTime::now();
        if is_dir {
            p.nlink += 1;
        }
        Ok(ino)
    }

    /// Removes `name` from `parent`; `dir` says which kind is expected.
    fn remove(&mut self, parent: Ino, name: &OsStr, dir: bool) -> FsResult<()> {
        let ino = self.lookup(parent, name)?;
        let node = self.node(ino)?;
        match (&node.content, dir) {
            (Content::Dir(e), true) if !e.is_empty() => return Err(Errno::ENOTEMPTY),
            (Content::Dir(_), false) => return Err(Errno::EISDIR),
            (Content::File(_) | Content::Symlink(_), true) => return Err(Errno::ENOTDIR),
            _ => {}
        }
        self.dir_mut(parent)?.remove(name);
        self.drop_inode(ino, name.len() as u64);
        let p = self.node_mut(parent)?;
        p.mtime = SystemTime::now();
        if dir {
            p.nlink = p.nlink.saturating_sub(1);
        }
        Ok(())
    }

    fn drop_inode(&mut self, ino: Ino, name_len: u64) {
        if let Some(n) = self.nodes.remove(&ino) {
            let extra = match &n.content {
                Content::File(d) => d.len() as u64,
                Content::Symlink(t) => t.len() as u64,
                Content::Dir(_) => 0,
            };
            self.refund(INODE_COST + name_len + extra);
        }
    }

    /// Whether `ino` is `ancestor` or inside it.
    fn is_within(&self, mut ino: Ino, ancestor: Ino) -> bool {
        loop {
            if ino == ancestor {
                return true;
            }
            match self.nodes.get(&ino) {
                Some(n) if n.parent != ino => ino = n.parent,
                _ => return false,
            }
        }
    }

    fn rename(&mut self, parent: Ino, name: &OsStr, to: Ino, new_name: OsString) -> FsResult<()> {
        check_name(&new_name)?;
        let ino = self.lookup(parent, name)?;
        self.dir(to)?;
        let moving_dir = matches!(self.node(ino)?.content, Content::Dir(_));
        if moving_dir && self.is_within(to, ino) {
            return Err(Errno::EINVAL);
        }
        if let Ok(existing) = self.lookup(to, &new_name) {
            if existing == ino {
                return Ok(());
            }
            let replaced_dir = matches!(self.node(existing)?.content, Content::Dir(_));
            match (moving_dir, replaced_dir) {
                (true, false) => return Err(Errno::ENOTDIR),
                (false, true) => return Err(Errno::EISDIR),
                _ => {}
            }
            self.remove(to, &new_name, replaced_dir)?;
        }
        let grow = new_name.len() as u64;
        self.charge(grow)?;
        self.refund(name.len() as u64);
        self.dir_mut(parent)?.remove(name);
        self.dir_mut(to)?.insert(new_name, ino);
        self.node_mut(ino)?.parent = to;
        if moving_dir && parent != to {
            self.node_mut(parent)?.nlink -= 1;
            self.node_mut(to)?.nlink += 1;
        }
        let now = SystemTime::now();
        self.node_mut(parent)?.mtime = now;
        self.node_mut(to)?.mtime = now;
        Ok(())
    }

    fn write(&mut self, ino: Ino, offset: u64, data: &[u8]) -> FsResult<u32> {
        let end = offset.checked_add(data.len() as u64).ok_or(Errno::EINVAL)?;
        let len = match &self.node(ino)?.content {
            Content::File(d) => d.len() as u64,
            Content::Dir(_) => return Err(Errno::EISDIR),
            Content::Symlink(_) => return Err(Errno::EINVAL),
        };
        if end > len {
            self.charge(end - len)?;
        }
        let n = self.node_mut(ino)?;
        if let Content::File(d) = &mut n.content {
            let end = usize::try_from(end).map_err(|_| Errno::ENOSPC)?;
            if d.len() < end {
                d.resize(end, 0);
            }
            let start = end - data.len();
            d[start..end].copy_from_slice(data);
        }
        n.mtime = SystemTime::now();
        Ok(data.len() as u32)
    }

    fn truncate(&mut self, ino: Ino, size: u64) -> FsResult<()> {
        let len = match &self.node(ino)?.content {
            Content::File(d) => d.len() as u64,
            Content::Dir(_) => return Err(Errno::EISDIR),
            Content::Symlink(_) => return Err(Errno::EINVAL),
        };
        if size > len {
            self.charge(size - len)?;
        } else {
            self.refund(len - size);
        }
        let n = self.node_mut(ino)?;
        if let Content::File(d) = &mut n.content {
            d.resize(usize::try_from(size).map_err(|_| Errno::ENOSPC)?, 0);
        }
        n.mtime = SystemTime::now();
        Ok(())
    }

    /// The inode at absolute `path` (host-side helpers; no symlinks
    /// followed).
    fn resolve(&self, path: &str) -> FsResult<Ino> {
        let mut ino = ROOT;
        for c in path.split('/').filter(|c| !c.is_empty()) {
            ino = self.lookup(ino, OsStr::new(c))?;
        }
        Ok(ino)
    }

    /// Creates the directories of `path` that are missing.
    fn mkdirs(&mut self, path: &str) -> FsResult<Ino> {
        let mut ino = ROOT;
        for c in path.split('/').filter(|c| !c.is_empty()) {
            ino = match self.lookup(ino, OsStr::new(c)) {
                Ok(i) => i,
                Err(_) => self.add(ino, c.into(), Content::Dir(BTreeMap::new()), 0o755)?,
            };
        }
        Ok(ino)
    }
}

impl MemoryFs {
    /// An empty file system with the default size limit.
    pub fn new() -> Self {
        let mut nodes = HashMap::new();
        nodes.insert(
            ROOT,
            Node {
                content: Content::Dir(BTreeMap::new()),
                perm: 0o755,
                mtime: SystemTime::now(),
                nlink: 2,
                parent: ROOT,
            },
        );
        Self {
            tree: Arc::new(Mutex::new(Tree {
                nodes,
                next: ROOT + 1,
                used: INODE_COST,
                limit: DEFAULT_LIMIT,
            })),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Tree> {
        self.tree.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Sets the size limit: writes past it fail with `ENOSPC`.
    pub fn size_limit(self, bytes: u64) -> Self {
        self.lock().limit = bytes;
        self
    }

    /// Adds a file at absolute `path` (parents created) with `bytes`.
    pub fn file(self, path: &str, bytes: impl AsRef<[u8]>) -> Result<Self, Errno> {
        self.write_file(path, bytes.as_ref())?;
        Ok(self)
    }

    /// Adds a directory at absolute `path` (parents created).
    pub fn dir(self, path: &str) -> Result<Self, Errno> {
        self.lock().mkdirs(path)?;
        Ok(self)
    }

    /// Writes (replaces) the file at `path`, creating its parents.
    pub fn write_file(&self, path: &str, bytes: &[u8]) -> Result<(), Errno> {
        let (dir, name) = path.rsplit_once('/').ok_or(Errno::EINVAL)?;
        let mut t = self.lock();
        let parent = t.mkdirs(dir)?;
        let ino = match t.lookup(parent, OsStr::new(name)) {
            Ok(i) => {
                t.truncate(i, 0)?;
                i
            }
            Err(_) => t.add(parent, name.into(), Content::File(Vec::new()), 0o644)?,
        };
        t.write(ino, 0, bytes)?;
        Ok(())
    }

    /// The content of the file at absolute `path`.
    pub fn read_file(&self, path: &str) -> Result<Vec<u8>, Errno> {
        let t = self.lock();
        match &t.node(t.resolve(path)?)?.content {
            Content::File(d) => Ok(d.clone()),
            Content::Dir(_) => Err(Errno::EISDIR),
            Content::Symlink(_) => Err(Errno::EINVAL),
        }
    }

    /// The entries of the directory at absolute `path`.
    pub fn read_dir(&self, path: &str) -> Result<Vec<DirEntry>, Errno> {
        let t = self.lock();
        let ino = t.resolve(path)?;
        list(&t, ino)
    }

    /// Bytes counted against the limit now.
    pub fn used_bytes(&self) -> u64 {
        self.lock().used
    }
}

fn list(t: &Tree, ino: Ino) -> FsResult<Vec<DirEntry>> {
    t.dir(ino)?
        .iter()
        .map(|(name, &ino)| {
            Ok(DirEntry {
                name: name.clone(),
                ino,
                kind: kind(&t.node(ino)?.content),
            })
        })
        .collect()
}

fn ready<T: Send + 'static>(r: FsResult<T>) -> FsFuture<'static, T> {
    Box::pin(std::future::ready(r))
}

impl FileSystem for MemoryFs {
    fn lookup(&self, parent: Ino, name: OsString) -> FsFuture<'_, Attr> {
        let t = self.lock();
        ready(t.lookup(parent, &name).and_then(|i| t.attr(i)))
    }

    fn getattr(&self, ino: Ino) -> FsFuture<'_, Attr> {
        ready(self.lock().attr(ino))
    }

    fn setattr(&self, ino: Ino, set: SetAttr) -> FsFuture<'_, Attr> {
        let mut t = self.lock();
        let r = (|| {
            if let Some(size) = set.size {
                t.truncate(ino, size)?;
            }
            let n = t.node_mut(ino)?;
            if let Some(perm) = set.perm {
                n.perm = perm & 0o7777;
            }
            if let Some(mtime) = set.mtime {
                n.mtime = mtime;
            }
            t.attr(ino)
        })();
        ready(r)
    }

    fn readdir(&self, ino: Ino) -> FsFuture<'_, Vec<DirEntry>> {
        ready(list(&self.lock(), ino))
    }

    fn read(&self, ino: Ino, offset: u64, size: u32) -> FsFuture<'_, Vec<u8>> {
        let t = self.lock();
        let r = match t.node(ino).map(|n| &n.content) {
            Ok(Content::File(d)) => {
                let start = usize::try_from(offset).unwrap_or(usize::MAX).min(d.len());
                let end = start.saturating_add(size as usize).min(d.len());
                Ok(d[start..end].to_vec())
            }
            Ok(Content::Dir(_)) => Err(Errno::EISDIR),
            Ok(Content::Symlink(_)) => Err(Errno::EINVAL),
            Err(e) => Err(e),
        };
        ready(r)
    }

    fn write(&self, ino: Ino, offset: u64, data: Vec<u8>) -> FsFuture<'_, u32> {
        ready(self.lock().write(ino, offset, &data))
    }

    fn create(&self, parent: Ino, name: OsString, perm: u32) -> FsFuture<'_, Attr> {
        let mut t = self.lock();
        let r = t
            .add(parent, name, Content::File(Vec::new()), perm)
            .and_then(|i| t.attr(i));
        ready(r)
    }

    fn mkdir(&self, parent: Ino, name: OsString, perm: u32) -> FsFuture<'_, Attr> {
        let mut t = self.lock();
        let r = t
            .add(parent, name, Content::Dir(BTreeMap::new()), perm)
            .and_then(|i| t.attr(i));
        ready(r)
    }

    fn unlink(&self, parent: Ino, name: OsString) -> FsFuture<'_, ()> {
        ready(self.lock().remove(parent, &name, false))
    }

    fn rmdir(&self, parent: Ino, name: OsString) -> FsFuture<'_, ()> {
        ready(self.lock().remove(parent, &name, true))
    }

    fn rename(
        &self,
        parent: Ino,
        name: OsString,
        new_parent: Ino,
        new_name: OsString,
    ) -> FsFuture<'_, ()> {
        ready(self.lock().rename(parent, &name, new_parent, new_name))
    }

    fn symlink(&self, parent: Ino, name: OsString, target: OsString) -> FsFuture<'_, Attr> {
        let mut t = self.lock();
        let r = t
            .add(parent, name, Content::Symlink(target), 0o777)
            .and_then(|i| t.attr(i));
        ready(r)
    }

    fn readlink(&self, ino: Ino) -> FsFuture<'_, OsString> {
        let t = self.lock();
        let r = match t.node(ino).map(|n| &n.content) {
            Ok(Content::Symlink(target)) => Ok(target.clone()),
            Ok(_) => Err(Errno::EINVAL),
            Err(e) => Err(e),
        };
        ready(r)
    }
}
