//! Parsing and validating a qcow2 header (all fields big-endian). Every
//! value comes from an untrusted file: sizes are bounded before use.

use crate::RootfsError;

/// `QFI\xfb`.
pub const MAGIC: u32 = 0x5146_49fb;
/// Largest L1 table accepted, in entries (covers 64 TiB with 64 KiB clusters).
pub const MAX_L1_ENTRIES: u64 = 32 << 20 >> 3;
/// Longest backing file name accepted.
pub const MAX_BACKING_NAME: u32 = 1023;

/// Incompatible feature bits we can read past: 0 (dirty: refcounts may be
/// stale, which a reader does not use).
const SUPPORTED_INCOMPATIBLE: u64 = 1;

/// The fields a reader needs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Header {
    pub version: u32,
    pub cluster_bits: u32,
    pub size: u64,
    pub l1_size: u32,
    pub l1_table_offset: u64,
    pub backing_file_offset: u64,
    pub backing_file_size: u32,
    pub refcount_table_offset: u64,
    pub refcount_table_clusters: u32,
    pub nb_snapshots: u32,
    /// Incompatible feature bits (v3; 0 for v2).
    pub incompatible: u64,
    /// log2 of the refcount width in bits (v2: always 4).
    pub refcount_order: u32,
    /// Where header extensions start.
    pub header_length: u32,
}

fn bad(msg: impl Into<String>) -> RootfsError {
    RootfsError::Qcow2(msg.into())
}

impl Header {
    /// Bytes to read before parsing.
    pub const MIN_LEN: usize = 104;

    /// Parses the first bytes of a file.
    pub fn parse(b: &[u8]) -> Result<Self, RootfsError> {
        let mut h = Self::parse_fields(b)?;
        if h.version == 3 {
            // parse_fields checked the length.
            let u32_at = |o: usize| u32::from_be_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]]);
            h.incompatible = (u64::from(u32_at(72)) << 32) | u64::from(u32_at(76));
            h.refcount_order = u32_at(96);
            h.header_length = u32_at(100);
            if h.refcount_order > 6 || h.header_length < 104 {
                return Err(bad("bad v3 header (refcount order or header length)"));
            }
        }
        Ok(h)
    }

    fn parse_fields(b: &[u8]) -> Result<Self, RootfsError> {
        if b.len() < 72 {
            return Err(bad("file too short for a qcow2 header"));
        }
        let u32_at = |o: usize| u32::from_be_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]]);
        let u64_at = |o: usize| (u64::from(u32_at(o)) << 32) | u64::from(u32_at(o + 4));
        if u32_at(0) != MAGIC {
            return Err(bad("not a qcow2 file (bad magic)"));
        }
        let version = u32_at(4);
        if version != 2 && version != 3 {
            return Err(bad(format!("unsupported qcow2 version {version}")));
        }
        let h = Header {
            version,
            backing_file_offset: u64_at(8),
            backing_file_size: u32_at(16),
            cluster_bits: u32_at(20),
            size: u64_at(24),
            l1_size: u32_at(36),
            l1_table_offset: u64_at(40),
            refcount_table_offset: u64_at(48),
            refcount_table_clusters: u32_at(56),
            nb_snapshots: u32_at(60),
            incompatible: 0,
            refcount_order: 4,
            header_length: 72,
        };
        if u32_at(32) != 0 {
            return Err(bad("encrypted qcow2 images are not supported"));
        }
        if !(9..=21).contains(&h.cluster_bits) {
            return Err(bad(format!("cluster_bits {} out of range", h.cluster_bits)));
        }
        if version == 3 {
            if b.len() < Self::MIN_LEN {
                return Err(bad("file too short for a qcow2 v3 header"));
            }
            let incompatible = u64_at(72);
            if incompatible & !SUPPORTED_INCOMPATIBLE != 0 {
                return Err(bad(format!(
                    "unsupported incompatible features {incompatible:#x} (corrupt, external data, non-zlib compression or extended L2)"
                )));
            }
        }
        if u64::from(h.l1_size) > MAX_L1_ENTRIES {
            return Err(bad(format!(
                "L1 table of {} entries is too large",
                h.l1_size
            )));
        }
        let cluster = 1u64 << h.cluster_bits;
        if !h.l1_table_offset.is_multiple_of(cluster) {
            return Err(bad("L1 table is not cluster aligned"));
        }
        // Each L1 entry maps one L2 table of cluster/8 clusters.
        let covered = u64::from(h.l1_size)
            .checked_mul(cluster / 8)
            .and_then(|c| c.checked_mul(cluster));
        if covered.is_none_or(|c| c < h.size) {
            return Err(bad("the L1 table does not cover the virtual size"));
        }
        if h.backing_file_size > MAX_BACKING_NAME {
            return Err(bad("backing file name too long"));
        }
        Ok(h)
    }

    pub fn cluster_size(&self) -> u64 {
        1 << self.cluster_bits
    }

    /// The header extensions in `cluster0` (the image's first cluster), as
    /// (type, data) pairs, up to the end marker.
    pub fn extensions<'a>(&self, cluster0: &'a [u8]) -> Result<Vec<(u32, &'a [u8])>, RootfsError> {
        let mut out = Vec::new();
        let mut at = self.header_length as usize;
        loop {
            let Some(head) = cluster0.get(at..at + 8) else {
                return Err(bad("header extensions run past the first cluster"));
            };
            let kind = u32::from_be_bytes([head[0], head[1], head[2], head[3]]);
            let len = u32::from_be_bytes([head[4], head[5], head[6], head[7]]) as usize;
            if kind == 0 {
                return Ok(out);
            }
            let data = cluster0
                .get(at + 8..at + 8 + len)
                .ok_or_else(|| bad("a header extension runs past the first cluster"))?;
            out.push((kind, data));
            at += 8 + len.next_multiple_of(8);
        }
    }
}
