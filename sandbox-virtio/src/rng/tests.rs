//! virtio-rng with synthetic chains in guest memory.

use vm_memory::{Bytes, GuestAddress};

use super::*;
use crate::testutil::{memory, queue_with, used, used_idx};

fn handler() -> RngHandler {
    RngHandler {
        buf: vec![0; MAX_PER_REQUEST],
        metrics: Default::default(),
    }
}

fn read(mem: &GuestMemory, addr: u64, len: usize) -> Vec<u8> {
    let mut v = vec![0; len];
    mem.read_slice(&mut v, GuestAddress(addr)).unwrap();
    v
}

#[test]
fn writable_buffers_are_filled_and_their_length_reported() {
    let mem = memory();
    let (vq, q) = queue_with(
        &mem,
        &[
            &[(0x1_0000, 16, true), (0x2_0000, 48, true)],
            &[(0x3_0000, 64, true)],
        ],
    );
    let mut h = handler();
    let mut queues = vec![q];
    assert_eq!(h.queue_event(0, &mut queues, &mem), 1);
    assert_eq!(used_idx(&mem, &vq), 2);
    assert_eq!(used(&mem, &vq, 0), (0, 64));
    assert_eq!(used(&mem, &vq, 1), (2, 64));
    // 64 random bytes that are all zero: 2^-512.
    let a = [read(&mem, 0x1_0000, 16), read(&mem, 0x2_0000, 48)].concat();
    let b = read(&mem, 0x3_0000, 64);
    assert!(a.iter().any(|&x| x != 0) && b.iter().any(|&x| x != 0));
    assert_ne!(a, b, "each request gets fresh bytes");
    assert_eq!(h.metrics.bytes.get(), 128);
    // Nothing written past the buffers.
    assert_eq!(read(&mem, 0x1_0000 + 16, 16), vec![0; 16]);
}

#[test]
fn large_requests_get_a_bounded_answer() {
    let mem = memory();
    let (vq, q) = queue_with(&mem, &[&[(0x1_0000, 200 << 10, true)]]);
    let mut queues = vec![q];
    handler().queue_event(0, &mut queues, &mem);
    assert_eq!(used(&mem, &vq, 0), (0, MAX_PER_REQUEST as u32));
}

#[test]
fn bad_requests_are_answered_empty_and_counted() {
    let mem = memory();
    let (vq, q) = queue_with(
        &mem,
        &[
            &[(0x1_0000, 16, false)],      // read-only: nothing to fill
            &[(0xff_0000_0000, 16, true)], // outside guest memory
            &[(0x2_0000, 8, true)],
        ],
    );
    let mut h = handler();
    let mut queues = vec![q];
    h.queue_event(0, &mut queues, &mem);
    assert_eq!(used_idx(&mem, &vq), 3, "every request is answered");
    assert_eq!(used(&mem, &vq, 0), (0, 0));
    assert_eq!(used(&mem, &vq, 1), (1, 0));
    assert_eq!(used(&mem, &vq, 2), (2, 8));
    assert_eq!(h.metrics.malformed.get(), 2);
    assert_eq!(h.metrics.bytes.get(), 8);
}
