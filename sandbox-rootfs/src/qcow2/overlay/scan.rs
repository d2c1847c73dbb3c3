//! Opening an overlay: load its tables, check every reference, and repair
//! refcounts so they match the references exactly.
//!
//! The overlay is written in an order that keeps it consistent at every
//! instant (see `mod.rs`); the one thing a crash can leave behind is a
//! cluster whose refcount was set but which nothing references yet (a
//! leak). The scan finds those, sets their refcount back to 0 and hands
//! them to the allocator for reuse. Anything else out of place (a reference
//! outside the file, a cluster referenced twice, compressed clusters,
//! snapshots) means another tool changed the file: the open fails.

use std::collections::HashMap;
use std::fs::File;
use std::os::unix::fs::FileExt;

use crate::qcow2::header::Header;
use crate::qcow2::{L1_OFFSET_MASK, L2_COMPRESSED};
use crate::RootfsError;

/// The in-memory state of an opened overlay.
pub(super) struct Tables {
    pub l1: Vec<u64>,
    /// L2 tables by L1 index.
    pub l2: HashMap<u64, Vec<u64>>,
    pub rc_table: Vec<u64>,
    /// Free cluster indices below the end of the file, highest first.
    pub free: Vec<u64>,
    /// Clusters in the file: the next appended cluster's index.
    pub file_clusters: u64,
    /// Refcount entries corrected by the scan.
    pub repaired: u64,
}

fn corrupt(msg: impl Into<String>) -> RootfsError {
    RootfsError::Qcow2(format!("corrupt overlay: {}", msg.into()))
}

fn words(raw: &[u8]) -> Vec<u64> {
    raw.chunks_exact(8)
        .map(|c| u64::from_be_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]))
        .collect()
}

struct Refs {
    cs: u64,
    count: Vec<bool>,
}

impl Refs {
    /// Records one reference to the cluster at `offset`.
    fn mark(&mut self, offset: u64, what: &str) -> Result<(), RootfsError> {
        if !offset.is_multiple_of(self.cs) {
            return Err(corrupt(format!(
                "{what} at {offset:#x} is not cluster aligned"
            )));
        }
        let idx = offset / self.cs;
        match self.count.get_mut(idx as usize) {
            None => Err(corrupt(format!(
                "{what} at {offset:#x} lies past the end of the file"
            ))),
            Some(true) => Err(corrupt(format!("cluster {offset:#x} is referenced twice"))),
            Some(slot) => {
                *slot = true;
                Ok(())
            }
        }
    }

    fn mark_range(&mut self, offset: u64, bytes: u64, what: &str) -> Result<(), RootfsError> {
        for c in 0..bytes.div_ceil(self.cs) {
            self.mark(offset + c * self.cs, what)?;
        }
        Ok(())
    }
}

/// Reads, checks and repairs the overlay's tables.
pub(super) fn scan(file: &File, h: &Header) -> Result<Tables, RootfsError> {
    let io = |source| RootfsError::Io {
        what: "reading the persistent overlay".into(),
        source,
    };
    let cs = h.cluster_size();
    if h.nb_snapshots != 0 {
        return Err(corrupt("it has internal snapshots"));
    }
    if h.refcount_order != 4 {
        return Err(corrupt("refcounts are not 16 bits wide"));
    }
    let file_clusters = file.metadata().map_err(io)?.len().div_ceil(cs);
    let mut refs = Refs {
        cs,
        count: vec![false; file_clusters as usize],
    };
    refs.mark(0, "the header")?;
    let l1_bytes = u64::from(h.l1_size) * 8;
    refs.mark_range(h.l1_table_offset, l1_bytes, "the L1 table")?;
    let table_bytes = u64::from(h.refcount_table_clusters) * cs;
    refs.mark_range(h.refcount_table_offset, table_bytes, "the refcount table")?;

    let mut raw = vec![0u8; table_bytes as usize];
    file.read_exact_at(&mut raw, h.refcount_table_offset)
        .map_err(io)?;
    let rc_table: Vec<u64> = words(&raw).into_iter().map(|e| e & !511).collect();
    for &block in rc_table.iter().filter(|b| **b != 0) {
        refs.mark(block, "a refcount block")?;
    }

    let mut raw = vec![0u8; l1_bytes as usize];
    file.read_exact_at(&mut raw, h.l1_table_offset)
        .map_err(io)?;
    let l1 = words(&raw);
    let mut l2 = HashMap::new();
    let mut table = vec![0u8; cs as usize];
    for (i, entry) in l1.iter().enumerate() {
        let offset = entry & L1_OFFSET_MASK;
        if offset == 0 {
            continue;
        }
        refs.mark(offset, "an L2 table")?;
        file.read_exact_at(&mut table, offset).map_err(io)?;
        let entries = words(&table);
        for e in &entries {
            if e & L2_COMPRESSED != 0 {
                return Err(corrupt("it holds compressed clusters"));
            }
            if e & L1_OFFSET_MASK != 0 {
                refs.mark(e & L1_OFFSET_MASK, "a data cluster")?;
            }
        }
        l2.insert(i as u64, entries);
    }

    // Compare with the refcounts and correct them.
    let per_block = cs / 2;
    let mut repaired = 0;
    let mut block = vec![0u8; cs as usize];
    for (b, &offset) in rc_table.iter().enumerate() {
        let first = b as u64 * per_block;
        if offset == 0 {
            if (first..(first + per_block).min(file_clusters)).any(|c| refs.count[c as usize]) {
                return Err(corrupt("used clusters have no refcount block"));
            }
            continue;
        }
        file.read_exact_at(&mut block, offset).map_err(io)?;
        let mut changed = false;
        for i in 0..per_block {
            let want = u16::from(refs.count.get((first + i) as usize) == Some(&true));
            let at = (i * 2) as usize;
            if u16::from_be_bytes([block[at], block[at + 1]]) != want {
                block[at..at + 2].copy_from_slice(&want.to_be_bytes());
                changed = true;
                repaired += 1;
            }
        }
        if changed {
            file.write_all_at(&block, offset).map_err(io)?;
        }
    }
    if repaired > 0 {
        file.sync_data().map_err(io)?;
    }
    let free = (0..file_clusters)
        .rev()
        .filter(|c| !refs.count[*c as usize])
        .collect();
    Ok(Tables {
        l1,
        l2,
        rc_table,
        free,
        file_clusters,
        repaired,
    })
}
