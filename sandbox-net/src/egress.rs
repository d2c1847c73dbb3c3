//! HostEgress: the one place where the host side of the network reaches
//! out - raw TCP dials, UDP relays, DNS upstream queries and intercepted
//! HTTP(S) requests all go through [`HostEgress`], which admits them
//! against per-sandbox limits and dials with a pluggable [`Connector`].

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::UdpSocket;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// A byte stream to somewhere upstream.
pub trait Upstream: AsyncRead + AsyncWrite + Send + Unpin + 'static {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin + 'static> Upstream for T {}

/// A boxed upstream stream.
pub type BoxUpstream = Box<dyn Upstream>;

/// A boxed future.
pub type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// How the host reaches a destination.
pub trait Connector: Send + Sync + 'static {
    /// Opens a TCP connection to `dst` (a guest flow's destination).
    fn tcp(&self, dst: SocketAddr) -> BoxFuture<io::Result<BoxUpstream>>;
    /// Opens a UDP socket connected to `dst` (a guest flow's destination).
    fn udp(&self, dst: SocketAddr) -> BoxFuture<io::Result<UdpSocket>>;
    /// Opens a TCP connection to a DNS resolver the policy named (never an
    /// address the guest chose; the host's own resolver is often on
    /// loopback). Defaults to [`Connector::tcp`].
    fn tcp_resolver(&self, dst: SocketAddr) -> BoxFuture<io::Result<BoxUpstream>> {
        self.tcp(dst)
    }
    /// Opens a UDP socket to a DNS resolver the policy named. Defaults to
    /// [`Connector::udp`].
    fn udp_resolver(&self, dst: SocketAddr) -> BoxFuture<io::Result<UdpSocket>> {
        self.udp(dst)
    }
}

/// Dials destinations directly from the host.
///
/// By default it refuses guest flows to special-use destinations
/// ([`crate::DstClass::is_special_use`]: the host's loopback, link-local
/// and cloud-metadata addresses, 0.0.0.0, multicast, broadcast), a second
/// line behind the policy, whose wildcard grants already exclude them. A
/// sandbox that must reach a service on the host's loopback grants its
/// exact address and uses [`DirectConnector::allow_special_use`].
/// Resolvers the policy names are dialed wherever they are.
#[derive(Clone, Copy, Debug, Default)]
pub struct DirectConnector {
    special_use: bool,
}

impl DirectConnector {
    /// A connector that refuses special-use destinations.
    pub fn new() -> Self {
        Self::default()
    }

    /// Also dials special-use destinations (the host's loopback, metadata
    /// services...) that the policy granted by exact address.
    pub fn allow_special_use(mut self) -> Self {
        self.special_use = true;
        self
    }

    fn check(&self, dst: SocketAddr) -> io::Result<SocketAddr> {
        let class = crate::DstClass::of(dst.ip());
        if self.special_use || !class.is_special_use() {
            return Ok(dst);
        }
        Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!(
                "refusing to dial {dst}: a {class:?} address is the host itself or its link \
                 (DirectConnector::allow_special_use dials it)"
            ),
        ))
    }
}

impl Connector for DirectConnector {
    fn tcp(&self, dst: SocketAddr) -> BoxFuture<io::Result<BoxUpstream>> {
        let dst = self.check(dst);
        Box::pin(async move { dial_tcp(dst?).await })
    }

    fn udp(&self, dst: SocketAddr) -> BoxFuture<io::Result<UdpSocket>> {
        let dst = self.check(dst);
        Box::pin(async move { dial_udp(dst?).await })
    }

    fn tcp_resolver(&self, dst: SocketAddr) -> BoxFuture<io::Result<BoxUpstream>> {
        Box::pin(dial_tcp(dst))
    }

    fn udp_resolver(&self, dst: SocketAddr) -> BoxFuture<io::Result<UdpSocket>> {
        Box::pin(dial_udp(dst))
    }
}

async fn dial_tcp(dst: SocketAddr) -> io::Result<BoxUpstream> {
    let s = crate::connect::tcp(dst).await?;
    s.set_nodelay(true)?;
    Ok(Box::new(s) as BoxUpstream)
}

async fn dial_udp(dst: SocketAddr) -> io::Result<UdpSocket> {
    let bind: SocketAddr = if dst.is_ipv4() {
        "0.0.0.0:0".parse().expect("literal")
    } else {
        "[::]:0".parse().expect("literal")
    };
    let s = UdpSocket::bind(bind).await?;
    s.connect(dst).await?;
    Ok(s)
}

/// Sends each listed destination to another address and refuses every
/// other one: tests and examples route guest traffic to loopback origins
/// without any other host traffic.
#[derive(Clone, Debug, Default)]
pub struct RoutedConnector {
    routes: HashMap<SocketAddr, SocketAddr>,
}

impl RoutedConnector {
    /// An empty table (refuses everything).
    pub fn new() -> Self {
        Self::default()
    }

    /// Sends flows to `from` to `to` instead.
    pub fn route(mut self, from: SocketAddr, to: SocketAddr) -> Self {
        self.routes.insert(from, to);
        self
    }

    fn lookup(&self, dst: SocketAddr) -> io::Result<SocketAddr> {
        self.routes.get(&dst).copied().ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::ConnectionRefused,
                format!("no route to {dst} in the RoutedConnector"),
            )
        })
    }
}

impl Connector for RoutedConnector {
    fn tcp(&self, dst: SocketAddr) -> BoxFuture<io::Result<BoxUpstream>> {
        let to = self.lookup(dst);
        Box::pin(async move { dial_tcp(to?).await })
    }

    fn udp(&self, dst: SocketAddr) -> BoxFuture<io::Result<UdpSocket>> {
        let to = self.lookup(dst);
        Box::pin(async move { dial_udp(to?).await })
    }
}

/// Per-sandbox limits of the network.
#[derive(Clone, Debug)]
pub struct Limits {
    /// Open TCP flows (guest connections admitted), including intercepted.
    pub max_tcp_flows: usize,
    /// TCP handshakes waiting for a policy verdict or an upstream dial.
    pub max_pending_tcp: usize,
    /// UDP flows (source port, destination) with a live relay.
    pub max_udp_flows: usize,
    /// Idle time after which a UDP flow is dropped.
    pub udp_idle: Duration,
    /// How long a policy callback may take.
    pub policy_deadline: Duration,
    /// How long an upstream dial may take.
    pub dial_timeout: Duration,
    /// How long an intercepted guest connection may take to send its TLS
    /// handshake or a complete request head (slowloris bound).
    pub http_head_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_tcp_flows: 512,
            max_pending_tcp: 128,
            max_udp_flows: 256,
            udp_idle: Duration::from_secs(60),
            policy_deadline: Duration::from_secs(5),
            dial_timeout: Duration::from_secs(10),
            http_head_timeout: Duration::from_secs(10),
        }
    }
}

/// Counters of a sandbox's network, readable while it runs.
#[derive(Debug, Default)]
pub struct Counters {
    /// Frames received from the guest.
    pub frames_in: AtomicU64,
    /// Frames sent to the guest.
    pub frames_out: AtomicU64,
    /// Guest frames dropped as malformed or unsupported.
    pub frames_dropped: AtomicU64,
    /// Flows the policy denied (including errors, panics and deadlines).
    pub flows_denied: AtomicU64,
    /// Flows admitted.
    pub flows_accepted: AtomicU64,
    /// Flows refused because a limit was reached.
    pub flows_limited: AtomicU64,
    /// Upstream dials that failed.
    pub dials_failed: AtomicU64,
    /// DNS queries the policy let through (forwarded or synthesized).
    pub dns_answered: AtomicU64,
    /// DNS queries the policy denied (answered REFUSED or NXDOMAIN by the
    /// host; nothing forwarded).
    pub dns_denied: AtomicU64,
}

/// A snapshot of [`Counters`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// See [`Counters::frames_in`].
    pub frames_in: u64,
    /// See [`Counters::frames_out`].
    pub frames_out: u64,
    /// See [`Counters::frames_dropped`].
    pub frames_dropped: u64,
    /// See [`Counters::flows_denied`].
    pub flows_denied: u64,
    /// See [`Counters::flows_accepted`].
    pub flows_accepted: u64,
    /// See [`Counters::flows_limited`].
    pub flows_limited: u64,
    /// See [`Counters::dials_failed`].
    pub dials_failed: u64,
    /// See [`Counters::dns_answered`].
    pub dns_answered: u64,
    /// See [`Counters::dns_denied`].
    pub dns_denied: u64,
}

impl Counters {
    /// Reads every counter.
    pub fn snapshot(&self) -> Stats {
        let r = |c: &AtomicU64| c.load(Ordering::Relaxed);
        Stats {
            frames_in: r(&self.frames_in),
            frames_out: r(&self.frames_out),
            frames_dropped: r(&self.frames_dropped),
            flows_denied: r(&self.flows_denied),
            flows_accepted: r(&self.flows_accepted),
            flows_limited: r(&self.flows_limited),
            dials_failed: r(&self.dials_failed),
            dns_answered: r(&self.dns_answered),
            dns_denied: r(&self.dns_denied),
        }
    }

    pub(crate) fn bump(c: &AtomicU64) {
        c.fetch_add(1, Ordering::Relaxed);
    }
}

/// The host-side egress boundary of one sandbox.
pub struct HostEgress {
    connector: Arc<dyn Connector>,
    limits: Limits,
    tcp_flows: Arc<Semaphore>,
    udp_flows: Arc<Semaphore>,
    pub(crate) counters: Arc<Counters>,
}

/// Why egress refused.
#[derive(Debug, thiserror::Error)]
pub enum EgressError {
    /// A per-sandbox limit is reached.
    #[error("per-sandbox limit reached: {0}")]
    Limit(&'static str),
    /// The dial failed or timed out.
    #[error("dialing {dst}: {source}")]
    Dial {
        /// The destination.
        dst: SocketAddr,
        /// The error.
        #[source]
        source: io::Error,
    },
}

impl HostEgress {
    /// An egress boundary with `connector` and `limits`.
    pub fn new(connector: Arc<dyn Connector>, limits: Limits) -> Self {
        Self {
            tcp_flows: Arc::new(Semaphore::new(limits.max_tcp_flows)),
            udp_flows: Arc::new(Semaphore::new(limits.max_udp_flows)),
            connector,
            limits,
            counters: Arc::default(),
        }
    }

    /// The limits in force.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Admits one TCP flow; the permit is held while the flow lives.
    pub fn admit_tcp(&self) -> Result<OwnedSemaphorePermit, EgressError> {
        self.tcp_flows.clone().try_acquire_owned().map_err(|_| {
            Counters::bump(&self.counters.flows_limited);
            EgressError::Limit("too many TCP connections")
        })
    }

    /// Admits one UDP flow; the permit is held while the flow lives.
    pub fn admit_udp(&self) -> Result<OwnedSemaphorePermit, EgressError> {
        self.udp_flows.clone().try_acquire_owned().map_err(|_| {
            Counters::bump(&self.counters.flows_limited);
            EgressError::Limit("too many UDP flows")
        })
    }

    /// Dials `dst` over TCP.
    pub async fn dial_tcp(&self, dst: SocketAddr) -> Result<BoxUpstream, EgressError> {
        let r = tokio::time::timeout(self.limits.dial_timeout, self.connector.tcp(dst)).await;
        self.dialed(dst, r)
    }

    /// Opens a UDP socket connected to `dst`.
    pub async fn dial_udp(&self, dst: SocketAddr) -> Result<UdpSocket, EgressError> {
        let r = tokio::time::timeout(self.limits.dial_timeout, self.connector.udp(dst)).await;
        self.dialed(dst, r)
    }

    /// Dials a resolver the policy named over TCP.
    pub async fn dial_tcp_resolver(&self, dst: SocketAddr) -> Result<BoxUpstream, EgressError> {
        let r =
            tokio::time::timeout(self.limits.dial_timeout, self.connector.tcp_resolver(dst)).await;
        self.dialed(dst, r)
    }

    /// Opens a UDP socket to a resolver the policy named.
    pub async fn dial_udp_resolver(&self, dst: SocketAddr) -> Result<UdpSocket, EgressError> {
        let r =
            tokio::time::timeout(self.limits.dial_timeout, self.connector.udp_resolver(dst)).await;
        self.dialed(dst, r)
    }

    fn dialed<T>(
        &self,
        dst: SocketAddr,
        r: Result<io::Result<T>, tokio::time::error::Elapsed>,
    ) -> Result<T, EgressError> {
        let r = r.unwrap_or_else(|_| Err(io::Error::new(io::ErrorKind::TimedOut, "timed out")));
        r.map_err(|source| {
            Counters::bump(&self.counters.dials_failed);
            EgressError::Dial { dst, source }
        })
    }
}
