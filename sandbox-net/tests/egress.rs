//! Host-only adversarial tests of the egress stack: a smoltcp guest on an
//! in-memory frame link talks to the real stack, which reaches loopback
//! origins and resolvers only through a RoutedConnector.

mod support;

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr, SocketAddrV4};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use sandbox_net::{
    Conn, HostMatcher, HttpRequest, Limits, Policy, RoutedConnector, SocketStream, Verdict,
};
use support::guest::{get, lookup, resolve, sa, start, tls_client, T};
use support::{addresses, match_web, rcode, Answer, Origin, Rec, Resolver};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const SECRET: &str = "Bearer host-secret-7f3a";

fn inject(req: &mut HttpRequest) {
    req.headers.insert("authorization", SECRET.parse().unwrap());
}

/// Synthesized DNS for `names`, HTTP interception with injection for
/// `http_host`, everything else denied.
fn http_policy(names: Vec<(&'static str, IpAddr)>, http_host: &'static str) -> impl Policy {
    move |conn: Conn| {
        let names = names.clone();
        async move {
            if let Some(dns) = conn.match_dns() {
                return Ok(dns.synthesize(names));
            }
            if let Some(http) = match_web(&conn, http_host) {
                return Ok(http.accept(inject));
            }
            Ok(conn.deny())
        }
    }
}

#[tokio::test]
async fn default_deny_sends_nothing_upstream() {
    let origin = Origin::start(None).await;
    let routes = RoutedConnector::new().route("203.0.113.5:80".parse().unwrap(), origin.addr);
    let (net, g) = start(sandbox_net::deny_all(), routes, Limits::default(), vec![]);
    let e = g
        .connect(sa("203.0.113.5:80"), T)
        .await
        .err()
        .expect("denied");
    assert_eq!(e.kind(), std::io::ErrorKind::ConnectionRefused);
    // The query is refused by the host itself (REFUSED, no answers).
    let a = lookup(&g, "example.com.", "10.0.2.3:53").await.unwrap();
    assert_eq!((rcode(&a), addresses(&a)), (5, vec![]));
    assert_eq!(origin.accepts(), 0);
    let s = net.stats();
    assert_eq!((s.flows_denied, s.dns_denied), (1, 1), "{s:?}");
    assert_eq!((s.flows_accepted, s.dns_answered), (0, 0));
}

#[tokio::test]
async fn raw_tcp_grant_reaches_only_the_matched_endpoint() {
    let origin = Origin::start(None).await;
    let routes = RoutedConnector::new()
        .route("203.0.113.5:80".parse().unwrap(), origin.addr)
        .route("203.0.113.5:81".parse().unwrap(), origin.addr);
    let policy = |conn: Conn| async move {
        if let Some(t) = conn.match_tcp("203.0.113.5:80") {
            return Ok(t.accept());
        }
        Ok(conn.deny())
    };
    let (_net, g) = start(policy, routes, Limits::default(), vec![]);
    let s = g.connect(sa("203.0.113.5:80"), T).await.unwrap();
    let (status, body) = get(s, "whatever", "/raw").await.unwrap();
    assert_eq!(status, 200);
    assert!(body.contains("hello from the origin"));
    assert!(g.connect(sa("203.0.113.5:81"), T).await.is_err());
    assert_eq!(origin.accepts(), 1);
    assert_eq!(origin.seen()[0].path, "/raw");
}

#[tokio::test]
async fn dns_is_answered_by_the_accepted_resolver_wherever_the_guest_sends_it() {
    let resolver = Resolver::start(HashMap::from([(
        "api.test.".to_string(),
        vec![Answer {
            answers: vec![("api.test.".into(), Rec::A("203.0.113.10".parse().unwrap()))],
            ttl: 30,
            ..Default::default()
        }],
    )]))
    .await;
    let upstream: SocketAddr = "198.51.100.53:53".parse().unwrap();
    let routes = RoutedConnector::new().route(upstream, resolver.addr);
    let approved = "10.0.2.3:53".parse::<SocketAddr>().unwrap();
    let policy = move |conn: Conn| async move {
        // Only the resolver address the guest was given is approved.
        if conn.dst() == approved {
            if let Some(dns) = conn.match_dns() {
                return Ok(dns.accept([upstream]));
            }
        }
        Ok(conn.deny())
    };
    let (net, g) = start(policy, routes, Limits::default(), vec![]);
    let a = resolve(&g, "API.test.", "10.0.2.3:53")
        .await
        .expect("answer");
    assert_eq!(a, vec!["203.0.113.10".parse::<IpAddr>().unwrap()]);
    assert_eq!(
        net.hostnames("203.0.113.10".parse().unwrap())
            .into_iter()
            .collect::<Vec<_>>(),
        ["api.test"]
    );
    // An unapproved resolver: refused by the host, and nothing reached
    // any resolver.
    let a = lookup(&g, "api.test.", "8.8.8.8:53").await.unwrap();
    assert_eq!(rcode(&a), 5);
    assert_eq!(resolver.queries(), ["api.test."]);
}

#[tokio::test]
async fn http_credentials_are_injected_upstream_and_never_seen_by_the_guest() {
    let origin = Origin::start(None).await;
    let ip: IpAddr = "203.0.113.10".parse().unwrap();
    let routes = RoutedConnector::new().route("203.0.113.10:80".parse().unwrap(), origin.addr);
    let (_net, g) = start(
        http_policy(vec![("api.test", ip)], "api.test"),
        routes,
        Limits::default(),
        vec![],
    );
    assert_eq!(
        resolve(&g, "api.test.", "10.0.2.3:53").await.unwrap(),
        vec![ip]
    );
    let s = g.connect(sa("203.0.113.10:80"), T).await.unwrap();
    let (status, body) = get(s, "api.test", "/v1/models?x=1").await.unwrap();
    assert_eq!(status, 200, "{body}");
    assert!(!body.contains(SECRET));
    let seen = origin.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(
        seen[0].headers.get("authorization").map(String::as_str),
        Some(SECRET)
    );
    assert_eq!(
        seen[0].headers.get("host").map(String::as_str),
        Some("api.test")
    );
    assert_eq!(seen[0].path, "/v1/models?x=1");

    // Host header spoofing: a request naming another host is refused on
    // this flow and goes nowhere.
    let s = g.connect(sa("203.0.113.10:80"), T).await.unwrap();
    let (status, body) = get(s, "evil.test", "/steal").await.unwrap();
    assert_eq!(status, 421);
    assert!(!body.contains(SECRET));
    assert_eq!(origin.seen().len(), 1);
}

#[tokio::test]
async fn raw_ip_http_has_no_hostname_and_is_denied() {
    let origin = Origin::start(None).await;
    let routes = RoutedConnector::new().route("203.0.113.77:80".parse().unwrap(), origin.addr);
    let seen_names = Arc::new(Mutex::new(None));
    let s2 = seen_names.clone();
    let policy = move |conn: Conn| {
        let s2 = s2.clone();
        async move {
            *s2.lock().unwrap() = Some(conn.hostnames().clone());
            if let Some(h) = conn.match_http(HostMatcher::predicate(|_| true)) {
                return Ok(h.accept(inject));
            }
            Ok(conn.deny())
        }
    };
    let (_net, g) = start(policy, routes, Limits::default(), vec![]);
    assert!(g.connect(sa("203.0.113.77:80"), T).await.is_err());
    assert_eq!(
        seen_names.lock().unwrap().as_ref().map(|n| n.len()),
        Some(0)
    );
    assert_eq!(origin.accepts(), 0);
}

#[tokio::test]
async fn https_over_http1_and_h2_with_injection_and_sni_checks() {
    let origin = Origin::start(Some("api.test")).await;
    let ip: IpAddr = "203.0.113.10".parse().unwrap();
    let routes = RoutedConnector::new().route("203.0.113.10:443".parse().unwrap(), origin.addr);
    let root = origin.root.clone().unwrap();
    let (net, g) = start(
        http_policy(vec![("api.test", ip)], "api.test"),
        routes,
        Limits::default(),
        vec![root],
    );
    assert_eq!(
        resolve(&g, "api.test.", "10.0.2.3:53").await.unwrap(),
        vec![ip]
    );

    // HTTP/1.1 over TLS.
    let tls = tls_client(&g, &net, "203.0.113.10:443", "api.test", &[b"http/1.1"])
        .await
        .unwrap();
    let (status, body) = get(tls, "api.test", "/h1").await.unwrap();
    assert_eq!(status, 200, "{body}");
    assert!(!body.contains(SECRET));

    // h2 over TLS (ALPN), translated to HTTP/1.1 upstream.
    let tls = tls_client(&g, &net, "203.0.113.10:443", "api.test", &[b"h2"])
        .await
        .unwrap();
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (mut send, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        TokioIo::new(tls),
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    let req = hyper::Request::get("https://api.test/h2")
        .body(Empty::<Bytes>::new())
        .unwrap();
    let resp = send.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    let seen = origin.seen();
    assert_eq!(seen.len(), 2);
    for s in &seen {
        assert_eq!(
            s.headers.get("authorization").map(String::as_str),
            Some(SECRET)
        );
    }
    assert_eq!(seen[1].path, "/h2");

    // SNI other than the granted host: no certificate, nothing upstream.
    assert!(tls_client(&g, &net, "203.0.113.10:443", "evil.test", &[])
        .await
        .is_err());
    assert_eq!(origin.seen().len(), 2);
}

#[tokio::test]
async fn dns_rebinding_to_loopback_gets_no_credentials() {
    let resolver = Resolver::start(HashMap::from([(
        "rebind.test.".to_string(),
        vec![
            Answer {
                answers: vec![(
                    "rebind.test.".into(),
                    Rec::A("203.0.113.20".parse().unwrap()),
                )],
                ttl: 0,
                ..Default::default()
            },
            Answer {
                answers: vec![("rebind.test.".into(), Rec::A("127.0.0.1".parse().unwrap()))],
                ttl: 0,
                ..Default::default()
            },
        ],
    )]))
    .await;
    let origin = Origin::start(None).await;
    let upstream: SocketAddr = "198.51.100.53:53".parse().unwrap();
    let routes = RoutedConnector::new()
        .route(upstream, resolver.addr)
        .route("127.0.0.1:80".parse().unwrap(), origin.addr)
        .route("203.0.113.20:80".parse().unwrap(), origin.addr);
    let policy = move |conn: Conn| async move {
        if let Some(dns) = conn.match_dns() {
            return Ok(dns.accept([upstream]));
        }
        if let Some(h) = match_web(&conn, "rebind.test") {
            return Ok(h.accept(inject));
        }
        Ok(conn.deny())
    };
    let (net, g) = start(policy, routes, Limits::default(), vec![]);
    assert_eq!(
        resolve(&g, "rebind.test.", "10.0.2.3:53").await.unwrap(),
        vec!["203.0.113.20".parse::<IpAddr>().unwrap()]
    );
    assert_eq!(
        resolve(&g, "rebind.test.", "10.0.2.3:53").await.unwrap(),
        vec!["127.0.0.1".parse::<IpAddr>().unwrap()]
    );
    // The TTL-0 public answer still counts (bounded window) ...
    let s = g.connect(sa("203.0.113.20:80"), T).await.unwrap();
    assert_eq!(get(s, "rebind.test", "/ok").await.unwrap().0, 200);
    // ... but the loopback answer never lends the name to 127.0.0.1.
    assert!(net.hostnames("127.0.0.1".parse().unwrap()).is_empty());
    assert!(g.connect(sa("127.0.0.1:80"), T).await.is_err());
    let seen = origin.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].path, "/ok");
}

#[tokio::test]
async fn cname_chain_with_additional_section_address_matches_the_queried_name() {
    let resolver = Resolver::start(HashMap::from([(
        "registry.test.".to_string(),
        vec![Answer {
            answers: vec![("registry.test.".into(), Rec::Cname("edge.cdn.test.".into()))],
            additional: vec![(
                "edge.cdn.test.".into(),
                Rec::A("203.0.113.30".parse().unwrap()),
            )],
            ttl: 1,
        }],
    )]))
    .await;
    let origin = Origin::start(None).await;
    let upstream: SocketAddr = "198.51.100.53:53".parse().unwrap();
    let routes = RoutedConnector::new()
        .route(upstream, resolver.addr)
        .route("203.0.113.30:80".parse().unwrap(), origin.addr);
    let policy = move |conn: Conn| async move {
        if let Some(dns) = conn.match_dns() {
            return Ok(dns.accept([upstream]));
        }
        if let Some(h) = match_web(&conn, "registry.test") {
            return Ok(h.accept(inject));
        }
        Ok(conn.deny())
    };
    let (net, g) = start(policy, routes, Limits::default(), vec![]);
    // The answer section holds only the CNAME; the address is additional.
    assert!(resolve(&g, "registry.test.", "10.0.2.3:53")
        .await
        .unwrap()
        .is_empty());
    let names: Vec<_> = net
        .hostnames("203.0.113.30".parse().unwrap())
        .into_iter()
        .collect();
    assert_eq!(names, ["edge.cdn.test", "registry.test"]);
    let s = g.connect(sa("203.0.113.30:80"), T).await.unwrap();
    assert_eq!(get(s, "registry.test", "/pkg").await.unwrap().0, 200);
    assert_eq!(
        origin.seen()[0]
            .headers
            .get("authorization")
            .map(String::as_str),
        Some(SECRET)
    );
}

async fn raw_exchange(s: &mut SocketStream, req: &[u8], wait: Duration) -> String {
    let _ = tokio::time::timeout(wait, s.write_all(req)).await;
    let mut out = Vec::new();
    let _ = tokio::time::timeout(wait, s.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test]
async fn smuggling_oversized_heads_and_slowloris_are_bounded() {
    let origin = Origin::start(None).await;
    let ip: IpAddr = "203.0.113.10".parse().unwrap();
    let routes = RoutedConnector::new().route("203.0.113.10:80".parse().unwrap(), origin.addr);
    let limits = Limits {
        http_head_timeout: Duration::from_secs(1),
        ..Limits::default()
    };
    let (_net, g) = start(
        http_policy(vec![("api.test", ip)], "api.test"),
        routes,
        limits,
        vec![],
    );
    resolve(&g, "api.test.", "10.0.2.3:53").await.unwrap();

    let mut s = g.connect(sa("203.0.113.10:80"), T).await.unwrap();
    let smuggle = b"POST / HTTP/1.1\r\nHost: api.test\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /admin HTTP/1.1\r\nHost: api.test\r\n\r\n";
    let out = raw_exchange(&mut s, smuggle, Duration::from_secs(3)).await;
    assert!(out.starts_with("HTTP/1.1 400"), "{out}");

    let mut s = g.connect(sa("203.0.113.10:80"), T).await.unwrap();
    let mut big = b"GET / HTTP/1.1\r\nHost: api.test\r\n".to_vec();
    for i in 0..3000 {
        big.extend_from_slice(format!("X-Pad-{i}: {}\r\n", "a".repeat(60)).as_bytes());
    }
    big.extend_from_slice(b"\r\n");
    let out = raw_exchange(&mut s, &big, Duration::from_secs(3)).await;
    assert!(out.is_empty() || out.starts_with("HTTP/1.1 431"), "{out}");

    // Not HTTP at all: fails closed.
    let mut s = g.connect(sa("203.0.113.10:80"), T).await.unwrap();
    let out = raw_exchange(
        &mut s,
        b"\x00\x01garbage that is not http\r\n\r\n",
        Duration::from_secs(3),
    )
    .await;
    assert!(out.is_empty() || out.starts_with("HTTP/1.1 400"), "{out}");

    // Slowloris: half a head, then silence; closed after the head timeout.
    let mut s = g.connect(sa("203.0.113.10:80"), T).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: api").await.unwrap();
    let started = std::time::Instant::now();
    let mut out = Vec::new();
    let r = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await;
    assert!(
        r.is_ok(),
        "the connection stayed open past the head timeout"
    );
    assert!(started.elapsed() < Duration::from_secs(4));
    assert!(origin.seen().is_empty(), "{:?}", origin.seen());

    // A clean head ended by a mixed terminator (a bare-LF line, then an
    // empty CRLF line, where hyper ends it), a body, then a pipelined CL+TE head: the smuggled
    // request never reaches the origin.
    let mut s = g.connect(sa("203.0.113.10:80"), T).await.unwrap();
    let mixed = b"POST /first HTTP/1.1\nHost: api.test\nContent-Length: 5\n\r\nhelloPOST /first HTTP/1.1\nHost: api.test\nContent-Length: 44\nTransfer-Encoding: chunked\n\n0\r\n\r\nGET /admin HTTP/1.1\r\nHost: api.test\r\n\r\n";
    let out = raw_exchange(&mut s, mixed, Duration::from_secs(3)).await;
    assert!(out.contains("HTTP/1.1 400"), "{out}");
    assert!(
        origin.seen().iter().all(|r| r.path != "/admin"),
        "{:?}",
        origin.seen()
    );
}

#[tokio::test]
async fn tcp_and_udp_floods_hit_per_sandbox_limits() {
    let origin = Origin::start(None).await;
    let routes = RoutedConnector::new().route("203.0.113.5:80".parse().unwrap(), origin.addr);
    let policy = |conn: Conn| async move {
        Ok(if conn.dst().port() == 80 {
            conn.accept()
        } else {
            conn.deny()
        })
    };
    let limits = Limits {
        max_tcp_flows: 4,
        max_udp_flows: 3,
        ..Limits::default()
    };
    let (net, g) = start(policy, routes, limits, vec![]);
    let mut open = Vec::new();
    for _ in 0..4 {
        open.push(g.connect(sa("203.0.113.5:80"), T).await.unwrap());
    }
    let e = g
        .connect(sa("203.0.113.5:80"), T)
        .await
        .err()
        .expect("over the limit");
    assert_eq!(e.kind(), std::io::ErrorKind::ConnectionRefused);
    for p in 0..6 {
        g.udp_send(30000 + p, sa("203.0.113.5:9"), b"x").await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let s = net.stats();
    assert!(s.flows_limited >= 4, "{s:?}"); // 1 TCP + 3 UDP
                                            // Closing connections frees the TCP slots.
    drop(open);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(g.connect(sa("203.0.113.5:80"), T).await.is_ok());
}

#[tokio::test]
async fn a_policy_that_panics_errors_or_hangs_denies() {
    let origin = Origin::start(None).await;
    let routes = RoutedConnector::new()
        .route("203.0.113.5:80".parse().unwrap(), origin.addr)
        .route("203.0.113.5:81".parse().unwrap(), origin.addr)
        .route("203.0.113.5:82".parse().unwrap(), origin.addr);
    let policy = |conn: Conn| async move {
        match conn.dst().port() {
            80 => panic!("policy bug"),
            81 => Err("lookup failed".into()),
            _ => {
                tokio::time::sleep(Duration::from_secs(30)).await;
                Ok::<Verdict, sandbox_net::BoxError>(conn.accept())
            }
        }
    };
    let limits = Limits {
        policy_deadline: Duration::from_millis(300),
        ..Limits::default()
    };
    let (net, g) = start(policy, routes, limits, vec![]);
    for port in [80, 81, 82] {
        let dst = SocketAddrV4::new("203.0.113.5".parse().unwrap(), port);
        assert!(g.connect(dst, T).await.is_err(), "port {port}");
    }
    assert_eq!(origin.accepts(), 0);
    assert_eq!(net.stats().flows_denied, 3);
}

#[tokio::test]
async fn malformed_frames_are_dropped_and_counted() {
    let origin = Origin::start(None).await;
    let routes = RoutedConnector::new().route("203.0.113.5:80".parse().unwrap(), origin.addr);
    let policy = |conn: Conn| async move { Ok(conn.accept()) };
    let (net, g) = start(policy, routes, Limits::default(), vec![]);
    let mut bad: Vec<Vec<u8>> = vec![vec![], vec![0xff; 10], vec![0; 9000]];
    // IPv4 with a lying length, IPv6, and an IPv4 fragment.
    let mut f = vec![0u8; 60];
    f[12] = 0x08;
    f[14] = 0x45;
    f[16] = 0xff;
    f[17] = 0xff;
    bad.push(f.clone());
    f[12] = 0x86;
    f[13] = 0xdd;
    bad.push(f);
    let n = bad.len() as u64;
    for f in bad {
        g.send_frame(f).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(net.stats().frames_dropped, n);
    // The stack still works.
    let s = g.connect(sa("203.0.113.5:80"), T).await.unwrap();
    assert_eq!(get(s, "x", "/").await.unwrap().0, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_short_connections_in_a_row() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((s, _)) = listener.accept().await {
            drop(s);
        }
    });
    let routes = RoutedConnector::new().route("203.0.113.5:80".parse().unwrap(), addr);
    let policy = |conn: Conn| async move { Ok(conn.accept()) };
    let (net, g) = start(policy, routes, Limits::default(), vec![]);
    let t = std::time::Instant::now();
    for i in 0..3000 {
        if let Err(e) = g.connect(sa("203.0.113.5:80"), T).await {
            panic!("connection {i}: {e}; {:?}", net.stats());
        }
    }
    eprintln!("3000 connections in {:?}", t.elapsed());
}

#[tokio::test]
async fn raw_udp_grants_relay_both_ways_and_only_where_granted() {
    let echo = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let echo_addr = echo.local_addr().unwrap();
    tokio::spawn(async move {
        let mut buf = [0u8; 2048];
        while let Ok((n, from)) = echo.recv_from(&mut buf).await {
            let mut reply = b"echo:".to_vec();
            reply.extend_from_slice(&buf[..n]);
            let _ = echo.send_to(&reply, from).await;
        }
    });
    let routes = RoutedConnector::new()
        .route("203.0.113.5:7".parse().unwrap(), echo_addr)
        .route("203.0.113.5:8".parse().unwrap(), echo_addr);
    let policy = |conn: Conn| async move {
        if let Some(u) = conn.match_udp("203.0.113.5:7") {
            return Ok(u.accept());
        }
        Ok(conn.deny())
    };
    let (net, g) = start(policy, routes, Limits::default(), vec![]);
    g.udp_send(5000, sa("203.0.113.5:7"), b"ping").await;
    let (src, dst, payload) = g.udp_recv(T).await.expect("an echo");
    assert_eq!(
        (src, dst.port(), payload.as_slice()),
        (sa("203.0.113.5:7"), 5000, &b"echo:ping"[..])
    );
    // The flow stays open for more datagrams.
    g.udp_send(5000, sa("203.0.113.5:7"), b"again").await;
    assert_eq!(g.udp_recv(T).await.unwrap().2, b"echo:again");
    // Port 8 is routed but not granted.
    g.udp_send(5001, sa("203.0.113.5:8"), b"ping").await;
    assert!(g.udp_recv(Duration::from_millis(500)).await.is_none());
    assert_eq!(net.stats().flows_denied, 1);
}

#[tokio::test]
async fn dropping_the_network_closes_every_upstream_connection() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (closed_tx, mut closed_rx) = tokio::sync::mpsc::channel::<()>(4);
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let closed_tx = closed_tx.clone();
            tokio::spawn(async move {
                let mut buf = [0u8; 1024];
                while let Ok(n) = s.read(&mut buf).await {
                    if n == 0 {
                        break;
                    }
                }
                let _ = closed_tx.send(()).await;
            });
        }
    });
    let routes = RoutedConnector::new().route("203.0.113.5:80".parse().unwrap(), addr);
    let policy = |conn: Conn| async move { Ok(conn.accept()) };
    let (net, g) = start(policy, routes, Limits::default(), vec![]);
    let mut s = g.connect(sa("203.0.113.5:80"), T).await.unwrap();
    s.write_all(b"hello").await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        closed_rx.try_recv().is_err(),
        "still open while the network runs"
    );
    drop(net);
    let closed = tokio::time::timeout(T, closed_rx.recv()).await;
    assert!(
        matches!(closed, Ok(Some(()))),
        "the upstream connection was closed"
    );
}

#[tokio::test]
async fn a_grant_covers_every_matching_name_on_a_shared_address() {
    // Two names the policy grants and one it does not, all on one CDN
    // address.
    let ip: IpAddr = "203.0.113.40".parse().unwrap();
    let plain = Origin::start(None).await;
    let tls = Origin::start(Some("b.cdn.test")).await;
    let routes = RoutedConnector::new()
        .route("203.0.113.40:80".parse().unwrap(), plain.addr)
        .route("203.0.113.40:443".parse().unwrap(), tls.addr);
    let policy = move |conn: Conn| async move {
        if let Some(dns) = conn.match_dns() {
            return Ok(dns.synthesize([
                ("a.cdn.test", ip),
                ("b.cdn.test", ip),
                ("other.test", ip),
            ]));
        }
        if let Some(h) = match_web(&conn, "*.cdn.test") {
            assert_eq!(
                h.hosts().iter().collect::<Vec<_>>(),
                ["a.cdn.test", "b.cdn.test"]
            );
            return Ok(h.accept(inject));
        }
        Ok(conn.deny())
    };
    let (net, g) = start(
        policy,
        routes,
        Limits::default(),
        vec![tls.root.clone().unwrap()],
    );
    for name in ["a.cdn.test.", "b.cdn.test.", "other.test."] {
        assert_eq!(resolve(&g, name, "10.0.2.3:53").await.unwrap(), vec![ip]);
    }
    // Plain HTTP: one connection, requests for both granted names; the
    // third name on the same address is refused.
    let s = g.connect(sa("203.0.113.40:80"), T).await.unwrap();
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(s))
        .await
        .unwrap();
    tokio::spawn(conn);
    for (host, status) in [
        ("a.cdn.test", 200),
        ("b.cdn.test", 200),
        ("other.test", 421),
    ] {
        let req = hyper::Request::get("/x")
            .header("host", host)
            .body(Empty::<Bytes>::new())
            .unwrap();
        let resp = send.send_request(req).await.unwrap();
        assert_eq!(resp.status().as_u16(), status, "{host}");
        resp.into_body().collect().await.unwrap();
    }
    let hosts: Vec<_> = plain
        .seen()
        .iter()
        .map(|s| s.headers["host"].clone())
        .collect();
    assert_eq!(hosts, ["a.cdn.test", "b.cdn.test"]);
    // TLS for the second name: its SNI picks it, upstream TLS is verified
    // for it.
    let stream = tls_client(&g, &net, "203.0.113.40:443", "b.cdn.test", &[b"http/1.1"])
        .await
        .unwrap();
    assert_eq!(get(stream, "b.cdn.test", "/tls").await.unwrap().0, 200);
    assert_eq!(
        tls.seen()[0]
            .headers
            .get("authorization")
            .map(String::as_str),
        Some(SECRET)
    );
    assert!(tls_client(&g, &net, "203.0.113.40:443", "other.test", &[])
        .await
        .is_err());
}

#[tokio::test]
async fn dns_flows_end_soon_after_their_last_query() {
    let ip: IpAddr = "203.0.113.10".parse().unwrap();
    let policy = move |conn: Conn| async move {
        match conn.match_dns() {
            Some(dns) => Ok(dns.synthesize([("api.test", ip)])),
            None => Ok(conn.deny()),
        }
    };
    let limits = Limits {
        max_udp_flows: 4,
        ..Limits::default()
    };
    let (net, g) = start(policy, RoutedConnector::new(), limits, vec![]);
    // Each lookup from a fresh port is a flow; four fill the limit...
    for _ in 0..4 {
        assert!(resolve(&g, "api.test.", "10.0.2.3:53").await.is_some());
    }
    assert!(resolve(&g, "api.test.", "10.0.2.3:53").await.is_none());
    assert_eq!(net.stats().flows_limited, 1);
    // ... and are released a few seconds after their answers, long before
    // the general UDP idle time (60 s).
    tokio::time::sleep(Duration::from_secs(6)).await;
    for _ in 0..4 {
        assert!(resolve(&g, "api.test.", "10.0.2.3:53").await.is_some());
    }
}

/// A raw flow relays both directions at once, many times the socket rings'
/// size, and passes each side's close on separately: the
/// origin echoes until the guest's FIN, then sends a trailer and closes;
/// the guest sees every byte, the trailer, then the end.
#[tokio::test]
async fn a_raw_flow_relays_megabytes_both_ways_and_each_half_close() {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let origin = l.local_addr().unwrap();
    tokio::spawn(async move {
        let (mut s, _) = l.accept().await.unwrap();
        let mut buf = vec![0u8; 100_000];
        loop {
            let n = s.read(&mut buf).await.unwrap();
            if n == 0 {
                break;
            }
            s.write_all(&buf[..n]).await.unwrap();
        }
        s.write_all(b"trailer").await.unwrap();
    });
    let dst = sa("203.0.113.7:9000");
    let routes = RoutedConnector::new().route(dst.into(), origin);
    let policy = |c: Conn| async move { Ok(c.accept()) };
    let (_net, g) = start(policy, routes, Limits::default(), vec![]);
    let s = g.connect(dst, T).await.unwrap();
    let (mut rd, mut wr) = tokio::io::split(s);
    // 5 MiB of a pattern that shows misplaced or repeated bytes.
    let sent: Vec<u8> = (0..5u32 << 20).map(|i| (i % 251) as u8).collect();
    let expect = [sent.clone(), b"trailer".to_vec()].concat();
    let writer = tokio::spawn(async move {
        wr.write_all(&sent).await.unwrap();
        wr.shutdown().await.unwrap();
    });
    let mut got = Vec::new();
    tokio::time::timeout(Duration::from_secs(30), rd.read_to_end(&mut got))
        .await
        .expect("the relay finished")
        .unwrap();
    writer.await.unwrap();
    assert_eq!(got.len(), expect.len());
    assert!(got == expect, "the echoed bytes differ");
}
