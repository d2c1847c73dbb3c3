//! The egress policy: one async callback per new flow, default deny.
//!
//! ```
//! use sandbox_net::{Conn, Verdict};
//! async fn policy(conn: Conn) -> Result<Verdict, sandbox_net::BoxError> {
//!     if let Some(dns) = conn.match_dns() {
//!         return Ok(dns.accept(["192.0.2.53:53".parse()?]));
//!     }
//!     if let Some(http) = conn.match_http("api.example.com") {
//!         return Ok(http.accept(|req: &mut sandbox_net::HttpRequest| {
//!             req.headers.insert("authorization", "Bearer secret".parse().unwrap());
//!         }));
//!     }
//!     Ok(conn.deny())
//! }
//! ```
//!
//! A callback that returns an error, panics or runs past the deadline
//! denies the flow; a denied flow never sends a byte upstream.

use std::collections::BTreeSet;
use std::fmt;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use crate::classify::DstClass;
use crate::dns::DnsUpstream;
use crate::http::{HttpRequest, Middleware};
use crate::metadata::canonical_name;

/// Any error a policy callback returns.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The transport of a flow.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Proto {
    /// TCP: a flow is a connection.
    Tcp,
    /// UDP: a flow is a (source port, destination) pair.
    Udp,
}

/// A new flow the policy decides on.
#[derive(Clone, Debug)]
pub struct Conn {
    pub(crate) src: SocketAddr,
    pub(crate) dst: SocketAddr,
    pub(crate) proto: Proto,
    pub(crate) names: BTreeSet<String>,
    /// The query, when the policy is asked about one DNS query.
    pub(crate) dns: Option<DnsQuery>,
}

/// One DNS question a guest asked, as the policy sees it.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct DnsQuery {
    pub(crate) name: String,
    pub(crate) qtype: u16,
    pub(crate) qclass: u16,
}

impl DnsQuery {
    /// The queried name, canonical (lowercase, no trailing dot).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The query type's number (1 = A, 28 = AAAA, 16 = TXT...).
    pub fn qtype(&self) -> u16 {
        self.qtype
    }

    /// The query type's mnemonic: "A", "AAAA", "TXT"...
    pub fn type_name(&self) -> String {
        hickory_proto::rr::RecordType::from(self.qtype).to_string()
    }

    /// The query class's number (1 = IN).
    pub fn qclass(&self) -> u16 {
        self.qclass
    }

    /// True if the name is `suffix` or below it (`"example.com"` covers
    /// `example.com` and `a.b.example.com`; case and trailing dots
    /// ignored).
    pub fn is_under(&self, suffix: &str) -> bool {
        let suffix = canonical_name(suffix);
        self.name == suffix
            || (self.name.len() > suffix.len()
                && self.name.ends_with(&suffix)
                && self.name.as_bytes()[self.name.len() - suffix.len() - 1] == b'.')
    }
}

impl Conn {
    /// The guest's end.
    pub fn src(&self) -> SocketAddr {
        self.src
    }

    /// Where the guest wants to go.
    pub fn dst(&self) -> SocketAddr {
        self.dst
    }

    /// TCP or UDP.
    pub fn proto(&self) -> Proto {
        self.proto
    }

    /// The kind of destination address.
    pub fn class(&self) -> DstClass {
        DstClass::of(self.dst.ip())
    }

    /// Hostnames attributed to the destination address by accepted DNS
    /// answers (never by the guest's Host header or SNI), canonical.
    pub fn hostnames(&self) -> &BTreeSet<String> {
        &self.names
    }

    /// Grants the raw flow.
    pub fn accept(&self) -> Verdict {
        Verdict(Grant::Raw)
    }

    /// Refuses the flow (the default).
    pub fn deny(&self) -> Verdict {
        Verdict(Grant::Deny)
    }

    /// A raw TCP grant if this is TCP to an endpoint `m` matches.
    pub fn match_tcp(&self, m: impl Into<EndpointMatcher>) -> Option<RawGrant> {
        (self.proto == Proto::Tcp && m.into().matches(self)).then_some(RawGrant)
    }

    /// A raw UDP grant if this is UDP to an endpoint `m` matches.
    pub fn match_udp(&self, m: impl Into<EndpointMatcher>) -> Option<RawGrant> {
        (self.proto == Proto::Udp && m.into().matches(self)).then_some(RawGrant)
    }

    /// A DNS grant for one query. Every flow to port 53 (UDP or TCP,
    /// whatever the address) is DNS answered by the host, and the policy
    /// is asked once per query, before anything is forwarded, with the
    /// question in [`DnsGrant::query`] (decisions are cached per
    /// destination, name, type and class for [`DNS_DECISION_TTL`]). A
    /// query the policy denies is answered REFUSED by the host (or NXDOMAIN
    /// with [`DnsGrant::nxdomain`]) and reaches no upstream.
    pub fn match_dns(&self) -> Option<DnsGrant> {
        let query = self.dns.clone()?;
        (self.dst.port() == 53).then_some(DnsGrant { query })
    }

    /// The DNS question this decision is about, if any.
    pub fn dns_query(&self) -> Option<&DnsQuery> {
        self.dns.as_ref()
    }

    /// An HTTP grant if this is TCP to the matcher's port (443 unless
    /// named: `"api.example.com:8443"`, `"http://api.example.com"` for
    /// port 80) and trusted hostnames of the destination match `m`. The
    /// grant is bound to the matcher's scheme: HTTPS grants serve only TLS,
    /// `http://` grants only cleartext. The grant is for exactly those names (a CDN
    /// address may carry several): a TLS connection must name one of them
    /// in its SNI and every request must name that one; plain HTTP requests
    /// must each name one of them. Anything else is refused.
    ///
    /// An address matcher (`match_http("203.0.113.5")`, see
    /// [`HostMatcher::address`]) grants the destination address itself as
    /// the identity, for requests that name the address and for TLS
    /// without SNI (the interception certificate then carries the
    /// address). Name matchers, predicates included, never match an
    /// address, so credentials keyed by host name only reach an address
    /// the policy granted by address.
    pub fn match_http(&self, m: impl Into<HostMatcher>) -> Option<HttpGrant> {
        let m = m.into();
        if self.proto != Proto::Tcp
            || self.dst.port() != m.port_or_default()
            || !m.reaches(self.dst.ip())
        {
            return None;
        }
        let mut hosts: BTreeSet<String> = self
            .names
            .iter()
            .filter(|n| m.matches(n))
            .cloned()
            .collect();
        // The destination address itself is an identity an address
        // matcher may grant (`match_http("203.0.113.5")`): requests that
        // name the address (and TLS without SNI) are then served with it.
        if m.matches_address(self.dst.ip()) {
            hosts.insert(self.dst.ip().to_canonical().to_string());
        }
        (!hosts.is_empty()).then_some(HttpGrant {
            hosts,
            scheme: m.scheme,
            port: m.port_or_default(),
            cleartext_credentials: false,
        })
    }
}

/// The outcome of a policy callback.
#[derive(Clone)]
pub struct Verdict(pub(crate) Grant);

impl Verdict {
    /// A refusal.
    pub fn deny() -> Self {
        Self(Grant::Deny)
    }

    /// True unless this is a refusal.
    pub fn is_accept(&self) -> bool {
        !matches!(self.0, Grant::Deny)
    }
}

impl fmt::Debug for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            Grant::Deny => f.write_str("Deny"),
            Grant::Raw => f.write_str("Raw"),
            Grant::Dns(_) => f.write_str("Dns"),
            Grant::DnsReply(code) => write!(f, "DnsReply({code})"),
            Grant::Http(h) => {
                let kind = match h.mode {
                    HttpMode::Intercept(_) => "Http",
                    HttpMode::Passthrough => "HttpPassthrough",
                };
                write!(f, "{kind}({:?} {:?})", h.scheme, h.hosts)
            }
        }
    }
}

#[derive(Clone)]
pub(crate) enum Grant {
    Deny,
    Raw,
    Dns(DnsUpstream),
    /// A DNS query answered by the host with this code, forwarded nowhere.
    DnsReply(hickory_proto::op::ResponseCode),
    Http(HttpFlow),
}

/// How long a per-query DNS decision is reused for the same destination,
/// name, type and class.
pub const DNS_DECISION_TTL: Duration = Duration::from_secs(30);

/// What an accepted HTTP grant binds a flow to.
#[derive(Clone)]
pub(crate) struct HttpFlow {
    /// The trusted names the grant covers.
    pub(crate) hosts: Arc<BTreeSet<String>>,
    pub(crate) mode: HttpMode,
    /// TLS (HTTPS) or cleartext: the flow must speak this.
    pub(crate) scheme: HttpScheme,
    /// Whether the middleware may change a cleartext request's headers.
    pub(crate) cleartext_credentials: bool,
}

/// The scheme an HTTP grant is bound to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum HttpScheme {
    /// HTTP over TLS (port 443 unless named).
    Https,
    /// Cleartext HTTP (port 80 unless named).
    Http,
}

impl HttpScheme {
    /// 443 or 80.
    pub fn default_port(self) -> u16 {
        match self {
            Self::Https => 443,
            Self::Http => 80,
        }
    }
}

/// What an HTTP grant does with the flow.
#[derive(Clone)]
pub(crate) enum HttpMode {
    /// Terminate TLS with the sandbox CA and pass requests through this.
    Intercept(Arc<dyn Middleware>),
    /// Check the TLS server name, then forward the bytes untouched.
    Passthrough,
}

/// A matched raw flow.
#[derive(Debug)]
pub struct RawGrant;

impl RawGrant {
    /// Grants the raw flow.
    pub fn accept(self) -> Verdict {
        Verdict(Grant::Raw)
    }
}

/// A matched DNS query.
#[derive(Debug)]
pub struct DnsGrant {
    query: DnsQuery,
}

impl DnsGrant {
    /// The question: name, type, class.
    pub fn query(&self) -> &DnsQuery {
        &self.query
    }

    /// True if the name is one of `suffixes` or below one.
    pub fn is_under<S: AsRef<str>>(&self, suffixes: impl IntoIterator<Item = S>) -> bool {
        suffixes
            .into_iter()
            .any(|s| self.query.is_under(s.as_ref()))
    }

    /// Forwards the query to `resolvers` if its name is one of `suffixes`
    /// or below one; answers NXDOMAIN locally otherwise.
    pub fn accept_under<S: AsRef<str>>(
        self,
        suffixes: impl IntoIterator<Item = S>,
        resolvers: impl IntoIterator<Item = SocketAddr>,
    ) -> Verdict {
        if self.is_under(suffixes) {
            self.accept(resolvers)
        } else {
            self.nxdomain()
        }
    }

    /// Answers NXDOMAIN (the name does not exist) from the host; nothing
    /// is forwarded.
    pub fn nxdomain(self) -> Verdict {
        Verdict(Grant::DnsReply(hickory_proto::op::ResponseCode::NXDomain))
    }

    /// Answers REFUSED from the host; nothing is forwarded. The same as
    /// denying the query.
    pub fn refuse(self) -> Verdict {
        Verdict(Grant::DnsReply(hickory_proto::op::ResponseCode::Refused))
    }

    /// Answers queries from these upstream resolvers (tried in order).
    pub fn accept(self, resolvers: impl IntoIterator<Item = SocketAddr>) -> Verdict {
        Verdict(Grant::Dns(DnsUpstream::Resolvers(
            resolvers.into_iter().collect(),
        )))
    }

    /// Answers queries from the host's own resolvers, read from its
    /// resolver configuration (`/etc/resolv.conf`) at each new DNS flow,
    /// so a policy need not name resolver addresses. If the host names
    /// none, the flow's queries get SERVFAIL (and the reason is logged).
    pub fn accept_host_resolvers(self) -> Verdict {
        self.accept_resolv_conf(crate::resolvconf::RESOLV_CONF)
    }

    /// Answers queries from the `nameserver`s of a resolv.conf-format
    /// file (port 53), as [`DnsGrant::accept_host_resolvers`] does.
    pub fn accept_resolv_conf(self, path: impl AsRef<std::path::Path>) -> Verdict {
        let resolvers = crate::resolvconf::resolvers_in(path.as_ref()).unwrap_or_else(|e| {
            log::warn!("DNS grant from a resolver configuration: {e}");
            Vec::new()
        });
        self.accept(resolvers)
    }

    /// Answers queries from a host-side table: A records for the listed
    /// names, NXDOMAIN for everything else. Answers count as accepted DNS.
    pub fn synthesize(
        self,
        records: impl IntoIterator<Item = (impl AsRef<str>, IpAddr)>,
    ) -> Verdict {
        let mut table = std::collections::HashMap::<String, Vec<IpAddr>>::new();
        for (name, ip) in records {
            table
                .entry(canonical_name(name.as_ref()))
                .or_default()
                .push(ip);
        }
        Verdict(Grant::Dns(DnsUpstream::Synthesized(Arc::new(table))))
    }
}

/// A matched HTTP flow for the trusted hostnames the matcher accepted,
/// bound to the matcher's scheme and port.
#[derive(Debug)]
pub struct HttpGrant {
    hosts: BTreeSet<String>,
    scheme: HttpScheme,
    port: u16,
    cleartext_credentials: bool,
}

impl HttpGrant {
    /// The trusted hostnames this grant is for (canonical, at least one).
    pub fn hosts(&self) -> &BTreeSet<String> {
        &self.hosts
    }

    /// The scheme the flow must speak.
    pub fn scheme(&self) -> HttpScheme {
        self.scheme
    }

    /// The destination port (the matcher's).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Lets the middleware change headers of cleartext (`http://`)
    /// requests. Without it, a cleartext request whose headers the
    /// middleware changed (an injected credential, typically) is refused
    /// with 403 and nothing goes upstream: anything on the path could read
    /// a credential sent in the clear. No effect on HTTPS grants.
    pub fn allow_cleartext_credentials(mut self) -> Self {
        self.cleartext_credentials = true;
        self
    }

    fn verdict(self, mode: HttpMode) -> Verdict {
        Verdict(Grant::Http(HttpFlow {
            hosts: Arc::new(self.hosts),
            mode,
            scheme: self.scheme,
            cleartext_credentials: self.cleartext_credentials,
        }))
    }

    /// Enters HTTP/HTTPS interception; `middleware` may change each
    /// upstream request's headers (over cleartext only after
    /// [`HttpGrant::allow_cleartext_credentials`]).
    pub fn accept(self, middleware: impl Middleware) -> Verdict {
        self.verdict(HttpMode::Intercept(Arc::new(middleware)))
    }

    /// Forwards HTTPS untouched, end to end: no interception, so the
    /// guest needs no CA for this flow and sees the origin's own
    /// certificate, and no middleware runs (nothing can be injected). The
    /// flow stays bound to the grant: its TLS ClientHello must name one of
    /// [`HttpGrant::hosts`] in its SNI (else the connection is reset and
    /// nothing goes upstream), and it goes only to the flow's destination
    /// address and port. Plain HTTP (an `http://` grant included) and TLS
    /// without SNI are refused.
    pub fn accept_passthrough(self) -> Verdict {
        self.verdict(HttpMode::Passthrough)
    }

    /// Interception without changes to requests.
    pub fn accept_unchanged(self) -> Verdict {
        self.accept(|_: &mut HttpRequest| {})
    }
}

/// Matches flow endpoints: `"203.0.113.5:443"`, `"203.0.113.5"` (any
/// port), `"example.com:443"` / `"example.com"` (a trusted hostname of the
/// destination), `"*:443"`, a `SocketAddr`, an `IpAddr`, or a predicate.
///
/// Only an exact address (`"127.0.0.1:8080"`, an `IpAddr`) matches a
/// special-use destination ([`DstClass::is_special_use`]: the host's
/// loopback, link-local and metadata addresses, 0.0.0.0, multicast...);
/// names, `"*"` and predicates never do, so a wildcard grant or a DNS
/// answer pointing a granted name at 127.0.0.1 cannot reach the host's own
/// services.
#[derive(Clone)]
pub struct EndpointMatcher {
    f: Arc<dyn Fn(&Conn) -> bool + Send + Sync>,
    exact_address: bool,
}

impl EndpointMatcher {
    /// Matches when `f` returns true (never for a special-use
    /// destination).
    pub fn predicate(f: impl Fn(&Conn) -> bool + Send + Sync + 'static) -> Self {
        Self {
            f: Arc::new(f),
            exact_address: false,
        }
    }

    fn exact(f: impl Fn(&Conn) -> bool + Send + Sync + 'static) -> Self {
        Self {
            f: Arc::new(f),
            exact_address: true,
        }
    }

    fn matches(&self, conn: &Conn) -> bool {
        (self.exact_address || !conn.class().is_special_use()) && (self.f)(conn)
    }
}

impl From<&str> for EndpointMatcher {
    fn from(s: &str) -> Self {
        if let Ok(sa) = s.parse::<SocketAddr>() {
            return sa.into();
        }
        if let Ok(ip) = s.parse::<IpAddr>() {
            return ip.into();
        }
        let (host, port) = match s.rsplit_once(':') {
            Some((h, p)) => match p.parse::<u16>() {
                Ok(p) => (h.to_string(), Some(p)),
                Err(_) => (s.to_string(), None),
            },
            None => (s.to_string(), None),
        };
        let host = canonical_name(&host);
        Self::predicate(move |c| {
            port.is_none_or(|p| p == c.dst.port()) && (host == "*" || c.names.contains(&host))
        })
    }
}

impl From<String> for EndpointMatcher {
    fn from(s: String) -> Self {
        s.as_str().into()
    }
}

impl From<SocketAddr> for EndpointMatcher {
    fn from(sa: SocketAddr) -> Self {
        Self::exact(move |c| same_ip(c.dst.ip(), sa.ip()) && c.dst.port() == sa.port())
    }
}

impl From<IpAddr> for EndpointMatcher {
    fn from(ip: IpAddr) -> Self {
        Self::exact(move |c| same_ip(c.dst.ip(), ip))
    }
}

fn same_ip(a: IpAddr, b: IpAddr) -> bool {
    a.to_canonical() == b.to_canonical()
}

/// Matches trusted hostnames: `"api.example.com"` exactly (case and a
/// trailing dot ignored), `"*.example.com"` for any name below it, or a
/// predicate on the canonical name. An address (`"203.0.113.5"`, an
/// `IpAddr`, or [`HostMatcher::address`]) matches the destination address
/// itself instead, which then becomes the flow's identity; name matchers,
/// predicates included, never match an address.
///
/// As with [`EndpointMatcher`], only an exact address matches a special-use
/// destination (loopback, link-local, 0.0.0.0...): a name whose DNS answer
/// points there, or an address predicate, does not.
///
/// A matcher is bound to a scheme and port: HTTPS on 443 by default.
/// `"api.example.com:8443"` is HTTPS on 8443, `"http://api.example.com"`
/// cleartext on 80, `"http://api.example.com:8080"` cleartext on 8080
/// (`"https://"` may be written too); [`HostMatcher::port`] and
/// [`HostMatcher::cleartext`] do the same for predicates.
#[derive(Clone)]
pub struct HostMatcher {
    names: Option<NamePredicate>,
    address: Option<AddressPredicate>,
    exact_address: bool,
    scheme: HttpScheme,
    port: Option<u16>,
}

type NamePredicate = Arc<dyn Fn(&str) -> bool + Send + Sync>;
type AddressPredicate = Arc<dyn Fn(IpAddr) -> bool + Send + Sync>;

impl HostMatcher {
    /// Matches when `f` returns true for a canonical hostname.
    pub fn predicate(f: impl Fn(&str) -> bool + Send + Sync + 'static) -> Self {
        Self {
            names: Some(Arc::new(f)),
            address: None,
            exact_address: false,
            scheme: HttpScheme::Https,
            port: None,
        }
    }

    /// Matches destination addresses (not names) for which `f` is true
    /// (never a special-use one: grant those by their exact address).
    pub fn address(f: impl Fn(IpAddr) -> bool + Send + Sync + 'static) -> Self {
        Self {
            names: None,
            address: Some(Arc::new(f)),
            exact_address: false,
            scheme: HttpScheme::Https,
            port: None,
        }
    }

    /// Matches flows to `port` instead of the scheme's default.
    pub fn port(mut self, port: u16) -> Self {
        self.port = Some(port);
        self
    }

    /// Binds the grant to cleartext HTTP (port 80 unless
    /// [`HostMatcher::port`] names another).
    pub fn cleartext(mut self) -> Self {
        self.scheme = HttpScheme::Http;
        self
    }

    fn port_or_default(&self) -> u16 {
        self.port.unwrap_or(self.scheme.default_port())
    }

    fn reaches(&self, ip: IpAddr) -> bool {
        self.exact_address || !DstClass::of(ip).is_special_use()
    }

    fn matches(&self, name: &str) -> bool {
        self.names.as_ref().is_some_and(|f| f(name))
    }

    fn matches_address(&self, ip: IpAddr) -> bool {
        self.address.as_ref().is_some_and(|f| f(ip.to_canonical()))
    }
}

impl From<&str> for HostMatcher {
    fn from(s: &str) -> Self {
        let lower = s.to_ascii_lowercase();
        let (scheme, rest) = if let Some(r) = lower.strip_prefix("http://") {
            (HttpScheme::Http, r)
        } else if let Some(r) = lower.strip_prefix("https://") {
            (HttpScheme::Https, r)
        } else {
            (HttpScheme::Https, lower.as_str())
        };
        let rest = rest.strip_suffix('/').unwrap_or(rest);
        let (host, port) = split_port(rest);
        let mut m = if let Ok(ip) = host.trim_matches(['[', ']']).parse::<IpAddr>() {
            ip.into()
        } else {
            let want = canonical_name(host);
            match want.strip_prefix("*.") {
                Some(suffix) => {
                    let dotted = format!(".{suffix}");
                    Self::predicate(move |n| n.ends_with(&dotted))
                }
                None => Self::predicate(move |n| n == want),
            }
        };
        m.scheme = scheme;
        m.port = port;
        m
    }
}

/// `host:port`, `[v6]:port`, a bare IPv6 address or a bare host.
fn split_port(s: &str) -> (&str, Option<u16>) {
    if s.parse::<IpAddr>().is_ok() {
        return (s, None);
    }
    match s.rsplit_once(':') {
        Some((h, p)) => match p.parse::<u16>() {
            Ok(p) => (h, Some(p)),
            Err(_) => (s, None),
        },
        None => (s, None),
    }
}

impl From<IpAddr> for HostMatcher {
    fn from(ip: IpAddr) -> Self {
        Self {
            exact_address: true,
            ..Self::address(move |a| same_ip(a, ip))
        }
    }
}

impl From<String> for HostMatcher {
    fn from(s: String) -> Self {
        s.as_str().into()
    }
}

/// Decides on new flows.
pub trait Policy: Send + Sync + 'static {
    /// The verdict for `conn`.
    fn decide(&self, conn: Conn)
        -> Pin<Box<dyn Future<Output = Result<Verdict, BoxError>> + Send>>;
}

impl<F, Fut> Policy for F
where
    F: Fn(Conn) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Verdict, BoxError>> + Send + 'static,
{
    fn decide(
        &self,
        conn: Conn,
    ) -> Pin<Box<dyn Future<Output = Result<Verdict, BoxError>> + Send>> {
        Box::pin(self(conn))
    }
}

/// The policy that denies everything.
pub fn deny_all() -> impl Policy {
    |c: Conn| async move { Ok(c.deny()) }
}

/// Why a flow was denied.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DenyReason {
    /// The callback said so.
    Policy,
    /// The callback returned an error (its text).
    Error(String),
    /// The callback panicked.
    Panic,
    /// The callback ran past the deadline.
    Deadline,
}

/// Runs `policy` on `conn` with a deadline; errors, panics and timeouts
/// deny.
pub(crate) async fn evaluate(
    policy: &Arc<dyn Policy>,
    conn: Conn,
    deadline: Duration,
) -> Result<Grant, DenyReason> {
    // A callback may also panic before it returns its future.
    let fut = match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| policy.decide(conn))) {
        Ok(fut) => fut,
        Err(_) => return Err(DenyReason::Panic),
    };
    // Polled in place (a task of its own would cost a hand-off between
    // threads per decision); a panic in any poll ends it as a denial.
    let mut fut = Some(fut);
    let guarded = std::future::poll_fn(move |cx| {
        let Some(f) = fut.as_mut() else {
            return std::task::Poll::Ready(Err(()));
        };
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f.as_mut().poll(cx))) {
            Ok(p) => p.map(Ok),
            Err(_) => {
                // Its state may be broken: drop it, guarded too.
                let f = fut.take();
                let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| drop(f)));
                std::task::Poll::Ready(Err(()))
            }
        }
    });
    match tokio::time::timeout(deadline, guarded).await {
        Err(_) => Err(DenyReason::Deadline),
        Ok(Err(())) => Err(DenyReason::Panic),
        Ok(Ok(Err(e))) => Err(DenyReason::Error(e.to_string())),
        Ok(Ok(Ok(Verdict(Grant::Deny)))) => Err(DenyReason::Policy),
        Ok(Ok(Ok(Verdict(g)))) => Ok(g),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conn(dst: &str, proto: Proto, names: &[&str]) -> Conn {
        Conn {
            src: "10.0.2.15:40000".parse().unwrap(),
            dst: dst.parse().unwrap(),
            proto,
            names: names.iter().map(|s| s.to_string()).collect(),
            dns: (proto == Proto::Udp).then(|| DnsQuery {
                name: "q.test".into(),
                qtype: 1,
                qclass: 1,
            }),
        }
    }

    #[test]
    fn matchers() {
        let c = conn("203.0.113.5:443", Proto::Tcp, &["api.example.com"]);
        assert!(c.match_tcp("203.0.113.5:443").is_some());
        assert!(c.match_tcp("203.0.113.5").is_some());
        assert!(c.match_tcp("203.0.113.5:80").is_none());
        assert!(c.match_tcp("api.example.com:443").is_some());
        assert!(c.match_tcp("API.example.com.").is_some());
        assert!(c.match_tcp("other.example.com").is_none());
        assert!(c.match_tcp("*:443").is_some());
        assert!(c.match_udp("*:443").is_none());
        assert!(c.match_tcp("[::ffff:203.0.113.5]:443").is_some());
        assert!(c.match_dns().is_none());
        assert_eq!(
            c.match_http("api.example.com")
                .unwrap()
                .hosts()
                .iter()
                .collect::<Vec<_>>(),
            ["api.example.com"]
        );
        assert!(c.match_http("*.example.com").is_some());
        assert!(c.match_http("*.api.example.com").is_none());
        assert!(c.match_http("example.com").is_none());
        assert!(c
            .match_http(HostMatcher::predicate(|h| h.starts_with("api.")))
            .is_some());
        let raw_ip = conn("203.0.113.9:80", Proto::Tcp, &[]);
        assert!(raw_ip
            .match_http(HostMatcher::predicate(|_| true))
            .is_none());
        assert!(
            raw_ip.match_http("203.0.113.9").is_none(),
            "HTTPS on 443 only"
        );
        let by_ip = raw_ip.match_http("http://203.0.113.9").unwrap();
        assert_eq!(by_ip.scheme(), HttpScheme::Http);
        assert_eq!(by_ip.hosts().iter().collect::<Vec<_>>(), ["203.0.113.9"]);
        assert!(raw_ip.match_http("http://203.0.113.10").is_none());
        assert!(c.match_http("203.0.113.5").is_some());
        assert!(c
            .match_http(HostMatcher::address(|ip| ip.is_ipv4()))
            .is_some_and(
                |g| g.hosts().contains("203.0.113.5") && !g.hosts().contains("api.example.com")
            ));
        let dns = conn("198.51.100.1:53", Proto::Udp, &[]);
        assert!(dns.match_dns().is_some());
        assert_eq!(c.class(), DstClass::Documentation);
    }

    #[test]
    fn http_grants_are_bound_to_a_scheme_and_port() {
        let names = &["api.example.com"];
        let https = conn("203.0.113.5:443", Proto::Tcp, names);
        let alt = conn("203.0.113.5:8443", Proto::Tcp, names);
        let http = conn("203.0.113.5:80", Proto::Tcp, names);
        let g = https.match_http("api.example.com").unwrap();
        assert_eq!((g.scheme(), g.port()), (HttpScheme::Https, 443));
        assert!(alt.match_http("api.example.com").is_none());
        assert!(http.match_http("api.example.com").is_none());
        let g = alt.match_http("API.example.com.:8443").unwrap();
        assert_eq!((g.scheme(), g.port()), (HttpScheme::Https, 8443));
        assert!(alt.match_http("https://api.example.com:8443/").is_some());
        let g = http.match_http("http://api.example.com").unwrap();
        assert_eq!((g.scheme(), g.port()), (HttpScheme::Http, 80));
        assert!(https.match_http("http://api.example.com").is_none());
        assert!(http.match_http("*.example.com").is_none());
        assert!(http.match_http("http://*.example.com").is_some());
        let p = HostMatcher::predicate(|n| n.starts_with("api."));
        assert!(alt.match_http(p.clone()).is_none());
        assert!(alt.match_http(p.clone().port(8443)).is_some());
        let g = http.match_http(p.cleartext()).unwrap();
        assert_eq!(g.scheme(), HttpScheme::Http);
        let v6 = conn("[2001:db8::5]:8443", Proto::Tcp, &[]);
        assert!(v6.match_http("[2001:db8::5]:8443").is_some());
        assert!(v6.match_http("2001:db8::5").is_none());
    }

    #[test]
    fn only_exact_addresses_match_special_use_destinations() {
        for dst in [
            "127.0.0.1:443",
            "0.0.0.0:443",
            "169.254.169.254:443",
            "[::ffff:127.0.0.1]:443",
        ] {
            let c = conn(dst, Proto::Tcp, &["rebind.test"]);
            assert!(c.match_tcp("*:443").is_none(), "{dst}");
            assert!(c.match_tcp("rebind.test:443").is_none(), "{dst}");
            assert!(
                c.match_tcp(EndpointMatcher::predicate(|_| true)).is_none(),
                "{dst}"
            );
            assert!(c.match_http("rebind.test").is_none(), "{dst}");
            assert!(
                c.match_http(HostMatcher::address(|_| true)).is_none(),
                "{dst}"
            );
            assert!(
                c.match_http(HostMatcher::predicate(|_| true)).is_none(),
                "{dst}"
            );
            let exact: SocketAddr = dst.parse().unwrap();
            assert!(c.match_tcp(exact).is_some(), "{dst}");
            assert!(c.match_tcp(exact.ip()).is_some(), "{dst}");
            assert!(c.match_tcp(dst).is_some(), "{dst}");
            assert!(c.match_http(exact.ip()).is_some(), "{dst}");
        }
        let udp = conn("169.254.169.254:53", Proto::Udp, &[]);
        assert!(udp.match_udp("*:53").is_none());
        // DNS is answered by the host whatever the address.
        assert!(udp.match_dns().is_some());
        // Private and documentation addresses are not special-use.
        let lan = conn("192.168.1.9:8080", Proto::Tcp, &[]);
        assert!(lan.match_tcp("*:8080").is_some());
    }

    #[tokio::test]
    async fn errors_panics_and_slow_callbacks_deny() {
        let c = conn("203.0.113.5:443", Proto::Tcp, &[]);
        let d = Duration::from_millis(200);
        let ok: Arc<dyn Policy> = Arc::new(|c: Conn| async move { Ok(c.accept()) });
        assert!(matches!(evaluate(&ok, c.clone(), d).await, Ok(Grant::Raw)));
        assert_eq!(
            evaluate(&(Arc::new(deny_all()) as Arc<dyn Policy>), c.clone(), d)
                .await
                .err(),
            Some(DenyReason::Policy)
        );
        let err: Arc<dyn Policy> =
            Arc::new(|_c: Conn| async move { Err::<Verdict, BoxError>("no".into()) });
        assert_eq!(
            evaluate(&err, c.clone(), d).await.err(),
            Some(DenyReason::Error("no".into()))
        );
        let panics: Arc<dyn Policy> = Arc::new(|_c: Conn| async move {
            if true {
                panic!("policy bug");
            }
            Ok(Verdict::deny())
        });
        assert_eq!(
            evaluate(&panics, c.clone(), d).await.err(),
            Some(DenyReason::Panic)
        );
        let slow: Arc<dyn Policy> = Arc::new(|c: Conn| async move {
            tokio::time::sleep(Duration::from_secs(5)).await;
            Ok(c.accept())
        });
        assert_eq!(
            evaluate(&slow, c, d).await.err(),
            Some(DenyReason::Deadline)
        );
    }
}
