//! An in-memory copy-on-write overlay over any read-only base disk.

use std::collections::HashMap;
use std::io;
use std::path::Path;

use crate::span::{check, pieces, Piece};
use crate::{Disk, EventHook, RawImage, RootfsEvent};

/// A base disk plus a map of the blocks the guest wrote. The base is never
/// written. Memory grows with the blocks written, up to `max_dirty_bytes`;
/// past that, writes fail with an I/O error.
pub struct MemOverlay {
    base: Box<dyn Disk>,
    on_limit: Option<EventHook>,
    limit_reported: bool,
    size: u64,
    blocks: HashMap<u64, Box<[u8]>>,
    max_dirty_bytes: u64,
    /// Writes are tracked in blocks of this many bytes.
    block: u64,
}

impl MemOverlay {
    /// An overlay over `base`. `max_dirty_bytes` bounds the overlay's memory.
    pub fn new(base: Box<dyn Disk>, max_dirty_bytes: u64) -> Self {
        Self {
            size: base.size(),
            base,
            on_limit: None,
            limit_reported: false,
            blocks: HashMap::new(),
            max_dirty_bytes,
            block: u64::from(crate::DEFAULT_EPHEMERAL_BLOCK),
        }
    }

    /// Tracks writes in blocks of `bytes` (a multiple of 512; default
    /// 4 KiB). Set before the first write.
    pub fn block_size(mut self, bytes: u32) -> Self {
        self.block = u64::from(bytes.max(512) & !511);
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
        self.blocks.len() as u64 * self.block
    }

    fn read_base(&mut self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        self.base.read_at(offset, buf)
    }
}

impl Disk for MemOverlay {
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
            match self.blocks.get(&index) {
                Some(data) => dst.copy_from_slice(&data[within..within + dst.len()]),
                None => self.read_base(pos, dst)?,
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
            if !self.blocks.contains_key(&index) {
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
                        "the in-memory overlay reached max_dirty_bytes",
                    ));
                }
                let mut fresh = vec![0u8; self.block as usize].into_boxed_slice();
                let start = index * self.block;
                let len = self.block.min(self.size - start) as usize;
                self.read_base(start, &mut fresh[..len])?;
                self.blocks.insert(index, fresh);
            }
            if let Some(b) = self.blocks.get_mut(&index) {
                b[within..within + range.len()].copy_from_slice(&data[range]);
            }
        }
        Ok(())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
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
        let (path, mut o) = base(&data);
        o.write_at(BLOCK - 2, &[0xaa; 4]).unwrap();
        let mut buf = vec![0u8; 8];
        o.read_at(BLOCK - 4, &mut buf).unwrap();
        assert_eq!(buf[..2], data[BLOCK as usize - 4..BLOCK as usize - 2]);
        assert_eq!(buf[2..6], [0xaa; 4]);
        assert_eq!(buf[6..], data[BLOCK as usize + 2..BLOCK as usize + 4]);
        assert_eq!(std::fs::read(&path).unwrap(), data);
        // Two blocks are dirty: the limit is reached and a third block fails.
        let err = o.write_at(2 * BLOCK, &[1]).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::StorageFull);
        assert!(o.read_at(3 * BLOCK - 1, &mut [0u8; 2]).is_err());
        std::fs::remove_file(path).unwrap();
    }
}
