//! The vsock device's packet handling with synthetic queues and real
//! socket pairs: handshake, data both ways, credit, close, malformed input.

use std::io::{Read, Write};
use std::sync::mpsc;
use std::time::Duration;

use virtio_queue::QueueT;
use vm_memory::{Bytes, GuestAddress};

use super::conn::BUF_ALLOC;
use super::handler::{ConnectRequest, VsockHandler, RX, TX};
use super::packet::*;
use super::*;
use crate::testutil::{add_chains, memory, queue_at, queue_sized, used};
use crate::worker::Handler;
use crate::GuestMemory;

const GUEST: u64 = 3;
const PORT: u32 = 1024;
const RX_BUF: u64 = 0x1_0000;
const TX_BUF: u64 = 0x8_0000;

struct Rig<'a> {
    mem: &'a GuestMemory,
    h: VsockHandler,
    requests: mpsc::Sender<ConnectRequest>,
    rx: virtio_queue::mock::MockSplitQueue<'a, GuestMemory>,
    tx: virtio_queue::mock::MockSplitQueue<'a, GuestMemory>,
    queues: Vec<Queue>,
    rx_used: u64,
    rx_added: u16,
    tx_added: u16,
}

impl<'a> Rig<'a> {
    fn new(mem: &'a GuestMemory) -> Self {
        let (requests, rx_req) = mpsc::channel();
        let wake = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let h = VsockHandler::new(GUEST, rx_req, wake, Arc::default()).unwrap();
        let (rx, rxq) = queue_at(mem, 0, &[]);
        let (tx, txq) = queue_sized(mem, 0x1000, 64, &[]);
        let evq = Queue::new(16).unwrap();
        Self {
            mem,
            h,
            requests,
            rx,
            tx,
            queues: vec![rxq, txq, evq],
            rx_used: 0,
            rx_added: 0,
            tx_added: 0,
        }
    }

    /// Gives the device a receive buffer of `len` bytes.
    fn rx_buffer(&mut self, len: u32) {
        let addr = RX_BUF + u64::from(self.rx_added) * 0x1_0000;
        add_chains(&self.rx, self.rx_added, &[&[(addr, len, true)]]);
        self.rx_added += 1;
    }

    /// The next packet the device put in a receive buffer.
    fn next_rx(&mut self) -> Option<(Header, Vec<u8>)> {
        let idx: u16 = self
            .mem
            .read_obj(GuestAddress(self.rx.used_addr().0 + 2))
            .unwrap();
        if u64::from(idx) <= self.rx_used {
            return None;
        }
        let (id, len) = used(self.mem, &self.rx, self.rx_used);
        self.rx_used += 1;
        let addr = RX_BUF + u64::from(id) * 0x1_0000;
        let mut raw = [0u8; HDR_LEN];
        self.mem.read_slice(&mut raw, GuestAddress(addr)).unwrap();
        let mut data = vec![0u8; len as usize - HDR_LEN];
        self.mem
            .read_slice(&mut data, GuestAddress(addr + HDR_LEN as u64))
            .unwrap();
        Some((Header::parse(&raw), data))
    }

    /// The guest transmits one packet.
    fn guest_sends(&mut self, h: Header, data: &[u8]) -> u64 {
        // Packets are handled as they are queued, so four slots suffice.
        let addr = TX_BUF + u64::from(self.tx_added % 4) * 0x1_0000;
        self.mem
            .write_slice(&h.to_bytes(), GuestAddress(addr))
            .unwrap();
        self.mem
            .write_slice(data, GuestAddress(addr + HDR_LEN as u64))
            .unwrap();
        let len = (HDR_LEN + data.len()) as u32;
        add_chains(&self.tx, self.tx_added, &[&[(addr, len, false)]]);
        self.tx_added += 1;
        self.h.queue_event(TX, &mut self.queues, self.mem)
    }

    fn host_event(&mut self) -> u64 {
        self.h.extra_event(1, &mut self.queues, self.mem)
    }

    fn guest_header(op: u16, host_port: u32, len: u32, fwd_cnt: u32) -> Header {
        Header {
            src_cid: GUEST,
            dst_cid: HOST_CID,
            src_port: PORT,
            dst_port: host_port,
            len,
            kind: TYPE_STREAM,
            op,
            flags: 0,
            buf_alloc: 4096,
            fwd_cnt,
        }
    }

    /// Runs the handshake and returns the host stream and host port.
    fn connect(&mut self) -> (UnixStream, u32) {
        let (reply, result) = mpsc::channel();
        self.requests
            .send(ConnectRequest { port: PORT, reply })
            .unwrap();
        self.rx_buffer(4096);
        self.h.extra_event(0, &mut self.queues, self.mem);
        let (req, _) = self.next_rx().expect("a REQUEST packet");
        assert_eq!(
            (req.op, req.src_cid, req.dst_cid, req.dst_port),
            (OP_REQUEST, HOST_CID, GUEST, PORT)
        );
        self.guest_sends(Self::guest_header(OP_RESPONSE, req.src_port, 0, 0), &[]);
        let stream = result
            .recv_timeout(Duration::from_secs(1))
            .unwrap()
            .unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(2)))
            .unwrap();
        (stream, req.src_port)
    }
}

#[test]
fn handshake_then_data_both_ways() {
    let mem = memory();
    let mut r = Rig::new(&mem);
    let (mut host, port) = r.connect();
    r.guest_sends(Rig::guest_header(OP_RW, port, 4, 0), b"ping");
    let mut got = [0u8; 4];
    host.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"ping");

    host.write_all(b"pong").unwrap();
    r.rx_buffer(4096);
    assert_eq!(r.host_event(), 1 << RX);
    let (h, data) = r.next_rx().unwrap();
    assert!(
        r.next_rx().is_none(),
        "4 forwarded bytes need no credit update"
    );
    assert_eq!(
        (h.op, h.src_port, h.dst_port, data.as_slice()),
        (OP_RW, port, PORT, &b"pong"[..])
    );
    assert_eq!(h.buf_alloc, BUF_ALLOC);
    assert_eq!(h.fwd_cnt, 4, "the guest learns we forwarded its 4 bytes");
}

#[test]
fn the_host_never_exceeds_the_guest_credit() {
    let mem = memory();
    let mut r = Rig::new(&mem);
    let (mut host, port) = r.connect();
    host.write_all(&[7u8; 6000]).unwrap();
    for _ in 0..4 {
        r.rx_buffer(8192);
    }
    r.host_event();
    let (h, data) = r.next_rx().unwrap();
    assert_eq!((h.op, data.len()), (OP_RW, 4096), "guest buf_alloc is 4096");
    assert!(r.next_rx().is_none());
    // The guest consumed everything: 1904 more bytes may flow.
    r.guest_sends(Rig::guest_header(OP_CREDIT_UPDATE, port, 0, 4096), &[]);
    let (h, data) = r.next_rx().unwrap();
    assert_eq!((h.op, data.len()), (OP_RW, 1904));
}

#[test]
fn closing_the_host_end_resets_the_guest_connection() {
    let mem = memory();
    let mut r = Rig::new(&mem);
    let (host, port) = r.connect();
    drop(host);
    r.rx_buffer(4096);
    r.host_event();
    let (h, _) = r.next_rx().unwrap();
    assert_eq!((h.op, h.src_port), (OP_RST, port));
    assert!(r.h.conns.is_empty());
}

#[test]
fn a_guest_shutdown_closes_the_host_end() {
    let mem = memory();
    let mut r = Rig::new(&mem);
    let (mut host, port) = r.connect();
    r.rx_buffer(4096);
    r.guest_sends(Rig::guest_header(OP_SHUTDOWN, port, 0, 0), &[]);
    assert_eq!(host.read(&mut [0u8; 8]).unwrap(), 0, "end of file");
    assert_eq!(r.next_rx().unwrap().0.op, OP_RST);
}

#[test]
fn a_refused_connection_reports_connection_refused() {
    let mem = memory();
    let mut r = Rig::new(&mem);
    let (reply, result) = mpsc::channel();
    r.requests.send(ConnectRequest { port: 9, reply }).unwrap();
    r.rx_buffer(4096);
    r.h.extra_event(0, &mut r.queues, &mem);
    let (req, _) = r.next_rx().unwrap();
    let mut rst = Rig::guest_header(OP_RST, req.src_port, 0, 0);
    rst.src_port = 9;
    r.guest_sends(rst, &[]);
    let err = result.recv().unwrap().unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionRefused);
}

#[test]
fn malformed_and_unexpected_packets_are_counted_or_reset() {
    let mem = memory();
    let mut r = Rig::new(&mem);
    let (mut host, port) = r.connect();
    // Spoofed source CID, wrong socket type, unknown op: counted, ignored.
    let mut spoof = Rig::guest_header(OP_RW, port, 1, 0);
    spoof.src_cid = 7;
    r.guest_sends(spoof, b"x");
    let mut dgram = Rig::guest_header(OP_RW, port, 1, 0);
    dgram.kind = 2;
    r.guest_sends(dgram, b"x");
    r.guest_sends(Rig::guest_header(99, port, 0, 0), &[]);
    assert_eq!(r.h.metrics.malformed.get(), 3);
    // A length past the buffer drops the connection.
    r.guest_sends(Rig::guest_header(OP_RW, port, 60_000, 0), b"short");
    assert!(r.h.conns.is_empty());
    assert_eq!(host.read(&mut [0u8; 8]).unwrap(), 0);
    // The guest connecting to the host is refused.
    r.rx_buffer(4096);
    r.rx_buffer(4096);
    r.guest_sends(Rig::guest_header(OP_REQUEST, 5000, 0, 0), &[]);
    let ops: Vec<u16> = std::iter::from_fn(|| r.next_rx())
        .map(|(h, _)| h.op)
        .collect();
    assert_eq!(ops, vec![OP_RST, OP_RST]);
}

#[test]
fn a_guest_overrunning_its_credit_loses_the_connection() {
    let mem = memory();
    let mut r = Rig::new(&mem);
    let (host, port) = r.connect();
    // The host never reads: once BUF_ALLOC bytes are queued, more is a violation.
    host.set_nonblocking(true).unwrap();
    let chunk = vec![1u8; 60_000];
    let mut sent = 0usize;
    while r.h.conns.contains_key(&(port, PORT)) && sent < 4 * BUF_ALLOC as usize {
        r.guest_sends(
            Rig::guest_header(OP_RW, port, chunk.len() as u32, 0),
            &chunk,
        );
        sent += chunk.len();
        if r.tx_added >= 60 {
            break;
        }
    }
    assert!(
        !r.h.conns.contains_key(&(port, PORT)),
        "connection dropped after {sent} bytes"
    );
    assert!(r.h.metrics.malformed.get() >= 1);
}

#[test]
fn a_restored_device_resets_the_guest_and_refuses_connections_until_it_is_handled() {
    let mem = memory();
    let mut r = Rig::new(&mem);
    r.h.reset_transport = true;
    let (event_vq, event_queue) = queue_sized(&mem, 0x4000, 4, &[]);
    r.queues[2] = event_queue;
    let refused = |r: &mut Rig| {
        let (reply, result) = mpsc::channel();
        r.requests
            .send(ConnectRequest { port: PORT, reply })
            .unwrap();
        r.h.extra_event(0, &mut r.queues, r.mem);
        let e = result
            .recv_timeout(Duration::from_secs(1))
            .unwrap()
            .unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::ConnectionRefused, "{e}");
    };
    // No event buffer yet: nothing sent, connections refused.
    assert_eq!(r.h.queue_event(2, &mut r.queues, &mem), 0);
    refused(&mut r);
    // The guest's event buffer gets the transport reset (id 0).
    mem.write_obj(0xffff_ffffu32, GuestAddress(0x7_0000))
        .unwrap();
    add_chains(&event_vq, 0, &[&[(0x7_0000, 8, true)]]);
    assert_eq!(r.h.queue_event(2, &mut r.queues, &mem), 1 << 2);
    assert_eq!(used(&mem, &event_vq, 0), (0, 4));
    assert_eq!(mem.read_obj::<u32>(GuestAddress(0x7_0000)).unwrap(), 0);
    // Until the guest refills its event queue (a kick), still refused.
    refused(&mut r);
    add_chains(&event_vq, 1, &[&[(0x7_0000, 8, true)]]);
    assert_eq!(r.h.queue_event(2, &mut r.queues, &mem), 0, "one reset only");
    let (mut host, port) = r.connect();
    r.guest_sends(Rig::guest_header(OP_RW, port, 2, 0), b"ok");
    let mut got = [0u8; 2];
    host.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"ok");
}
