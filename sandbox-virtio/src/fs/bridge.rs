//! Views of this crate's guest memory and queues (vm-memory 0.18,
//! virtio-queue 0.18) in the types fuse-backend-rs is built on (vm-memory
//! 0.17, virtio-queue 0.17): the same host mappings and the same ring
//! addresses, so FUSE requests are parsed and answered in place, without a
//! copy.

use virtio_queue::{Queue, QueueT};
use virtio_queue_fuse::QueueT as _;
use vm_memory::{GuestAddress, GuestMemoryBackend as _, GuestMemoryRegion as _};

use crate::GuestMemory;

/// Guest memory in fuse-backend-rs's types.
pub(crate) type Memory = vm_memory_fuse::GuestMemoryMmap<()>;
/// A queue in fuse-backend-rs's types.
pub(crate) type FuseQueue = virtio_queue_fuse::Queue;

/// An alias of `mem`'s regions. The view does not own the mappings (it
/// never unmaps them); whoever holds it must also hold `mem`.
pub(crate) fn alias_memory(mem: &GuestMemory) -> Result<Memory, String> {
    let mut regions = Vec::new();
    for r in mem.iter() {
        let start = r.start_addr();
        let len = usize::try_from(r.len()).map_err(|e| e.to_string())?;
        let host = mem
            .get_host_address(GuestAddress(start.0))
            .map_err(|e| e.to_string())?;
        // SAFETY: `host..host + len` is one region of `mem`, mapped
        // read-write for the guest's lifetime; the view is not owned, so it
        // never unmaps it, and the device keeps `mem` alive as long as the
        // view.
        let mapping = unsafe {
            vm_memory_fuse::MmapRegion::build_raw(
                host,
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
            )
        }
        .map_err(|e| e.to_string())?;
        let region =
            vm_memory_fuse::GuestRegionMmap::new(mapping, vm_memory_fuse::GuestAddress(start.0))
                .ok_or("a guest memory region wraps around")?;
        regions.push(region);
    }
    Memory::from_regions(regions).map_err(|e| e.to_string())
}

fn split(addr: u64) -> (Option<u32>, Option<u32>) {
    (Some(addr as u32), Some((addr >> 32) as u32))
}

/// The same ring, as fuse-backend-rs's queue type.
pub(crate) fn queue(q: &Queue) -> Result<FuseQueue, String> {
    let mut f = FuseQueue::new(q.max_size()).map_err(|e| e.to_string())?;
    f.set_size(q.size());
    let (lo, hi) = split(q.desc_table());
    f.set_desc_table_address(lo, hi);
    let (lo, hi) = split(q.avail_ring());
    f.set_avail_ring_address(lo, hi);
    let (lo, hi) = split(q.used_ring());
    f.set_used_ring_address(lo, hi);
    f.set_next_avail(q.next_avail());
    f.set_next_used(q.next_used());
    f.set_event_idx(q.event_idx_enabled());
    f.set_ready(q.ready());
    Ok(f)
}

/// Copies the ring positions back, so the transport sees where the device
/// stopped.
pub(crate) fn sync_back(from: &FuseQueue, to: &mut Queue) {
    to.set_next_avail(from.next_avail());
    to.set_next_used(from.next_used());
}
