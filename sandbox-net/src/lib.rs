//! The host side of a sandbox's network: a smoltcp TCP/IP stack fed the
//! guest's Ethernet frames through a [`FramePort`], a default-deny egress
//! [`Policy`] consulted once per new flow, DNS answered by the host with
//! trusted hostname attribution, HTTP/HTTPS interception with a
//! per-sandbox CA, and one [`HostEgress`] boundary for everything that
//! leaves the host.
//!
//! ```no_run
//! # async fn demo(port: sandbox_net::FramePort) -> Result<(), sandbox_net::NetError> {
//! use sandbox_net::{Conn, Network, NetworkOptions};
//! let net = Network::start(port, NetworkOptions::new(|conn: Conn| async move {
//!     if let Some(dns) = conn.match_dns() {
//!         return Ok(dns.accept(["192.0.2.53:53".parse()?]));
//!     }
//!     Ok(conn.deny())
//! }))?;
//! println!("{:?}", net.stats());
//! # Ok(()) }
//! ```

// UML's vector link and the seqpacket frame sockets are Linux's.
#[cfg(target_os = "linux")]
mod bess;
mod checksum;
mod classify;
mod connect;
mod dns;
mod egress;
mod flow;
mod frame;
mod frame_socket;
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing;
pub mod http;
mod metadata;
mod outbox;
mod policy;
mod pool;
mod relay;
mod resolvconf;
pub mod sim;
mod stack;
mod tls;
mod udp;

use std::net::Ipv4Addr;
use std::sync::Arc;

use tokio::sync::mpsc;

#[cfg(target_os = "linux")]
pub use bess::BessListener;
pub use classify::{embedded_v4, DstClass};
pub use egress::{
    BoxUpstream, Connector, Counters, DirectConnector, EgressError, HostEgress, Limits,
    RoutedConnector, Stats, Upstream,
};
pub use frame::{FramePort, MAX_FRAME};
pub use frame_socket::frame_socket_port;
pub use http::ca::SandboxCa;
pub use http::{HttpRequest, Middleware};
pub use metadata::{
    canonical_name, DnsMetadata, MAX_ENTRIES as MAX_METADATA_ENTRIES,
    MIN_WINDOW as METADATA_MIN_WINDOW,
};
pub use policy::{
    deny_all, BoxError, Conn, DenyReason, DnsGrant, DnsQuery, EndpointMatcher, HostMatcher,
    HttpGrant, HttpScheme, Policy, Proto, RawGrant, Verdict, DNS_DECISION_TTL,
};
pub use resolvconf::{host_resolvers, RESOLV_CONF};
pub use rustls::pki_types::CertificateDer;
pub use stack::seccomp::NET_STACK;
pub use stack::SocketStream;

/// Addresses of the guest's link. The host stack owns the gateway and the
/// resolver address; the agent configures the guest side.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NetConfig {
    /// The guest's address.
    pub guest_ip: Ipv4Addr,
    /// The default gateway (the host stack).
    pub gateway_ip: Ipv4Addr,
    /// The resolver the guest is told to use (answered by the host).
    pub dns_ip: Ipv4Addr,
    /// Prefix length of the link.
    pub prefix_len: u8,
    /// The gateway's MAC address.
    pub gateway_mac: [u8; 6],
    /// The guest's MAC address.
    pub guest_mac: [u8; 6],
    /// The link's MTU (576-65535). The backends set it: UML's `bess` link
    /// has no wire, so it runs at 65000 (far fewer frames per byte); KVM's
    /// virtio-net at 1500.
    pub mtu: u16,
}

impl Default for NetConfig {
    fn default() -> Self {
        Self {
            guest_ip: Ipv4Addr::new(10, 0, 2, 15),
            gateway_ip: Ipv4Addr::new(10, 0, 2, 2),
            dns_ip: Ipv4Addr::new(10, 0, 2, 3),
            prefix_len: 24,
            gateway_mac: [0x02, 0x5b, 0, 0, 0, 0x02],
            guest_mac: [0x02, 0x5b, 0, 0, 0, 0x0f],
            mtu: 1500,
        }
    }
}

impl NetConfig {
    /// The guest's MAC address as `02:5b:00:00:00:0f`.
    pub fn guest_mac_text(&self) -> String {
        let m = self.guest_mac;
        format!(
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            m[0], m[1], m[2], m[3], m[4], m[5]
        )
    }

    /// The agent's kernel parameter value: `ip/prefix,gateway,dns,mac`.
    pub fn guest_param(&self) -> String {
        format!(
            "{}/{},{},{},{}",
            self.guest_ip,
            self.prefix_len,
            self.gateway_ip,
            self.dns_ip,
            self.guest_mac_text()
        )
    }
}

/// Everything a network needs besides its frames.
#[derive(Clone)]
pub struct NetworkOptions {
    /// Decides on every new flow (default deny).
    pub policy: Arc<dyn Policy>,
    /// How the host reaches destinations.
    pub connector: Arc<dyn Connector>,
    /// Per-sandbox limits.
    pub limits: Limits,
    /// Addresses of the link.
    pub config: NetConfig,
    /// Roots trusted for upstream TLS besides the host's native roots.
    pub extra_roots: Vec<CertificateDer<'static>>,
}

impl NetworkOptions {
    /// Options with `policy`, direct host dialing and default limits.
    pub fn new(policy: impl Policy) -> Self {
        Self {
            policy: Arc::new(policy),
            connector: Arc::new(DirectConnector::new()),
            limits: Limits::default(),
            config: NetConfig::default(),
            extra_roots: Vec::new(),
        }
    }

    /// Dials through `connector` instead of directly.
    pub fn connector(mut self, connector: impl Connector) -> Self {
        self.connector = Arc::new(connector);
        self
    }

    /// Replaces the limits.
    pub fn limits(mut self, limits: Limits) -> Self {
        self.limits = limits;
        self
    }

    /// Also trusts `root` for upstream TLS (DER).
    pub fn add_root(mut self, root: CertificateDer<'static>) -> Self {
        self.extra_roots.push(root);
        self
    }
}

impl std::fmt::Debug for NetworkOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NetworkOptions")
            .field("limits", &self.limits)
            .field("config", &self.config)
            .field("extra_roots", &self.extra_roots.len())
            .finish_non_exhaustive()
    }
}

/// Errors starting a network.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// The interception CA could not be created.
    #[error("creating the sandbox CA: {0}")]
    Ca(#[from] rcgen::Error),
    /// A root certificate was rejected.
    #[error("upstream TLS roots: {0}")]
    Tls(#[from] rustls::Error),
    /// A host socket could not be set up.
    #[error("{what}: {source}")]
    Io {
        /// What was being set up.
        what: String,
        /// The error.
        #[source]
        source: std::io::Error,
    },
}

/// Shared state of one running network.
pub(crate) struct Ctx {
    pub(crate) config: NetConfig,
    pub(crate) policy: Arc<dyn Policy>,
    pub(crate) egress: HostEgress,
    pub(crate) metadata: DnsMetadata,
    pub(crate) dns_decisions: dns::Decisions,
    pub(crate) ca: SandboxCa,
    pub(crate) upstream_tls: Arc<rustls::ClientConfig>,
    pub(crate) to_guest: mpsc::Sender<Vec<u8>>,
    /// The application's runtime: flows, policy decisions and host I/O run
    /// there; only the stack itself runs on its own thread.
    pub(crate) rt: tokio::runtime::Handle,
}

/// A running sandbox network. Dropping it stops the stack; flows in
/// progress end.
///
/// The stack (guest frames, smoltcp) runs on a thread of its own, named
/// `sandbox-net-stack` and confined by the [`NET_STACK`]
/// filter; flows, policy decisions and host sockets run on the runtime
/// that started the network.
pub struct Network {
    ctx: Arc<Ctx>,
    link: tokio::task::JoinHandle<()>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<Result<(), sandbox_thread::Panicked>>>,
}

impl Network {
    /// Starts the stack on `port` (must be called inside a tokio runtime).
    pub fn start(port: FramePort, opts: NetworkOptions) -> Result<Self, NetError> {
        Self::start_on(async move { Ok(port) }, opts)
    }

    pub(crate) fn start_on(
        port: impl std::future::Future<Output = std::io::Result<FramePort>> + Send + 'static,
        mut opts: NetworkOptions,
    ) -> Result<Self, NetError> {
        opts.config.mtu = opts.config.mtu.max(576);
        let (to_guest, from_host) = mpsc::channel(256);
        let rt = tokio::runtime::Handle::try_current().map_err(|_| NetError::Io {
            what: "starting the network".into(),
            source: std::io::Error::other("Network::start must be called inside a tokio runtime"),
        })?;
        let ctx = Arc::new(Ctx {
            rt: rt.clone(),
            ca: SandboxCa::generate()?,
            upstream_tls: tls::upstream_config(&opts.extra_roots)?,
            egress: HostEgress::new(opts.connector, opts.limits),
            policy: opts.policy,
            metadata: DnsMetadata::default(),
            dns_decisions: dns::Decisions::default(),
            config: opts.config,
            to_guest,
        });
        // The link comes up on the application's runtime (its sockets are
        // registered there); the frames then move through channels.
        let (port_tx, port_rx) = tokio::sync::oneshot::channel();
        let link = rt.spawn(async move {
            match port.await {
                Ok(port) => {
                    let _ = port_tx.send(port);
                }
                Err(e) => log::warn!("the guest's network link never came up: {e}"),
            }
        });
        let local = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .map_err(|source| NetError::Io {
                what: "building the network stack's runtime".into(),
                source,
            })?;
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let c = ctx.clone();
        let thread = sandbox_thread::spawn(
            "sandbox-net-stack",
            Some(&stack::seccomp::NET_STACK),
            move || {
                local.block_on(async move {
                    let mut stopped = stopped;
                    let port = tokio::select! {
                        port = port_rx => port.ok(),
                        _ = &mut stopped => None,
                    };
                    if let Some(port) = port {
                        tokio::select! {
                            _ = stack::run(c, port, from_host) => {}
                            _ = stopped => {}
                        }
                    }
                })
            },
        )
        .map_err(|source| NetError::Io {
            what: "starting the network stack's thread".into(),
            source,
        })?;
        Ok(Self {
            ctx,
            link,
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    /// The interception CA's certificate (PEM) the guest must trust.
    pub fn ca_cert_pem(&self) -> String {
        self.ctx.ca.cert_pem()
    }

    /// The interception CA's certificate in DER.
    pub fn ca_cert_der(&self) -> CertificateDer<'static> {
        self.ctx.ca.cert_der()
    }

    /// The link's addresses.
    pub fn config(&self) -> &NetConfig {
        &self.ctx.config
    }

    /// Counters so far.
    pub fn stats(&self) -> Stats {
        self.ctx.egress.counters.snapshot()
    }

    /// Hostnames currently attributed to `ip` by accepted DNS answers.
    pub fn hostnames(&self, ip: std::net::IpAddr) -> std::collections::BTreeSet<String> {
        self.ctx.metadata.names(ip)
    }
}

impl Drop for Network {
    fn drop(&mut self) {
        self.link.abort();
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        // The stack ends at its next wake-up (the stop signal is one):
        // every connection is reset and the thread exits.
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
