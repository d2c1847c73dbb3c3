//! The simulated guest side of the host-only network tests: starting a
//! network with a smoltcp guest, resolving, HTTP and TLS clients.

use std::net::{IpAddr, SocketAddrV4};
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use rustls::pki_types::CertificateDer;
use sandbox_net::sim::SimGuest;
use sandbox_net::{FramePort, Limits, Network, NetworkOptions, Policy, SocketStream};

use super::{addresses, query};

/// How long a test waits for a connection.
pub const T: Duration = Duration::from_secs(5);

pub fn sa(s: &str) -> SocketAddrV4 {
    s.parse().unwrap()
}

pub fn start(
    policy: impl Policy,
    connector: impl sandbox_net::Connector,
    limits: Limits,
    roots: Vec<rustls::pki_types::CertificateDer<'static>>,
) -> (Network, SimGuest) {
    let (host, guest) = FramePort::pair(256);
    let mut opts = NetworkOptions::new(policy)
        .connector(connector)
        .limits(limits);
    for r in roots {
        opts = opts.add_root(r);
    }
    let net = Network::start(host, opts).unwrap();
    let g = SimGuest::start(guest, net.config());
    (net, g)
}

static PORT: AtomicU16 = AtomicU16::new(20000);

pub async fn resolve(g: &SimGuest, name: &str, server: &str) -> Option<Vec<IpAddr>> {
    let a = lookup(g, name, server).await?;
    Some(addresses(&a))
}

/// The raw answer to an A query for `name` sent to `server` over UDP.
pub async fn lookup(g: &SimGuest, name: &str, server: &str) -> Option<Vec<u8>> {
    let port = PORT.fetch_add(1, Ordering::Relaxed);
    g.udp_send(port, sa(server), &query(port, name)).await;
    let (_, _, a) = g.udp_recv(Duration::from_secs(3)).await?;
    Some(a)
}

pub async fn get(
    stream: impl tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static,
    host: &str,
    path: &str,
) -> hyper::Result<(u16, String)> {
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    let req = hyper::Request::get(path)
        .header("host", host)
        .body(Empty::<Bytes>::new())
        .unwrap();
    let resp = send.send_request(req).await?;
    let status = resp.status().as_u16();
    let headers = format!("{:?}", resp.headers());
    let body = resp.into_body().collect().await?.to_bytes();
    Ok((
        status,
        format!("{headers}\n{}", String::from_utf8_lossy(&body)),
    ))
}

pub async fn tls_client(
    g: &SimGuest,
    net: &Network,
    dst: &str,
    sni: &str,
    alpn: &[&[u8]],
) -> std::io::Result<tokio_rustls::client::TlsStream<SocketStream>> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(net.ca_cert_der()).unwrap();
    let mut cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    let s = g.connect(sa(dst), T).await?;
    let name = rustls::pki_types::ServerName::try_from(sni.to_string()).unwrap();
    tokio_rustls::TlsConnector::from(Arc::new(cfg))
        .connect(name, s)
        .await
}

/// A TLS client over a guest connection to `dst` that trusts only `roots`
/// and names `server` (a host name is sent as SNI; an address is not).
pub async fn tls_with_roots(
    g: &SimGuest,
    dst: &str,
    server: &str,
    roots: &[CertificateDer<'static>],
) -> std::io::Result<tokio_rustls::client::TlsStream<SocketStream>> {
    let mut store = rustls::RootCertStore::empty();
    for r in roots {
        store.add(r.clone()).unwrap();
    }
    let cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(store)
    .with_no_client_auth();
    let s = g.connect(sa(dst), T).await?;
    let name = rustls::pki_types::ServerName::try_from(server.to_string()).unwrap();
    tokio_rustls::TlsConnector::from(Arc::new(cfg))
        .connect(name, s)
        .await
}
