//! Entry points for the cargo-fuzz targets (feature `fuzzing`).

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use smoltcp::wire::{IpCidr, IpListenEndpoint};

use crate::dns::{self, DnsUpstream};
use crate::egress::{HostEgress, Limits};
use crate::metadata::DnsMetadata;
use crate::stack::Shared;
use crate::RoutedConnector;

/// One guest frame through the stack's ingress path: the classifier, then
/// (if it passes) the gateway interface (any_ip, a listening socket) with a
/// poll.
pub fn frame(data: &[u8]) {
    use crate::frame::{classify, Classified};
    // As in the stack: only what the classifier passes reaches smoltcp.
    if !matches!(
        classify(data, 1514, Some(Ipv4Addr::new(10, 0, 2, 15))),
        Classified::Stack | Classified::TcpSyn { .. }
    ) {
        return;
    }
    let gw = Ipv4Addr::new(10, 0, 2, 2);
    let shared = Shared::new(
        [2, 0, 0, 0, 0, 2],
        IpCidr::new(gw.into(), 24),
        gw,
        crate::stack::Side::Stack,
        1500,
        Instant::now(),
    );
    let ep = IpListenEndpoint {
        addr: None,
        port: 80,
    };
    let _ = shared.add_tcp(|s, _| s.listen(ep).is_ok());
    shared.push_frame(data.to_vec());
    let _ = shared.poll(Instant::now());
}

/// One guest DNS message: answered from a host table (UDP or TCP rules by
/// the first byte) and, when it parses, attributed as if it were an answer.
pub fn dns(data: &[u8]) {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    let rt = RT.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a current-thread runtime")
    });
    let table = Arc::new(HashMap::from([(
        "a.test".to_string(),
        vec!["203.0.113.1".parse().expect("literal")],
    )]));
    let up = DnsUpstream::Synthesized(table);
    let meta = DnsMetadata::default();
    rt.block_on(async {
        let egress = HostEgress::new(Arc::new(RoutedConnector::new()), Limits::default());
        let tcp = data.first().is_some_and(|b| b & 1 == 1);
        let _ = dns::answer(data, &up, &egress, &meta, tcp).await;
    });
    if let Ok(m) = hickory_proto::op::Message::from_vec(data) {
        dns::record(&m, &m, &meta);
    }
}

/// Bytes through the HTTP/1.1 framing tracker, split at the first byte.
pub fn http1_framing(data: &[u8]) {
    let split = data
        .first()
        .map_or(0, |b| usize::from(*b) % (data.len() + 1));
    let mut t = crate::http::h1guard::Tracker::new(Arc::default());
    t.feed(&data[..split]);
    t.feed(&data[split..]);
}
