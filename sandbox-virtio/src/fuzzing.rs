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
