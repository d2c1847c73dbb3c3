//! A loopback HTTP(S) origin for network tests and examples: answers every
//! request with a fixed body and records the raw request heads it got.

use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use rcgen::{BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, KeyPair};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;

/// The body every response carries.
pub const BODY: &str = "hello from the origin\n";

/// A running origin.
pub struct Origin {
    /// Where it listens (127.0.0.1).
    pub addr: SocketAddr,
    /// For TLS origins: the test root that signed its certificate.
    pub root: Option<CertificateDer<'static>>,
    heads: Arc<Mutex<Vec<String>>>,
    /// The accept loop, ended (its listener closed) when the origin is
    /// dropped, so descriptor-leak checks around a test hold.
    accept: tokio::task::AbortHandle,
}

impl Drop for Origin {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

impl Origin {
    /// Starts a plain HTTP origin, or an HTTPS one for `tls_host`.
    pub async fn start(tls_host: Option<&str>) -> io::Result<Origin> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let heads: Arc<Mutex<Vec<String>>> = Arc::default();
        let (acceptor, root) = match tls_host {
            Some(h) => {
                let (cfg, root) = tls_config(h).map_err(io::Error::other)?;
                (
                    Some(tokio_rustls::TlsAcceptor::from(Arc::new(cfg))),
                    Some(root),
                )
            }
            None => (None, None),
        };
        let h2 = heads.clone();
        let accept = tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let (heads, acceptor) = (h2.clone(), acceptor.clone());
                tokio::spawn(async move {
                    match acceptor {
                        None => serve(tcp, heads).await,
                        Some(a) => {
                            if let Ok(tls) = a.accept(tcp).await {
                                serve(tls, heads).await;
                            }
                        }
                    }
                });
            }
        })
        .abort_handle();
        Ok(Origin {
            addr,
            root,
            heads,
            accept,
        })
    }

    /// The request heads received so far, in order.
    pub fn requests(&self) -> Vec<String> {
        self.heads.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

async fn serve(mut s: impl AsyncRead + AsyncWrite + Unpin, heads: Arc<Mutex<Vec<String>>>) {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") && head.len() < 64 << 10 {
        match s.read(&mut byte).await {
            Ok(1) => head.push(byte[0]),
            _ => return,
        }
    }
    heads
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .push(String::from_utf8_lossy(&head).into_owned());
    let resp = format!(
        "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{BODY}",
        BODY.len()
    );
    let _ = s.write_all(resp.as_bytes()).await;
    let _ = s.shutdown().await;
}

/// A server config for `host` signed by a fresh test root (returned).
fn tls_config(
    host: &str,
) -> Result<(rustls::ServerConfig, CertificateDer<'static>), Box<dyn std::error::Error + Send + Sync>>
{
    let root_key = KeyPair::generate()?;
    let mut root = CertificateParams::new(Vec::<String>::new())?;
    root.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    // Distinct subject names: OpenSSL takes a leaf whose subject equals its
    // issuer for a self-signed certificate (rcgen's default name is shared).
    root.distinguished_name = DistinguishedName::new();
    root.distinguished_name
        .push(DnType::CommonName, format!("sandbox test root for {host}"));
    let root = root.self_signed(&root_key)?;
    let key = KeyPair::generate()?;
    let mut leaf = CertificateParams::new(vec![host.to_string()])?;
    leaf.distinguished_name = DistinguishedName::new();
    leaf.distinguished_name.push(DnType::CommonName, host);
    let leaf = leaf.signed_by(&key, &root, &root_key)?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(
            vec![leaf.der().clone()],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
        )?;
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok((cfg, root.der().clone()))
}
