//! virtio-net with one queue pair. The host side is one end of a
//! `SOCK_SEQPACKET` socket pair carrying one Ethernet frame per message
//! (the same framing as UML's `bess` transport), which the host network
//! stack (`sandbox-net`) takes as its frame port. No offloads: every frame
//! is a plain Ethernet frame of at most the link MTU plus 14 bytes. The
//! MTU is the device's (`VIRTIO_NET_F_MTU`): a link of 65000 bytes, as
//! UML's, carries a 64 KiB TCP segment per frame where a 1500-byte link
//! needs 45 frames (the guest driver then posts receive buffers of 17
//! pages each).

#[cfg(test)]
mod tests;

use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use virtio_queue::{Queue, QueueT};

use crate::device::{read_config_bytes, ActivationContext, DeviceError, VirtioDevice};
use crate::worker::{RxTx, Worker};
use crate::{device_id, GuestMemory, VIRTIO_F_VERSION_1};

const QUEUE_SIZE: u16 = 256;
/// `VIRTIO_NET_F_MAC`: the device provides the MAC address.
const F_MAC: u64 = crate::feature(virtio_bindings::virtio_net::VIRTIO_NET_F_MAC);
/// `VIRTIO_NET_F_STATUS`: the config space has a link status.
const F_STATUS: u64 = crate::feature(virtio_bindings::virtio_net::VIRTIO_NET_F_STATUS);
/// `VIRTIO_NET_F_MTU`: the config space has the link MTU.
const F_MTU: u64 = crate::feature(virtio_bindings::virtio_net::VIRTIO_NET_F_MTU);
/// `struct virtio_net_hdr_v1` (VERSION_1 always has `num_buffers`).
pub const HDR_LEN: usize = 12;
/// The smallest MTU a device takes (Linux's `ETH_MIN_MTU`).
pub const MIN_MTU: u16 = 68;
/// The Ethernet header each frame adds to the MTU.
const ETH_HEADER: usize = 14;

/// Counters of one net device.
#[derive(Debug, Default)]
pub struct NetMetrics {
    /// Frames the guest sent to the host.
    pub tx_frames: AtomicU64,
    /// Frames delivered to the guest.
    pub rx_frames: AtomicU64,
    /// Frames dropped: malformed chains, oversized frames, a full host
    /// queue, or a guest buffer too small.
    pub dropped: AtomicU64,
}

fn bump(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

/// A virtio-net device.
pub struct Net {
    mac: [u8; 6],
    mtu: u16,
    host: Option<OwnedFd>,
    /// The handler of a quiesced device, resumed by the next `activate`.
    parked: Option<NetHandler>,
    metrics: Arc<NetMetrics>,
    worker: Option<Worker>,
}

/// A connected non-blocking `SOCK_SEQPACKET` pair.
#[cfg(target_os = "linux")]
pub fn seqpacket_pair() -> io::Result<(OwnedFd, OwnedFd)> {
    socket_pair(libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK)
}

/// A connected non-blocking pair that keeps frame boundaries. macOS has no
/// Unix `SOCK_SEQPACKET`; a `SOCK_DGRAM` pair is connected, ordered and
/// keeps boundaries too. Its buffers are raised to hold a burst of
/// 1514-byte frames (macOS's datagram limit, `net.local.dgram.maxdgram`,
/// is 2 KiB by default: enough for the 1500-byte MTU of a virtio-net link,
/// not for UML's 64 KiB one). Type-checked here, never run.
#[cfg(not(target_os = "linux"))]
pub fn seqpacket_pair() -> io::Result<(OwnedFd, OwnedFd)> {
    let (a, b) = socket_pair(libc::SOCK_DGRAM)?;
    for fd in [&a, &b] {
        let raw = fd.as_raw_fd();
        let size: libc::c_int = 1 << 20;
        // SAFETY: fcntl and setsockopt on descriptors we own; `size` lives
        // across the calls. Results checked.
        unsafe {
            let fl = libc::fcntl(raw, libc::F_GETFL);
            if fl < 0
                || libc::fcntl(raw, libc::F_SETFL, fl | libc::O_NONBLOCK) < 0
                || libc::fcntl(raw, libc::F_SETFD, libc::FD_CLOEXEC) < 0
            {
                return Err(io::Error::last_os_error());
            }
            for opt in [libc::SO_SNDBUF, libc::SO_RCVBUF] {
                libc::setsockopt(
                    raw,
                    libc::SOL_SOCKET,
                    opt,
                    (&size as *const libc::c_int).cast(),
                    std::mem::size_of::<libc::c_int>() as libc::socklen_t,
                );
            }
        }
    }
    Ok((a, b))
}

fn socket_pair(kind: libc::c_int) -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: socketpair writes two descriptors into `fds`; checked below.
    let rc = unsafe { libc::socketpair(libc::AF_UNIX, kind, 0, fds.as_mut_ptr()) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: both descriptors are fresh and owned by us from here on.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

impl Net {
    /// Creates the device with `mac` and a link `mtu` (at least
    /// [`MIN_MTU`]); returns the host end of its frame socket, which must
    /// carry messages of `mtu` + 14 bytes.
    pub fn new(mac: [u8; 6], mtu: u16) -> io::Result<(Self, OwnedFd)> {
        if mtu < MIN_MTU {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("a virtio-net MTU of {mtu} is below the minimum of {MIN_MTU}"),
            ));
        }
        let (device_end, host_end) = seqpacket_pair()?;
        Ok((
            Self {
                mac,
                mtu,
                host: Some(device_end),
                parked: None,
                metrics: Arc::default(),
                worker: None,
            },
            host_end,
        ))
    }

    /// Counters shared with the running device.
    pub fn metrics(&self) -> Arc<NetMetrics> {
        self.metrics.clone()
    }
}

impl VirtioDevice for Net {
    fn device_type(&self) -> u32 {
        device_id::NET
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE, QUEUE_SIZE]
    }

    fn features(&self) -> u64 {
        VIRTIO_F_VERSION_1 | F_MAC | F_STATUS | F_MTU
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        // mac[6], status (LINK_UP), max_virtqueue_pairs, mtu.
        let mut cfg = [0u8; 12];
        cfg[..6].copy_from_slice(&self.mac);
        cfg[6..8].copy_from_slice(&1u16.to_le_bytes());
        cfg[8..10].copy_from_slice(&1u16.to_le_bytes());
        cfg[10..12].copy_from_slice(&self.mtu.to_le_bytes());
        read_config_bytes(&cfg, offset, data);
    }

    fn activate(&mut self, ctx: ActivationContext) -> Result<(), DeviceError> {
        ctx.validate(2)?;
        // A quiesced device goes on with its handler (and any frame it
        // held for the guest).
        let handler = match (self.parked.take(), self.host.take()) {
            (Some(parked), _) => parked,
            (None, Some(host)) => NetHandler::new(host, self.metrics.clone(), self.mtu),
            (None, None) => {
                return Err(DeviceError::Worker(io::Error::other(
                    "net device already active",
                )))
            }
        };
        let fd = handler.host.as_raw_fd();
        self.worker = Some(Worker::spawn(
            "virtio-net",
            handler,
            ctx,
            vec![fd],
            Some(&crate::seccomp::DEVICE),
        )?);
        Ok(())
    }

    fn reset(&mut self) -> Option<Vec<Queue>> {
        self.worker.take().map(Worker::stop)
    }

    fn quiesce(&mut self) -> Option<Vec<Queue>> {
        let (queues, handler) = self.worker.take()?.stop_keeping::<NetHandler>();
        self.parked = handler;
        Some(queues)
    }

    fn counters(&self) -> Option<crate::CounterReader> {
        let m = self.metrics.clone();
        let r = |c: &AtomicU64| c.load(Ordering::Relaxed);
        Some(crate::CounterReader::new(move || {
            crate::DeviceCounters::Net(crate::counters::NetCounters {
                tx_frames: r(&m.tx_frames),
                rx_frames: r(&m.rx_frames),
                dropped: r(&m.dropped),
            })
        }))
    }
}

/// A handler over one end of a fresh frame socket pair, and the other end
/// (the host stack's side).
#[cfg(feature = "fuzzing")]
pub(crate) fn fuzz_handler() -> io::Result<(NetHandler, OwnedFd)> {
    let (mut dev, peer) = Net::new([0x02, 0, 0, 0, 0, 1], 1500)?;
    let host = dev
        .host
        .take()
        .ok_or_else(|| io::Error::other("no host end"))?;
    Ok((NetHandler::new(host, dev.metrics.clone(), dev.mtu), peer))
}

pub(crate) struct NetHandler {
    host: OwnedFd,
    /// A frame from the host waiting for a guest receive buffer.
    held: Option<Vec<u8>>,
    metrics: Arc<NetMetrics>,
    /// The MTU plus the Ethernet header: longer frames are dropped.
    max_frame: usize,
    /// Receives host frames: one byte more than a frame may have, so a
    /// longer one shows.
    scratch: Vec<u8>,
    /// Holds one guest frame with its header on the way out (reused, so
    /// the transmit path does not allocate per kick).
    tx_buf: Vec<u8>,
}

impl NetHandler {
    fn new(host: OwnedFd, metrics: Arc<NetMetrics>, mtu: u16) -> Self {
        let max_frame = usize::from(mtu) + ETH_HEADER;
        Self {
            host,
            held: None,
            metrics,
            max_frame,
            scratch: vec![0u8; max_frame + 1],
            tx_buf: Vec::with_capacity(HDR_LEN + max_frame + 1),
        }
    }
}

fn recv(fd: RawFd, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: `buf` is valid for writes of its length.
    let n = unsafe { libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), libc::MSG_DONTWAIT) };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

fn send(fd: RawFd, buf: &[u8]) -> io::Result<usize> {
    // SAFETY: `buf` is valid for reads of its length.
    let n = unsafe {
        libc::send(
            fd,
            buf.as_ptr().cast(),
            buf.len(),
            libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
        )
    };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

impl RxTx for NetHandler {
    /// Delivers host frames into guest receive buffers until either runs out.
    fn fill_rx(&mut self, queue: &mut Queue, mem: &GuestMemory) -> bool {
        let mut used_any = false;
        loop {
            // The frame to deliver: the held one, or `fresh` bytes of
            // `scratch`.
            let fresh = if self.held.is_some() {
                None
            } else {
                match recv(self.host.as_raw_fd(), &mut self.scratch) {
                    Ok(0) | Err(_) => return used_any, // drained (or the host is gone)
                    Ok(n) if n > self.max_frame => {
                        bump(&self.metrics.dropped);
                        continue;
                    }
                    Ok(n) => Some(n),
                }
            };
            let Some(chain) = queue.pop_descriptor_chain(mem) else {
                // The guest's next rx kick resumes here.
                if let Some(n) = fresh {
                    self.held = Some(self.scratch[..n].to_vec());
                }
                return used_any;
            };
            let held = self.held.take();
            let frame: &[u8] = match (&held, fresh) {
                (Some(f), _) => f,
                (None, n) => &self.scratch[..n.unwrap_or(0)],
            };
            let head = chain.head_index();
            let mut hdr = [0u8; HDR_LEN];
            hdr[10..12].copy_from_slice(&1u16.to_le_bytes()); // num_buffers
            let written = match chain.writer(mem) {
                Ok(mut w) if w.available_bytes() >= HDR_LEN + frame.len() => {
                    match w.write_all(&hdr).and_then(|()| w.write_all(frame)) {
                        Ok(()) => {
                            bump(&self.metrics.rx_frames);
                            (HDR_LEN + frame.len()) as u32
                        }
                        Err(_) => {
                            bump(&self.metrics.dropped);
                            0
                        }
                    }
                }
                _ => {
                    // Too small or malformed: the frame is dropped, the
                    // buffer returned empty.
                    bump(&self.metrics.dropped);
                    0
                }
            };
            if queue.add_used(mem, head, written).is_err() {
                bump(&self.metrics.dropped);
                return used_any;
            }
            used_any = true;
        }
    }

    /// Sends every frame the guest transmitted to the host.
    fn drain_tx(&mut self, queue: &mut Queue, mem: &GuestMemory) -> bool {
        let mut used_any = false;
        let max = self.max_frame;
        let buf = &mut self.tx_buf;
        while let Some(chain) = queue.pop_descriptor_chain(mem) {
            let head = chain.head_index();
            buf.clear();
            let ok = match chain.reader(mem) {
                Ok(r) => r.take((HDR_LEN + max + 1) as u64).read_to_end(buf).is_ok(),
                Err(_) => false,
            };
            if ok && buf.len() > HDR_LEN && buf.len() <= HDR_LEN + max {
                match send(self.host.as_raw_fd(), &buf[HDR_LEN..]) {
                    Ok(_) => bump(&self.metrics.tx_frames),
                    // A full host queue drops the frame, as a NIC would.
                    Err(_) => bump(&self.metrics.dropped),
                }
            } else {
                bump(&self.metrics.dropped);
            }
            if queue.add_used(mem, head, 0).is_err() {
                bump(&self.metrics.dropped);
                return used_any;
            }
            used_any = true;
        }
        used_any
    }
}
