//! Creating an empty qcow2 v3 overlay over a base image.
//!
//! Layout: header cluster (with the backing-format and base-digest
//! extensions and the backing file name), the L1 table, a refcount table
//! sized once for the largest file the overlay can grow to (twice over, so
//! leaked clusters never exhaust it), and the refcount blocks covering the
//! initial metadata. The file is written under a temporary name and
//! hard-linked into place, so a crash never leaves a half-made overlay and
//! two creators never overwrite each other.

use std::fs::File;
use std::io;
use std::os::unix::fs::{FileExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

use super::{EXT_BACKING_FORMAT, EXT_BASE_DIGEST};
use crate::qcow2::header::{MAGIC, MAX_BACKING_NAME};
use crate::RootfsError;

/// What a new overlay records about its base.
pub(super) struct NewOverlay<'a> {
    pub base_path: &'a Path,
    pub base_format: &'a str,
    pub base_sha256: &'a str,
    pub size: u64,
    pub cluster_size: u64,
}

fn bad(msg: impl Into<String>) -> RootfsError {
    RootfsError::Qcow2(msg.into())
}

fn put32(h: &mut [u8], o: usize, v: u32) {
    h[o..o + 4].copy_from_slice(&v.to_be_bytes());
}

fn put64(h: &mut [u8], o: usize, v: u64) {
    h[o..o + 8].copy_from_slice(&v.to_be_bytes());
}

/// Appends one header extension at `*at`.
fn put_ext(h: &mut [u8], at: &mut usize, kind: u32, data: &[u8]) -> Result<(), RootfsError> {
    let end = *at + 8 + data.len().next_multiple_of(8);
    if end + 8 > h.len() {
        return Err(bad("header extensions do not fit in the first cluster"));
    }
    put32(h, *at, kind);
    put32(h, *at + 4, data.len() as u32);
    h[*at + 8..*at + 8 + data.len()].copy_from_slice(data);
    *at = end;
    Ok(())
}

/// Fixed-point sizing of the refcount structures for `fixed` other clusters:
/// returns (refcount table clusters, refcount blocks).
fn refcount_sizes(fixed: u64, cs: u64, table_slack: u64) -> (u64, u64) {
    let per_block = cs / 2;
    let (mut table, mut blocks) = (1u64, 1u64);
    loop {
        let total = fixed + table + blocks;
        let b = total.div_ceil(per_block);
        let t = (b * table_slack * 8).div_ceil(cs);
        if b == blocks && t == table {
            return (table, blocks);
        }
        (table, blocks) = (t, b);
    }
}

/// The bytes of a new overlay, written to `file`.
fn write_layout(file: &File, n: &NewOverlay) -> Result<(), RootfsError> {
    let io = |source| RootfsError::Io {
        what: "writing a new persistent overlay".into(),
        source,
    };
    let cs = n.cluster_size;
    let clusters = n.size.div_ceil(cs);
    let l1_size = clusters.div_ceil(cs / 8).max(1);
    let l1_clusters = (l1_size * 8).div_ceil(cs);
    // Most the file can hold: header, L1, every L2 table, every data cluster.
    let (table_clusters, _) = refcount_sizes(1 + l1_clusters + l1_size + clusters, cs, 2);
    let (_, init_blocks) = refcount_sizes(1 + l1_clusters + table_clusters, cs, 0);
    let l1_offset = cs;
    let table_offset = l1_offset + l1_clusters * cs;
    let blocks_offset = table_offset + table_clusters * cs;
    let init_total = 1 + l1_clusters + table_clusters + init_blocks;

    let mut header = vec![0u8; cs as usize];
    put32(&mut header, 0, MAGIC);
    put32(&mut header, 4, 3);
    put32(&mut header, 20, cs.trailing_zeros());
    put64(&mut header, 24, n.size);
    put32(&mut header, 36, l1_size as u32);
    put64(&mut header, 40, l1_offset);
    put64(&mut header, 48, table_offset);
    put32(&mut header, 56, table_clusters as u32);
    put32(&mut header, 96, 4); // 16-bit refcounts
    put32(&mut header, 100, 104);
    let mut at = 104;
    put_ext(
        &mut header,
        &mut at,
        EXT_BACKING_FORMAT,
        n.base_format.as_bytes(),
    )?;
    let digest = format!("sha256:{}", n.base_sha256);
    put_ext(&mut header, &mut at, EXT_BASE_DIGEST, digest.as_bytes())?;
    at += 8; // end-of-extensions marker (zeros)
    let name = n.base_path.as_os_str().as_encoded_bytes();
    if name.len() > MAX_BACKING_NAME as usize || at + name.len() > cs as usize {
        return Err(bad(format!(
            "the base path {} is too long to record in the overlay",
            n.base_path.display()
        )));
    }
    put64(&mut header, 8, at as u64);
    put32(&mut header, 16, name.len() as u32);
    header[at..at + name.len()].copy_from_slice(name);
    file.write_all_at(&header, 0).map_err(io)?;

    let mut table = vec![0u8; (table_clusters * cs) as usize];
    for b in 0..init_blocks {
        put64(&mut table, (b * 8) as usize, blocks_offset + b * cs);
    }
    file.write_all_at(&table, table_offset).map_err(io)?;
    let mut blocks = vec![0u8; (init_blocks * cs) as usize];
    for c in 0..init_total {
        blocks[(c * 2) as usize..(c * 2 + 2) as usize].copy_from_slice(&1u16.to_be_bytes());
    }
    file.write_all_at(&blocks, blocks_offset).map_err(io)?;
    // The L1 table stays a hole of zeros: nothing is allocated yet.
    file.set_len(init_total * cs).map_err(io)?;
    file.sync_all().map_err(io)
}

/// Creates the overlay at `path` unless a file is already there.
pub(super) fn create(path: &Path, n: &NewOverlay) -> Result<(), RootfsError> {
    let io = |what: &str| {
        let what = format!("{what} {}", path.display());
        move |source| RootfsError::Io { what, source }
    };
    let dir = path.parent().unwrap_or(Path::new("/"));
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    let tmp = dir.join(format!(".{name}.creating-{}", std::process::id()));
    // A crashed creator with the same pid may have left its file.
    let _ = std::fs::remove_file(&tmp);
    // The overlay holds guest disk contents: the owner's alone, whatever
    // the umask (fchmod after create, as the umask may clear owner bits).
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(io("creating the persistent overlay next to"))?;
    file.set_permissions(std::fs::Permissions::from_mode(0o600))
        .map_err(io("making private the persistent overlay next to"))?;
    let written = write_layout(&file, n);
    let linked = written.and_then(|()| match std::fs::hard_link(&tmp, path) {
        Ok(()) => Ok(()),
        // Someone else created it first: theirs stands.
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(io("creating the persistent overlay")(e)),
    });
    let _ = std::fs::remove_file(&tmp);
    linked?;
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}
