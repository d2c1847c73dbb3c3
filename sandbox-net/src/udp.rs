//! UDP: one relay task per (guest source, destination) flow, dropped after
//! an idle period. Flows to port 53 are DNS answered by the host, each query
//! decided by the policy; other flows are decided once, and raw grants
//! relay through a connected host socket.

use std::collections::HashMap;
use std::net::{SocketAddr, SocketAddrV4};
use std::sync::{Arc, Mutex};

use smoltcp::wire::EthernetAddress;
use tokio::sync::mpsc;

use crate::egress::Counters;
use crate::policy::{evaluate, Conn, Grant, Proto};
use crate::{frame, Ctx};

type Key = (SocketAddrV4, SocketAddrV4);

/// Datagrams queued per flow before more are dropped.
const FLOW_QUEUE: usize = 64;
/// DNS queries of one flow being answered at once.
const DNS_IN_FLIGHT: usize = 32;
/// Idle time after which a DNS flow ends (answers in flight still go out).
const DNS_IDLE: std::time::Duration = std::time::Duration::from_secs(5);

pub(crate) struct Flows {
    ctx: Arc<Ctx>,
    map: Arc<Mutex<HashMap<Key, mpsc::Sender<Vec<u8>>>>>,
}

impl Flows {
    pub(crate) fn new(ctx: Arc<Ctx>) -> Self {
        Self {
            ctx,
            map: Arc::default(),
        }
    }

    /// Routes one guest datagram.
    pub(crate) fn datagram(
        &self,
        src_mac: EthernetAddress,
        src: SocketAddrV4,
        dst: SocketAddrV4,
        payload: &[u8],
    ) {
        let key = (src, dst);
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(tx) = map.get(&key) {
            let _ = tx.try_send(payload.to_vec());
            return;
        }
        let permit = match self.ctx.egress.admit_udp() {
            Ok(p) => p,
            Err(e) => {
                log::info!("dropped UDP {src} -> {dst}: {e}");
                return;
            }
        };
        let (tx, rx) = mpsc::channel(FLOW_QUEUE);
        let _ = tx.try_send(payload.to_vec());
        map.insert(key, tx);
        let (ctx, map) = (self.ctx.clone(), self.map.clone());
        self.ctx.rt.spawn(async move {
            flow(ctx, src_mac, key, rx).await;
            map.lock().unwrap_or_else(|e| e.into_inner()).remove(&key);
            drop(permit);
        });
    }
}

/// The frame carrying `payload` back to the guest on flow `key` (counted
/// as sent), or `None` if it does not fit the link MTU.
fn reply_frame(ctx: &Ctx, src_mac: EthernetAddress, key: Key, payload: &[u8]) -> Option<Vec<u8>> {
    let (src, dst) = key;
    if payload.len() + 42 > usize::from(ctx.config.mtu) + 14 {
        return None;
    }
    Counters::bump(&ctx.egress.counters.frames_out);
    Some(frame::udp_frame(
        EthernetAddress(ctx.config.gateway_mac),
        src_mac,
        dst,
        src,
        payload,
    ))
}

async fn flow(ctx: Arc<Ctx>, src_mac: EthernetAddress, key: Key, mut rx: mpsc::Receiver<Vec<u8>>) {
    let (src, dst) = key;
    let idle = ctx.egress.limits().udp_idle;
    if dst.port() == 53 {
        return dns_flow(ctx, src_mac, key, rx).await;
    }
    let conn = Conn {
        src: src.into(),
        dst: dst.into(),
        proto: Proto::Udp,
        names: ctx.metadata.names(dst.ip().to_owned().into()),
        dns: None,
    };
    let grant = match evaluate(&ctx.policy, conn, ctx.egress.limits().policy_deadline).await {
        Ok(g) => {
            Counters::bump(&ctx.egress.counters.flows_accepted);
            g
        }
        Err(why) => {
            Counters::bump(&ctx.egress.counters.flows_denied);
            log::info!("denied UDP {src} -> {dst}: {why:?}");
            Grant::Deny
        }
    };
    let reply = |payload: &[u8]| {
        if let Some(f) = reply_frame(&ctx, src_mac, key, payload) {
            let _ = ctx.to_guest.try_send(f);
        }
    };
    match grant {
        Grant::Raw => {
            let sock = match ctx.egress.dial_udp(SocketAddr::V4(dst)).await {
                Ok(s) => s,
                Err(e) => {
                    log::info!("UDP {src} -> {dst}: {e}");
                    while let Ok(Some(_)) = tokio::time::timeout(idle, rx.recv()).await {}
                    return;
                }
            };
            let mut buf = vec![0u8; 65535];
            loop {
                tokio::select! {
                    d = tokio::time::timeout(idle, rx.recv()) => match d {
                        Ok(Some(d)) => { let _ = sock.send(&d).await; }
                        _ => return,
                    },
                    r = sock.recv(&mut buf) => match r {
                        Ok(n) => reply(&buf[..n]),
                        Err(_) => return,
                    },
                }
            }
        }
        // Denied (or an HTTP grant, which UDP cannot carry, or a DNS grant
        // off port 53): swallow the flow's datagrams until it goes idle, so
        // the policy runs once.
        Grant::Deny | Grant::Http(_) | Grant::Dns(_) | Grant::DnsReply(_) => {
            while let Ok(Some(_)) = tokio::time::timeout(idle, rx.recv()).await {}
        }
    }
}

/// A flow to port 53: DNS answered by the host, each query decided by the
/// policy (no decision for the flow as a whole).
async fn dns_flow(
    ctx: Arc<Ctx>,
    src_mac: EthernetAddress,
    key: Key,
    mut rx: mpsc::Receiver<Vec<u8>>,
) {
    // Resolvers use a fresh source port per lookup: a DNS flow ends soon
    // after its last query, so lookups do not pile up against the UDP flow
    // limit.
    let idle = ctx.egress.limits().udp_idle.min(DNS_IDLE);
    let in_flight = Arc::new(tokio::sync::Semaphore::new(DNS_IN_FLIGHT));
    while let Ok(Some(q)) = tokio::time::timeout(idle, rx.recv()).await {
        // Bounded work per flow: queries past the bound are dropped (the
        // guest's resolver retries).
        let Ok(permit) = in_flight.clone().try_acquire_owned() else {
            continue;
        };
        let ctx2 = ctx.clone();
        tokio::spawn(async move {
            let (src, dst) = key;
            if let Some(a) = crate::dns::serve_query(&ctx2, src.into(), dst.into(), &q, false).await
            {
                if let Some(f) = reply_frame(&ctx2, src_mac, key, &a) {
                    let _ = ctx2.to_guest.send(f).await;
                }
            }
            drop(permit);
        });
    }
}
