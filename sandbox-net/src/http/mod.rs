//! HTTP/HTTPS interception for flows the policy granted with
//! `match_http(..).accept(middleware)`.
//!
//! The guest's connection is terminated here: TLS with a leaf certificate
//! for the granted hostname signed by the sandbox CA (the SNI must be that
//! hostname), then HTTP/1.1 or h2 parsed by hyper. Every request must name
//! the granted hostname (Host / :authority), else 421 and nothing goes
//! upstream. The middleware sees the request and may change the headers
//! sent upstream; the guest only ever sees the upstream response. Upstream
//! goes to the flow's original destination address through HostEgress,
//! over TLS verified for the hostname when the guest used TLS.

pub mod ca;
pub(crate) mod h1guard;
pub mod hello;
mod passthrough;
mod proxy;

use std::net::SocketAddr;

use http::{HeaderMap, Method, StatusCode, Uri, Version};

pub(crate) use passthrough::passthrough;
pub(crate) use proxy::serve;

/// A request as the middleware sees it.
#[derive(Debug)]
pub struct HttpRequest {
    /// The request method.
    pub method: Method,
    /// The request target as the guest sent it (origin-form path and query
    /// for HTTP/1.1, with scheme and authority for h2).
    pub uri: Uri,
    /// The guest's protocol: HTTP/1.1 or HTTP/2.
    pub version: Version,
    /// The headers that will be sent upstream; change them here.
    pub headers: HeaderMap,
    /// The identity the flow was granted for: a trusted hostname (from
    /// DNS metadata), or the destination address as text when the policy
    /// granted the address itself.
    pub host: String,
    /// The TLS server name the guest sent (equal to `host`), if TLS with
    /// SNI.
    pub sni: Option<String>,
    tls: bool,
    /// The ALPN protocol negotiated with the guest, if TLS.
    pub alpn: Option<String>,
    /// The flow's destination address (its port is the grant's).
    pub dst: SocketAddr,
    /// The scheme the grant is bound to, which the guest speaks.
    pub scheme: crate::HttpScheme,
    refused: Option<StatusCode>,
}

impl HttpRequest {
    /// Refuses the request with `status`; nothing goes upstream.
    pub fn refuse(&mut self, status: StatusCode) {
        self.refused = Some(status);
    }

    /// True if the guest used TLS (with or without SNI).
    pub fn is_tls(&self) -> bool {
        self.tls
    }
}

/// Sees and may change each intercepted request before it goes upstream.
pub trait Middleware: Send + Sync + 'static {
    /// Called once per request.
    fn on_request(&self, req: &mut HttpRequest);
}

impl<F> Middleware for F
where
    F: Fn(&mut HttpRequest) + Send + Sync + 'static,
{
    fn on_request(&self, req: &mut HttpRequest) {
        self(req)
    }
}
