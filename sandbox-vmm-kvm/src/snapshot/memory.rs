//! Guest RAM as a sparse file, and guest RAM mapped copy-on-write from one.
//!
//! The file holds the RAM regions back to back in guest-address order.
//! Pages that are all zero (never touched, or cleared) are holes: they
//! take no disk space, and a private mapping reads them as zero without
//! allocating host memory until the guest writes them.

use std::fs::File;
use std::io;
use std::sync::Arc;

use vm_memory::mmap::MmapRegion;
use vm_memory::{FileOffset, GuestAddress, GuestMemoryBackend, GuestMemoryRegion, GuestRegionMmap};

use crate::GuestMemory;

/// Bytes scanned and written per step (a run of non-zero pages is written
/// with one call).
const CHUNK: usize = 2 << 20;

/// Guest RAM regions: guest address and length.
pub type Regions = Vec<(u64, usize)>;

/// The regions of `mem`.
pub fn regions(mem: &GuestMemory) -> Regions {
    mem.iter()
        .map(|r| (r.start_addr().0, r.len() as usize))
        .collect()
}

/// Writes `mem` to `file` (which must be empty), leaving holes for zero
/// pages. Returns the bytes of data written. The guest must not run.
pub fn save(mem: &GuestMemory, file: &File) -> io::Result<u64> {
    let total: u64 = mem.iter().map(|r| r.len()).sum();
    file.set_len(total)?;
    let mut offset = 0u64;
    let mut stored = 0u64;
    for region in mem.iter() {
        let host = mem
            .get_host_address(region.start_addr())
            .map_err(|e| io::Error::other(format!("guest memory: {e}")))?;
        let len = region.len() as usize;
        // SAFETY: `host..host+len` is this region's mapping, alive while
        // `mem` is borrowed; the vCPUs are stopped, and devices write
        // only into buffers the guest gave them (none are in flight).
        let bytes = unsafe { std::slice::from_raw_parts(host as *const u8, len) };
        stored += write_sparse(bytes, file, offset)?;
        offset += len as u64;
    }
    file.sync_all()?;
    Ok(stored)
}

/// Writes the non-zero pages of `bytes` at `base`, a chunk at a time.
fn write_sparse(bytes: &[u8], file: &File, base: u64) -> io::Result<u64> {
    let mut stored = 0;
    for (c, chunk) in bytes.chunks(CHUNK).enumerate() {
        stored += sandbox_virtio::sparse::write_nonzero(chunk, file, base + (c * CHUNK) as u64)?;
    }
    Ok(stored)
}

/// Maps `file` as guest RAM with `regions` laid out as [`save`] wrote
/// them, privately: guest writes stay in this process (copy on write),
/// and several VMs mapping the same file share its unchanged pages.
pub fn map_private(file: File, regions: &[(u64, usize)]) -> io::Result<GuestMemory> {
    let expected: u64 = regions.iter().map(|r| r.1 as u64).sum();
    let actual = file.metadata()?.len();
    if actual != expected {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("the memory file holds {actual} bytes, the snapshot's RAM is {expected}"),
        ));
    }
    let file = Arc::new(file);
    let mut offset = 0u64;
    let mut mapped = Vec::new();
    for &(addr, len) in regions {
        let region = MmapRegion::build(
            Some(FileOffset::from_arc(file.clone(), offset)),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_NORESERVE,
        )
        .map_err(|e| io::Error::other(format!("mapping the memory file: {e}")))?;
        mapped.push(
            GuestRegionMmap::new(region, GuestAddress(addr))
                .ok_or_else(|| io::Error::other("a snapshot RAM region wraps around"))?,
        );
        offset += len as u64;
    }
    GuestMemory::from_regions(mapped).map_err(|e| io::Error::other(format!("guest memory: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use sandbox_virtio::sparse::PAGE;
    use std::os::unix::fs::MetadataExt;
    use vm_memory::Bytes;

    #[test]
    fn zero_pages_are_holes_and_a_private_map_reads_back_and_copies_on_write() {
        let regions = vec![(GuestAddress(0), 8 << 20), (GuestAddress(1 << 32), 4 << 20)];
        let mem = GuestMemory::from_ranges(&regions).unwrap();
        mem.write_slice(b"first", GuestAddress(0x1000)).unwrap();
        mem.write_slice(&[7u8; 3 * PAGE], GuestAddress(5 << 20))
            .unwrap();
        mem.write_slice(b"high", GuestAddress((1 << 32) + 0x3000))
            .unwrap();
        let dir = std::env::temp_dir().join(format!("sbx-memfile-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("memory");
        let _ = std::fs::remove_file(&path);
        let file = File::options()
            .create_new(true)
            .read(true)
            .write(true)
            .open(&path)
            .unwrap();
        let stored = save(&mem, &file).unwrap();
        assert_eq!(stored, 5 * PAGE as u64, "only the five touched pages");
        let meta = std::fs::metadata(&path).unwrap();
        assert_eq!(meta.len(), 12 << 20);
        assert!(
            meta.blocks() * 512 <= 64 * 1024,
            "sparse: {} blocks",
            meta.blocks()
        );

        let layout = super::regions(&mem);
        let copy = map_private(File::open(&path).unwrap(), &layout).unwrap();
        let mut buf = [0u8; 5];
        copy.read_slice(&mut buf, GuestAddress(0x1000)).unwrap();
        assert_eq!(&buf, b"first");
        let mut high = [0u8; 4];
        copy.read_slice(&mut high, GuestAddress((1 << 32) + 0x3000))
            .unwrap();
        assert_eq!(&high, b"high");
        assert_eq!(
            copy.read_obj::<u8>(GuestAddress((5 << 20) + 2 * PAGE as u64))
                .unwrap(),
            7
        );
        // A write goes to this mapping only, not the file.
        copy.write_slice(b"FORK", GuestAddress(0x1000)).unwrap();
        let other = map_private(File::open(&path).unwrap(), &layout).unwrap();
        other.read_slice(&mut buf, GuestAddress(0x1000)).unwrap();
        assert_eq!(&buf, b"first");
        // A file of the wrong size is refused.
        assert!(map_private(File::open(&path).unwrap(), &[(0, 4 << 20)]).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
