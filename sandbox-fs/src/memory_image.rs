//! A [`MemoryFs`] as bytes, for snapshots: every node with its content,
//! mode, mtime, links and parent, and the limit. Loading checks every
//! length against what a tree within its limit can hold and that every
//! entry names an existing node; a damaged image is an error, never a
//! panic or a huge allocation.
//!
//! Layout (little endian): magic `SBXMEMFS`, version `u32`, limit, used,
//! next inode and node count (`u64` each), then per node: inode, parent
//! (`u64`), mode, links (`u32`), mtime seconds (`i64`) and nanoseconds
//! (`u32`), a kind byte (0 file, 1 directory, 2 symlink) and the content:
//! a length-prefixed byte string, or for a directory an entry count and
//! per entry a name (`u32` length, bytes) and an inode.

use std::collections::{BTreeMap, HashMap};
use std::ffi::OsString;
use std::io::{self, Read, Write};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::sync::{Arc, Mutex};
use std::time::{Duration, UNIX_EPOCH};

use super::{Content, MemoryFs, Node, Tree};
use crate::vfs::{Ino, ROOT};

const MAGIC: &[u8; 8] = b"SBXMEMFS";
const VERSION: u32 = 1;
/// The longest name a directory entry may have (as `check_name`).
const NAME_MAX: u32 = 255;

fn bad(why: impl Into<String>) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("not a usable memory file system image: {}", why.into()),
    )
}

struct Out<'a> {
    w: &'a mut dyn Write,
    n: u64,
}

impl Out<'_> {
    fn put(&mut self, b: &[u8]) -> io::Result<()> {
        self.w.write_all(b)?;
        self.n += b.len() as u64;
        Ok(())
    }
    fn u32(&mut self, v: u32) -> io::Result<()> {
        self.put(&v.to_le_bytes())
    }
    fn u64(&mut self, v: u64) -> io::Result<()> {
        self.put(&v.to_le_bytes())
    }
    fn bytes(&mut self, b: &[u8]) -> io::Result<()> {
        self.u64(b.len() as u64)?;
        self.put(b)
    }
}

struct In<'a> {
    r: &'a mut dyn Read,
}

impl In<'_> {
    fn take<const N: usize>(&mut self) -> io::Result<[u8; N]> {
        let mut b = [0u8; N];
        self.r
            .read_exact(&mut b)
            .map_err(|e| bad(format!("it ends early ({e})")))?;
        Ok(b)
    }
    fn u8(&mut self) -> io::Result<u8> {
        Ok(self.take::<1>()?[0])
    }
    fn u32(&mut self) -> io::Result<u32> {
        Ok(u32::from_le_bytes(self.take()?))
    }
    fn u64(&mut self) -> io::Result<u64> {
        Ok(u64::from_le_bytes(self.take()?))
    }
    /// `len` bytes, read in steps so that a lying length fails at the
    /// input's end instead of allocating it.
    fn exact(&mut self, len: u64) -> io::Result<Vec<u8>> {
        let mut out = Vec::new();
        let got = (&mut self.r).take(len).read_to_end(&mut out)?;
        if got as u64 != len {
            return Err(bad("a length runs past its end"));
        }
        Ok(out)
    }
}

impl MemoryFs {
    /// Writes the whole file system to `out`; returns the bytes written.
    pub fn save_image(&self, out: &mut dyn Write) -> io::Result<u64> {
        let t = self.lock();
        let mut o = Out { w: out, n: 0 };
        o.put(MAGIC)?;
        o.u32(VERSION)?;
        for v in [t.limit, t.used, t.next, t.nodes.len() as u64] {
            o.u64(v)?;
        }
        let mut inos: Vec<&Ino> = t.nodes.keys().collect();
        inos.sort();
        for ino in inos {
            let n = &t.nodes[ino];
            o.u64(*ino)?;
            o.u64(n.parent)?;
            o.u32(n.perm)?;
            o.u32(n.nlink)?;
            let (secs, nanos) = match n.mtime.duration_since(UNIX_EPOCH) {
                Ok(d) => (d.as_secs() as i64, d.subsec_nanos()),
                Err(_) => (0, 0),
            };
            o.put(&secs.to_le_bytes())?;
            o.u32(nanos)?;
            match &n.content {
                Content::File(d) => {
                    o.put(&[0])?;
                    o.bytes(d)?;
                }
                Content::Dir(entries) => {
                    o.put(&[1])?;
                    o.u64(entries.len() as u64)?;
                    for (name, ino) in entries {
                        let name = name.as_bytes();
                        o.u32(name.len() as u32)?;
                        o.put(name)?;
                        o.u64(*ino)?;
                    }
                }
                Content::Symlink(target) => {
                    o.put(&[2])?;
                    o.bytes(target.as_bytes())?;
                }
            }
        }
        o.w.flush()?;
        Ok(o.n)
    }

    /// A new file system with the content [`MemoryFs::save_image`] wrote.
    pub fn load_image(input: &mut dyn Read) -> io::Result<MemoryFs> {
        let mut i = In { r: input };
        if &i.take::<8>()? != MAGIC {
            return Err(bad("no memory file system header"));
        }
        let version = i.u32()?;
        if version != VERSION {
            return Err(bad(format!(
                "version {version}, this library reads {VERSION}"
            )));
        }
        let (limit, used, next, count) = (i.u64()?, i.u64()?, i.u64()?, i.u64()?);
        // Each node costs at least INODE_COST against the limit.
        if used > limit || count > limit / super::INODE_COST + 1 {
            return Err(bad(format!("{count} nodes, {used} of {limit} bytes used")));
        }
        let mut nodes = HashMap::new();
        for _ in 0..count {
            let ino = i.u64()?;
            let parent = i.u64()?;
            let perm = i.u32()?;
            let nlink = i.u32()?;
            let secs = i64::from_le_bytes(i.take()?);
            let nanos = i.u32()?;
            let mtime = UNIX_EPOCH
                + Duration::from_secs(secs.max(0) as u64)
                + Duration::from_nanos(u64::from(nanos.min(999_999_999)));
            let content = match i.u8()? {
                kind @ (0 | 2) => {
                    let len = i.u64()?;
                    if len > limit {
                        return Err(bad(format!("a {len}-byte node past the limit")));
                    }
                    let bytes = i.exact(len)?;
                    if kind == 0 {
                        Content::File(bytes)
                    } else {
                        Content::Symlink(OsString::from_vec(bytes))
                    }
                }
                1 => {
                    let entries = i.u64()?;
                    if entries > count {
                        return Err(bad(format!("a directory of {entries} entries")));
                    }
                    let mut dir = BTreeMap::new();
                    for _ in 0..entries {
                        let len = i.u32()?;
                        if len == 0 || len > NAME_MAX {
                            return Err(bad(format!("a {len}-byte name")));
                        }
                        let name = OsString::from_vec(i.exact(u64::from(len))?);
                        dir.insert(name, i.u64()?);
                    }
                    Content::Dir(dir)
                }
                k => return Err(bad(format!("node kind {k}"))),
            };
            let node = Node {
                content,
                perm,
                mtime,
                nlink,
                parent,
            };
            if nodes.insert(ino, node).is_some() {
                return Err(bad(format!("inode {ino} twice")));
            }
        }
        check(&nodes, next)?;
        Ok(MemoryFs {
            tree: Arc::new(Mutex::new(Tree {
                nodes,
                next,
                used,
                limit,
            })),
        })
    }
}

/// Every entry and parent names an existing node, the root is a
/// directory, and no inode is at or past `next`.
fn check(nodes: &HashMap<Ino, Node>, next: Ino) -> io::Result<()> {
    if !matches!(
        nodes.get(&ROOT),
        Some(Node {
            content: Content::Dir(_),
            ..
        })
    ) {
        return Err(bad("no root directory"));
    }
    for (ino, n) in nodes {
        if *ino >= next {
            return Err(bad(format!("inode {ino} at or past the next one ({next})")));
        }
        if !matches!(
            nodes.get(&n.parent),
            Some(Node {
                content: Content::Dir(_),
                ..
            })
        ) {
            return Err(bad(format!("inode {ino}'s parent is not a directory")));
        }
        if let Content::Dir(entries) = &n.content {
            for (name, child) in entries {
                let b = name.as_bytes();
                if b == b"." || b == b".." || b.contains(&b'/') || b.contains(&0) {
                    return Err(bad(format!("an entry named {name:?}")));
                }
                if *child == ROOT || !nodes.contains_key(child) {
                    return Err(bad(format!("an entry naming inode {child}")));
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> MemoryFs {
        MemoryFs::new()
            .size_limit(1 << 20)
            .file("/a/b/data.bin", (0..=255u8).collect::<Vec<_>>())
            .unwrap()
            .dir("/empty")
            .unwrap()
    }

    #[test]
    fn an_image_loads_back_to_the_same_tree() {
        let fs = sample();
        let mut bytes = Vec::new();
        let n = fs.save_image(&mut bytes).unwrap();
        assert_eq!(n, bytes.len() as u64);
        let back = MemoryFs::load_image(&mut bytes.as_slice()).unwrap();
        assert_eq!(
            back.read_file("/a/b/data.bin").unwrap(),
            (0..=255u8).collect::<Vec<_>>()
        );
        assert!(back.read_dir("/empty").unwrap().is_empty());
        assert_eq!(back.used_bytes(), fs.used_bytes());
        // A copy: the original does not see the loaded one's writes.
        back.write_file("/new", b"x").unwrap();
        assert!(fs.read_file("/new").is_err());
        // Same image again (inode order is stable).
        let mut again = Vec::new();
        MemoryFs::load_image(&mut bytes.as_slice())
            .unwrap()
            .save_image(&mut again)
            .unwrap();
        assert_eq!(again, bytes);
    }

    #[test]
    fn damaged_images_are_errors() {
        let mut bytes = Vec::new();
        sample().save_image(&mut bytes).unwrap();
        // Every truncation, and every single-byte change, is refused or
        // loads to a consistent tree; none panics.
        for len in 0..bytes.len() {
            assert!(MemoryFs::load_image(&mut &bytes[..len]).is_err(), "{len}");
        }
        for at in 0..bytes.len() {
            let mut b = bytes.clone();
            b[at] ^= 0xff;
            if let Ok(fs) = MemoryFs::load_image(&mut b.as_slice()) {
                let _ = fs.read_dir("/");
            }
        }
        // A node count past what the limit can hold.
        let mut huge = bytes.clone();
        huge[8 + 4 + 24 + 7] = 0x7f;
        let Err(e) = MemoryFs::load_image(&mut huge.as_slice()) else {
            panic!("a node count past the limit loaded");
        };
        assert!(e.to_string().contains("nodes"), "{e}");
    }
}
