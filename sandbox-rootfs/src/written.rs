//! The blocks an overlay holds over its base ([`Written`]) and a disk made
//! of such blocks saved in a file over the same base ([`Layered`]): what a
//! snapshot of an ephemeral root stores instead of the whole disk, and how
//! a restore reads it back.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::span::{check, pieces, Piece};
use crate::Disk;

/// Which blocks of a disk differ from its base: runs of block indices.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Written {
    /// Block size in bytes.
    pub block: u64,
    /// `(first block, count)` runs, ascending and disjoint.
    pub runs: Vec<(u64, u64)>,
}

impl Written {
    /// The runs of `indices` (any order, no duplicates).
    pub fn from_indices(block: u64, mut indices: Vec<u64>) -> Self {
        indices.sort_unstable();
        let mut runs: Vec<(u64, u64)> = Vec::new();
        for i in indices {
            match runs.last_mut() {
                Some((start, count)) if *start + *count == i => *count += 1,
                _ => runs.push((i, 1)),
            }
        }
        Self { block, runs }
    }

    /// These blocks and `other`'s, in blocks of `self.block` (a block of
    /// `other` covers every block of ours it overlaps).
    pub fn union(&self, other: &Written) -> Written {
        let mut indices: Vec<u64> = self
            .runs
            .iter()
            .flat_map(|&(start, count)| start..start + count)
            .collect();
        for &(start, count) in &other.runs {
            let first = start * other.block / self.block;
            let end = ((start + count) * other.block).div_ceil(self.block);
            indices.extend(first..end);
        }
        indices.sort_unstable();
        indices.dedup();
        Written::from_indices(self.block, indices)
    }

    /// Number of blocks.
    pub fn blocks(&self) -> u64 {
        self.runs.iter().map(|(_, n)| n).sum()
    }

    /// Whether block `index` is one of them.
    pub fn contains(&self, index: u64) -> bool {
        let at = self.runs.partition_point(|(start, _)| *start <= index);
        at > 0 && {
            let (start, count) = self.runs[at - 1];
            index < start + count
        }
    }

    /// Checks the runs against a disk of `size` bytes: a valid block size,
    /// ascending, disjoint, inside the disk.
    pub fn validate(&self, size: u64) -> io::Result<()> {
        let bad = |why: String| io::Error::new(io::ErrorKind::InvalidData, why);
        if !crate::span::valid_block_size(self.block) {
            return Err(bad(format!("block size {} is not valid", self.block)));
        }
        let blocks = size.div_ceil(self.block);
        let mut next = 0;
        for &(start, count) in &self.runs {
            let end = start
                .checked_add(count)
                .filter(|&e| count > 0 && e <= blocks);
            match end {
                Some(end) if start >= next => next = end,
                _ => {
                    return Err(bad(format!(
                        "block run ({start}, {count}) is out of order or outside a disk of \
                         {blocks} blocks"
                    )))
                }
            }
        }
        Ok(())
    }
}

/// A read-only disk: the [`Written`] blocks from `file` (each at its own
/// offset), every other block from `base`.
pub struct Layered {
    base: Box<dyn Disk>,
    file: File,
    written: Written,
}

impl Layered {
    /// Opens `path` (as large as `base`) as the written blocks over `base`.
    pub fn open(base: Box<dyn Disk>, path: &Path, written: Written) -> io::Result<Self> {
        let file = File::open(path)?;
        let len = file.metadata()?.len();
        if len != base.size() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "{} holds {len} bytes but its base disk has {}",
                    path.display(),
                    base.size()
                ),
            ));
        }
        written.validate(len)?;
        Ok(Self {
            base,
            file,
            written,
        })
    }
}

impl Disk for Layered {
    fn size(&self) -> u64 {
        self.base.size()
    }

    fn read_only(&self) -> bool {
        true
    }

    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        check(self.size(), offset, buf.len())?;
        for Piece { index, range, .. } in pieces(offset, buf.len(), self.written.block) {
            let pos = offset + range.start as u64;
            if self.written.contains(index) {
                self.file.read_exact_at(&mut buf[range], pos)?;
            } else {
                self.base.read_at(pos, &mut buf[range])?;
            }
        }
        Ok(())
    }

    fn write_at(&mut self, _offset: u64, _data: &[u8]) -> io::Result<()> {
        Err(io::Error::from_raw_os_error(libc::EROFS))
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }

    fn written(&self) -> Option<Written> {
        Some(self.written.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::MemOverlay;

    fn file(name: &str, bytes: &[u8]) -> std::path::PathBuf {
        let p = std::env::temp_dir().join(format!("written-{name}-{}", std::process::id()));
        std::fs::write(&p, bytes).unwrap();
        p
    }

    #[test]
    fn runs_are_built_searched_and_validated() {
        let w = Written::from_indices(4096, vec![7, 1, 2, 3, 9, 8]);
        assert_eq!(w.runs, vec![(1, 3), (7, 3)]);
        assert_eq!(w.blocks(), 6);
        assert!(w.contains(1) && w.contains(3) && w.contains(9));
        assert!(!w.contains(0) && !w.contains(4) && !w.contains(10));
        assert!(w.validate(10 * 4096).is_ok());
        assert!(w.validate(9 * 4096).is_err(), "block 9 is outside");
        let overlapping = Written {
            block: 4096,
            runs: vec![(1, 3), (2, 1)],
        };
        assert!(overlapping.validate(1 << 20).is_err());
        let empty_run = Written {
            block: 4096,
            runs: vec![(1, 0)],
        };
        assert!(empty_run.validate(1 << 20).is_err());
        let odd = Written {
            block: 1000,
            runs: vec![],
        };
        assert!(odd.validate(1 << 20).is_err());
        let coarse = Written {
            block: 8192,
            runs: vec![(2, 1)],
        };
        assert_eq!(w.union(&coarse).runs, vec![(1, 5), (7, 3)]);
    }

    /// An overlay's written blocks saved at their offsets read back over
    /// the same base as the overlay did, zero-filled blocks included.
    #[test]
    fn an_overlays_blocks_read_back_layered_over_the_base() {
        let base_bytes: Vec<u8> = (0..8 * 4096).map(|i| (i % 251) as u8 + 1).collect();
        let base = file("base", &base_bytes);
        let mut o = MemOverlay::open(&base, 1 << 20).unwrap();
        o.write_at(4096 + 10, b"hello").unwrap();
        o.write_at(5 * 4096, &[0u8; 4096]).unwrap();
        let w = o.written().unwrap();
        assert_eq!(w.runs, vec![(1, 1), (5, 1)]);
        let mut saved = vec![0u8; base_bytes.len()];
        for &(start, count) in &w.runs {
            let at = (start * 4096) as usize;
            let len = (count * 4096) as usize;
            o.read_at(at as u64, &mut saved[at..at + len]).unwrap();
        }
        let layer = file("layer", &saved);
        let mut l =
            Layered::open(Box::new(crate::RawImage::open(&base).unwrap()), &layer, w).unwrap();
        let (mut a, mut b) = (vec![0u8; base_bytes.len()], vec![0u8; base_bytes.len()]);
        o.read_at(0, &mut a).unwrap();
        l.read_at(0, &mut b).unwrap();
        assert!(a == b, "the layered disk differs from the overlay");
        assert_eq!(&b[4096 + 10..4096 + 15], b"hello");
        assert!(l.write_at(0, b"x").is_err());
        std::fs::write(&layer, [0u8; 10]).unwrap();
        let short = Layered::open(
            Box::new(crate::RawImage::open(&base).unwrap()),
            &layer,
            Written::default(),
        );
        assert!(short.is_err(), "a layer of another size is refused");
        for p in [base, layer] {
            std::fs::remove_file(p).unwrap();
        }
    }
}
