//! Entry points for the cargo-fuzz targets in `fuzz/` (feature `fuzzing`):
//! device queue handling over guest memory filled with arbitrary bytes.
//! Whatever the bytes, the handlers must return without panicking.

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
