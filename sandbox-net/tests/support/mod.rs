//! Loopback peers for the host-only network tests: an HTTP(S) origin that
//! records what reaches it, and a DNS resolver with scripted answers.

#![allow(dead_code)]

pub mod guest;

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use hickory_proto::op::{Message, MessageType};
use hickory_proto::rr::rdata::CNAME;
use hickory_proto::rr::{Name, RData, Record};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio::net::{TcpListener, UdpSocket};

/// What the origin saw of one request.
#[derive(Clone, Debug)]
pub struct Seen {
    pub method: String,
    pub path: String,
    pub headers: HashMap<String, String>,
    pub version: hyper::Version,
}

/// An HTTP origin on loopback (plain, or TLS with a certificate for
/// `tls_host` from its own test root).
pub struct Origin {
    pub addr: SocketAddr,
    pub seen: Arc<Mutex<Vec<Seen>>>,
    pub accepts: Arc<Mutex<usize>>,
    pub root: Option<CertificateDer<'static>>,
}

impl Origin {
    pub async fn start(tls_host: Option<&str>) -> Origin {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
        let accepts: Arc<Mutex<usize>> = Arc::default();
        let (acceptor, root) = match tls_host {
            None => (None, None),
            Some(host) => {
                let (cfg, root) = tls_server(host);
                (
                    Some(tokio_rustls::TlsAcceptor::from(Arc::new(cfg))),
                    Some(root),
                )
            }
        };
        let (s2, a2) = (seen.clone(), accepts.clone());
        tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    return;
                };
                *a2.lock().unwrap() += 1;
                let seen = s2.clone();
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                        let seen = seen.clone();
                        async move {
                            let headers = req
                                .headers()
                                .iter()
                                .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("").to_string()))
                                .collect();
                            seen.lock().unwrap().push(Seen {
                                method: req.method().to_string(),
                                path: req.uri().to_string(),
                                headers,
                                version: req.version(),
                            });
                            Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(
                                b"hello from the origin\n",
                            ))))
                        }
                    });
                    let b = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                    match acceptor {
                        None => {
                            let _ = b.serve_connection(TokioIo::new(tcp), svc).await;
                        }
                        Some(a) => {
                            if let Ok(tls) = a.accept(tcp).await {
                                let _ = b.serve_connection(TokioIo::new(tls), svc).await;
                            }
                        }
                    }
                });
            }
        });
        Origin {
            addr,
            seen,
            accepts,
            root,
        }
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    pub fn accepts(&self) -> usize {
        *self.accepts.lock().unwrap()
    }
}

/// A server config for `host` signed by a fresh test root; returns the root.
pub fn tls_server(host: &str) -> (rustls::ServerConfig, CertificateDer<'static>) {
    let ca_key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = ca.self_signed(&ca_key).unwrap();
    let key = KeyPair::generate().unwrap();
    let leaf = CertificateParams::new(vec![host.to_string()])
        .unwrap()
        .signed_by(&key, &ca, &ca_key)
        .unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![leaf.der().clone()],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
        )
        .unwrap();
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    (cfg, ca.der().clone())
}

/// One scripted answer: A records, CNAMEs and additional-section records.
#[derive(Clone, Debug, Default)]
pub struct Answer {
    pub answers: Vec<(String, Rec)>,
    pub additional: Vec<(String, Rec)>,
    pub ttl: u32,
}

#[derive(Clone, Debug)]
pub enum Rec {
    A(IpAddr),
    Cname(String),
}

/// A UDP+TCP DNS resolver on loopback; each name has a list of answers
/// served in turn (the last one repeats).
pub struct Resolver {
    pub addr: SocketAddr,
    pub queries: Arc<Mutex<Vec<String>>>,
}

type Script = Arc<Mutex<HashMap<String, Vec<Answer>>>>;

impl Resolver {
    pub async fn start(script: HashMap<String, Vec<Answer>>) -> Resolver {
        // UDP and TCP on the same port.
        let (sock, tcp) = loop {
            let sock = UdpSocket::bind("127.0.0.1:0").await.unwrap();
            if let Ok(t) = tokio::net::TcpListener::bind(sock.local_addr().unwrap()).await {
                break (sock, t);
            }
        };
        let addr = sock.local_addr().unwrap();
        let queries: Arc<Mutex<Vec<String>>> = Arc::default();
        let script: Script = Arc::new(Mutex::new(script));
        let (q2, s2) = (queries.clone(), script.clone());
        tokio::spawn(async move {
            let mut buf = vec![0u8; 4096];
            loop {
                let Ok((n, from)) = sock.recv_from(&mut buf).await else {
                    return;
                };
                if let Some(r) = respond(&s2, &q2, &buf[..n]) {
                    let _ = sock.send_to(&r, from).await;
                }
            }
        });
        let (q2, s2) = (queries.clone(), script.clone());
        tokio::spawn(async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            while let Ok((mut c, _)) = tcp.accept().await {
                let (q3, s3) = (q2.clone(), s2.clone());
                tokio::spawn(async move {
                    while let Ok(n) = c.read_u16().await {
                        let mut buf = vec![0u8; usize::from(n)];
                        if c.read_exact(&mut buf).await.is_err() {
                            return;
                        }
                        let Some(r) = respond(&s3, &q3, &buf) else {
                            return;
                        };
                        let mut out = (r.len() as u16).to_be_bytes().to_vec();
                        out.extend_from_slice(&r);
                        if c.write_all(&out).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        Resolver { addr, queries }
    }

    pub fn queries(&self) -> Vec<String> {
        self.queries.lock().unwrap().clone()
    }
}

/// The scripted answer to one query (recorded in `queries`).
fn respond(script: &Script, queries: &Mutex<Vec<String>>, q: &[u8]) -> Option<Vec<u8>> {
    let q = Message::from_vec(q).ok()?;
    let name = q.queries()[0].name().to_ascii().to_ascii_lowercase();
    queries.lock().unwrap().push(name.clone());
    let ans = {
        let mut s = script.lock().unwrap();
        match s.get_mut(&name) {
            Some(list) if list.len() > 1 => Some(list.remove(0)),
            Some(list) => list.first().cloned(),
            None => None,
        }
    };
    let mut r = q.clone();
    r.set_message_type(MessageType::Response)
        .set_recursion_available(true);
    match ans {
        None => {
            r.set_response_code(hickory_proto::op::ResponseCode::NXDomain);
        }
        Some(a) => {
            for (n, rec) in &a.answers {
                r.add_answer(record(n, rec, a.ttl));
            }
            for (n, rec) in &a.additional {
                r.add_additional(record(n, rec, a.ttl));
            }
        }
    }
    r.to_vec().ok()
}

fn record(name: &str, rec: &Rec, ttl: u32) -> Record {
    let n = Name::from_str(name).unwrap();
    let data = match rec {
        Rec::A(IpAddr::V4(ip)) => RData::A((*ip).into()),
        Rec::A(IpAddr::V6(ip)) => RData::AAAA((*ip).into()),
        Rec::Cname(t) => RData::CNAME(CNAME(Name::from_str(t).unwrap())),
    };
    Record::from_rdata(n, ttl, data)
}

/// A DNS query for an A record.
pub fn query(id: u16, name: &str) -> Vec<u8> {
    let mut m = Message::new();
    m.set_id(id).set_recursion_desired(true);
    m.add_query(hickory_proto::op::Query::query(
        Name::from_str(name).unwrap(),
        hickory_proto::rr::RecordType::A,
    ));
    m.to_vec().unwrap()
}

/// The A addresses in a DNS answer.
pub fn addresses(answer: &[u8]) -> Vec<IpAddr> {
    let m = Message::from_vec(answer).unwrap();
    m.answers()
        .iter()
        .filter_map(|r| match r.data() {
            RData::A(a) => Some(IpAddr::V4(a.0)),
            _ => None,
        })
        .collect()
}

/// An HTTP grant for `m` over HTTPS on 443 or cleartext on 80 (credentials
/// allowed there), as the tests' origins listen on both.
#[allow(dead_code)]
pub fn match_web(conn: &sandbox_net::Conn, m: &str) -> Option<sandbox_net::HttpGrant> {
    conn.match_http(m).or_else(|| {
        conn.match_http(format!("http://{m}"))
            .map(sandbox_net::HttpGrant::allow_cleartext_credentials)
    })
}

/// The response code of a DNS answer (0 NOERROR, 3 NXDOMAIN, 5 REFUSED).
#[allow(dead_code)]
pub fn rcode(answer: &[u8]) -> u16 {
    Message::from_vec(answer).unwrap().response_code().into()
}
