//! A simulated guest: a second smoltcp interface on the other end of an
//! in-memory frame link. Host-only tests and benchmarks drive the real
//! stack through it exactly as a guest kernel would (ARP, TCP handshakes,
//! UDP datagrams, and raw frames of any shape).

use std::io;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use smoltcp::wire::{EthernetAddress, IpCidr};
use tokio::sync::mpsc;

use crate::frame::{self, FramePort};
use crate::outbox::Outbox;
use crate::stack::{Shared, Side, SocketStream, RX_BATCH};
use crate::NetConfig;

/// A smoltcp "guest" attached to a [`crate::Network`] through a frame
/// link.
pub struct SimGuest {
    shared: Arc<Shared>,
    config: NetConfig,
    raw_tx: mpsc::Sender<Vec<u8>>,
    udp_rx: tokio::sync::Mutex<mpsc::Receiver<(SocketAddrV4, SocketAddrV4, Vec<u8>)>>,
    next_port: AtomicU16,
    task: tokio::task::JoinHandle<()>,
}

impl SimGuest {
    /// Starts a guest on `port` with the addresses of `config`. Returns
    /// the guest; UDP datagrams addressed to it are queued for
    /// [`SimGuest::udp_recv`].
    pub fn start(mut port: FramePort, config: &NetConfig) -> Self {
        let start = Instant::now();
        let shared = Shared::new(
            config.guest_mac,
            IpCidr::new(config.guest_ip.into(), config.prefix_len),
            config.gateway_ip,
            Side::Guest,
            config.mtu,
            start,
        );
        let (udp_tx, udp_rx) = mpsc::channel(1024);
        let raw_tx = port.tx.clone();
        let s = shared.clone();
        let max_frame = usize::from(config.mtu) + 14;
        let task = tokio::spawn(async move {
            let mut delay = None;
            // As the stack: never block on a full link while frames arrive.
            let mut outbox = Outbox::default();
            loop {
                let sleep = tokio::time::sleep(delay.unwrap_or(Duration::from_secs(1)));
                tokio::select! {
                    f = port.rx.recv() => {
                        let Some(f) = f else { return };
                        let take = |f: Vec<u8>| match frame::classify(&f, max_frame, None) {
                            frame::Classified::Udp { src, dst, payload, .. } => {
                                let _ = udp_tx.try_send((src, dst, payload.to_vec()));
                            }
                            _ => s.push_frame(f),
                        };
                        take(f);
                        // Take what else is queued before running the stack once.
                        for _ in 0..RX_BATCH {
                            match port.rx.try_recv() {
                                Ok(f) => take(f),
                                Err(_) => break,
                            }
                        }
                    }
                    sent = outbox.drain(&port.tx) => {
                        if sent.is_err() {
                            return;
                        }
                    }
                    _ = s.wake.notified() => {}
                    _ = sleep => {}
                }
                let (out, next) = s.poll(start);
                delay = next;
                if outbox.send_all(&port.tx, out).is_err() {
                    return;
                }
            }
        });
        Self {
            shared,
            config: config.clone(),
            raw_tx,
            udp_rx: tokio::sync::Mutex::new(udp_rx),
            next_port: AtomicU16::new(0),
            task,
        }
    }

    /// Opens a TCP connection to `dst`; fails with `ConnectionRefused` on a
    /// reset (a denied flow) and `TimedOut` after `timeout`.
    pub async fn connect(&self, dst: SocketAddrV4, timeout: Duration) -> io::Result<SocketStream> {
        // Ephemeral ports cycle through 40000..60000.
        let port = 40000 + self.next_port.fetch_add(1, Ordering::Relaxed) % 20000;
        let handle = self
            .shared
            .add_tcp(|s, iface| s.connect(iface.context(), dst, port).is_ok())
            .ok_or_else(|| io::Error::other("cannot start a connection"))?;
        self.shared.wake.notify_one();
        let stream = SocketStream::new(self.shared.clone(), handle, None);
        stream.established(timeout).await?;
        Ok(stream)
    }

    /// Sends a UDP datagram from `src_port` to `dst`.
    pub async fn udp_send(&self, src_port: u16, dst: SocketAddrV4, payload: &[u8]) {
        let f = frame::udp_frame(
            EthernetAddress(self.config.guest_mac),
            EthernetAddress(self.config.gateway_mac),
            SocketAddrV4::new(self.config.guest_ip, src_port),
            dst,
            payload,
        );
        self.send_frame(f).await;
    }

    /// The next UDP datagram for the guest: (source, destination, payload).
    pub async fn udp_recv(
        &self,
        timeout: Duration,
    ) -> Option<(SocketAddrV4, SocketAddrV4, Vec<u8>)> {
        let mut rx = self.udp_rx.lock().await;
        tokio::time::timeout(timeout, rx.recv())
            .await
            .ok()
            .flatten()
    }

    /// Sends any bytes as a frame (malformed-frame tests).
    pub async fn send_frame(&self, f: Vec<u8>) {
        let _ = self.raw_tx.send(f).await;
    }

    /// The guest's address.
    pub fn ip(&self) -> Ipv4Addr {
        self.config.guest_ip
    }
}

impl Drop for SimGuest {
    fn drop(&mut self) {
        self.task.abort();
    }
}
