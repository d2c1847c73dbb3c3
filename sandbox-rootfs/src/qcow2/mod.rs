//! Reading qcow2 images (v2 and v3): L1/L2 lookup, zlib-compressed clusters
//! (what `qemu-img convert -c` writes), all-zero clusters, and backing files
//! (raw or qcow2, resolved relative to the image). Read-only: the base of
//! a root file system is never written.

mod header;
mod overlay;
#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use flate2::{Decompress, FlushDecompress, Status};

pub use header::Header;
pub use overlay::{OverlayOptions, Qcow2Overlay};

use crate::span::{check, pieces, Piece};
use crate::{Disk, RawImage, RootfsError};

/// Backing chains longer than this are refused (and loops with them).
const MAX_CHAIN: usize = 16;
/// L2 tables kept in memory.
const L2_CACHE: usize = 64;

const L1_OFFSET_MASK: u64 = 0x00ff_ffff_ffff_fe00;
const L2_COMPRESSED: u64 = 1 << 62;
const L2_ZERO: u64 = 1;

/// A qcow2 image opened read-only.
pub struct Qcow2Image {
    file: File,
    header: Header,
    l1: Vec<u64>,
    l2_cache: HashMap<u64, Vec<u64>>,
    backing: Option<Box<dyn Disk>>,
    /// The last decompressed cluster: (host offset, data).
    last_compressed: Option<(u64, Vec<u8>)>,
}

fn bad(msg: impl Into<String>) -> RootfsError {
    RootfsError::Qcow2(msg.into())
}

fn io_err(path: &Path) -> impl Fn(io::Error) -> RootfsError + '_ {
    move |source| RootfsError::Io {
        what: format!("reading qcow2 image {}", path.display()),
        source,
    }
}

/// Whether the file starts with the qcow2 magic.
fn is_qcow2(path: &Path) -> io::Result<bool> {
    let mut magic = [0u8; 4];
    let f = File::open(path)?;
    Ok(f.read_exact_at(&mut magic, 0).is_ok() && u32::from_be_bytes(magic) == header::MAGIC)
}

impl Qcow2Image {
    /// Opens `path` and its backing chain.
    pub fn open(path: &Path) -> Result<Self, RootfsError> {
        Self::open_chain(path, 0, true)
    }

    /// Opens `path` alone; an image that names a backing file is refused.
    pub fn open_standalone(path: &Path) -> Result<Self, RootfsError> {
        Self::open_chain(path, 0, false)
    }

    fn open_chain(path: &Path, depth: usize, backing_allowed: bool) -> Result<Self, RootfsError> {
        if depth > MAX_CHAIN {
            return Err(bad(format!("backing chain deeper than {MAX_CHAIN}")));
        }
        let file = File::open(path).map_err(io_err(path))?;
        let file_len = file.metadata().map_err(io_err(path))?.len();
        let mut raw = vec![0u8; Header::MIN_LEN];
        let n = read_up_to(&file, &mut raw, 0).map_err(io_err(path))?;
        let header = Header::parse(&raw[..n])?;
        let l1_bytes = u64::from(header.l1_size) * 8;
        if header
            .l1_table_offset
            .checked_add(l1_bytes)
            .is_none_or(|end| end > file_len)
        {
            return Err(bad("L1 table lies outside the file"));
        }
        let mut table = vec![0u8; l1_bytes as usize];
        file.read_exact_at(&mut table, header.l1_table_offset)
            .map_err(io_err(path))?;
        let l1 = table
            .chunks_exact(8)
            .map(|c| u64::from_be_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]))
            .collect();
        let backing = match header.backing_file_offset {
            0 => None,
            _ if !backing_allowed => return Err(bad("the image names a backing file")),
            offset => Some(Self::open_backing(
                &file,
                path,
                offset,
                header.backing_file_size,
                depth,
            )?),
        };
        Ok(Self {
            file,
            header,
            l1,
            l2_cache: HashMap::new(),
            backing,
            last_compressed: None,
        })
    }

    fn open_backing(
        file: &File,
        path: &Path,
        offset: u64,
        len: u32,
        depth: usize,
    ) -> Result<Box<dyn Disk>, RootfsError> {
        let mut name = vec![0u8; len as usize];
        file.read_exact_at(&mut name, offset)
            .map_err(io_err(path))?;
        let name = PathBuf::from(std::ffi::OsString::from(
            String::from_utf8(name).map_err(|_| bad("backing file name is not UTF-8"))?,
        ));
        let backing = match path.parent() {
            Some(dir) if name.is_relative() => dir.join(name),
            _ => name,
        };
        let qcow2 = is_qcow2(&backing).map_err(io_err(&backing))?;
        Ok(if qcow2 {
            Box::new(Self::open_chain(&backing, depth + 1, true)?)
        } else {
            Box::new(RawImage::open(&backing).map_err(io_err(&backing))?)
        })
    }

    /// The parsed header.
    pub fn header(&self) -> &Header {
        &self.header
    }

    fn l2_entry(&mut self, cluster_index: u64) -> io::Result<u64> {
        let per_l2 = self.header.cluster_size() / 8;
        let l1_index = cluster_index / per_l2;
        let Some(l1) = self.l1.get(l1_index as usize) else {
            return Ok(0);
        };
        let l2_offset = l1 & L1_OFFSET_MASK;
        if l2_offset == 0 {
            return Ok(0);
        }
        if !self.l2_cache.contains_key(&l2_offset) {
            let mut raw = vec![0u8; self.header.cluster_size() as usize];
            self.file.read_exact_at(&mut raw, l2_offset)?;
            let table = raw
                .chunks_exact(8)
                .map(|c| u64::from_be_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]))
                .collect();
            if self.l2_cache.len() >= L2_CACHE {
                self.l2_cache.clear();
            }
            self.l2_cache.insert(l2_offset, table);
        }
        let table = &self.l2_cache[&l2_offset];
        Ok(table[(cluster_index % per_l2) as usize])
    }

    /// Fills `buf` from within one cluster, starting `within` bytes in.
    fn read_cluster(&mut self, cluster_index: u64, within: u64, buf: &mut [u8]) -> io::Result<()> {
        let entry = self.l2_entry(cluster_index)?;
        let cluster = self.header.cluster_size();
        if entry & L2_COMPRESSED != 0 {
            let data = self.decompress(entry)?;
            buf.copy_from_slice(&data[within as usize..within as usize + buf.len()]);
            return Ok(());
        }
        let offset = entry & L1_OFFSET_MASK;
        if entry & L2_ZERO != 0 && self.header.version == 3 {
            buf.fill(0);
        } else if offset != 0 {
            self.file.read_exact_at(buf, offset + within)?;
        } else if let Some(backing) = &mut self.backing {
            let pos = cluster_index * cluster + within;
            // The backing image may be smaller than this one.
            let avail = backing.size().saturating_sub(pos).min(buf.len() as u64) as usize;
            buf[avail..].fill(0);
            if avail > 0 {
                backing.read_at(pos, &mut buf[..avail])?;
            }
        } else {
            buf.fill(0);
        }
        Ok(())
    }

    fn decompress(&mut self, entry: u64) -> io::Result<&[u8]> {
        let bits = self.header.cluster_bits;
        let x = 62 - (bits - 8);
        let offset = entry & ((1u64 << x) - 1);
        let sectors = ((entry & !(L2_COMPRESSED | (1 << 63))) >> x) + 1;
        let hit = matches!(&self.last_compressed, Some((o, _)) if *o == offset);
        if !hit {
            let len = (sectors * 512).saturating_sub(offset & 511);
            let mut input = vec![0u8; len as usize];
            let got = read_up_to(&self.file, &mut input, offset)?;
            input.truncate(got);
            let mut out = vec![0u8; self.header.cluster_size() as usize];
            let mut z = Decompress::new(false);
            let status = z
                .decompress(&input, &mut out, FlushDecompress::Finish)
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
            if z.total_out() != out.len() as u64
                || !matches!(status, Status::StreamEnd | Status::Ok)
            {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "compressed cluster does not inflate to a whole cluster",
                ));
            }
            self.last_compressed = Some((offset, out));
        }
        Ok(self
            .last_compressed
            .as_ref()
            .map_or(&[][..], |(_, d)| d.as_slice()))
    }
}

/// Reads as many bytes as the file has at `offset`, up to `buf.len()`.
fn read_up_to(file: &File, buf: &mut [u8], offset: u64) -> io::Result<usize> {
    let mut done = 0;
    while done < buf.len() {
        match file.read_at(&mut buf[done..], offset + done as u64) {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(done)
}

impl Disk for Qcow2Image {
    fn size(&self) -> u64 {
        self.header.size & !511
    }

    fn read_only(&self) -> bool {
        true
    }

    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        check(self.size(), offset, buf.len())?;
        let cluster = self.header.cluster_size();
        for Piece {
            index,
            within,
            range,
        } in pieces(offset, buf.len(), cluster)
        {
            self.read_cluster(index, within as u64, &mut buf[range])?;
        }
        Ok(())
    }

    fn write_at(&mut self, _offset: u64, _data: &[u8]) -> io::Result<()> {
        Err(io::Error::from_raw_os_error(libc::EROFS))
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}
