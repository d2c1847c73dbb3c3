//! virtio-blk request handling with synthetic chains in guest memory.

use std::io;

use vm_memory::{Bytes, GuestAddress};

use super::request::{S_IOERR, S_UNSUPP, T_FLUSH, T_GET_ID, T_IN, T_OUT};
use super::*;
use crate::testutil::{memory, queue_with, used, used_idx};

/// A disk in a vector.
struct VecDisk {
    data: Vec<u8>,
    read_only: bool,
}

impl Disk for VecDisk {
    fn size(&self) -> u64 {
        self.data.len() as u64
    }
    fn read_only(&self) -> bool {
        self.read_only
    }
    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        let o = offset as usize;
        buf.copy_from_slice(&self.data[o..o + buf.len()]);
        Ok(())
    }
    fn write_at(&mut self, offset: u64, data: &[u8]) -> io::Result<()> {
        let o = offset as usize;
        self.data[o..o + data.len()].copy_from_slice(data);
        Ok(())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

const HDR: u64 = 0x1_0000;
const DATA: u64 = 0x2_0000;
const STATUS: u64 = 0x3_0000;

fn handler(read_only: bool) -> BlockHandler {
    let data = (0..64 * 512).map(|i| (i / 512) as u8).collect();
    BlockHandler {
        disk: Box::new(VecDisk { data, read_only }),
        id: "test-disk".into(),
        metrics: Arc::default(),
        bounce: Vec::new(),
    }
}

fn header(mem: &GuestMemory, kind: u32, sector: u64) {
    let mut h = [0u8; 16];
    h[..4].copy_from_slice(&kind.to_le_bytes());
    h[8..].copy_from_slice(&sector.to_le_bytes());
    mem.write_slice(&h, GuestAddress(HDR)).unwrap();
}

fn status(mem: &GuestMemory) -> u8 {
    mem.read_obj(GuestAddress(STATUS)).unwrap()
}

#[test]
fn read_fills_the_buffer_and_reports_ok() {
    let mem = memory();
    header(&mem, T_IN, 3);
    mem.write_obj(0xffu8, GuestAddress(STATUS)).unwrap();
    let (vq, mut q) = queue_with(
        &mem,
        &[&[(HDR, 16, false), (DATA, 1024, true), (STATUS, 1, true)]],
    );
    let mut h = handler(false);
    assert_eq!(h.queue_event(0, std::slice::from_mut(&mut q), &mem), 1);
    assert_eq!(status(&mem), 0);
    assert_eq!(used(&mem, &vq, 0), (0, 1025));
    let mut buf = [0u8; 1024];
    mem.read_slice(&mut buf, GuestAddress(DATA)).unwrap();
    assert!(buf[..512].iter().all(|b| *b == 3) && buf[512..].iter().all(|b| *b == 4));
    assert_eq!(h.metrics.read_bytes.get(), 1024);
}

#[test]
fn write_then_read_back() {
    let mem = memory();
    let mut h = handler(false);
    header(&mem, T_OUT, 10);
    mem.write_slice(&[0xab; 512], GuestAddress(DATA)).unwrap();
    let (_vq, mut q) = queue_with(
        &mem,
        &[&[(HDR, 16, false), (DATA, 512, false), (STATUS, 1, true)]],
    );
    h.queue_event(0, std::slice::from_mut(&mut q), &mem);
    assert_eq!(status(&mem), 0);
    let mut back = [0u8; 512];
    h.disk.read_at(10 * 512, &mut back).unwrap();
    assert_eq!(back, [0xab; 512]);
}

#[test]
fn flush_and_get_id() {
    let mem = memory();
    let mut h = handler(false);
    header(&mem, T_FLUSH, 0);
    let (_vq, mut q) = queue_with(&mem, &[&[(HDR, 16, false), (STATUS, 1, true)]]);
    h.queue_event(0, std::slice::from_mut(&mut q), &mem);
    assert_eq!(status(&mem), 0);

    header(&mem, T_GET_ID, 0);
    let (vq, mut q) = queue_with(
        &mem,
        &[&[(HDR, 16, false), (DATA, 20, true), (STATUS, 1, true)]],
    );
    h.queue_event(0, std::slice::from_mut(&mut q), &mem);
    assert_eq!(status(&mem), 0);
    let mut id = [0u8; 9];
    mem.read_slice(&mut id, GuestAddress(DATA)).unwrap();
    assert_eq!(&id, b"test-disk");
    assert_eq!(used(&mem, &vq, 0).1, 10);
}

#[test]
fn out_of_range_and_overflowing_sectors_are_io_errors() {
    let mem = memory();
    let mut h = handler(false);
    for sector in [63, 64, u64::MAX / 256, u64::MAX] {
        header(&mem, T_IN, sector);
        let (_vq, mut q) = queue_with(
            &mem,
            &[&[(HDR, 16, false), (DATA, 1024, true), (STATUS, 1, true)]],
        );
        h.queue_event(0, std::slice::from_mut(&mut q), &mem);
        assert_eq!(status(&mem), S_IOERR, "sector {sector}");
    }
    assert_eq!(h.metrics.io_errors.get(), 4);
}

#[test]
fn writes_to_a_read_only_disk_fail_and_change_nothing() {
    let mem = memory();
    let mut h = handler(true);
    header(&mem, T_OUT, 0);
    mem.write_slice(&[0xee; 512], GuestAddress(DATA)).unwrap();
    let (_vq, mut q) = queue_with(
        &mem,
        &[&[(HDR, 16, false), (DATA, 512, false), (STATUS, 1, true)]],
    );
    h.queue_event(0, std::slice::from_mut(&mut q), &mem);
    assert_eq!(status(&mem), S_IOERR);
    let mut back = [0u8; 512];
    h.disk.read_at(0, &mut back).unwrap();
    assert_eq!(back, [0u8; 512]);
}

#[test]
fn unknown_request_types_are_unsupported() {
    let mem = memory();
    let mut h = handler(false);
    header(&mem, 0x7777, 0);
    let (_vq, mut q) = queue_with(&mem, &[&[(HDR, 16, false), (STATUS, 1, true)]]);
    h.queue_event(0, std::slice::from_mut(&mut q), &mem);
    assert_eq!(status(&mem), S_UNSUPP);
}

#[test]
fn malformed_chains_are_answered_without_touching_the_disk() {
    let mem = memory();
    let mut h = handler(false);
    header(&mem, T_IN, 0);
    let chains: &[&[(u64, u32, bool)]] = &[
        // No writable status byte.
        &[(HDR, 16, false), (DATA, 512, false)],
        // Header too short.
        &[(HDR, 8, false), (STATUS, 1, true)],
        // A buffer outside guest memory.
        &[(HDR, 16, false), (0xfff_0000, 512, true), (STATUS, 1, true)],
        // A length that wraps past the end of memory.
        &[(HDR, 16, false), (DATA, u32::MAX, true), (STATUS, 1, true)],
    ];
    let (vq, mut q) = queue_with(&mem, chains);
    h.queue_event(0, std::slice::from_mut(&mut q), &mem);
    assert_eq!(
        used_idx(&mem, &vq),
        4,
        "every chain is returned to the guest"
    );
    for i in 0..4 {
        assert_eq!(used(&mem, &vq, i).1, 0, "chain {i} reports no bytes");
    }
    assert_eq!(h.metrics.malformed.get(), 4);
    assert_eq!(h.metrics.read_bytes.get(), 0);
}

/// A disk over a base that reports two written blocks.
struct Overlaid(VecDisk);

impl Disk for Overlaid {
    fn size(&self) -> u64 {
        self.0.size()
    }
    fn read_only(&self) -> bool {
        false
    }
    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        self.0.read_at(offset, buf)
    }
    fn write_at(&mut self, offset: u64, data: &[u8]) -> io::Result<()> {
        self.0.write_at(offset, data)
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
    fn written(&self) -> Option<Written> {
        Some(Written::from_indices(4096, vec![1, 3]))
    }
}

fn saved(block: &mut Block) -> (Vec<u8>, u64) {
    let path = std::env::temp_dir().join(format!(
        "sbx-blk-written-{}-{:?}",
        std::process::id(),
        std::thread::current().id()
    ));
    let out = std::fs::File::options()
        .create(true)
        .truncate(true)
        .read(true)
        .write(true)
        .open(&path)
        .unwrap();
    let stored = block.save_disk(&out).unwrap().unwrap();
    let bytes = std::fs::read(&path).unwrap();
    std::fs::remove_file(&path).unwrap();
    (bytes, stored)
}

/// Written-only snapshots copy the written blocks at their offsets and
/// name them in the device state; without the option, or for a disk that
/// cannot say, the whole disk is copied and there is no state.
#[test]
fn a_written_only_snapshot_stores_the_written_blocks_and_names_them() {
    let disk = || VecDisk {
        data: (0..5 * 4096).map(|i| (i % 7) as u8 + 1).collect(),
        read_only: false,
    };
    let mut block = Block::new(Box::new(Overlaid(disk())), "w").snapshot_written_only();
    let state: Written = serde_json::from_str(&block.save_state().unwrap()).unwrap();
    assert_eq!(state.runs, vec![(1, 1), (3, 1)]);
    let (bytes, stored) = saved(&mut block);
    assert_eq!((bytes.len(), stored), (5 * 4096, 2 * 4096));
    let original = disk().data;
    for b in 0..5 {
        let r = b * 4096..(b + 1) * 4096;
        let expect: &[u8] = if b == 1 || b == 3 {
            &original[r.clone()]
        } else {
            &[0u8; 4096]
        };
        assert!(bytes[r] == *expect, "block {b}");
    }

    let mut whole = Block::new(Box::new(Overlaid(disk())), "w");
    assert_eq!(whole.save_state(), None);
    assert_eq!(saved(&mut whole), (original.clone(), original.len() as u64));
    let mut unknown = Block::new(Box::new(disk()), "w").snapshot_written_only();
    assert_eq!(unknown.save_state(), None);
    assert_eq!(saved(&mut unknown).1, original.len() as u64);
}
