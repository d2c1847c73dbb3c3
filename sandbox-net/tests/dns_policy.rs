//! Host-only tests: the policy decides every DNS query (name, type,
//! class) before anything is forwarded, over UDP and TCP, many queries on
//! one flow included; a denied query never reaches the loopback resolver,
//! which counts what it receives.

mod support;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::str::FromStr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use hickory_proto::op::{Message, Query};
use hickory_proto::rr::{Name, RecordType};
use sandbox_net::{Conn, Limits, RoutedConnector};
use support::guest::{sa, start, T};
use support::{rcode, Answer, Rec, Resolver};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const NOERROR: u16 = 0;
const NXDOMAIN: u16 = 3;
const REFUSED: u16 = 5;

fn msg(id: u16, name: &str, t: RecordType) -> Vec<u8> {
    let mut m = Message::new();
    m.set_id(id).set_recursion_desired(true);
    m.add_query(Query::query(Name::from_str(name).unwrap(), t));
    m.to_vec().unwrap()
}

async fn resolver() -> Resolver {
    let a = |name: &str| {
        (
            name.to_string(),
            vec![Answer {
                answers: vec![(name.into(), Rec::A("203.0.113.90".parse().unwrap()))],
                ttl: 30,
                ..Default::default()
            }],
        )
    };
    Resolver::start(HashMap::from([a("a.allowed.test."), a("allowed.test.")])).await
}

const UPSTREAM: &str = "198.51.100.53:53";

/// Names under allowed.test go to the resolver; the rest get NXDOMAIN
/// from the host; TXT queries are refused whatever the name.
fn policy(calls: Arc<AtomicUsize>) -> impl sandbox_net::Policy {
    move |conn: Conn| {
        calls.fetch_add(1, Ordering::Relaxed);
        async move {
            if let Some(dns) = conn.match_dns() {
                if dns.query().type_name() == "TXT" {
                    return Ok(dns.refuse());
                }
                let up: SocketAddr = UPSTREAM.parse()?;
                return Ok(dns.accept_under(["allowed.test"], [up]));
            }
            Ok(conn.deny())
        }
    }
}

#[tokio::test]
async fn each_udp_query_on_one_flow_is_decided_before_forwarding() {
    let r = resolver().await;
    let routes = RoutedConnector::new().route(UPSTREAM.parse().unwrap(), r.addr);
    let calls = Arc::new(AtomicUsize::new(0));
    let (net, g) = start(policy(calls.clone()), routes, Limits::default(), vec![]);
    // One source port, so one UDP flow, carrying every query.
    let cases = [
        ("a.allowed.test.", RecordType::A, NOERROR),
        ("secret-7f3a.attacker.test.", RecordType::A, NXDOMAIN),
        ("A.ALLOWED.Test.", RecordType::A, NOERROR),
        ("notallowed.test.", RecordType::A, NXDOMAIN),
        ("allowed.test", RecordType::A, NOERROR),
        ("a.allowed.test.", RecordType::TXT, REFUSED),
        ("c2VjcmV0.allowed.test.evil.", RecordType::A, NXDOMAIN),
    ];
    for (i, (name, t, want)) in cases.iter().enumerate() {
        g.udp_send(5353, sa("10.0.2.3:53"), &msg(i as u16, name, *t))
            .await;
        let (_, _, a) = g.udp_recv(Duration::from_secs(3)).await.expect(name);
        assert_eq!(rcode(&a), *want, "{name} {t}");
        assert_eq!(Message::from_vec(&a).unwrap().id(), i as u16);
    }
    // Only the allowed A queries reached the resolver (names as sent).
    assert_eq!(
        r.queries(),
        ["a.allowed.test.", "a.allowed.test.", "allowed.test."]
    );
    let s = net.stats();
    assert_eq!((s.dns_answered, s.dns_denied), (3, 4), "{s:?}");
    // a.allowed.test A was decided once and reused from the cache.
    assert_eq!(calls.load(Ordering::Relaxed), 6);
}

#[tokio::test]
async fn each_tcp_query_on_one_connection_is_decided_before_forwarding() {
    let r = resolver().await;
    let routes = RoutedConnector::new().route(UPSTREAM.parse().unwrap(), r.addr);
    let calls = Arc::new(AtomicUsize::new(0));
    let (net, g) = start(policy(calls), routes, Limits::default(), vec![]);
    // Any address on port 53: the host answers.
    let mut s = g.connect(sa("192.0.2.99:53"), T).await.unwrap();
    let cases = [
        ("a.allowed.test.", RecordType::A, NOERROR),
        ("exfil-0001.attacker.test.", RecordType::A, NXDOMAIN),
        ("exfil-0002.attacker.test.", RecordType::AAAA, NXDOMAIN),
        ("a.allowed.test.", RecordType::TXT, REFUSED),
        ("Allowed.Test.", RecordType::A, NOERROR),
    ];
    for (i, (name, t, want)) in cases.iter().enumerate() {
        let q = msg(100 + i as u16, name, *t);
        let mut framed = (q.len() as u16).to_be_bytes().to_vec();
        framed.extend_from_slice(&q);
        s.write_all(&framed).await.unwrap();
        let n = s.read_u16().await.unwrap();
        let mut a = vec![0u8; usize::from(n)];
        s.read_exact(&mut a).await.unwrap();
        assert_eq!(rcode(&a), *want, "{name} {t}");
    }
    assert_eq!(r.queries(), ["a.allowed.test.", "allowed.test."]);
    let st = net.stats();
    assert_eq!((st.dns_answered, st.dns_denied), (2, 3), "{st:?}");
}

#[tokio::test]
async fn a_failing_policy_refuses_the_query_and_forwards_nothing() {
    let r = resolver().await;
    let routes = RoutedConnector::new().route(UPSTREAM.parse().unwrap(), r.addr);
    let policy = |conn: Conn| async move {
        if let Some(dns) = conn.match_dns() {
            if dns.query().name().starts_with("panic") {
                panic!("policy bug");
            }
            if dns.query().name().starts_with("slow") {
                tokio::time::sleep(Duration::from_secs(5)).await;
            }
            return Ok(dns.accept([UPSTREAM.parse()?]));
        }
        Ok(conn.deny())
    };
    let limits = Limits {
        policy_deadline: Duration::from_millis(300),
        ..Limits::default()
    };
    let (_net, g) = start(policy, routes, limits, vec![]);
    for (i, name) in [
        "panic.allowed.test.",
        "slow.allowed.test.",
        "a.allowed.test.",
    ]
    .iter()
    .enumerate()
    {
        g.udp_send(6000, sa("10.0.2.3:53"), &msg(i as u16, name, RecordType::A))
            .await;
        // Generous: 3 s ran out once in a clean CI run (the panicking
        // policy's query; not reproduced in 30 local runs, with and
        // without RUST_BACKTRACE). A lost answer still fails the test.
        let (_, _, a) = g.udp_recv(Duration::from_secs(20)).await.expect(name);
        let want = if i < 2 { REFUSED } else { NOERROR };
        assert_eq!(rcode(&a), want, "{name}");
    }
    assert_eq!(r.queries(), ["a.allowed.test."]);
}
