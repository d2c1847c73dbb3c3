//! virtio-console queues with synthetic chains and a real socket pair.

use std::io::{Read, Write};
use std::time::Duration;

use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
use vm_memory::{Bytes, GuestAddress};

use super::*;
use crate::testutil::{memory, queue_with, used, used_idx, F_WRITE};
use crate::worker::{Handler, RX, TX};

fn handler() -> (ConsoleHandler, UnixStream) {
    let (device_end, host_end) = UnixStream::pair().unwrap();
    host_end
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let h = ConsoleHandler {
        host: device_end,
        held: Vec::new(),
        host_closed: false,
        metrics: Arc::default(),
    };
    (h, host_end)
}

/// A queue the test does not use.
fn idle() -> Queue {
    Queue::new(16).unwrap()
}

#[test]
fn guest_transmissions_reach_the_host_in_order() {
    let mem = memory();
    mem.write_slice(b"hello ", GuestAddress(0x1_0000)).unwrap();
    mem.write_slice(b"host", GuestAddress(0x2_0000)).unwrap();
    let (vq, tx) = queue_with(
        &mem,
        &[
            &[(0x1_0000, 6, false), (0x2_0000, 4, false)],
            &[(0x1_0000, 5, false)],
        ],
    );
    let (mut h, mut host) = handler();
    let mut queues = vec![idle(), tx];
    assert_eq!(h.queue_event(TX, &mut queues, &mem), 1 << TX);
    let mut got = [0u8; 15];
    host.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"hello hosthello");
    assert_eq!(used_idx(&mem, &vq), 2);
    assert_eq!(h.metrics.from_guest_bytes.get(), 15);
}

#[test]
fn host_bytes_wait_for_guest_buffers_and_are_never_lost() {
    let mem = memory();
    let (vq, rx) = queue_with(&mem, &[&[(0x1_0000, 4, true)]]);
    let (mut h, mut host) = handler();
    host.write_all(b"abcdefghij").unwrap();
    let mut queues = vec![rx, idle()];
    // One 4-byte buffer: "abcd" goes in, the rest is held.
    assert_eq!(h.extra_event(0, &mut queues, &mem), 1 << RX);
    assert_eq!(used(&mem, &vq, 0), (0, 4));
    let mut buf = [0u8; 4];
    mem.read_slice(&mut buf, GuestAddress(0x1_0000)).unwrap();
    assert_eq!(&buf, b"abcd");
    assert_eq!(h.held, b"efghij");
    // The guest adds a larger buffer and kicks.
    let d = RawDescriptor::from(SplitDescriptor::new(0x2_0000, 64, F_WRITE, 0));
    vq.add_desc_chains(&[d], 1).unwrap();
    assert_eq!(h.queue_event(RX, &mut queues, &mem), 1 << RX);
    assert_eq!(used(&mem, &vq, 1), (1, 6));
    let mut rest = [0u8; 6];
    mem.read_slice(&mut rest, GuestAddress(0x2_0000)).unwrap();
    assert_eq!(&rest, b"efghij");
    assert_eq!(h.metrics.to_guest_bytes.get(), 10);
}

#[test]
fn malformed_chains_are_returned_empty() {
    let mem = memory();
    let (vq, q) = queue_with(
        &mem,
        &[&[(0xfff_0000, 16, false)], &[(0x1_0000, u32::MAX, false)]],
    );
    let (mut h, host) = handler();
    let mut queues = vec![idle(), q];
    h.queue_event(TX, &mut queues, &mem);
    assert_eq!(used_idx(&mem, &vq), 2);
    assert_eq!(h.metrics.malformed.get(), 2);
    host.set_nonblocking(true).unwrap();
    assert!(
        (&host).read(&mut [0u8; 8]).is_err(),
        "nothing reached the host"
    );
}

#[test]
fn a_closed_host_end_drops_guest_output_without_failing() {
    let mem = memory();
    let (vq, q) = queue_with(&mem, &[&[(0x1_0000, 8, false)]]);
    let (mut h, host) = handler();
    drop(host);
    let mut queues = vec![idle(), q];
    assert_eq!(h.queue_event(TX, &mut queues, &mem), 1 << TX);
    assert_eq!(used_idx(&mem, &vq), 1);
    assert!(h.host_closed);
}
