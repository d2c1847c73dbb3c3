//! The ephemeral copy-on-write overlay over any read-only base disk: the
//! blocks the guest wrote, kept in memory or spilled to an unlinked sparse
//! host file (which costs nothing until written and vanishes with the VM).

use std::collections::HashMap;
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;

use crate::span::{check, pieces, Piece};
use crate::{Disk, EventHook, RawImage, RootfsEvent, Written};

/// Where the written blocks live.
enum Blocks {
    /// In the host process's memory.
    Memory(HashMap<u64, Box<[u8]>>),
    /// In an unlinked sparse file, block `i` at offset `i * block`;
    /// `present` has a bit per block of the disk.
    File {
        file: File,
        present: Vec<u64>,
        count: u64,
    },
}

/// A base disk plus the blocks the guest wrote. The base is never written.
/// Written bytes are bounded by `max_dirty_bytes`; past that, writes to new
/// blocks fail with an I/O error (and the event hook hears it once).
pub struct MemOverlay {
    base: Box<dyn Disk>,
    on_limit: Option<EventHook>,
    limit_reported: bool,
    size: u64,
    blocks: Blocks,
    max_dirty_bytes: u64,
    /// Writes are tracked in blocks of this many bytes.
    block: u64,
}

impl MemOverlay {
    /// An overlay over `base` keeping written blocks in memory.
    /// `max_dirty_bytes` bounds the overlay's memory.
    pub fn new(base: Box<dyn Disk>, max_dirty_bytes: u64) -> Self {
        Self {
            size: base.size(),
            base,
            on_limit: None,
            limit_reported: false,
            blocks: Blocks::Memory(HashMap::new()),
            max_dirty_bytes,
            block: u64::from(crate::DEFAULT_EPHEMERAL_BLOCK),
        }
    }

    /// An overlay over `base` keeping written blocks in an unlinked file
    /// created in `dir` (0600, sparse: only written blocks take space).
    pub fn spilled(base: Box<dyn Disk>, max_dirty_bytes: u64, dir: &Path) -> io::Result<Self> {
        let file = crate::tmpfile::unlinked(dir)?;
        let mut o = Self::new(base, max_dirty_bytes);
        o.blocks = Blocks::File {
            file,
            present: Vec::new(),
            count: 0,
        };
        Ok(o)
    }

    /// Tracks writes in blocks of `bytes` (a multiple of 512; default
    /// 4 KiB). Set before the first write.
    pub fn block_size(mut self, bytes: u32) -> Self {
        self.block = u64::from(bytes.max(512) & !511);
        if let Blocks::File { present, .. } = &mut self.blocks {
            present.clear();
        }
        self
    }

    /// Calls `hook` the first time a write is refused for lack of room.
    pub fn on_event(mut self, hook: EventHook) -> Self {
        self.on_limit = Some(hook);
        self
    }

    /// An overlay over the raw image file at `base`.
    pub fn open(base: &Path, max_dirty_bytes: u64) -> io::Result<Self> {
        Ok(Self::new(Box::new(RawImage::open(base)?), max_dirty_bytes))
    }

    /// Bytes held by the overlay.
    pub fn dirty_bytes(&self) -> u64 {
        let n = match &self.blocks {
            Blocks::Memory(m) => m.len() as u64,
            Blocks::File { count, .. } => *count,
        };
        n * self.block
    }

    /// Whether written blocks go to a host file rather than memory.
    pub fn is_spilled(&self) -> bool {
        matches!(self.blocks, Blocks::File { .. })
    }

    fn has(&self, index: u64) -> bool {
        match &self.blocks {
            Blocks::Memory(m) => m.contains_key(&index),
            Blocks::File { present, .. } => present
                .get((index / 64) as usize)
                .is_some_and(|w| w & (1 << (index % 64)) != 0),
        }
    }

    /// Copies `dst.len()` bytes at `within` of written block `index`.
    fn read_block(&self, index: u64, within: usize, dst: &mut [u8]) -> io::Result<()> {
        match &self.blocks {
            Blocks::Memory(m) => {
                if let Some(data) = m.get(&index) {
                    dst.copy_from_slice(&data[within..within + dst.len()]);
                }
                Ok(())
            }
            Blocks::File { file, .. } => {
                file.read_exact_at(dst, index * self.block + within as u64)
            }
        }
    }

    /// Stores a new block `index` with contents `fresh`.
    fn insert(&mut self, index: u64, fresh: Box<[u8]>) -> io::Result<()> {
        let block = self.block;
        match &mut self.blocks {
            Blocks::Memory(m) => {
                m.insert(index, fresh);
            }
            Blocks::File {
                file,
                present,
                count,
            } => {
                file.write_all_at(&fresh, index * block)?;
                let word = (index / 64) as usize;
                if present.len() <= word {
                    present.resize(word + 1, 0);
                }
                present[word] |= 1 << (index % 64);
                *count += 1;
            }
        }
        Ok(())
    }

    /// Writes `data` at `within` of written block `index`.
    fn update(&mut self, index: u64, within: usize, data: &[u8]) -> io::Result<()> {
        let block = self.block;
        match &mut self.blocks {
            Blocks::Memory(m) => {
                if let Some(b) = m.get_mut(&index) {
                    b[within..within + data.len()].copy_from_slice(data);
                }
                Ok(())
            }
            Blocks::File { file, .. } => file.write_all_at(data, index * block + within as u64),
        }
    }
}

impl Disk for MemOverlay {
    fn runs_caller_code(&self) -> bool {
        self.base.runs_caller_code()
    }

    fn size(&self) -> u64 {
        self.size
    }

    fn read_only(&self) -> bool {
        false
    }

    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        check(self.size, offset, buf.len())?;
        for Piece {
            index,
            within,
            range,
        } in pieces(offset, buf.len(), self.block)
        {
            let pos = offset + range.start as u64;
            let dst = &mut buf[range];
            if self.has(index) {
                self.read_block(index, within, dst)?;
            } else {
                self.base.read_at(pos, dst)?;
            }
        }
        Ok(())
    }

    fn write_at(&mut self, offset: u64, data: &[u8]) -> io::Result<()> {
        check(self.size, offset, data.len())?;
        for Piece {
            index,
            within,
            range,
        } in pieces(offset, data.len(), self.block)
        {
            if !self.has(index) {
                if self.dirty_bytes() + self.block > self.max_dirty_bytes {
                    if !self.limit_reported {
                        self.limit_reported = true;
                        if let Some(hook) = &self.on_limit {
                            hook(RootfsEvent::DirtyLimitReached {
                                max_dirty_bytes: self.max_dirty_bytes,
                            });
                        }
                    }
                    return Err(io::Error::new(
                        io::ErrorKind::StorageFull,
                        "the ephemeral overlay reached max_dirty_bytes",
                    ));
                }
                let mut fresh = vec![0u8; self.block as usize].into_boxed_slice();
                let start = index * self.block;
                let len = self.block.min(self.size - start) as usize;
                self.base.read_at(start, &mut fresh[..len])?;
                fresh[within..within + range.len()].copy_from_slice(&data[range]);
                self.insert(index, fresh)?;
            } else {
                self.update(index, within, &data[range])?;
            }
        }
        Ok(())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }

    fn written(&self) -> Option<Written> {
        let indices = match &self.blocks {
            Blocks::Memory(m) => m.keys().copied().collect(),
            Blocks::File { present, .. } => present
                .iter()
                .enumerate()
                .flat_map(|(w, &bits)| {
                    (0..64)
                        .filter(move |b| bits & (1 << b) != 0)
                        .map(move |b| w as u64 * 64 + b)
                })
                .collect(),
        };
        let own = Written::from_indices(self.block, indices);
        // Over a layer of blocks written before (a restored snapshot's),
        // those differ from the image too.
        Some(match self.base.written() {
            Some(below) => own.union(&below),
            None => own,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs::File;
    use std::io::Write;

    const BLOCK: u64 = 4096;

    fn base(bytes: &[u8]) -> (std::path::PathBuf, MemOverlay) {
        let path = std::env::temp_dir().join(format!(
            "sandbox-rootfs-test-{}-{}",
            std::process::id(),
            bytes.len()
        ));
        File::create(&path).unwrap().write_all(bytes).unwrap();
        let o = MemOverlay::open(&path, 2 * BLOCK).unwrap();
        (path, o)
    }

    #[test]
    fn writes_shadow_the_base_and_never_touch_it() {
        let data: Vec<u8> = (0..3 * BLOCK).map(|i| i as u8).collect();
        let (path, o) = base(&data);
        shadows(&path, &data, o);
        let (path, _) = base(&data);
        let raw = Box::new(RawImage::open(&path).unwrap());
        let spilled = MemOverlay::spilled(raw, 2 * BLOCK, &std::env::temp_dir()).unwrap();
        assert!(spilled.is_spilled());
        shadows(&path, &data, spilled);
    }

    fn shadows(path: &Path, data: &[u8], mut o: MemOverlay) {
        o.write_at(BLOCK - 2, &[0xaa; 4]).unwrap();
        let mut buf = vec![0u8; 8];
        o.read_at(BLOCK - 4, &mut buf).unwrap();
        assert_eq!(buf[..2], data[BLOCK as usize - 4..BLOCK as usize - 2]);
        assert_eq!(buf[2..6], [0xaa; 4]);
        assert_eq!(buf[6..], data[BLOCK as usize + 2..BLOCK as usize + 4]);
        assert_eq!(std::fs::read(path).unwrap(), data);
        // Two blocks are dirty: the limit is reached and a third block fails.
        let err = o.write_at(2 * BLOCK, &[1]).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::StorageFull);
        assert!(o.read_at(3 * BLOCK - 1, &mut [0u8; 2]).is_err());
        // Rewrites of a written block stay within the budget.
        o.write_at(BLOCK + 7, &[0xbb; 3]).unwrap();
        let mut again = vec![0u8; 3];
        o.read_at(BLOCK + 7, &mut again).unwrap();
        assert_eq!(again, [0xbb; 3]);
        assert_eq!(o.dirty_bytes(), 2 * BLOCK);
        std::fs::remove_file(path).unwrap();
    }
}
