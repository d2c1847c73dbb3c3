//! Serving one intercepted guest connection.

use std::collections::BTreeSet;
use std::net::{SocketAddr, SocketAddrV4};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Request, Response, StatusCode, Uri, Version};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use rustls::pki_types::ServerName;
use rustls::server::Acceptor;
use rustls::ServerConfig;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio_rustls::LazyConfigAcceptor;

use super::h1guard::H1Guard;
use super::{HttpRequest, Middleware};
use crate::egress::BoxUpstream;
use crate::policy::{HttpFlow, HttpMode, HttpScheme};
use crate::stack::SocketStream;
use crate::Ctx;

type Body = BoxBody<Bytes, hyper::Error>;

/// Largest request head accepted from the guest.
const MAX_HEAD: usize = 64 << 10;

/// Per-connection facts the request handler needs.
struct Flow {
    ctx: Arc<Ctx>,
    /// The trusted names the grant covers.
    hosts: Arc<BTreeSet<String>>,
    /// With TLS: the one granted name the guest's SNI asked for; every
    /// request on the connection must name it.
    tls_host: Option<String>,
    middleware: Arc<dyn Middleware>,
    /// Whether the middleware may change cleartext requests' headers.
    cleartext_credentials: bool,
    dst: SocketAddr,
    sni: Option<String>,
    /// Whether the guest used TLS (with or without SNI).
    tls: bool,
    alpn: Option<String>,
    upstream: Mutex<Vec<SendRequest<Body>>>,
    /// Set when an HTTP/1.1 head was ambiguous (smuggling attempt).
    poisoned: Arc<AtomicBool>,
}

pub(crate) async fn serve(ctx: Arc<Ctx>, guest: SocketStream, grant: HttpFlow, dst: SocketAddrV4) {
    let HttpMode::Intercept(middleware) = grant.mode else {
        return;
    };
    let head_timeout = ctx.egress.limits().http_head_timeout;
    let mut guest = BufReader::new(guest);
    let first = match tokio::time::timeout(head_timeout, guest.fill_buf()).await {
        Ok(Ok(b)) if !b.is_empty() => b[0],
        _ => return,
    };
    // The grant names the scheme: TLS on an `http://` grant, or cleartext
    // on an HTTPS one, is another service than the one granted.
    let wants_tls = grant.scheme == HttpScheme::Https;
    if (first == 0x16) != wants_tls {
        log::info!(
            "refused a {} connection to {dst} on a {:?} grant",
            if first == 0x16 { "TLS" } else { "cleartext" },
            grant.scheme
        );
        return;
    }
    let mut flow = Flow {
        ctx,
        hosts: grant.hosts,
        tls_host: None,
        middleware,
        cleartext_credentials: grant.cleartext_credentials,
        dst: SocketAddr::V4(dst),
        sni: None,
        tls: false,
        alpn: None,
        upstream: Mutex::default(),
        poisoned: Arc::default(),
    };
    if first == 0x16 {
        let acceptor = LazyConfigAcceptor::new(Acceptor::default(), guest);
        let Ok(Ok(start)) = tokio::time::timeout(head_timeout, acceptor).await else {
            return;
        };
        let hello = start.client_hello();
        let sni = hello.server_name().map(crate::metadata::canonical_name);
        // Without SNI the identity is the destination address, if granted.
        let identity = sni.clone().unwrap_or_else(|| dst.ip().to_string());
        let Some(host) = Some(identity).filter(|s| flow.hosts.contains(s)) else {
            // The guest asks for another name than the ones DNS granted:
            // no certificate, no request, no credentials.
            log::info!(
                "refused TLS to {dst}: SNI {sni:?} is not a granted host {:?}",
                flow.hosts
            );
            return;
        };
        let offered: Vec<Vec<u8>> = hello
            .alpn()
            .map(|a| a.map(<[u8]>::to_vec).collect())
            .unwrap_or_default();
        let Ok(cert) = flow.ctx.ca.leaf(&host) else {
            return;
        };
        let mut cfg = ServerConfig::builder_with_provider(crate::tls::provider())
            .with_safe_default_protocol_versions()
            .map(|b| {
                b.with_no_client_auth()
                    .with_cert_resolver(Arc::new(Single(cert)))
            });
        let Ok(cfg) = cfg.as_mut() else { return };
        cfg.alpn_protocols = [b"h2".to_vec(), b"http/1.1".to_vec()]
            .into_iter()
            .filter(|p| offered.contains(p))
            .collect();
        let Ok(Ok(tls)) =
            tokio::time::timeout(head_timeout, start.into_stream(Arc::new(cfg.clone()))).await
        else {
            return;
        };
        flow.sni = sni;
        flow.tls = true;
        flow.tls_host = Some(host);
        flow.alpn = tls
            .get_ref()
            .1
            .alpn_protocol()
            .map(|p| String::from_utf8_lossy(p).into_owned());
        if flow.alpn.as_deref() == Some("h2") {
            serve_http(Arc::new(flow), tls).await;
        } else {
            let io = H1Guard::new(tls, flow.poisoned.clone());
            serve_http(Arc::new(flow), io).await;
        }
    } else {
        let io = H1Guard::new(guest, flow.poisoned.clone());
        serve_http(Arc::new(flow), io).await;
    }
}

#[derive(Debug)]
struct Single(Arc<rustls::sign::CertifiedKey>);

impl rustls::server::ResolvesServerCert for Single {
    fn resolve(
        &self,
        _hello: rustls::server::ClientHello<'_>,
    ) -> Option<Arc<rustls::sign::CertifiedKey>> {
        Some(self.0.clone())
    }
}

async fn serve_http<S>(flow: Arc<Flow>, io: S)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let mut b = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    b.http1()
        .timer(TokioTimer::new())
        .header_read_timeout(flow.ctx.egress.limits().http_head_timeout)
        .max_buf_size(MAX_HEAD)
        .keep_alive(true);
    b.http2()
        .timer(TokioTimer::new())
        .max_header_list_size(MAX_HEAD as u32)
        .max_concurrent_streams(64);
    let svc = hyper::service::service_fn(move |req| {
        let flow = flow.clone();
        async move { Ok::<_, std::convert::Infallible>(handle(flow, req).await) }
    });
    let _ = b.serve_connection(TokioIo::new(io), svc).await;
}

fn plain(status: StatusCode, msg: &str) -> Response<Body> {
    let mut r = Response::new(
        Full::new(Bytes::from(format!("{msg}\n")))
            .map_err(|n| match n {})
            .boxed(),
    );
    *r.status_mut() = status;
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    r
}

/// The host a request names: `:authority` (h2, absolute-form) or `Host`.
fn named_host(req: &Request<Incoming>) -> Option<String> {
    let auth = req
        .uri()
        .authority()
        .map(|a| a.host().to_string())
        .or_else(|| {
            let h = req.headers().get(header::HOST)?.to_str().ok()?;
            let h = h.parse::<http::uri::Authority>().ok()?;
            Some(h.host().to_string())
        })?;
    Some(crate::metadata::canonical_name(&auth))
}

const HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

fn strip_hop_by_hop(h: &mut HeaderMap) {
    let listed: Vec<HeaderName> = h
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
        .collect();
    for n in HOP_BY_HOP.iter().chain(&listed) {
        h.remove(n);
    }
}

async fn handle(flow: Arc<Flow>, req: Request<Incoming>) -> Response<Body> {
    if flow.poisoned.load(Ordering::Relaxed) {
        let mut r = plain(
            StatusCode::BAD_REQUEST,
            "ambiguous request framing (Content-Length with Transfer-Encoding)",
        );
        r.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
        return r;
    }
    let named = named_host(&req);
    let host = match (&named, &flow.tls_host) {
        (Some(h), Some(t)) if h == t => h.clone(),
        (Some(h), None) if flow.hosts.contains(h) => h.clone(),
        _ => {
            let allowed = match &flow.tls_host {
                Some(t) => t.clone(),
                None => flow.hosts.iter().cloned().collect::<Vec<_>>().join(", "),
            };
            log::info!("refused a request for {named:?} on a flow granted for {allowed}");
            return plain(
                StatusCode::MISDIRECTED_REQUEST,
                &format!("this connection may only carry requests for {allowed}"),
            );
        }
    };
    let (parts, body) = req.into_parts();
    let mut view = HttpRequest {
        method: parts.method,
        uri: parts.uri,
        version: parts.version,
        headers: parts.headers,
        host: host.clone(),
        sni: flow.sni.clone(),
        tls: flow.tls,
        alpn: flow.alpn.clone(),
        dst: flow.dst,
        scheme: if flow.tls {
            HttpScheme::Https
        } else {
            HttpScheme::Http
        },
        refused: None,
    };
    let before = (!flow.tls && !flow.cleartext_credentials).then(|| view.headers.clone());
    // The middleware may panic: that refuses the request.
    let mw = flow.middleware.clone();
    let outcome =
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| mw.on_request(&mut view)));
    if outcome.is_err() {
        return plain(
            StatusCode::BAD_GATEWAY,
            "the sandbox's request middleware failed",
        );
    }
    if let Some(status) = view.refused {
        return plain(status, "refused by the sandbox's egress policy");
    }
    if before.is_some_and(|b| b != view.headers) {
        log::warn!(
            "refused a cleartext request to {host}: the middleware changed its headers \
             (HttpGrant::allow_cleartext_credentials permits it)"
        );
        return plain(
            StatusCode::FORBIDDEN,
            "refused: the sandbox does not send credentials over cleartext HTTP",
        );
    }
    let path = view
        .uri
        .path_and_query()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "/".into());
    let mut up = Request::new(body.boxed());
    *up.method_mut() = view.method;
    *up.uri_mut() = path
        .parse::<Uri>()
        .unwrap_or_else(|_| Uri::from_static("/"));
    *up.version_mut() = Version::HTTP_11;
    let mut headers = view.headers;
    strip_hop_by_hop(&mut headers);
    let default_port = if flow.tls { 443 } else { 80 };
    let authority = if flow.dst.port() == default_port {
        host.clone()
    } else {
        format!("{host}:{}", flow.dst.port())
    };
    match HeaderValue::from_str(&authority) {
        Ok(v) => {
            headers.insert(header::HOST, v);
        }
        Err(_) => return plain(StatusCode::BAD_GATEWAY, "invalid host"),
    }
    *up.headers_mut() = headers;
    let mut sender = match upstream(&flow).await {
        Ok(s) => s,
        Err(e) => {
            log::info!("upstream {host} ({}): {e}", flow.dst);
            return plain(
                StatusCode::BAD_GATEWAY,
                &format!("upstream {host} unreachable"),
            );
        }
    };
    let resp = sender.send_request(up).await;
    flow.upstream
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .push(sender);
    match resp {
        Ok(r) => {
            let (mut parts, body) = r.into_parts();
            strip_hop_by_hop(&mut parts.headers);
            Response::from_parts(parts, body.boxed())
        }
        Err(e) => plain(StatusCode::BAD_GATEWAY, &format!("upstream {host}: {e}")),
    }
}

/// A ready upstream HTTP/1.1 connection: a pooled one or a new dial.
async fn upstream(flow: &Flow) -> Result<SendRequest<Body>, String> {
    loop {
        let pooled = flow
            .upstream
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .pop();
        let Some(mut s) = pooled else { break };
        if s.ready().await.is_ok() {
            return Ok(s);
        }
    }
    let tcp = flow
        .ctx
        .egress
        .dial_tcp(flow.dst)
        .await
        .map_err(|e| e.to_string())?;
    let io: BoxUpstream = if let Some(host) = &flow.tls_host {
        let name = ServerName::try_from(host.clone()).map_err(|e| e.to_string())?;
        let tls = tokio_rustls::TlsConnector::from(flow.ctx.upstream_tls.clone())
            .connect(name, tcp)
            .await
            .map_err(|e| format!("TLS: {e}"))?;
        Box::new(tls)
    } else {
        tcp
    };
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(sender)
}
