//! virtio-fs with synthetic chains: FUSE requests in guest memory, served
//! by fuse-backend-rs's passthrough over a scratch directory.

use std::sync::Arc;

use fuse_backend_rs::passthrough::PassthroughFs;
use sandbox_fs::{Access, Confined};
use vm_memory::{Bytes, GuestAddress};

use super::*;
use crate::testutil::{memory, queue_sized, used};

const INIT: u32 = 26;
const LOOKUP: u32 = 1;
const OPEN: u32 = 14;
const READ: u32 = 15;

/// A request: the FUSE in-header (40 bytes) and `body`.
fn request(opcode: u32, unique: u64, nodeid: u64, body: &[u8]) -> Vec<u8> {
    let len = 40 + body.len() as u32;
    let mut v = Vec::new();
    v.extend(len.to_le_bytes());
    v.extend(opcode.to_le_bytes());
    v.extend(unique.to_le_bytes());
    v.extend(nodeid.to_le_bytes());
    v.extend([0u8; 16]); // uid, gid, pid, padding
    v.extend(body);
    v
}

fn u32s(words: &[u32]) -> Vec<u8> {
    words.iter().flat_map(|w| w.to_le_bytes()).collect()
}

/// An empty queue away from the one under test (the high-priority queue).
fn idle(mem: &GuestMemory) -> Queue {
    queue_sized(mem, 0xc_0000, 16, &[]).1
}

fn scratch(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("vfs-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("shared")).unwrap();
    std::fs::write(dir.join("shared/hello.txt"), b"hello from the host\n").unwrap();
    std::fs::write(dir.join("outside.txt"), b"not for the guest\n").unwrap();
    dir
}

fn passthrough(root: &std::path::Path) -> Arc<dyn Serve> {
    let fs: Arc<Confined<PassthroughFs>> =
        Arc::new(sandbox_fs::bind(root, Access::Writable).unwrap());
    Arc::new(Served::new(fs, vec![std::fs::File::open(root).unwrap()]))
}

/// Sends `req` as one chain (request at 0x4_0000, reply buffer at
/// 0x8_0000) and returns (error, reply body).
fn call(h: &mut FsHandler, mem: &Arc<GuestMemory>, req: &[u8]) -> (i32, Vec<u8>) {
    mem.write_slice(req, GuestAddress(0x4_0000)).unwrap();
    let (vq, q) = queue_sized(
        mem,
        0,
        16,
        &[&[
            (0x4_0000, req.len() as u32, false),
            (0x8_0000, 64 << 10, true),
        ]],
    );
    h.queues[1] = bridge::queue(&q).unwrap();
    let mut queues = vec![idle(mem), q];
    assert_eq!(h.queue_event(1, &mut queues, mem), 1 << 1);
    let (_, len) = used(mem, &vq, 0);
    assert!(len >= 16, "an out-header at least");
    let mut out = vec![0u8; len as usize];
    mem.read_slice(&mut out, GuestAddress(0x8_0000)).unwrap();
    let error = i32::from_le_bytes(out[4..8].try_into().unwrap());
    (error, out[16..].to_vec())
}

#[test]
fn requests_in_guest_memory_are_answered_in_place() {
    let dir = scratch("answer");
    let mem = Arc::new(memory());
    let server = passthrough(&dir.join("shared"));
    let metrics = Arc::new(FsMetrics::default());
    let mut h = FsHandler::new(server, &mem, &[idle(&mem), idle(&mem)], metrics.clone()).unwrap();

    // INIT: protocol 7.31, no flags.
    let (err, _) = call(&mut h, &mem, &request(INIT, 1, 0, &u32s(&[7, 31, 0, 0])));
    assert_eq!(err, 0);

    let (err, entry) = call(&mut h, &mem, &request(LOOKUP, 2, 1, b"hello.txt\0"));
    assert_eq!(err, 0);
    let node = u64::from_le_bytes(entry[..8].try_into().unwrap());
    let (err, open) = call(&mut h, &mem, &request(OPEN, 3, node, &u32s(&[0, 0])));
    assert_eq!(err, 0);
    let fh = u64::from_le_bytes(open[..8].try_into().unwrap());
    let mut read_in = Vec::new();
    read_in.extend(fh.to_le_bytes());
    read_in.extend(0u64.to_le_bytes()); // offset
    read_in.extend(u32s(&[4096, 0])); // size, read flags
    read_in.extend(0u64.to_le_bytes()); // lock owner
    read_in.extend(u32s(&[0, 0])); // flags, padding
    let (err, data) = call(&mut h, &mem, &request(READ, 4, node, &read_in));
    assert_eq!((err, data.as_slice()), (0, &b"hello from the host\n"[..]));

    // Names that would leave the shared directory are refused.
    for name in [&b"..\0"[..], b"../outside.txt\0", b"/etc/passwd\0"] {
        let (err, _) = call(&mut h, &mem, &request(LOOKUP, 5, 1, name));
        assert!(
            err < 0,
            "{:?} must fail, got {err}",
            String::from_utf8_lossy(name)
        );
    }
    assert_eq!(metrics.requests.get(), 7);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_guest_sync_is_a_host_syncfs_or_enosys_without_directories() {
    const SYNCFS: u32 = 50;
    let dir = scratch("syncfs");
    let mem = Arc::new(memory());
    let served = passthrough(&dir.join("shared"));
    let fs: Arc<Confined<PassthroughFs>> =
        Arc::new(sandbox_fs::bind(&dir.join("shared"), Access::Writable).unwrap());
    let unsynced: Arc<dyn Serve> = Arc::new(Served::new(fs, Vec::new()));
    for (server, expect) in [(served, 0), (unsynced, -libc::ENOSYS)] {
        let metrics = Arc::new(FsMetrics::default());
        let mut h = FsHandler::new(server, &mem, &[idle(&mem), idle(&mem)], metrics).unwrap();
        let (err, _) = call(&mut h, &mem, &request(INIT, 1, 0, &u32s(&[7, 31, 0, 0])));
        assert_eq!(err, 0);
        let (err, body) = call(&mut h, &mem, &request(SYNCFS, 2, 1, &[0u8; 8]));
        assert_eq!((err, body.len()), (expect, 0));
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn garbage_is_answered_without_a_reply_and_counted() {
    let dir = scratch("garbage");
    let mem = Arc::new(memory());
    let server = passthrough(&dir.join("shared"));
    let metrics = Arc::new(FsMetrics::default());
    let mut h = FsHandler::new(server, &mem, &[idle(&mem), idle(&mem)], metrics.clone()).unwrap();
    // A header shorter than FUSE's.
    let junk = [0xffu8; 7];
    mem.write_slice(&junk, GuestAddress(0x4_0000)).unwrap();
    let (vq, q) = queue_sized(
        &mem,
        0,
        16,
        &[&[(0x4_0000, 7, false), (0x8_0000, 4096, true)]],
    );
    h.queues[1] = bridge::queue(&q).unwrap();
    let mut queues = vec![idle(&mem), q];
    h.queue_event(1, &mut queues, &mem);
    assert_eq!(used(&mem, &vq, 0), (0, 0));
    assert_eq!(metrics.malformed.get(), 1);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn tags_are_validated() {
    let dir = scratch("tags");
    let fs = Arc::new(sandbox_fs::bind(&dir.join("shared"), Access::ReadOnly).unwrap());
    assert!(Fs::new("", fs.clone()).is_err());
    assert!(Fs::new(&"t".repeat(37), fs.clone()).is_err());
    let dev = Fs::new("workspace", fs).unwrap();
    let mut tag = [0u8; 40];
    dev.read_config(0, &mut tag);
    assert_eq!(&tag[..9], b"workspace");
    assert_eq!(&tag[36..], &1u32.to_le_bytes());
    let _ = std::fs::remove_dir_all(&dir);
}

/// Records the queues whose interrupt was raised.
#[derive(Default)]
struct Raised(std::sync::Mutex<Vec<usize>>);

impl Interrupt for Raised {
    fn signal_used_queue(&self, queue: usize) {
        self.0.lock().unwrap().push(queue);
    }
}

#[test]
fn with_event_indices_an_answer_is_signalled_as_soon_as_the_driver_asked_for_it() {
    use virtio_queue_fuse::QueueT as _;
    let dir = scratch("eager");
    let mem = Arc::new(memory());
    let server = passthrough(&dir.join("shared"));
    let metrics = Arc::new(FsMetrics::default());
    let mut h = FsHandler::new(server, &mem, &[idle(&mem), idle(&mem)], metrics.clone()).unwrap();
    let init = request(INIT, 1, 0, &u32s(&[7, 31, 0, 0]));
    let lookup = request(LOOKUP, 2, 1, b"hello.txt\0");
    mem.write_slice(&init, GuestAddress(0x4_0000)).unwrap();
    mem.write_slice(&lookup, GuestAddress(0x5_0000)).unwrap();
    mem.write_slice(&lookup, GuestAddress(0x6_0000)).unwrap();
    let (vq, q) = queue_sized(
        &mem,
        0,
        16,
        &[
            &[(0x4_0000, init.len() as u32, false), (0x8_0000, 4096, true)],
            &[
                (0x5_0000, lookup.len() as u32, false),
                (0x9_0000, 4096, true),
            ],
            &[
                (0x6_0000, lookup.len() as u32, false),
                (0xa_0000, 4096, true),
            ],
        ],
    );
    h.queues[1] = bridge::queue(&q).unwrap();
    // The test queue's used ring leaves no room for the avail ring's
    // used_event field: the device writes its used ring elsewhere.
    const USED: u64 = 0xb_0000;
    h.queues[1].set_used_ring_address(Some(USED as u32), Some(0));
    h.use_event_idx();
    // used_event (after the 16 avail entries): the driver asks to hear
    // once the used index passes 2, that is at the third answer only.
    mem.write_obj(2u16, GuestAddress(vq.avail_addr().0 + 4 + 2 * 16))
        .unwrap();
    let mut queues = vec![idle(&mem), q];
    let raised = Raised::default();
    let left = h.queue_event_eager(1, &mut queues, &mem, &raised);
    assert_eq!(
        *raised.0.lock().unwrap(),
        [1],
        "the third answer, raised in the loop"
    );
    assert_eq!(left, 0, "nothing left for the worker to raise");
    assert_eq!(metrics.requests.get(), 3);
    let used_idx: u16 = mem.read_obj(GuestAddress(USED + 2)).unwrap();
    assert_eq!(used_idx, 3);
    let _ = std::fs::remove_dir_all(&dir);
}
