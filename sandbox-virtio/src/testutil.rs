//! Synthetic guest memory and descriptor chains for device unit tests.

use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
use virtio_queue::mock::MockSplitQueue;
use virtio_queue::Queue;
use vm_memory::{Bytes, GuestAddress};

use crate::GuestMemory;

pub const F_NEXT: u16 = 1;
pub const F_WRITE: u16 = 2;

/// 1 MiB of guest memory at address 0.
pub fn memory() -> GuestMemory {
    GuestMemory::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap()
}

/// One buffer of a chain: guest address, length, device-writable.
pub type Buf = (u64, u32, bool);

/// Puts `chains` on a fresh 16-entry queue at address 0 and returns it with
/// a `Queue` ready to process them.
pub fn queue_with<'a>(
    mem: &'a GuestMemory,
    chains: &[&[Buf]],
) -> (MockSplitQueue<'a, GuestMemory>, Queue) {
    queue_at(mem, 0, chains)
}

/// Like [`queue_with`], with the queue's rings at guest address `base`.
pub fn queue_at<'a>(
    mem: &'a GuestMemory,
    base: u64,
    chains: &[&[Buf]],
) -> (MockSplitQueue<'a, GuestMemory>, Queue) {
    queue_sized(mem, base, 16, chains)
}

/// Like [`queue_at`], with `len` entries.
pub fn queue_sized<'a>(
    mem: &'a GuestMemory,
    base: u64,
    len: u16,
    chains: &[&[Buf]],
) -> (MockSplitQueue<'a, GuestMemory>, Queue) {
    let vq = MockSplitQueue::create(mem, GuestAddress(base), len);
    add_chains(&vq, 0, chains);
    let q = vq.create_queue::<Queue>().unwrap();
    (vq, q)
}

/// Makes more chains available, starting at descriptor `first`.
pub fn add_chains(vq: &MockSplitQueue<'_, GuestMemory>, first: u16, chains: &[&[Buf]]) {
    let mut next_index = first;
    for chain in chains {
        let descs: Vec<RawDescriptor> = chain
            .iter()
            .enumerate()
            .map(|(i, (addr, len, write))| {
                let last = i + 1 == chain.len();
                let flags = if last { 0 } else { F_NEXT } | if *write { F_WRITE } else { 0 };
                let next = if last { 0 } else { next_index + i as u16 + 1 };
                RawDescriptor::from(SplitDescriptor::new(*addr, *len, flags, next))
            })
            .collect();
        vq.add_desc_chains(&descs, next_index).unwrap();
        next_index += chain.len() as u16;
    }
}

/// The `(id, len)` of used ring entry `i`.
pub fn used(mem: &GuestMemory, vq: &MockSplitQueue<'_, GuestMemory>, i: u64) -> (u32, u32) {
    let base = vq.used_addr().0 + 4 + 8 * i;
    let id: u32 = mem.read_obj(GuestAddress(base)).unwrap();
    let len: u32 = mem.read_obj(GuestAddress(base + 4)).unwrap();
    (id, len)
}

/// The used ring's index.
pub fn used_idx(mem: &GuestMemory, vq: &MockSplitQueue<'_, GuestMemory>) -> u16 {
    mem.read_obj(GuestAddress(vq.used_addr().0 + 2)).unwrap()
}
