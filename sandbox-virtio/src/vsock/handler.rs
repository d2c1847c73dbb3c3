//! The vsock device's queue logic: host-initiated stream connections, each
//! bridged to one end of a Unix socket pair, with virtio-vsock credit flow
//! control in both directions.

use std::collections::{HashMap, VecDeque};
use std::io::{self, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::sync::mpsc::{Receiver, Sender};
use std::sync::Arc;

use crate::event::{EventFd, Events, Interest, Poller};
use virtio_queue::{Queue, QueueT};

use super::conn::{Conn, BUF_ALLOC};
use super::packet::*;
use super::VsockMetrics;
use crate::worker::Handler;
use crate::GuestMemory;

pub(super) const RX: usize = 0;
pub(super) const TX: usize = 1;
/// Largest payload per packet.
const MAX_PAYLOAD: usize = 64 << 10;
/// First host port handed out to connections.
const FIRST_HOST_PORT: u32 = 49152;
/// The event queue.
const EVENT: usize = 2;
/// `VIRTIO_VSOCK_EVENT_TRANSPORT_RESET` (virtio 1.2, 5.10.6.7).
const EVENT_TRANSPORT_RESET: u32 = 0;

/// A request from [`super::VsockConnector::connect`].
pub(crate) struct ConnectRequest {
    pub port: u32,
    pub reply: Sender<io::Result<UnixStream>>,
}

struct Pending {
    conn: Conn,
    host_end: UnixStream,
    reply: Sender<io::Result<UnixStream>>,
}

/// `(host port, guest port)`.
type Key = (u32, u32);

pub(super) struct VsockHandler {
    pub guest_cid: u64,
    pub requests: Receiver<ConnectRequest>,
    pub wake: EventFd,
    pub sockets: Poller,
    /// Reused by every drain of `sockets`.
    socket_events: Events,
    pub conns: HashMap<Key, Conn>,
    pending: HashMap<Key, Pending>,
    /// Packets without payload waiting for a receive buffer.
    control: VecDeque<(Key, u16)>,
    next_port: u32,
    pub metrics: Arc<VsockMetrics>,
    /// Tell the guest, once it has an event buffer, that every connection
    /// it had is gone (`VIRTIO_VSOCK_EVENT_TRANSPORT_RESET`): set on a
    /// device restored from a snapshot, whose host side starts empty.
    pub reset_transport: bool,
    /// The reset event was delivered and the guest has not yet shown it
    /// handled it (by refilling its event queue, which kicks it). A host
    /// connection made meanwhile would be reset along with the old ones,
    /// so connection requests are refused (the connector retries).
    reset_unacked: bool,
}

impl VsockHandler {
    pub fn new(
        guest_cid: u64,
        requests: Receiver<ConnectRequest>,
        wake: EventFd,
        metrics: Arc<VsockMetrics>,
    ) -> io::Result<Self> {
        Ok(Self {
            guest_cid,
            requests,
            wake,
            sockets: Poller::new()?,
            socket_events: Events::with_capacity(32),
            conns: HashMap::new(),
            pending: HashMap::new(),
            control: VecDeque::new(),
            next_port: FIRST_HOST_PORT,
            metrics,
            reset_transport: false,
            reset_unacked: false,
        })
    }

    /// Writes the transport-reset event into the guest's next event
    /// buffer; false if it has none yet (the next event-queue kick retries).
    fn send_transport_reset(&mut self, queue: &mut Queue, mem: &GuestMemory) -> bool {
        let Some(chain) = queue.pop_descriptor_chain(mem) else {
            return false;
        };
        let head = chain.head_index();
        let written = chain
            .writer(mem)
            .ok()
            .and_then(|mut w| w.write_all(&EVENT_TRANSPORT_RESET.to_le_bytes()).ok());
        let len = if written.is_some() {
            self.reset_transport = false;
            self.reset_unacked = true;
            4
        } else {
            self.metrics.malformed.inc();
            0
        };
        let _ = queue.add_used(mem, head, len);
        true
    }

    /// A header for `key` carrying the connection's current `fwd_cnt`.
    fn header(&self, key: Key, op: u16, len: u32) -> Header {
        let (host_port, guest_port) = key;
        let fwd_cnt = self.conns.get(&key).map_or(0, |c| c.fwd_cnt);
        Header {
            src_cid: HOST_CID,
            dst_cid: self.guest_cid,
            src_port: host_port,
            dst_port: guest_port,
            len,
            kind: TYPE_STREAM,
            op,
            flags: 0,
            buf_alloc: BUF_ALLOC,
            fwd_cnt,
        }
    }

    fn reset(&mut self, key: Key) {
        self.control.push_back((key, OP_RST));
    }

    fn free_port(&mut self) -> u32 {
        loop {
            let p = self.next_port;
            self.next_port = if p == u32::MAX {
                FIRST_HOST_PORT
            } else {
                p + 1
            };
            let used = |k: &Key| k.0 == p;
            if !self.conns.keys().any(used) && !self.pending.keys().any(used) {
                return p;
            }
        }
    }

    /// Starts the connections the host asked for.
    fn accept_requests(&mut self) {
        let _ = self.wake.read();
        while let Ok(req) = self.requests.try_recv() {
            if self.reset_transport || self.reset_unacked {
                let _ = req.reply.send(Err(io::Error::new(
                    io::ErrorKind::ConnectionRefused,
                    "the guest is still resetting the connections of its snapshot",
                )));
                continue;
            }
            let made = UnixStream::pair().and_then(|(device_end, host_end)| {
                device_end.set_nonblocking(true)?;
                self.sockets
                    .add(device_end.as_raw_fd(), Interest::ReadWriteEdge, 0)?;
                Ok((device_end, host_end))
            });
            match made {
                Ok((device_end, host_end)) => {
                    let key = (self.free_port(), req.port);
                    self.control.push_back((key, OP_REQUEST));
                    let conn = Conn::new(device_end);
                    let reply = req.reply;
                    self.pending.insert(
                        key,
                        Pending {
                            conn,
                            host_end,
                            reply,
                        },
                    );
                }
                Err(e) => {
                    let _ = req.reply.send(Err(e));
                }
            }
        }
    }

    /// Handles every packet the guest transmitted.
    fn drain_tx(&mut self, queue: &mut Queue, mem: &GuestMemory) -> bool {
        let mut used_any = false;
        while let Some(chain) = queue.pop_descriptor_chain(mem) {
            let head = chain.head_index();
            match chain.reader(mem) {
                Ok(mut r) => self.packet_from_guest(&mut r),
                Err(_) => self.metrics.malformed.inc(),
            }
            if queue.add_used(mem, head, 0).is_err() {
                self.metrics.malformed.inc();
                return used_any;
            }
            used_any = true;
        }
        used_any
    }

    fn packet_from_guest(&mut self, r: &mut impl Read) {
        let mut raw = [0u8; HDR_LEN];
        if r.read_exact(&mut raw).is_err() {
            return self.metrics.malformed.inc();
        }
        let h = Header::parse(&raw);
        if h.src_cid != self.guest_cid || h.dst_cid != HOST_CID || h.kind != TYPE_STREAM {
            return self.metrics.malformed.inc();
        }
        let key = (h.dst_port, h.src_port);
        let mut payload = Vec::new();
        if h.op == OP_RW {
            let len = h.len as usize;
            payload.resize(len.min(MAX_PAYLOAD), 0);
            if len > MAX_PAYLOAD || r.read_exact(&mut payload).is_err() {
                self.metrics.malformed.inc();
                return self.close(key, true);
            }
        }
        if let Some(c) = self.conns.get_mut(&key) {
            c.peer_buf_alloc = h.buf_alloc;
            c.peer_fwd_cnt = h.fwd_cnt;
        }
        match h.op {
            OP_RESPONSE => self.established(key, h),
            OP_RW => match self.conns.get_mut(&key) {
                Some(c) => {
                    self.metrics.from_guest_bytes.add(payload.len() as u64);
                    if !c.push_to_host(&payload) {
                        // The guest ignored its credit: drop the connection.
                        self.metrics.malformed.inc();
                        self.close(key, true);
                    }
                }
                None => self.reset(key),
            },
            OP_CREDIT_UPDATE => {}
            OP_CREDIT_REQUEST => {
                if self.conns.contains_key(&key) {
                    self.control.push_back((key, OP_CREDIT_UPDATE));
                }
            }
            OP_SHUTDOWN => self.close(key, true),
            OP_RST => {
                if let Some(p) = self.pending.remove(&key) {
                    let refused = io::Error::new(
                        io::ErrorKind::ConnectionRefused,
                        format!("nothing listens on guest vsock port {}", key.1),
                    );
                    let _ = p.reply.send(Err(refused));
                }
                self.close(key, false);
            }
            // The guest connecting to the host is not offered.
            OP_REQUEST => self.reset(key),
            _ => self.metrics.malformed.inc(),
        }
    }

    fn established(&mut self, key: Key, h: Header) {
        let Some(mut p) = self.pending.remove(&key) else {
            return self.reset(key);
        };
        p.conn.peer_buf_alloc = h.buf_alloc;
        p.conn.peer_fwd_cnt = h.fwd_cnt;
        if p.reply.send(Ok(p.host_end)).is_err() {
            return self.reset(key); // the caller gave up waiting
        }
        self.conns.insert(key, p.conn);
        self.metrics.connections.inc();
    }

    /// Forgets a connection; the host end then reads end of file.
    fn close(&mut self, key: Key, send_rst: bool) {
        if let Some(mut c) = self.conns.remove(&key) {
            c.flush_to_host();
            let _ = self.sockets.delete(c.sock.as_raw_fd());
        }
        if send_rst {
            self.reset(key);
        }
    }

    /// Moves host data and control packets into the guest's receive buffers.
    fn fill_rx(&mut self, queue: &mut Queue, mem: &GuestMemory) -> bool {
        let mut used_any = false;
        let keys: Vec<Key> = self.conns.keys().copied().collect();
        for key in &keys {
            let Some(c) = self.conns.get_mut(key) else {
                continue;
            };
            c.flush_to_host();
            let due = c.credit_update_due();
            if due && !self.control.contains(&(*key, OP_CREDIT_UPDATE)) {
                self.control.push_back((*key, OP_CREDIT_UPDATE));
            }
        }
        loop {
            if let Some((key, op)) = self.control.front().copied() {
                let h = self.header(key, op, 0);
                match self.deliver(queue, mem, h, &[]) {
                    Some(_) => {
                        self.control.pop_front();
                        used_any = true;
                        continue;
                    }
                    None => return used_any,
                }
            }
            let mut progressed = false;
            for key in &keys {
                let Some(c) = self.conns.get_mut(key) else {
                    continue;
                };
                if c.stage_from_host(MAX_PAYLOAD) {
                    self.metrics.credit_stalls.inc();
                }
                if c.to_guest.is_empty() {
                    if c.host_closed && c.to_host.is_empty() {
                        self.close(*key, true);
                        progressed = true;
                    }
                    continue;
                }
                let data = std::mem::take(&mut c.to_guest);
                let h = self.header(*key, OP_RW, data.len() as u32);
                let Some(n) = self.deliver(queue, mem, h, &data) else {
                    if let Some(c) = self.conns.get_mut(key) {
                        c.to_guest = data;
                    }
                    return used_any;
                };
                if let Some(c) = self.conns.get_mut(key) {
                    c.tx_cnt = c.tx_cnt.wrapping_add(n as u32);
                    c.to_guest = data[n..].to_vec();
                }
                self.metrics.to_guest_bytes.add(n as u64);
                used_any = true;
                progressed = true;
            }
            if !progressed && self.control.is_empty() {
                return used_any;
            }
        }
    }

    /// Writes one packet into the next receive buffer: `Some(payload bytes
    /// written)`, or `None` if the guest has no buffer. A buffer too small
    /// for a packet is returned empty and counted; the next one is tried.
    /// A delivered header tells the guest the connection's `fwd_cnt`.
    fn deliver(
        &mut self,
        queue: &mut Queue,
        mem: &GuestMemory,
        mut h: Header,
        data: &[u8],
    ) -> Option<usize> {
        let key = (h.src_port, h.dst_port);
        loop {
            let chain = queue.pop_descriptor_chain(mem)?;
            let head = chain.head_index();
            let written = chain.writer(mem).ok().and_then(|mut w| {
                if w.available_bytes() < HDR_LEN + usize::from(!data.is_empty()) {
                    return None;
                }
                let n = data.len().min(w.available_bytes() - HDR_LEN);
                h.len = n as u32;
                w.write_all(&h.to_bytes())
                    .and_then(|()| w.write_all(&data[..n]))
                    .ok()
                    .map(|()| n)
            });
            let _ = queue.add_used(mem, head, written.map_or(0, |n| (HDR_LEN + n) as u32));
            match written {
                Some(n) => {
                    if let Some(c) = self.conns.get_mut(&key) {
                        c.fwd_cnt_sent = h.fwd_cnt;
                    }
                    return Some(n);
                }
                None => self.metrics.malformed.inc(),
            }
        }
    }
}

impl Handler for VsockHandler {
    fn queue_event(&mut self, idx: usize, queues: &mut [Queue], mem: &GuestMemory) -> u64 {
        let mut mask = 0;
        if idx == EVENT && self.reset_unacked {
            // The guest handled the reset and refilled its event buffer.
            self.reset_unacked = false;
        }
        if idx == EVENT && self.reset_transport {
            if let Some(q) = queues.get_mut(EVENT) {
                if self.send_transport_reset(q, mem) {
                    mask |= 1 << EVENT;
                }
            }
        }
        if idx == TX {
            if let Some(q) = queues.get_mut(TX) {
                if self.drain_tx(q, mem) {
                    mask |= 1 << TX;
                }
            }
        }
        if idx == RX || idx == TX {
            if let Some(q) = queues.get_mut(RX) {
                if self.fill_rx(q, mem) {
                    mask |= 1 << RX;
                }
            }
        }
        mask
    }

    fn extra_event(&mut self, token: usize, queues: &mut [Queue], mem: &GuestMemory) -> u64 {
        if token == 0 {
            self.accept_requests();
        } else {
            while matches!(self.sockets.wait(0, &mut self.socket_events), Ok(n) if n > 0) {}
            for c in self.conns.values_mut() {
                c.host_readable = true;
            }
        }
        let Some(q) = queues.get_mut(RX) else {
            return 0;
        };
        if self.fill_rx(q, mem) {
            1 << RX
        } else {
            0
        }
    }
}
