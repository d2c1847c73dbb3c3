//! The smoltcp stack: one task per sandbox that owns the interface and its
//! sockets, answers ARP as the gateway, and terminates every guest TCP
//! connection locally (any destination address, `any_ip`), after the
//! policy accepted it.
//!
//! A SYN to a new destination is held while the policy decides (and, for a
//! raw grant, while the host dials upstream, so a refused dial becomes a
//! reset the guest sees). Accepted, a listening socket for exactly that
//! destination is created and the SYN replayed into it; denied, the SYN
//! meets no socket and smoltcp answers with a reset. UDP never reaches
//! smoltcp: [`crate::udp`] relays it per flow.

mod buffers;
pub mod seccomp;
mod stream;

use std::collections::{HashMap, HashSet, VecDeque};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant as StdInstant;

use smoltcp::iface::{Config, Interface, SocketHandle, SocketSet};
use smoltcp::phy::{Checksum, Device, DeviceCapabilities, Medium, RxToken, TxToken};
use smoltcp::socket::tcp;
use smoltcp::time::Instant;
use smoltcp::wire::{EthernetAddress, HardwareAddress, IpCidr, IpListenEndpoint};
use tokio::sync::{mpsc, Notify, OwnedSemaphorePermit};

pub use stream::SocketStream;

use crate::egress::Counters;
use crate::frame::{self, Classified, FramePort};
use crate::outbox::Outbox;
use crate::{checksum, flow, pool, udp, Ctx};

/// Receive and send ring sizes of every TCP socket of an interface. Rings
/// are mapped lazily ([`buffers`]), so a connection's memory is what it
/// has carried.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Rings {
    pub(crate) rx: usize,
    pub(crate) tx: usize,
}

impl Rings {
    /// The host stack. The receive ring is the window the guest may fill
    /// ahead of the relay (1 MiB: bulk uploads 20-60% faster than 256
    /// KiB). The send ring bounds what is in flight to the guest: 256 KiB,
    /// because with 1 MiB a real UML guest's curl download fell from about
    /// 90 to 12-20 MB/s (the guest drops segments it cannot absorb and
    /// smoltcp's recovery is slow), while 256 KiB keeps it at about 0.9x
    /// the guest's own loopback. (smoltcp's Reno and Cubic congestion
    /// control did not help: 12.6 and 13.1 MB/s.)
    pub(crate) const STACK: Rings = Rings {
        rx: 1 << 20,
        tx: 256 << 10,
    };
    /// The sim guest, standing in for a guest kernel whose autotuned
    /// socket buffers reach megabytes.
    pub(crate) const SIM: Rings = Rings {
        rx: 1 << 20,
        tx: 1 << 20,
    };
}

/// Which end of a frame link an interface is.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Side {
    /// The host stack: takes packets for every destination (`any_ip`),
    /// [`Rings::STACK`], does not check TCP checksums (see
    /// `QueueDevice`).
    Stack,
    /// The sim guest: its own address only, [`Rings::SIM`], checks TCP
    /// checksums as a guest kernel does.
    Guest,
}

pub(crate) struct Shared {
    inner: Mutex<Inner>,
    pub(crate) wake: Notify,
}

impl Shared {
    pub(crate) fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

pub(crate) struct Inner {
    iface: Interface,
    pub(crate) sockets: SocketSet<'static>,
    dev: QueueDevice,
    /// Sockets whose stream was dropped, removed once closed.
    orphans: Vec<SocketHandle>,
    /// Each TCP socket's receive and send rings. A socket's entry goes
    /// only after the socket left `sockets` (see `Drop for Inner`).
    rings: HashMap<SocketHandle, [buffers::Mapping; 2]>,
    /// Rings of removed sockets, for the next ones.
    pool: buffers::Pool,
    /// The ring sizes of new sockets.
    ring_sizes: Rings,
}

impl Drop for Inner {
    fn drop(&mut self) {
        // The sockets borrow the rings: drop them first.
        drop(std::mem::replace(
            &mut self.sockets,
            SocketSet::new(Vec::new()),
        ));
        self.rings.clear();
    }
}

/// A verdict on a held SYN.
pub(crate) enum Event {
    /// Accept: replay the SYN into a new socket and run `handler` on it.
    Open {
        syn: Vec<u8>,
        dst: SocketAddrV4,
        key: (SocketAddrV4, SocketAddrV4),
        permit: OwnedSemaphorePermit,
        handler: flow::Handler,
    },
    /// Refuse: replay the SYN with no socket, so the guest gets a reset.
    Refuse {
        syn: Vec<u8>,
        key: (SocketAddrV4, SocketAddrV4),
    },
}

/// smoltcp's view of the link: frames queued in memory. TCP checksums are
/// the device's ([`checksum`]): filled in every frame sent; checked on
/// receipt only if `verify_tcp` (the sim guest, as a guest kernel does).
/// The stack does not check the guest's: the link is memory, and a wrong
/// checksum could only corrupt the guest's own connection.
struct QueueDevice {
    rx: VecDeque<Vec<u8>>,
    tx: Vec<Vec<u8>>,
    /// The link MTU plus the Ethernet header.
    max_frame: usize,
    verify_tcp: bool,
}

struct Rx(Vec<u8>);
struct Tx<'a>(&'a mut Vec<Vec<u8>>);

impl RxToken for Rx {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        let r = f(&self.0);
        pool::give(self.0);
        r
    }
}

impl TxToken for Tx<'_> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        let mut buf = pool::frame(len);
        let r = f(&mut buf);
        checksum::fill_tcp(&mut buf);
        self.0.push(buf);
        r
    }
}

impl Device for QueueDevice {
    type RxToken<'a> = Rx;
    type TxToken<'a> = Tx<'a>;

    fn receive(&mut self, _now: Instant) -> Option<(Rx, Tx<'_>)> {
        let f = loop {
            let f = self.rx.pop_front()?;
            if !self.verify_tcp || checksum::tcp_ok(&f) {
                break f;
            }
            log::debug!("dropped a TCP segment with a wrong checksum");
        };
        Some((Rx(f), Tx(&mut self.tx)))
    }

    fn transmit(&mut self, _now: Instant) -> Option<Tx<'_>> {
        Some(Tx(&mut self.tx))
    }

    fn capabilities(&self) -> DeviceCapabilities {
        let mut caps = DeviceCapabilities::default();
        caps.medium = Medium::Ethernet;
        caps.max_transmission_unit = self.max_frame;
        caps.checksum.tcp = Checksum::None;
        caps
    }
}

fn now(start: StdInstant) -> Instant {
    Instant::from_micros(start.elapsed().as_micros() as i64)
}

impl Shared {
    /// An interface with `mac` and `addr`, default route via `gateway`.
    pub(crate) fn new(
        mac: [u8; 6],
        addr: IpCidr,
        gateway: Ipv4Addr,
        side: Side,
        mtu: u16,
        start: StdInstant,
    ) -> Arc<Self> {
        let (any_ip, rings, verify_tcp) = match side {
            Side::Stack => (true, Rings::STACK, false),
            Side::Guest => (false, Rings::SIM, true),
        };
        let mut dev = QueueDevice {
            rx: VecDeque::new(),
            tx: Vec::new(),
            max_frame: usize::from(mtu) + 14,
            verify_tcp,
        };
        let mut icfg = Config::new(HardwareAddress::Ethernet(EthernetAddress(mac)));
        icfg.random_seed = rand_seed();
        let mut iface = Interface::new(icfg, &mut dev, now(start));
        iface.update_ip_addrs(|a| {
            let _ = a.push(addr);
        });
        let _ = iface.routes_mut().add_default_ipv4_route(gateway);
        iface.set_any_ip(any_ip);
        Arc::new(Shared {
            inner: Mutex::new(Inner {
                iface,
                sockets: SocketSet::new(Vec::new()),
                dev,
                orphans: Vec::new(),
                rings: HashMap::new(),
                pool: buffers::Pool::default(),
                ring_sizes: rings,
            }),
            wake: Notify::new(),
        })
    }

    /// Queues a frame for the interface.
    pub(crate) fn push_frame(&self, f: Vec<u8>) {
        self.lock().dev.rx.push_back(f);
    }

    /// Runs the interface once: processes queued frames, sends what the
    /// sockets have, drops closed orphans. Returns the frames to transmit
    /// and when to poll again.
    pub(crate) fn poll(&self, start: StdInstant) -> (Vec<Vec<u8>>, Option<std::time::Duration>) {
        let mut inner = self.lock();
        let Inner {
            iface,
            sockets,
            dev,
            orphans,
            rings,
            pool,
            ..
        } = &mut *inner;
        let t = now(start);
        iface.poll(t, dev, sockets);
        // smoltcp sends at most one segment per socket per egress pass:
        // keep passing while sockets still emit, so one wake-up of the
        // stack carries a window's worth of segments, not one.
        for _ in 0..EGRESS_PASSES {
            let before = dev.tx.len();
            iface.poll_egress(t, dev, sockets);
            if dev.tx.len() == before {
                break;
            }
        }
        orphans.retain(|h| {
            let s = sockets.get_mut::<tcp::Socket>(*h);
            // Data arriving for a connection nobody reads any more resets
            // it (as a closed Linux socket does), so the peer is not left
            // writing into a closed window.
            if s.recv_queue() > 0 && s.is_open() {
                s.abort();
            }
            let done = matches!(s.state(), tcp::State::Closed | tcp::State::TimeWait);
            if done {
                drop(sockets.remove(*h));
                for ring in rings.remove(h).into_iter().flatten() {
                    pool.give(ring);
                }
            }
            !done
        });
        let delay = iface
            .poll_delay(t, sockets)
            .map(|d| std::time::Duration::from_micros(d.total_micros()));
        (std::mem::take(&mut dev.tx), delay)
    }

    /// Adds a TCP socket with the stack's buffer sizes (`None` if `f`
    /// refuses it or its buffers cannot be mapped).
    pub(crate) fn add_tcp(
        &self,
        f: impl FnOnce(&mut tcp::Socket<'static>, &mut Interface) -> bool,
    ) -> Option<SocketHandle> {
        let mut inner = self.lock();
        let sizes = inner.ring_sizes;
        let rings = match (inner.pool.take(sizes.rx), inner.pool.take(sizes.tx)) {
            (Ok(rx), Ok(tx)) => [rx, tx],
            (Err(e), _) | (_, Err(e)) => {
                log::warn!("cannot map a TCP socket's buffers: {e}");
                return None;
            }
        };
        // SAFETY: each mapping is sliced once while it is out of the pool;
        // the socket holding the slices leaves the set (and is dropped)
        // before its rings go back to the pool or are unmapped: in `poll`,
        // in `Drop for Inner`, and right below when the socket is refused.
        let (rx, tx) = unsafe { (rings[0].slice(), rings[1].slice()) };
        let mut sock = tcp::Socket::new(tcp::SocketBuffer::new(rx), tcp::SocketBuffer::new(tx));
        sock.set_nagle_enabled(false);
        // Acknowledge at once: a delayed ACK stalls window-limited bulk
        // transfers between two in-memory ends.
        sock.set_ack_delay(None);
        if !f(&mut sock, &mut inner.iface) {
            drop(sock);
            let [rx, tx] = rings;
            inner.pool.give(rx);
            inner.pool.give(tx);
            return None;
        }
        let handle = inner.sockets.add(sock);
        inner.rings.insert(handle, rings);
        Some(handle)
    }
}

/// Runs the stack until the guest side of `port` closes.
pub(crate) async fn run(
    ctx: Arc<Ctx>,
    mut port: FramePort,
    mut from_host: mpsc::Receiver<Vec<u8>>,
) {
    let start = StdInstant::now();
    let cfg = &ctx.config;
    // Everything is routed "through" our own address, which with any_ip
    // makes the interface take packets for every destination.
    let shared = Shared::new(
        cfg.gateway_mac,
        IpCidr::new(cfg.gateway_ip.into(), cfg.prefix_len),
        cfg.gateway_ip,
        Side::Stack,
        cfg.mtu,
        start,
    );
    // However this task ends (the guest link closed, the Network dropped),
    // every connection is reset so the tasks serving them end too.
    let _close_all = CloseAll(shared.clone());
    let (events_tx, mut events) = mpsc::unbounded_channel::<Event>();
    let mut gw = Gateway {
        udp: udp::Flows::new(ctx.clone()),
        ctx: ctx.clone(),
        shared: shared.clone(),
        pending: HashSet::new(),
        events: events_tx,
    };
    let counters = &ctx.egress.counters;
    let mut delay = None;
    // Frames for the guest wait here, never in a blocked send: the loop
    // keeps taking the guest's frames while the link is full.
    let mut outbox = Outbox::default();
    loop {
        let sleep = tokio::time::sleep(delay.unwrap_or(std::time::Duration::from_secs(1)));
        let mut host_frame = None;
        tokio::select! {
            f = port.rx.recv() => {
                let Some(f) = f else { break };
                gw.frame(f);
                // Take what else is queued before running the stack once.
                for _ in 0..RX_BATCH {
                    match port.rx.try_recv() {
                        Ok(f) => gw.frame(f),
                        Err(_) => break,
                    }
                }
            }
            ev = events.recv() => {
                let Some(ev) = ev else { break };
                gw.event(ev);
            }
            // UDP replies wait at their source while the outbox is full.
            f = from_host.recv(), if !outbox.is_full() => {
                // Frames built outside smoltcp (UDP replies).
                let Some(f) = f else { break };
                host_frame = Some(f);
            }
            sent = outbox.drain(&port.tx) => {
                if sent.is_err() {
                    break;
                }
            }
            _ = shared.wake.notified() => {}
            _ = sleep => {}
        }
        let (out, next) = shared.poll(start);
        delay = next;
        let produced = out.len();
        let Ok(dropped) = outbox.send_all(&port.tx, host_frame.into_iter().chain(out)) else {
            return;
        };
        if dropped > 0 {
            log::debug!("the guest's link is full: {dropped} frames dropped");
        }
        counters.frames_out.fetch_add(
            produced.saturating_sub(dropped) as u64,
            std::sync::atomic::Ordering::Relaxed,
        );
    }
}

struct CloseAll(Arc<Shared>);

impl Drop for CloseAll {
    fn drop(&mut self) {
        let mut inner = self.0.lock();
        for (_, s) in inner.sockets.iter_mut() {
            if let smoltcp::socket::Socket::Tcp(t) = s {
                // Moves to CLOSED, which wakes readers and writers.
                t.abort();
            }
        }
    }
}

/// Extra egress passes per stack poll at most (each sends up to one
/// segment per socket).
const EGRESS_PASSES: usize = 64;

/// Guest frames handled per stack poll at most.
pub(crate) const RX_BATCH: usize = 64;

/// The stack task's state besides smoltcp's.
struct Gateway {
    ctx: Arc<Ctx>,
    shared: Arc<Shared>,
    udp: udp::Flows,
    /// SYNs held while the policy decides.
    pending: HashSet<(SocketAddrV4, SocketAddrV4)>,
    events: mpsc::UnboundedSender<Event>,
}

impl Gateway {
    /// Routes one guest frame.
    fn frame(&mut self, f: Vec<u8>) {
        let counters = &self.ctx.egress.counters;
        Counters::bump(&counters.frames_in);
        let (mtu, guest) = (self.ctx.config.mtu, self.ctx.config.guest_ip);
        match frame::classify(&f, usize::from(mtu) + 14, Some(guest)) {
            Classified::Stack => self.shared.push_frame(f),
            Classified::Drop(why) => {
                log::debug!("dropped a guest frame: {why}");
                Counters::bump(&counters.frames_dropped);
            }
            Classified::Udp {
                src_mac,
                src,
                dst,
                payload,
            } => self.udp.datagram(src_mac, src, dst, payload),
            Classified::TcpSyn { src, dst } => self.syn(f, src, dst),
        }
    }

    fn syn(&mut self, f: Vec<u8>, src: SocketAddrV4, dst: SocketAddrV4) {
        let key = (src, dst);
        let counters = &self.ctx.egress.counters;
        let open = self.shared.lock().sockets.iter().any(|(_, s)| match s {
            smoltcp::socket::Socket::Tcp(t) => {
                t.remote_endpoint() == Some(src.into()) && t.local_endpoint() == Some(dst.into())
            }
            #[allow(unreachable_patterns)]
            _ => false,
        });
        if open {
            self.shared.push_frame(f);
        } else if self.pending.contains(&key) {
            // A retransmitted SYN while the policy decides.
        } else if self.pending.len() >= self.ctx.egress.limits().max_pending_tcp {
            Counters::bump(&counters.flows_limited);
            self.shared.push_frame(f); // no socket: a reset
        } else {
            match self.ctx.egress.admit_tcp() {
                Ok(permit) => {
                    self.pending.insert(key);
                    let ctx = self.ctx.clone();
                    let decide = flow::decide_tcp(ctx, f, key, permit, self.events.clone());
                    self.ctx.rt.spawn(decide);
                }
                Err(e) => {
                    log::info!("refused {src} -> {dst}: {e}");
                    self.shared.push_frame(f); // no socket: a reset
                }
            }
        }
    }

    /// Applies a verdict on a held SYN.
    fn event(&mut self, ev: Event) {
        match ev {
            Event::Open {
                syn,
                dst,
                key,
                permit,
                handler,
            } => {
                self.pending.remove(&key);
                let ep = IpListenEndpoint {
                    addr: Some((*dst.ip()).into()),
                    port: dst.port(),
                };
                let Some(handle) = self.shared.add_tcp(|s, _| s.listen(ep).is_ok()) else {
                    return;
                };
                self.shared.push_frame(syn);
                let stream = SocketStream::new(self.shared.clone(), handle, Some(permit));
                self.ctx
                    .rt
                    .spawn(flow::run(self.ctx.clone(), stream, handler, key));
            }
            Event::Refuse { syn, key } => {
                self.pending.remove(&key);
                self.shared.push_frame(syn);
            }
        }
    }
}

fn rand_seed() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(StdInstant::now().elapsed().as_nanos() as u64);
    h.finish()
}
