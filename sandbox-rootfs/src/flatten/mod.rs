//! Writing a standalone qcow2 image (v3, 16-bit refcounts, no compression)
//! from any [`Disk`]: what `rootfs::flatten` produces. All-zero clusters are
//! left unallocated, so the image is sparse.
//!
//! Layout: header cluster, L1 table, refcount table, refcount blocks, then
//! each L2 table followed by its data clusters. The source is read twice:
//! once to find the non-zero clusters (which fixes the layout), once to copy
//! them.

use std::io::{self, Seek, SeekFrom, Write};

use crate::{Disk, RootfsError};

mod into_store;
pub use into_store::{flatten, FlatImage};

/// Options of the qcow2 output.
#[derive(Clone, Copy, Debug)]
pub struct Qcow2Options {
    /// Cluster size in bytes: a power of two from 512 to 2 MiB.
    pub cluster_size: u32,
}

impl Default for Qcow2Options {
    fn default() -> Self {
        Self {
            cluster_size: 64 << 10,
        }
    }
}

fn ceil_div(a: u64, b: u64) -> u64 {
    a.div_ceil(b)
}

/// Writes `source` as a standalone qcow2 image into `out`.
pub fn flatten_qcow2<W: Write + Seek>(
    source: &mut dyn Disk,
    opts: Qcow2Options,
    out: &mut W,
) -> Result<(), RootfsError> {
    let cs = u64::from(opts.cluster_size);
    if !(512..=(2 << 20)).contains(&cs) || !cs.is_power_of_two() {
        return Err(RootfsError::Qcow2(format!(
            "cluster size {cs} must be a power of two from 512 to 2 MiB"
        )));
    }
    let io = |source| RootfsError::Io {
        what: "writing a qcow2 image".into(),
        source,
    };
    let size = source.size();
    let clusters = ceil_div(size, cs);
    let per_l2 = cs / 8;
    let l1_size = ceil_div(clusters, per_l2).max(1);

    // Pass 1: which clusters hold data.
    let mut used = vec![false; clusters as usize];
    let mut buf = vec![0u8; cs as usize];
    for (i, slot) in used.iter_mut().enumerate() {
        let n = read_cluster(source, i as u64, cs, &mut buf).map_err(io)?;
        *slot = buf[..n].iter().any(|b| *b != 0);
    }
    let data_clusters = used.iter().filter(|u| **u).count() as u64;
    let l2_tables = (0..l1_size)
        .filter(|t| {
            let start = (t * per_l2) as usize;
            let end = ((t + 1) * per_l2).min(clusters) as usize;
            used[start..end].iter().any(|u| *u)
        })
        .count() as u64;

    // Metadata sizes: refcount blocks must also count themselves.
    let l1_clusters = ceil_div(l1_size * 8, cs);
    let per_rc_block = cs / 2;
    let fixed = 1 + l1_clusters + l2_tables + data_clusters;
    let (mut rc_table_clusters, mut rc_blocks) = (1u64, 1u64);
    loop {
        let total = fixed + rc_table_clusters + rc_blocks;
        let blocks = ceil_div(total, per_rc_block);
        let table = ceil_div(blocks * 8, cs);
        if blocks == rc_blocks && table == rc_table_clusters {
            break;
        }
        (rc_blocks, rc_table_clusters) = (blocks, table);
    }
    let total = fixed + rc_table_clusters + rc_blocks;
    let l1_offset = cs;
    let rc_table_offset = l1_offset + l1_clusters * cs;
    let rc_blocks_offset = rc_table_offset + rc_table_clusters * cs;
    let mut next = rc_blocks_offset + rc_blocks * cs;

    // Header.
    let mut header = vec![0u8; cs as usize];
    let put32 = |h: &mut [u8], o: usize, v: u32| h[o..o + 4].copy_from_slice(&v.to_be_bytes());
    let put64 = |h: &mut [u8], o: usize, v: u64| h[o..o + 8].copy_from_slice(&v.to_be_bytes());
    put32(&mut header, 0, 0x5146_49fb);
    put32(&mut header, 4, 3);
    put32(&mut header, 20, opts.cluster_size.trailing_zeros());
    put64(&mut header, 24, size);
    put32(&mut header, 36, l1_size as u32);
    put64(&mut header, 40, l1_offset);
    put64(&mut header, 48, rc_table_offset);
    put32(&mut header, 56, rc_table_clusters as u32);
    put32(&mut header, 96, 4); // refcount_order: 16-bit refcounts
    put32(&mut header, 100, 104); // header_length; extensions end marker follows (zeros)
    out.seek(SeekFrom::Start(0)).map_err(io)?;
    out.write_all(&header).map_err(io)?;

    // Plan L2 tables and data clusters, filling the L1 table.
    let mut l1 = vec![0u8; (l1_clusters * cs) as usize];
    let mut plan = Vec::new(); // (l2 offset, [(cluster index, host offset)])
    for t in 0..l1_size {
        let start = t * per_l2;
        let end = ((t + 1) * per_l2).min(clusters);
        if !(start..end).any(|c| used[c as usize]) {
            continue;
        }
        let l2_offset = next;
        next += cs;
        l1[(t * 8) as usize..(t * 8 + 8) as usize]
            .copy_from_slice(&(l2_offset | (1 << 63)).to_be_bytes());
        let mut entries = Vec::new();
        for c in start..end {
            if used[c as usize] {
                entries.push((c, next));
                next += cs;
            }
        }
        plan.push((l2_offset, entries));
    }
    out.write_all(&l1).map_err(io)?;

    // Refcount table and blocks: every cluster up to `total` is used once.
    let mut rc_table = vec![0u8; (rc_table_clusters * cs) as usize];
    for b in 0..rc_blocks {
        let off = rc_blocks_offset + b * cs;
        rc_table[(b * 8) as usize..(b * 8 + 8) as usize].copy_from_slice(&off.to_be_bytes());
    }
    out.write_all(&rc_table).map_err(io)?;
    let mut rc = vec![0u8; (rc_blocks * cs) as usize];
    for c in 0..total {
        rc[(c * 2) as usize..(c * 2 + 2) as usize].copy_from_slice(&1u16.to_be_bytes());
    }
    out.write_all(&rc).map_err(io)?;

    // Pass 2: L2 tables and data.
    for (l2_offset, entries) in plan {
        let mut l2 = vec![0u8; cs as usize];
        for (c, host) in &entries {
            let i = ((c % per_l2) * 8) as usize;
            l2[i..i + 8].copy_from_slice(&(host | (1 << 63)).to_be_bytes());
        }
        out.seek(SeekFrom::Start(l2_offset)).map_err(io)?;
        out.write_all(&l2).map_err(io)?;
        for (c, _) in entries {
            let n = read_cluster(source, c, cs, &mut buf).map_err(io)?;
            buf[n..].fill(0);
            out.write_all(&buf).map_err(io)?;
        }
    }
    out.flush().map_err(io)
}

/// Reads cluster `c` of `source` into `buf`; returns the bytes that exist
/// (the last cluster may be partial).
fn read_cluster(source: &mut dyn Disk, c: u64, cs: u64, buf: &mut [u8]) -> io::Result<usize> {
    let start = c * cs;
    let n = cs.min(source.size().saturating_sub(start)) as usize;
    source.read_at(start, &mut buf[..n])?;
    Ok(n)
}

#[cfg(test)]
mod tests;
