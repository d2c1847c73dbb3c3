//! A persistent, writable qcow2 v3 overlay over a read-only base: what
//! `Rootfs::persistent` serves to the guest.
//!
//! - The file records the base's path (as its backing file, so `qemu-img`
//!   reads it too), the base's format and the base's sha256 (a header
//!   extension); reopening it over a different base fails.
//! - An exclusive `flock` is held while the overlay is open: a second VM
//!   on the same file fails clearly.
//! - Crash consistency: clusters are only ever written while nothing
//!   references them, then their refcount is set, then the table entry
//!   pointing at them is written. A kill at any instant leaves a file that
//!   `qemu-img check` finds free of corruption (at worst a leaked cluster,
//!   which the next open reclaims), and every guest block reads as either
//!   its old or its new content. Rewrites of allocated clusters go in place.
//! - Durability: guest FLUSH is acknowledged after `fdatasync`. Without a
//!   FLUSH, the overlay syncs by itself every `max_unsynced_bytes`.

mod create;
mod scan;
#[cfg(test)]
mod tests;

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::Path;

use super::header::Header;
use super::{L1_OFFSET_MASK, L2_COMPRESSED, L2_ZERO};
use crate::span::{check, pieces, Piece};
use crate::{Disk, Image, ImageFormat, RootfsError};

/// Header extension naming the backing file's format (qemu's).
const EXT_BACKING_FORMAT: u32 = 0xe279_2aca;
/// Header extension recording the base's digest (ours: "SBXD").
const EXT_BASE_DIGEST: u32 = 0x5342_5844;
/// The `copied` flag: refcount is exactly 1, the cluster may be rewritten.
const COPIED: u64 = 1 << 63;

/// How a new overlay is laid out and how often it syncs on its own.
#[derive(Clone, Copy, Debug)]
pub struct OverlayOptions {
    /// Cluster size of a newly created overlay: a power of two from 4 KiB
    /// to 2 MiB (an existing overlay keeps its own).
    pub cluster_size: u32,
    /// Bytes written without a guest FLUSH before the overlay syncs anyway.
    pub max_unsynced_bytes: u64,
}

impl Default for OverlayOptions {
    fn default() -> Self {
        Self {
            cluster_size: 64 << 10,
            max_unsynced_bytes: crate::DEFAULT_MAX_DIRTY_BYTES,
        }
    }
}

/// A writable qcow2 overlay file over a base disk.
pub struct Qcow2Overlay {
    file: File,
    base: Box<dyn Disk>,
    size: u64,
    cs: u64,
    l1_offset: u64,
    rc_table_offset: u64,
    t: scan::Tables,
    unsynced: u64,
    max_unsynced: u64,
}

fn bad(msg: impl Into<String>) -> RootfsError {
    RootfsError::Qcow2(msg.into())
}

/// How long a held lock is retried before the overlay counts as in use.
///
/// A `flock` belongs to the open file description, and a process being
/// spawned by any thread of this program holds a copy of every descriptor
/// from its fork until its exec closes the close-on-exec ones. So a VM
/// closed just now can leave its lock held for that short window; a VM
/// really using the file holds it far longer than this.
const LOCK_GRACE: std::time::Duration = std::time::Duration::from_millis(500);

/// Takes an exclusive, non-blocking `flock` on `file`, retrying for
/// [`LOCK_GRACE`] while another description holds it.
fn lock(file: &File, path: &Path) -> Result<(), RootfsError> {
    let deadline = std::time::Instant::now() + LOCK_GRACE;
    loop {
        // SAFETY: flock on a file descriptor we own; no memory is involved.
        let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        if rc == 0 {
            return Ok(());
        }
        let e = io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EWOULDBLOCK) {
            return Err(RootfsError::Io {
                what: format!("locking {}", path.display()),
                source: e,
            });
        }
        if std::time::Instant::now() >= deadline {
            return Err(RootfsError::Locked(path.to_path_buf()));
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}

impl Qcow2Overlay {
    /// Opens the overlay at `path` over `base` (the opened `image`),
    /// creating it first if the file does not exist.
    pub fn open(
        path: &Path,
        base: Box<dyn Disk>,
        image: &Image,
        opts: OverlayOptions,
    ) -> Result<Self, RootfsError> {
        if !path.is_absolute() {
            return Err(RootfsError::InvalidPath(path.to_path_buf()));
        }
        let cs = u64::from(opts.cluster_size);
        if !(4096..=(2 << 20)).contains(&cs) || !cs.is_power_of_two() {
            return Err(bad(format!(
                "overlay cluster size {cs} must be a power of two from 4 KiB to 2 MiB"
            )));
        }
        if !path.exists() {
            let base_path =
                std::fs::canonicalize(&image.path).map_err(|source| RootfsError::Io {
                    what: format!("resolving {}", image.path.display()),
                    source,
                })?;
            create::create(
                path,
                &create::NewOverlay {
                    base_path: &base_path,
                    base_format: match image.format {
                        ImageFormat::Raw => "raw",
                        ImageFormat::Qcow2 => "qcow2",
                    },
                    base_sha256: &image.sha256,
                    size: base.size(),
                    cluster_size: cs,
                },
            )?;
        }
        let io = |what: &str| {
            let what = format!("{what} {}", path.display());
            move |source| RootfsError::Io { what, source }
        };
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .map_err(io("opening the persistent overlay"))?;
        lock(&file, path)?;
        let mut cluster0 = vec![0u8; 4096];
        let n = file.read_at(&mut cluster0, 0).map_err(io("reading"))?;
        let header = Header::parse(&cluster0[..n])?;
        let cs = header.cluster_size();
        if cs > 4096 {
            cluster0.resize(cs as usize, 0);
            file.read_at(&mut cluster0, 0).map_err(io("reading"))?;
        }
        let recorded = header
            .extensions(&cluster0)?
            .into_iter()
            .find(|(kind, _)| *kind == EXT_BASE_DIGEST)
            .map(|(_, d)| String::from_utf8_lossy(d).into_owned());
        let expected = format!("sha256:{}", image.sha256);
        match recorded {
            None => return Err(RootfsError::NotOurOverlay(path.to_path_buf())),
            Some(r) if r != expected => {
                return Err(RootfsError::BaseMismatch {
                    path: path.to_path_buf(),
                    recorded: r,
                    image: image.name.clone(),
                    actual: expected,
                })
            }
            Some(_) => {}
        }
        if header.size != base.size() {
            return Err(bad(format!(
                "the overlay is {} bytes but its base is {}",
                header.size,
                base.size()
            )));
        }
        let t = scan::scan(&file, &header)?;
        if t.repaired > 0 {
            log::warn!(
                "{}: reclaimed {} leaked cluster(s) left by an interrupted run",
                path.display(),
                t.repaired
            );
        }
        if header.incompatible & 1 != 0 {
            // Refcounts are exact now: clear the dirty bit.
            file.write_all_at(&[0u8; 8], 72).map_err(io("repairing"))?;
        }
        Ok(Self {
            file,
            base,
            size: header.size & !511,
            cs,
            l1_offset: header.l1_table_offset,
            rc_table_offset: header.refcount_table_offset,
            t,
            unsynced: 0,
            max_unsynced: opts.max_unsynced_bytes.max(cs),
        })
    }

    /// Leaked clusters the open reclaimed (left by an interrupted run).
    pub fn reclaimed_clusters(&self) -> u64 {
        self.t.repaired
    }

    /// The L2 entry of guest cluster `c` (0: unallocated).
    fn entry(&self, c: u64) -> u64 {
        let per_l2 = self.cs / 8;
        self.t
            .l2
            .get(&(c / per_l2))
            .map_or(0, |table| table[(c % per_l2) as usize])
    }

    /// Where guest cluster `c`'s data sits in the file, if it is allocated
    /// (and not a zero cluster): such clusters are read and written in
    /// place.
    fn host_offset(&self, c: u64) -> Option<u64> {
        let entry = self.entry(c);
        let offset = entry & L1_OFFSET_MASK;
        (offset != 0 && entry & (L2_ZERO | L2_COMPRESSED) == 0).then_some(offset)
    }

    /// A cluster to write into: a reclaimed one or a new one at the end.
    fn alloc(&mut self) -> u64 {
        self.t.free.pop().unwrap_or_else(|| {
            self.t.file_clusters += 1;
            self.t.file_clusters - 1
        })
    }

    /// Sets the refcount of cluster `idx`, creating its refcount block if
    /// needed.
    fn set_refcount(&mut self, idx: u64, value: u16) -> io::Result<()> {
        let per_block = self.cs / 2;
        let block = self.refcount_block(idx / per_block)?;
        self.file
            .write_all_at(&value.to_be_bytes(), block + (idx % per_block) * 2)
    }

    /// The offset of refcount block `b`, appending it if missing. A new
    /// block is written before the table points at it.
    fn refcount_block(&mut self, b: u64) -> io::Result<u64> {
        let Some(&existing) = self.t.rc_table.get(b as usize) else {
            return Err(io::Error::new(
                io::ErrorKind::StorageFull,
                "the overlay's refcount table is full",
            ));
        };
        if existing != 0 {
            return Ok(existing);
        }
        let per_block = self.cs / 2;
        let idx = self.t.file_clusters;
        self.t.file_clusters += 1;
        let offset = idx * self.cs;
        let mut data = vec![0u8; self.cs as usize];
        if idx / per_block == b {
            let at = ((idx % per_block) * 2) as usize;
            data[at..at + 2].copy_from_slice(&1u16.to_be_bytes());
        }
        self.file.write_all_at(&data, offset)?;
        if idx / per_block != b {
            self.set_refcount(idx, 1)?;
        }
        self.file
            .write_all_at(&offset.to_be_bytes(), self.rc_table_offset + b * 8)?;
        self.t.rc_table[b as usize] = offset;
        Ok(offset)
    }

    /// The L2 table covering guest cluster `c`, allocating it if needed.
    fn l2_table(&mut self, c: u64) -> io::Result<u64> {
        let l1_index = c / (self.cs / 8);
        let entry = self.t.l1[l1_index as usize] & L1_OFFSET_MASK;
        if entry != 0 {
            return Ok(entry);
        }
        let idx = self.alloc();
        let offset = idx * self.cs;
        self.file
            .write_all_at(&vec![0u8; self.cs as usize], offset)?;
        self.set_refcount(idx, 1)?;
        let value = offset | COPIED;
        self.file
            .write_all_at(&value.to_be_bytes(), self.l1_offset + l1_index * 8)?;
        self.t.l1[l1_index as usize] = value;
        self.t.l2.insert(l1_index, vec![0; (self.cs / 8) as usize]);
        Ok(offset)
    }

    /// Points guest cluster `c` at `value` on disk and in memory.
    fn set_entry(&mut self, c: u64, value: u64) -> io::Result<()> {
        let per_l2 = self.cs / 8;
        let table = self.l2_table(c)?;
        self.file
            .write_all_at(&value.to_be_bytes(), table + (c % per_l2) * 8)?;
        if let Some(t) = self.t.l2.get_mut(&(c / per_l2)) {
            t[(c % per_l2) as usize] = value;
        }
        Ok(())
    }

    /// Reads part of guest cluster `c` as the guest sees it.
    fn read_cluster(&mut self, c: u64, within: u64, buf: &mut [u8]) -> io::Result<()> {
        let entry = self.entry(c);
        let offset = entry & L1_OFFSET_MASK;
        if entry & L2_ZERO != 0 {
            buf.fill(0);
        } else if offset != 0 {
            self.file.read_exact_at(buf, offset + within)?;
        } else {
            self.base.read_at(c * self.cs + within, buf)?;
        }
        Ok(())
    }

    /// Writes part of guest cluster `c`.
    fn write_cluster(&mut self, c: u64, within: u64, data: &[u8]) -> io::Result<()> {
        let entry = self.entry(c);
        if entry & L2_COMPRESSED != 0 {
            return Err(io::Error::other("compressed cluster in an overlay"));
        }
        let offset = entry & L1_OFFSET_MASK;
        if offset != 0 && entry & L2_ZERO == 0 {
            return self.file.write_all_at(data, offset + within);
        }
        // Copy on write: the whole cluster goes to a place nothing
        // references yet, and only then is it referenced.
        let start = c * self.cs;
        let len = self.cs.min(self.size - start) as usize;
        let mut whole = vec![0u8; self.cs as usize];
        if data.len() < len {
            self.read_cluster(c, 0, &mut whole[..len])?;
        }
        whole[within as usize..within as usize + data.len()].copy_from_slice(data);
        if offset != 0 {
            // A preallocated zero cluster: fill it, then clear the flag.
            self.file.write_all_at(&whole, offset)?;
            return self.set_entry(c, offset | COPIED);
        }
        let idx = self.alloc();
        self.file.write_all_at(&whole, idx * self.cs)?;
        self.set_refcount(idx, 1)?;
        self.set_entry(c, (idx * self.cs) | COPIED)
    }
}

/// Consecutive pieces of a request that are also consecutive in the file:
/// one `pread`/`pwrite` instead of one per cluster.
#[derive(Default)]
struct Run {
    host: u64,
    buf_start: usize,
    len: usize,
}

impl Run {
    fn start(host: u64, range: std::ops::Range<usize>) -> Self {
        Self {
            host,
            buf_start: range.start,
            len: range.len(),
        }
    }

    fn extends(&self, host: u64, range: &std::ops::Range<usize>) -> bool {
        self.len > 0
            && self.host + self.len as u64 == host
            && self.buf_start + self.len == range.start
    }

    fn read(&self, file: &File, buf: &mut [u8]) -> io::Result<()> {
        if self.len == 0 {
            return Ok(());
        }
        file.read_exact_at(
            &mut buf[self.buf_start..self.buf_start + self.len],
            self.host,
        )
    }

    fn write(&self, file: &File, data: &[u8]) -> io::Result<()> {
        if self.len == 0 {
            return Ok(());
        }
        file.write_all_at(&data[self.buf_start..self.buf_start + self.len], self.host)
    }
}

impl Disk for Qcow2Overlay {
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
        let mut run = Run::default();
        for Piece {
            index,
            within,
            range,
        } in pieces(offset, buf.len(), self.cs)
        {
            match self.host_offset(index) {
                Some(host) if run.extends(host + within as u64, &range) => run.len += range.len(),
                host => {
                    run.read(&self.file, buf)?;
                    run = Run::default();
                    match host {
                        Some(host) => run = Run::start(host + within as u64, range),
                        None => self.read_cluster(index, within as u64, &mut buf[range])?,
                    }
                }
            }
        }
        run.read(&self.file, buf)
    }

    fn write_at(&mut self, offset: u64, data: &[u8]) -> io::Result<()> {
        check(self.size, offset, data.len())?;
        let mut run = Run::default();
        for Piece {
            index,
            within,
            range,
        } in pieces(offset, data.len(), self.cs)
        {
            match self.host_offset(index) {
                Some(host) if run.extends(host + within as u64, &range) => run.len += range.len(),
                host => {
                    run.write(&self.file, data)?;
                    run = Run::default();
                    match host {
                        Some(host) => run = Run::start(host + within as u64, range),
                        None => self.write_cluster(index, within as u64, &data[range])?,
                    }
                }
            }
        }
        run.write(&self.file, data)?;
        self.unsynced += data.len() as u64;
        if self.unsynced >= self.max_unsynced {
            self.flush()?;
        }
        Ok(())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.sync_data()?;
        self.unsynced = 0;
        Ok(())
    }
}

impl Drop for Qcow2Overlay {
    fn drop(&mut self) {
        if let Err(e) = self.file.sync_data() {
            log::error!("syncing the persistent overlay at shutdown: {e}");
        }
    }
}
