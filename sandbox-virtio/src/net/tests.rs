//! virtio-net queues with synthetic chains and a real seqpacket pair.

use vm_memory::{Bytes, GuestAddress};

use super::*;
use crate::testutil::{memory, queue_with, used, used_idx};
use crate::worker::{Handler, RX, TX};

fn handler() -> (NetHandler, OwnedFd) {
    handler_with_mtu(1500)
}

fn handler_with_mtu(mtu: u16) -> (NetHandler, OwnedFd) {
    let (device_end, host_end) = seqpacket_pair().unwrap();
    (NetHandler::new(device_end, Arc::default(), mtu), host_end)
}

fn idle() -> Queue {
    Queue::new(16).unwrap()
}

fn host_recv(fd: &OwnedFd) -> Option<Vec<u8>> {
    let mut buf = vec![0u8; 65536];
    recv(fd.as_raw_fd(), &mut buf)
        .ok()
        .map(|n| buf[..n].to_vec())
}

fn frame(len: usize, fill: u8) -> Vec<u8> {
    vec![fill; len]
}

#[test]
fn guest_frames_reach_the_host_without_the_header() {
    let mem = memory();
    let mut hdr_and_frame = vec![0u8; HDR_LEN];
    hdr_and_frame.extend(frame(60, 0xab));
    mem.write_slice(&hdr_and_frame[..HDR_LEN], GuestAddress(0x1_0000))
        .unwrap();
    mem.write_slice(&hdr_and_frame[HDR_LEN..], GuestAddress(0x2_0000))
        .unwrap();
    mem.write_slice(&hdr_and_frame, GuestAddress(0x3_0000))
        .unwrap();
    // One frame split across two buffers, one in a single buffer.
    let (vq, tx) = queue_with(
        &mem,
        &[
            &[(0x1_0000, HDR_LEN as u32, false), (0x2_0000, 60, false)],
            &[(0x3_0000, (HDR_LEN + 60) as u32, false)],
        ],
    );
    let (mut h, host) = handler();
    let mut queues = vec![idle(), tx];
    assert_eq!(h.queue_event(TX, &mut queues, &mem), 1 << TX);
    assert_eq!(host_recv(&host).unwrap(), frame(60, 0xab));
    assert_eq!(host_recv(&host).unwrap(), frame(60, 0xab));
    assert!(host_recv(&host).is_none());
    assert_eq!(used_idx(&mem, &vq), 2);
    assert_eq!(h.metrics.tx_frames.load(Ordering::Relaxed), 2);
}

#[test]
fn malformed_and_oversized_guest_frames_are_dropped_and_counted() {
    let mem = memory();
    let (vq, tx) = queue_with(
        &mem,
        &[
            &[(0x1_0000, 8, false)],                           // shorter than the header
            &[(0x1_0000, (HDR_LEN + 1514 + 1) as u32, false)], // oversized
            &[(0x1_0000, 100, true)],                          // device-writable: not readable
            &[(0xff_ff00, 0x1000, false)],                     // past guest memory
        ],
    );
    let (mut h, host) = handler();
    let capacity = h.tx_buf.capacity();
    let mut queues = vec![idle(), tx];
    h.queue_event(TX, &mut queues, &mem);
    assert!(host_recv(&host).is_none());
    assert_eq!(used_idx(&mem, &vq), 4, "every chain is returned");
    assert_eq!(h.metrics.dropped.load(Ordering::Relaxed), 4);
    assert_eq!(
        h.tx_buf.capacity(),
        capacity,
        "an oversized frame grew the buffer"
    );
}

#[test]
fn host_frames_fill_guest_buffers_and_wait_for_more() {
    let mem = memory();
    let (vq, rx) = queue_with(&mem, &[&[(0x1_0000, 2048, true)]]);
    let (mut h, host) = handler();
    send(host.as_raw_fd(), &frame(100, 1)).unwrap();
    send(host.as_raw_fd(), &frame(200, 2)).unwrap();
    let mut queues = vec![rx, idle()];
    assert_eq!(h.extra_event(0, &mut queues, &mem), 1 << RX);
    assert_eq!(used(&mem, &vq, 0), (0, (HDR_LEN + 100) as u32));
    let mut got = vec![0u8; HDR_LEN + 100];
    mem.read_slice(&mut got, GuestAddress(0x1_0000)).unwrap();
    assert_eq!(u16::from_le_bytes([got[10], got[11]]), 1, "num_buffers");
    assert_eq!(&got[HDR_LEN..], &frame(100, 1)[..]);
    // The second frame waits in the device for the next buffer.
    assert!(h.held.is_some());
    crate::testutil::add_chains(&vq, 1, &[&[(0x2_0000, 2048, true)]]);
    assert_eq!(h.queue_event(RX, &mut queues, &mem), 1 << RX);
    assert_eq!(used(&mem, &vq, 1), (1, (HDR_LEN + 200) as u32));
    assert!(h.held.is_none());
    assert_eq!(h.metrics.rx_frames.load(Ordering::Relaxed), 2);
}

#[test]
fn a_guest_buffer_too_small_drops_the_frame_not_the_device() {
    let mem = memory();
    let (vq, rx) = queue_with(&mem, &[&[(0x1_0000, 64, true)], &[(0x2_0000, 2048, true)]]);
    let (mut h, host) = handler();
    send(host.as_raw_fd(), &frame(1000, 7)).unwrap();
    send(host.as_raw_fd(), &frame(50, 8)).unwrap();
    let mut queues = vec![rx, idle()];
    h.extra_event(0, &mut queues, &mem);
    assert_eq!(used(&mem, &vq, 0), (0, 0));
    assert_eq!(used(&mem, &vq, 1), (1, (HDR_LEN + 50) as u32));
    assert_eq!(h.metrics.dropped.load(Ordering::Relaxed), 1);
}

#[test]
fn config_space_has_the_mac_and_link_up() {
    let (net, _host) = Net::new([2, 0x5b, 0, 0, 0, 0x0f], 65000).unwrap();
    let mut cfg = [0u8; 12];
    net.read_config(0, &mut cfg);
    assert_eq!(&cfg[..6], &[2, 0x5b, 0, 0, 0, 0x0f]);
    assert_eq!(u16::from_le_bytes([cfg[6], cfg[7]]), 1);
    assert_eq!(u16::from_le_bytes([cfg[10], cfg[11]]), 65000, "mtu");
    assert_eq!(net.device_type(), 1);
    assert_ne!(net.features() & F_MAC, 0);
    assert_ne!(net.features() & F_MTU, 0);
    let err = Net::new([2, 0, 0, 0, 0, 1], 67).err().unwrap();
    assert!(err.to_string().contains("below the minimum of 68"), "{err}");
}

#[test]
fn a_large_mtu_link_carries_64_kib_frames_both_ways() {
    let mem = memory();
    let big = frame(65014, 9);
    let mut hdr_and_frame = vec![0u8; HDR_LEN];
    hdr_and_frame.extend(&big);
    mem.write_slice(&hdr_and_frame, GuestAddress(0x1_0000))
        .unwrap();
    let (_, tx) = queue_with(&mem, &[&[(0x1_0000, (HDR_LEN + 65014) as u32, false)]]);
    // As Linux posts big receive buffers: the header, the rest of the
    // first page, then 16 pages.
    let mut chain = vec![
        (0x4_0000, HDR_LEN as u32, true),
        (0x4_0010, 4096 - 16, true),
    ];
    chain.extend((0..16).map(|i| (0x5_0000 + i * 0x1000, 0x1000, true)));
    // 18 buffers: a queue of 32, its rings clear of the tx queue's.
    let (vq, rx) = crate::testutil::queue_sized(&mem, 0x8000, 32, &[&chain]);
    let (mut h, host) = handler_with_mtu(65000);
    let capacity = h.tx_buf.capacity();
    let mut queues = vec![rx, tx];
    h.queue_event(TX, &mut queues, &mem);
    assert_eq!(host_recv(&host).unwrap(), big, "guest to host");
    assert_eq!(
        h.tx_buf.capacity(),
        capacity,
        "the transmit buffer is reused"
    );
    send(host.as_raw_fd(), &big).unwrap();
    h.extra_event(0, &mut queues, &mem);
    assert_eq!(used(&mem, &vq, 0), (0, (HDR_LEN + 65014) as u32));
    let mut got = vec![0u8; 4096 - 16 + 16 * 4096];
    mem.read_slice(&mut got[..4096 - 16], GuestAddress(0x4_0010))
        .unwrap();
    mem.read_slice(&mut got[4096 - 16..], GuestAddress(0x5_0000))
        .unwrap();
    assert_eq!(&got[..65014], &big[..], "host to guest");
    // One byte over the MTU is dropped.
    send(host.as_raw_fd(), &frame(65015, 1)).unwrap();
    h.extra_event(0, &mut queues, &mem);
    assert_eq!(h.metrics.dropped.load(Ordering::Relaxed), 1);
}
