//! Splitting byte ranges into per-block pieces, shared by every disk that
//! stores data in blocks or clusters.

use std::io;
use std::ops::Range;

/// The part of a request that falls inside one block.
pub(crate) struct Piece {
    /// Block number.
    pub index: u64,
    /// Offset of the piece inside the block.
    pub within: usize,
    /// Where the piece sits in the caller's buffer.
    pub range: Range<usize>,
}

/// Splits `len` bytes at `offset` into pieces that each stay within one
/// block of `block` bytes.
pub(crate) fn pieces(offset: u64, len: usize, block: u64) -> impl Iterator<Item = Piece> {
    let mut done = 0usize;
    std::iter::from_fn(move || {
        if done >= len {
            return None;
        }
        let pos = offset + done as u64;
        let within = (pos % block) as usize;
        let n = (block as usize - within).min(len - done);
        let piece = Piece {
            index: pos / block,
            within,
            range: done..done + n,
        };
        done += n;
        Some(piece)
    })
}

/// Whether `bytes` is a usable block size: a non-zero multiple of 512 up
/// to 1 MiB.
pub(crate) fn valid_block_size(bytes: u64) -> bool {
    bytes != 0 && bytes.is_multiple_of(512) && bytes <= 1 << 20
}

/// Fails unless `len` bytes at `offset` lie within a disk of `size` bytes.
pub(crate) fn check(size: u64, offset: u64, len: usize) -> io::Result<()> {
    match offset.checked_add(len as u64) {
        Some(end) if end <= size => Ok(()),
        _ => Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "access past the end of the disk",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pieces_cover_the_range_block_by_block() {
        let got: Vec<(u64, usize, Range<usize>)> = pieces(4090, 20, 4096)
            .map(|p| (p.index, p.within, p.range))
            .collect();
        assert_eq!(got, vec![(0, 4090, 0..6), (1, 0, 6..20)]);
        assert_eq!(pieces(0, 0, 512).count(), 0);
        assert_eq!(pieces(0, 8192, 4096).count(), 2);
        assert!(check(100, 90, 10).is_ok());
        assert!(check(100, 91, 10).is_err());
        assert!(check(100, u64::MAX, 2).is_err());
    }
}
