//! TCP flows: the policy verdict on a held SYN, then what runs on the
//! accepted connection.

use std::net::{SocketAddr, SocketAddrV4};
use std::sync::Arc;

use tokio::sync::{mpsc, OwnedSemaphorePermit};

use crate::egress::{BoxUpstream, Counters};
use crate::policy::{evaluate, Conn, Grant, HttpFlow, HttpMode, Proto};
use crate::stack::{Event, SocketStream};
use crate::Ctx;

/// How long an accepted guest connection may take to finish its handshake.
const HANDSHAKE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// What serves an accepted connection.
pub(crate) enum Handler {
    /// Bytes copied to and from this upstream connection.
    Raw(BoxUpstream),
    /// DNS over TCP, each query decided by the policy.
    Dns,
    /// HTTP/HTTPS interception or TLS pass-through, bound to a grant.
    Http(HttpFlow),
}

/// Decides on a held SYN and reports the outcome to the stack.
pub(crate) async fn decide_tcp(
    ctx: Arc<Ctx>,
    syn: Vec<u8>,
    key: (SocketAddrV4, SocketAddrV4),
    permit: OwnedSemaphorePermit,
    events: mpsc::UnboundedSender<Event>,
) {
    let (src, dst) = key;
    // Port 53 is DNS answered by the host: the policy decides each query
    // (counted in dns_answered / dns_denied), not the connection.
    let handler = if dst.port() == 53 {
        Some(Handler::Dns)
    } else {
        let conn = Conn {
            src: src.into(),
            dst: dst.into(),
            proto: Proto::Tcp,
            names: ctx.metadata.names((*dst.ip()).into()),
            dns: None,
        };
        let verdict = evaluate(&ctx.policy, conn, ctx.egress.limits().policy_deadline).await;
        let handler = on_verdict(&ctx, verdict, src, dst).await;
        if handler.is_some() {
            Counters::bump(&ctx.egress.counters.flows_accepted);
        }
        handler
    };
    let ev = match handler {
        Some(handler) => Event::Open {
            syn,
            dst,
            key,
            permit,
            handler,
        },
        None => Event::Refuse { syn, key },
    };
    let _ = events.send(ev);
}

/// What serves a flow the policy decided on (`None`: refused).
async fn on_verdict(
    ctx: &Ctx,
    verdict: Result<Grant, crate::policy::DenyReason>,
    src: SocketAddrV4,
    dst: SocketAddrV4,
) -> Option<Handler> {
    let counters = &ctx.egress.counters;
    match verdict {
        Err(why) => {
            log::info!("denied TCP {src} -> {dst}: {why:?}");
            Counters::bump(&counters.flows_denied);
            None
        }
        Ok(Grant::Deny) => None,
        Ok(Grant::Raw) => match ctx.egress.dial_tcp(SocketAddr::V4(dst)).await {
            Ok(up) => Some(Handler::Raw(up)),
            Err(e) => {
                log::info!("TCP {src} -> {dst}: {e}");
                None
            }
        },
        Ok(Grant::Http(h)) => Some(Handler::Http(h)),
        // DNS grants exist only for queries on port 53.
        Ok(Grant::Dns(_) | Grant::DnsReply(_)) => None,
    }
}

/// Copies bytes both ways between a guest connection and its upstream
/// until either side closes.
pub(crate) async fn splice(guest: SocketStream, up: BoxUpstream) {
    let _ = crate::relay::splice(guest, up).await;
}

/// Serves one accepted connection until either side closes.
pub(crate) async fn run(
    ctx: Arc<Ctx>,
    guest: SocketStream,
    handler: Handler,
    key: (SocketAddrV4, SocketAddrV4),
) {
    // A guest that never completes the handshake (gone, or a lost ACK)
    // must not hold the flow and its upstream connection.
    if guest.established(HANDSHAKE_TIMEOUT).await.is_err() {
        return;
    }
    match handler {
        Handler::Raw(up) => splice(guest, up).await,
        Handler::Dns => {
            let _ = crate::dns::serve_tcp(guest, &ctx, key.0.into(), key.1.into()).await;
        }
        Handler::Http(grant) => match grant.mode {
            HttpMode::Intercept(_) => crate::http::serve(ctx.clone(), guest, grant, key.1).await,
            HttpMode::Passthrough => {
                crate::http::passthrough(ctx.clone(), guest, &grant.hosts, key.1).await
            }
        },
    }
}
