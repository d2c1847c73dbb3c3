//! Entry points for the cargo-fuzz targets in `fuzz/` (feature `fuzzing`):
//! device queue handling over guest memory filled with arbitrary bytes,
//! register accesses on the virtio-mmio transport, and vhost-user messages
//! from a front end. Whatever the bytes, the code must return without
//! panicking.

use std::sync::mpsc;

use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::eventfd::EventFd;

use crate::worker::Handler;
use crate::GuestMemory;

const MEM: usize = 64 << 10;

/// Guest memory holding `data`.
fn memory(data: &[u8]) -> GuestMemory {
    let mem = GuestMemory::from_ranges(&[(GuestAddress(0), MEM)]).expect("fuzz memory");
    let n = data.len().min(MEM);
    let _ = mem.write_slice(&data[..n], GuestAddress(0));
    mem
}

/// A 16-entry queue whose descriptor table, avail and used rings start at
/// `base`, so their contents come from the fuzz input.
fn queue(base: u32) -> Queue {
    let mut q = Queue::new(16).expect("queue");
    q.set_size(16);
    q.set_desc_table_address(Some(base), Some(0));
    q.set_avail_ring_address(Some(base + 0x100), Some(0));
    q.set_used_ring_address(Some(base + 0x200), Some(0));
    q.set_ready(true);
    q
}

/// Runs virtio-blk request handling over the bytes.
pub fn block_queue(data: &[u8]) {
    let mem = memory(data);
    let mut h = crate::block::fuzz_handler(Box::new(sandbox_rootfs::MemDisk::new(8 << 10)));
    h.queue_event(0, &mut [queue(0)], &mem);
}

/// Runs virtio-vsock transmit and receive handling over the bytes.
pub fn vsock_queues(data: &[u8]) {
    let mem = memory(data);
    let (_requests, req_rx) = mpsc::channel();
    let Ok(wake) = EventFd::new(libc::EFD_NONBLOCK) else {
        return;
    };
    let Ok(mut h) = crate::vsock::fuzz_handler(3, req_rx, wake) else {
        return;
    };
    // The transmit ring (the guest-to-device parser) sits at the start of
    // the input, where the fuzzer mutates most.
    let mut queues = [queue(0x400), queue(0), queue(0x800)];
    h.queue_event(1, &mut queues, &mem);
    h.queue_event(0, &mut queues, &mem);
}

/// Runs virtio-net receive (a host frame taken from the input) and
/// transmit handling over the bytes.
pub fn net_queues(data: &[u8]) {
    use crate::worker::RxTx;
    use std::os::fd::AsRawFd;
    let mem = memory(data);
    let Ok((mut h, peer)) = crate::net::fuzz_handler() else {
        return;
    };
    // A frame from the host stack: the input's last bytes (up to 1514).
    let frame = &data[data.len().saturating_sub(1514)..];
    if !frame.is_empty() {
        // SAFETY: `frame` is valid for reads of its length; `peer` is open.
        unsafe {
            libc::send(
                peer.as_raw_fd(),
                frame.as_ptr().cast(),
                frame.len(),
                libc::MSG_DONTWAIT,
            )
        };
    }
    let mut rx = queue(0x800);
    let mut tx = queue(0);
    h.drain_tx(&mut tx, &mem);
    h.fill_rx(&mut rx, &mem);
}

/// Runs virtio-rng request handling over the bytes.
pub fn rng_queue(data: &[u8]) {
    let mem = memory(data);
    let mut h = crate::rng::fuzz_handler();
    h.queue_event(0, &mut [queue(0)], &mem);
}

/// A device with two queues whose activation succeeds without a worker:
/// the mmio target exercises the transport, not a device.
struct Inert {
    queues: Option<Vec<Queue>>,
}

impl crate::VirtioDevice for Inert {
    fn device_type(&self) -> u32 {
        crate::device_id::RNG
    }
    fn queue_max_sizes(&self) -> &[u16] {
        &[16, 16]
    }
    fn features(&self) -> u64 {
        crate::VIRTIO_F_VERSION_1 | 1
    }
    fn read_config(&self, offset: u64, data: &mut [u8]) {
        crate::device::read_config_bytes(&[1, 2, 3, 4, 5, 6, 7, 8], offset, data);
    }
    fn activate(&mut self, ctx: crate::ActivationContext) -> Result<(), crate::DeviceError> {
        ctx.validate(2)?;
        self.queues = Some(ctx.queues);
        Ok(())
    }
    fn reset(&mut self) -> Option<Vec<Queue>> {
        self.queues.take()
    }
}

/// Applies register reads and writes from the bytes to a virtio-mmio
/// device, as a KVM guest's MMIO exits would: each access is a flag byte
/// (read or write, 1/2/4/8 bytes), an offset byte (times 4, covering the
/// registers and the config space) and, for writes, the value.
pub fn mmio_registers(data: &[u8]) {
    let mem = std::sync::Arc::new(memory(data));
    let Ok(irq) = EventFd::new(libc::EFD_NONBLOCK) else {
        return;
    };
    let Ok(dev) = crate::mmio::MmioDevice::new(Box::new(Inert { queues: None }), mem, irq) else {
        return;
    };
    let mut rest = data;
    while rest.len() >= 2 {
        let (flag, off) = (rest[0], u64::from(rest[1]) * 4);
        rest = &rest[2..];
        let len = [1usize, 2, 4, 8][usize::from(flag >> 1) & 3];
        if flag & 1 == 0 {
            let mut buf = [0u8; 8];
            dev.read(off, &mut buf[..len]);
        } else {
            let n = len.min(rest.len());
            dev.write(off, &rest[..n]);
            rest = &rest[n..];
        }
    }
    dev.shutdown();
}

/// Feeds the bytes to the vhost-user backend as messages from a front end
/// (UML's `virtio_uml` runs in the guest kernel, so every message is guest
/// controlled), serving an rng device, until the stream ends or a request
/// fails.
pub fn vhost_user_messages(data: &[u8]) {
    use std::io::Write;
    use std::sync::{Arc, Mutex};
    let Ok((ours, mut theirs)) = std::os::unix::net::UnixStream::pair() else {
        return;
    };
    // The socket buffer takes the whole input (inputs are small).
    if theirs.write_all(data).is_err() {
        return;
    }
    let _ = theirs.shutdown(std::net::Shutdown::Write);
    let backend = Arc::new(Mutex::new(crate::vhost_user::VhostUserBackend::new(
        crate::rng::Rng::new(),
    )));
    let mut handler = vhost::vhost_user::BackendReqHandler::from_stream(ours, backend.clone());
    for _ in 0..64 {
        if handler.handle_request().is_err() {
            break;
        }
    }
    backend.lock().unwrap_or_else(|e| e.into_inner()).shutdown();
}

/// A scratch directory for the virtio-fs target: `shared/` is served, and
/// `outside` next to it must never change.
fn fs_scratch() -> &'static std::path::Path {
    static DIR: std::sync::OnceLock<std::path::PathBuf> = std::sync::OnceLock::new();
    DIR.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("sandbox-fuzz-fs-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("shared")).expect("fuzz scratch");
        std::fs::write(dir.join("outside"), b"outside").expect("fuzz scratch");
        dir
    })
}

fn fs_runtime() -> &'static tokio::runtime::Runtime {
    static RT: std::sync::OnceLock<tokio::runtime::Runtime> = std::sync::OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("fuzz runtime")
    })
}

/// Feeds the bytes as a sequence of FUSE requests (each as long as its
/// header's length field says, clamped to what is left), each in its own
/// descriptor chain with a reply buffer, to virtio-fs over a memory file
/// system and over a confined passthrough of a scratch directory, each in
/// `Tracked` as the library serves them. Then saves the tracked ids and
/// restores them into a new passthrough (as a snapshot would), and checks
/// that nothing next to the served directory changed.
pub fn fs_requests(data: &[u8]) {
    use std::sync::Arc;
    let scratch = fs_scratch();
    let shared = scratch.join("shared");
    let _ = std::fs::remove_dir_all(&shared);
    let _ = std::fs::create_dir_all(shared.join("dir"));
    let _ = std::fs::write(shared.join("file"), b"content");
    let Ok(bound) = sandbox_fs::bind(&shared, sandbox_fs::Access::Writable) else {
        return;
    };
    let memory = sandbox_fs::Virtual::new(
        Arc::new(
            sandbox_fs::MemoryFs::new()
                .size_limit(1 << 20)
                .file("/file", b"content")
                .expect("seed file"),
        ),
        fs_runtime().handle().clone(),
        std::time::Duration::from_secs(5),
    );
    let memory = sandbox_fs::Confined::new(memory, false);
    let bound = Arc::new(sandbox_fs::Tracked::new(bound));
    run_fs(bound.clone(), data);
    run_fs(Arc::new(sandbox_fs::Tracked::new(memory)), data);
    // Whatever the requests left in the id table restores or fails
    // cleanly, and the restored file system stays inside its directory.
    if let Ok(again) = sandbox_fs::bind(&shared, sandbox_fs::Access::Writable) {
        if let Ok((restored, _)) = sandbox_fs::Tracked::restore(again, &bound.save()) {
            run_fs(Arc::new(restored), data);
        }
    }
    let mut names: Vec<_> = std::fs::read_dir(scratch)
        .map(|d| d.filter_map(|e| e.ok()).map(|e| e.file_name()).collect())
        .unwrap_or_default();
    names.sort();
    assert_eq!(
        names,
        ["outside", "shared"],
        "something appeared next to the served directory"
    );
    assert_eq!(
        std::fs::read(scratch.join("outside")).ok().as_deref(),
        Some(&b"outside"[..]),
        "the file next to the served directory changed"
    );
}

fn run_fs<F: sandbox_fs::FuseFs>(fs: std::sync::Arc<F>, data: &[u8]) {
    const REQ: u64 = 0x1000;
    const REPLY: u64 = 0x8000;
    let mem = std::sync::Arc::new(
        GuestMemory::from_ranges(&[(GuestAddress(0), MEM)]).expect("fuzz memory"),
    );
    let mut rest = data;
    let queues = [queue(0x400), queue(0)];
    let Some(mut h) = crate::fs::fuzz_handler(fs, &mem, &queues) else {
        return;
    };
    let mut queues = queues;
    let mut idx: u16 = 0;
    while rest.len() >= 4 && idx < 16 {
        let want = u32::from_le_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
        let n = want.clamp(4, rest.len()).min(0x6000);
        let (msg, tail) = rest.split_at(n);
        rest = tail;
        let _ = mem.write_slice(msg, GuestAddress(REQ));
        // Descriptor `2 * idx`: the request; `2 * idx + 1`: the reply.
        let d = u64::from(idx % 8) * 32;
        let desc = |i: u64, addr: u64, len: u32, flags: u16, next: u16| {
            let at = d + i * 16;
            let _ = mem.write_obj(addr, GuestAddress(at));
            let _ = mem.write_obj(len, GuestAddress(at + 8));
            let _ = mem.write_obj(flags, GuestAddress(at + 12));
            let _ = mem.write_obj(next, GuestAddress(at + 14));
        };
        let head = (idx % 8) * 2;
        desc(0, REQ, n as u32, 1, head + 1);
        desc(1, REPLY, 0x8000, 2, 0);
        // avail ring at 0x100: idx, then the ring.
        let slot = GuestAddress(0x104 + u64::from(idx % 16) * 2);
        let _ = mem.write_obj(head, slot);
        idx += 1;
        let _ = mem.write_obj(idx, GuestAddress(0x102));
        h.queue_event(1, &mut queues, &mem);
    }
}
