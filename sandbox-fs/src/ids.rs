//! The guest's inode and handle ids, kept apart from the served file
//! system's own ids so that they survive a snapshot: [`Table`] records,
//! for every inode the guest holds, the name it was reached by (parent
//! and name), and for every open handle, its inode and open flags. A
//! restore looks each inode up again by name in a new file system, reopens
//! each handle, and maps the guest's old ids onto the new ones. An id
//! that cannot be found again answers `ESTALE`.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

/// FUSE's root inode: the same id on both sides.
pub const ROOT: u64 = 1;

/// One inode the guest holds.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Node {
    /// The served file system's id, `None` once it could not be found
    /// again after a restore.
    #[serde(skip)]
    pub inner: Option<u64>,
    /// The parent's guest id and the name, while the node has one.
    pub path: Option<(u64, Vec<u8>)>,
    /// Lookups the guest holds (FUSE `nlookup`).
    pub lookups: u64,
    /// Lookups held on the served file system, forgotten together when
    /// the guest's count reaches zero.
    #[serde(skip)]
    pub inner_lookups: u64,
}

/// One handle the guest holds.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Handle {
    #[serde(skip)]
    pub inner: Option<u64>,
    /// The inode's guest id.
    pub inode: u64,
    /// The flags it was opened with.
    pub flags: u32,
    /// Opened by `opendir`.
    pub dir: bool,
}

/// What a snapshot keeps of a [`Table`].
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Saved {
    /// The options the guest's FUSE INIT offered (`FsOptions` bits).
    pub init: Option<u64>,
    pub next_inode: u64,
    pub next_handle: u64,
    pub nodes: Vec<(u64, Node)>,
    pub handles: Vec<(u64, Handle)>,
}

/// The guest's ids and what they stand for.
#[derive(Debug)]
pub struct Table {
    pub init: Option<u64>,
    nodes: HashMap<u64, Node>,
    /// Served id to guest id.
    guest_of: HashMap<u64, u64>,
    /// (parent guest id, name) to guest id.
    by_name: HashMap<(u64, Vec<u8>), u64>,
    handles: HashMap<u64, Handle>,
    next_inode: u64,
    next_handle: u64,
    /// Served ids looked up by a restore and not kept: one lookup each to
    /// forget ([`Table::take_unwanted`]).
    unwanted: Vec<u64>,
}

impl Default for Table {
    fn default() -> Self {
        Self {
            init: None,
            nodes: HashMap::new(),
            guest_of: HashMap::new(),
            by_name: HashMap::new(),
            handles: HashMap::new(),
            next_inode: ROOT + 1,
            next_handle: 1,
            unwanted: Vec::new(),
        }
    }
}

fn stale() -> std::io::Error {
    crate::err(libc::ESTALE)
}

fn bad_handle() -> std::io::Error {
    crate::err(libc::EBADF)
}

impl Table {
    /// The served id of guest inode `guest`.
    pub fn inode(&self, guest: u64) -> std::io::Result<u64> {
        if guest == ROOT {
            return Ok(ROOT);
        }
        self.nodes
            .get(&guest)
            .and_then(|n| n.inner)
            .ok_or_else(stale)
    }

    /// The served id of guest handle `guest`. Handle 0 is the kernel's
    /// "none" (a file system that opens without handles): it stays 0.
    pub fn handle(&self, guest: u64) -> std::io::Result<u64> {
        if guest == 0 {
            return Ok(0);
        }
        self.handles
            .get(&guest)
            .and_then(|h| h.inner)
            .ok_or_else(bad_handle)
    }

    /// Records that the guest reached served inode `inner` as `name` in
    /// `parent` (a guest id), holding one more lookup; returns its guest
    /// id. A served id of 0 (a negative entry) stays 0.
    pub fn entered(&mut self, parent: u64, name: &[u8], inner: u64) -> u64 {
        if inner == 0 {
            return 0;
        }
        if inner == ROOT {
            return ROOT;
        }
        let guest = match self.guest_of.get(&inner) {
            Some(&g) => g,
            None => {
                let g = self.next_inode;
                self.next_inode += 1;
                self.guest_of.insert(inner, g);
                self.nodes.insert(
                    g,
                    Node {
                        inner: Some(inner),
                        path: None,
                        lookups: 0,
                        inner_lookups: 0,
                    },
                );
                g
            }
        };
        let key = (parent, name.to_vec());
        if let Some(node) = self.nodes.get_mut(&guest) {
            node.lookups += 1;
            node.inner_lookups += 1;
            if node.path.is_none() {
                node.path = Some((parent, name.to_vec()));
                self.by_name.insert(key, guest);
            }
        }
        guest
    }

    /// Takes back an [`Table::entered`] the guest never saw (a directory
    /// entry that did not fit): the served file system takes back its own.
    pub fn unentered(&mut self, guest: u64) {
        let Some(node) = self.nodes.get_mut(&guest) else {
            return;
        };
        node.lookups = node.lookups.saturating_sub(1);
        node.inner_lookups = node.inner_lookups.saturating_sub(1);
        if node.lookups == 0 {
            let _ = self.forget(guest, 0);
        }
    }

    /// The guest forgot `count` lookups of `guest`: once it holds none,
    /// the node goes and the served id and lookups to forget are returned.
    pub fn forget(&mut self, guest: u64, count: u64) -> Option<(u64, u64)> {
        let node = self.nodes.get_mut(&guest)?;
        node.lookups = node.lookups.saturating_sub(count);
        if node.lookups > 0 {
            return None;
        }
        let node = self.nodes.remove(&guest)?;
        if let Some((parent, name)) = node.path {
            let key = (parent, name);
            if self.by_name.get(&key) == Some(&guest) {
                self.by_name.remove(&key);
            }
        }
        let inner = node.inner?;
        self.guest_of.remove(&inner);
        (node.inner_lookups > 0).then_some((inner, node.inner_lookups))
    }

    /// `name` in `parent` is gone (unlinked, or replaced by a rename).
    pub fn unlinked(&mut self, parent: u64, name: &[u8]) {
        if let Some(g) = self.by_name.remove(&(parent, name.to_vec())) {
            if let Some(node) = self.nodes.get_mut(&g) {
                node.path = None;
            }
        }
    }

    /// A successful rename (`exchange`: `RENAME_EXCHANGE`, both names
    /// stay and swap their inodes).
    pub fn renamed(
        &mut self,
        olddir: u64,
        oldname: &[u8],
        newdir: u64,
        newname: &[u8],
        exchange: bool,
    ) {
        let old_key = (olddir, oldname.to_vec());
        let new_key = (newdir, newname.to_vec());
        let moved = self.by_name.remove(&old_key);
        let replaced = self.by_name.remove(&new_key);
        if let Some(g) = replaced {
            let path = exchange.then(|| (olddir, oldname.to_vec()));
            if let Some(node) = self.nodes.get_mut(&g) {
                node.path = path;
            }
            if exchange {
                self.by_name.insert(old_key, g);
            }
        }
        if let Some(g) = moved {
            if let Some(node) = self.nodes.get_mut(&g) {
                node.path = Some((newdir, newname.to_vec()));
            }
            self.by_name.insert(new_key, g);
        }
    }

    /// Records served handle `inner` of guest inode `inode`; returns the
    /// guest's handle.
    pub fn opened(&mut self, inode: u64, inner: u64, flags: u32, dir: bool) -> u64 {
        let g = self.next_handle;
        self.next_handle += 1;
        self.handles.insert(
            g,
            Handle {
                inner: Some(inner),
                inode,
                flags,
                dir,
            },
        );
        g
    }

    /// The guest released `guest`: its served id, if it had one.
    pub fn released(&mut self, guest: u64) -> Option<u64> {
        self.handles.remove(&guest)?.inner
    }

    /// Served ids a restore looked up and did not keep.
    pub fn take_unwanted(&mut self) -> Vec<u64> {
        std::mem::take(&mut self.unwanted)
    }

    /// Inodes and handles held.
    pub fn len(&self) -> (usize, usize) {
        (self.nodes.len(), self.handles.len())
    }

    pub fn save(&self) -> Saved {
        let mut nodes: Vec<_> = self.nodes.iter().map(|(g, n)| (*g, n.clone())).collect();
        nodes.sort_by_key(|(g, _)| *g);
        let mut handles: Vec<_> = self.handles.iter().map(|(g, h)| (*g, h.clone())).collect();
        handles.sort_by_key(|(g, _)| *g);
        Saved {
            init: self.init,
            next_inode: self.next_inode,
            next_handle: self.next_handle,
            nodes,
            handles,
        }
    }

    /// A table holding `saved`'s guest ids, none of them found yet: the
    /// caller resolves them with [`Table::resolve`] and [`Table::reopen`].
    pub fn from_saved(saved: Saved) -> Self {
        let mut t = Table {
            init: saved.init,
            next_inode: saved.next_inode.max(ROOT + 1),
            next_handle: saved.next_handle.max(1),
            ..Default::default()
        };
        for (g, mut node) in saved.nodes {
            if g == ROOT || g >= t.next_inode {
                continue;
            }
            node.inner = None;
            node.inner_lookups = 0;
            if let Some(key) = &node.path {
                t.by_name.insert(key.clone(), g);
            }
            t.nodes.insert(g, node);
        }
        for (g, mut h) in saved.handles {
            if g >= t.next_handle {
                continue;
            }
            h.inner = None;
            t.handles.insert(g, h);
        }
        t
    }

    /// Finds every node again with `lookup(served parent, name)` (parents
    /// first); a node whose name or parent cannot be found stays stale.
    /// Returns how many were found.
    pub fn resolve(&mut self, mut lookup: impl FnMut(u64, &[u8]) -> std::io::Result<u64>) -> usize {
        let ids: Vec<u64> = self.nodes.keys().copied().collect();
        let mut found = 0;
        let mut failed_ids = std::collections::HashSet::new();
        for g in ids {
            // The chain of unresolved ancestors, nearest first.
            let mut chain = vec![g];
            let mut failed = false;
            loop {
                let last = *chain.last().unwrap_or(&g);
                let Some(node) = self
                    .nodes
                    .get(&last)
                    .filter(|_| !failed_ids.contains(&last))
                else {
                    failed = true;
                    break;
                };
                if node.inner.is_some() {
                    chain.pop();
                    break;
                }
                match &node.path {
                    Some((p, _)) if *p == ROOT => break,
                    Some((p, _)) if chain.contains(p) || chain.len() > 4096 => {
                        failed = true;
                        break;
                    }
                    Some((p, _)) => chain.push(*p),
                    None => {
                        failed = true;
                        break;
                    }
                }
            }
            if failed {
                failed_ids.extend(chain);
                continue;
            }
            for id in chain.into_iter().rev() {
                if !self.resolve_one(id, &mut lookup) {
                    failed_ids.insert(id);
                    break;
                }
                found += 1;
            }
        }
        found
    }

    /// Looks `id` up in its (found) parent; false if it is not there.
    fn resolve_one(
        &mut self,
        id: u64,
        lookup: &mut impl FnMut(u64, &[u8]) -> std::io::Result<u64>,
    ) -> bool {
        {
            let Some((parent, name)) = self.nodes.get(&id).and_then(|n| n.path.clone()) else {
                return false;
            };
            let Ok(parent_inner) = self.inode(parent) else {
                return false;
            };
            let Ok(inner) = lookup(parent_inner, &name) else {
                return false;
            };
            if inner == 0 {
                return false;
            }
            if self.guest_of.contains_key(&inner) {
                // A name now leading to a node the guest holds under
                // another id: not the same file. The lookup is given back.
                self.unwanted.push(inner);
                return false;
            }
            self.guest_of.insert(inner, id);
            if let Some(node) = self.nodes.get_mut(&id) {
                node.inner = Some(inner);
                node.inner_lookups = 1;
            }
            true
        }
    }

    /// Reopens every handle whose inode was found with
    /// `open(served inode, flags, dir)`; returns how many were.
    pub fn reopen(
        &mut self,
        mut open: impl FnMut(u64, u32, bool) -> std::io::Result<u64>,
    ) -> usize {
        let mut found = 0;
        let ids: Vec<u64> = self.handles.keys().copied().collect();
        for g in ids {
            let Some(h) = self.handles.get(&g).cloned() else {
                continue;
            };
            let Ok(inode) = self.inode(h.inode) else {
                continue;
            };
            if let Ok(inner) = open(inode, h.flags, h.dir) {
                if let Some(slot) = self.handles.get_mut(&g) {
                    slot.inner = Some(inner);
                }
                found += 1;
            }
        }
        found
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(s: &str) -> &[u8] {
        s.as_bytes()
    }

    #[test]
    fn guest_ids_are_the_tables_own_and_lookups_are_counted() {
        let mut t = Table::default();
        let a = t.entered(ROOT, c("a"), 500);
        assert_eq!(a, 2);
        assert_eq!(t.entered(ROOT, c("a"), 500), a);
        assert_eq!(t.inode(a).unwrap(), 500);
        assert_eq!(t.entered(ROOT, c("missing"), 0), 0);
        assert_eq!(t.forget(a, 1), None);
        assert_eq!(t.forget(a, 1), Some((500, 2)));
        assert_eq!(t.inode(a).unwrap_err().raw_os_error(), Some(libc::ESTALE));
    }

    #[test]
    fn a_restore_finds_renamed_nodes_and_leaves_unlinked_ones_stale() {
        let mut t = Table {
            init: Some(7),
            ..Default::default()
        };
        let dir = t.entered(ROOT, c("dir"), 10);
        let f = t.entered(dir, c("f"), 11);
        let gone = t.entered(dir, c("gone"), 12);
        let other = t.entered(ROOT, c("other"), 13);
        t.renamed(dir, c("f"), ROOT, c("moved"), false);
        t.unlinked(dir, c("gone"));
        // A rename over `other` leaves it without a name.
        let _ = t.entered(ROOT, c("x"), 14);
        t.renamed(ROOT, c("x"), ROOT, c("other"), false);
        let h = t.opened(f, 99, libc::O_RDWR as u32, false);
        let saved = t.save();
        let json = serde_json::to_string(&saved).unwrap();
        let mut r = Table::from_saved(serde_json::from_str(&json).unwrap());
        assert_eq!(r.init, Some(7));
        // The new file system: inner ids 100 + whatever.
        let names: HashMap<(u64, &str), u64> = [
            ((ROOT, "dir"), 100),
            ((ROOT, "moved"), 101),
            ((ROOT, "other"), 102),
        ]
        .into_iter()
        .collect();
        let found = r.resolve(|p, name| {
            names
                .get(&(p, std::str::from_utf8(name).unwrap()))
                .copied()
                .ok_or_else(|| crate::err(libc::ENOENT))
        });
        assert_eq!(found, 3, "dir, moved f and x (now named other)");
        assert_eq!(r.inode(dir).unwrap(), 100);
        assert_eq!(r.inode(f).unwrap(), 101);
        assert_eq!(
            r.inode(gone).unwrap_err().raw_os_error(),
            Some(libc::ESTALE)
        );
        assert_eq!(
            r.inode(other).unwrap_err().raw_os_error(),
            Some(libc::ESTALE)
        );
        let mut reopened = Vec::new();
        assert_eq!(
            r.reopen(|inode, flags, dir| {
                reopened.push((inode, flags, dir));
                Ok(7)
            }),
            1
        );
        assert_eq!(reopened, vec![(101, libc::O_RDWR as u32, false)]);
        assert_eq!(r.handle(h).unwrap(), 7);
        // New nodes never reuse an old guest id.
        assert!(r.entered(ROOT, c("new"), 103) > other);
        assert_eq!(
            r.handle(h + 1).unwrap_err().raw_os_error(),
            Some(libc::EBADF)
        );
    }

    #[test]
    fn an_exchange_swaps_names_and_a_cycle_in_saved_paths_stays_stale() {
        let mut t = Table::default();
        let a = t.entered(ROOT, c("a"), 10);
        let b = t.entered(ROOT, c("b"), 11);
        t.renamed(ROOT, c("a"), ROOT, c("b"), true);
        let saved = t.save();
        let path = |g| {
            saved
                .nodes
                .iter()
                .find(|(id, _)| *id == g)
                .unwrap()
                .1
                .path
                .clone()
        };
        assert_eq!(path(a), Some((ROOT, b"b".to_vec())));
        assert_eq!(path(b), Some((ROOT, b"a".to_vec())));
        // A hand-made state whose nodes are each other's parents.
        let mut bad = saved.clone();
        bad.nodes = vec![
            (
                a,
                Node {
                    inner: None,
                    path: Some((b, b"x".to_vec())),
                    lookups: 1,
                    inner_lookups: 0,
                },
            ),
            (
                b,
                Node {
                    inner: None,
                    path: Some((a, b"y".to_vec())),
                    lookups: 1,
                    inner_lookups: 0,
                },
            ),
        ];
        let mut r = Table::from_saved(bad);
        assert_eq!(r.resolve(|_, _| Ok(50)), 0);
    }
}
