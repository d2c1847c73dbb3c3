//! TLS pass-through for flows granted with
//! `match_http(..).accept_passthrough()`: the guest's ClientHello is read
//! (not consumed) until its SNI is known; a granted name sends every byte,
//! the hello included, to the flow's destination unchanged, and anything
//! else closes the connection before a byte goes upstream.

use std::collections::BTreeSet;
use std::net::{SocketAddr, SocketAddrV4};
use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::hello::{self, Hello, MAX_HELLO};
use crate::stack::SocketStream;
use crate::Ctx;

pub(crate) async fn passthrough(
    ctx: Arc<Ctx>,
    mut guest: SocketStream,
    hosts: &BTreeSet<String>,
    dst: SocketAddrV4,
) {
    let head_timeout = ctx.egress.limits().http_head_timeout;
    let mut first = Vec::with_capacity(2048);
    let name = tokio::time::timeout(head_timeout, async {
        let mut buf = [0u8; 4096];
        loop {
            match hello::parse(&first) {
                Hello::Incomplete => {}
                Hello::NotTls => return Err("not a TLS ClientHello".to_string()),
                Hello::Tls { server_name: None } => return Err("TLS without SNI".into()),
                Hello::Tls {
                    server_name: Some(n),
                } => return Ok(n),
            }
            let room = (MAX_HELLO + 5 - first.len()).min(buf.len());
            match guest.read(&mut buf[..room]).await {
                Ok(0) | Err(_) => return Err("the guest closed before its ClientHello".into()),
                Ok(n) => first.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await
    .unwrap_or_else(|_| Err("no ClientHello in time".into()));
    let name = match name {
        Ok(n) if hosts.contains(&crate::metadata::canonical_name(&n)) => n,
        Ok(n) => {
            log::info!(
                "refused TLS pass-through to {dst}: SNI {n:?} is not a granted host {hosts:?}"
            );
            return;
        }
        Err(why) => {
            log::info!("refused TLS pass-through to {dst}: {why}");
            return;
        }
    };
    let mut up = match ctx.egress.dial_tcp(SocketAddr::V4(dst)).await {
        Ok(up) => up,
        Err(e) => {
            log::info!("TLS pass-through {name} ({dst}): {e}");
            return;
        }
    };
    if up.write_all(&first).await.is_err() {
        return;
    }
    crate::flow::splice(guest, up).await;
}
