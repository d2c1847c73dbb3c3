//! Grants the reference product has: TLS pass-through (no interception),
//! interception of a destination granted by address (TLS without SNI
//! included), and DNS answered by the host's configured resolvers.

mod support;

use std::collections::HashMap;
use std::net::IpAddr;

use sandbox_net::{Conn, HttpRequest, Limits, RoutedConnector};
use support::guest::{get, resolve, sa, start, tls_with_roots, T};
use support::{match_web, Answer, Origin, Rec, Resolver};

const SECRET: &str = "Bearer host-secret-parity";

fn inject(req: &mut HttpRequest) {
    req.headers.insert("authorization", SECRET.parse().unwrap());
}

#[tokio::test]
async fn passthrough_forwards_tls_untouched_and_only_for_granted_names() {
    let origin = Origin::start(Some("pass.test")).await;
    let root = origin.root.clone().unwrap();
    let ip: IpAddr = "203.0.113.20".parse().unwrap();
    let routes = RoutedConnector::new()
        .route("203.0.113.20:443".parse().unwrap(), origin.addr)
        .route("203.0.113.20:80".parse().unwrap(), origin.addr);
    let policy = move |conn: Conn| async move {
        if let Some(dns) = conn.match_dns() {
            return Ok(dns.synthesize([("pass.test", ip)]));
        }
        if let Some(http) = conn.match_http("pass.test") {
            return Ok(http.accept_passthrough());
        }
        Ok(conn.deny())
    };
    // The host trusts nothing extra: it never speaks TLS on this flow.
    let (net, g) = start(policy, routes, Limits::default(), vec![]);
    assert_eq!(
        resolve(&g, "pass.test.", "10.0.2.3:53").await,
        Some(vec![ip])
    );

    // The guest trusts only the origin's own root, not the sandbox CA: the
    // handshake succeeds only if the origin's certificate reached it.
    let tls = tls_with_roots(
        &g,
        "203.0.113.20:443",
        "pass.test",
        std::slice::from_ref(&root),
    )
    .await
    .unwrap();
    let (status, body) = get(tls, "pass.test", "/direct").await.unwrap();
    assert_eq!(status, 200, "{body}");
    let seen = origin.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].path, "/direct");
    assert!(!seen[0].headers.contains_key("authorization"));
    // A guest that trusts only the sandbox CA fails: nothing intercepts.
    let ca = net.ca_cert_der();
    assert!(tls_with_roots(&g, "203.0.113.20:443", "pass.test", &[ca])
        .await
        .is_err());

    // Another SNI, plain HTTP on the granted port: closed before anything
    // goes upstream. Port 80 is not granted at all (HTTPS grant).
    let accepted = origin.accepts();
    assert!(tls_with_roots(&g, "203.0.113.20:443", "evil.test", &[root])
        .await
        .is_err());
    let s = g.connect(sa("203.0.113.20:443"), T).await.unwrap();
    assert!(get(s, "pass.test", "/plain").await.is_err());
    assert!(g.connect(sa("203.0.113.20:80"), T).await.is_err());
    assert_eq!(origin.accepts(), accepted);
}

#[tokio::test]
async fn a_destination_granted_by_address_is_intercepted_with_the_address_as_identity() {
    let origin = Origin::start(Some("203.0.113.21")).await;
    let root = origin.root.clone().unwrap();
    let plain = Origin::start(None).await;
    let routes = RoutedConnector::new()
        .route("203.0.113.21:443".parse().unwrap(), origin.addr)
        .route("203.0.113.21:80".parse().unwrap(), plain.addr);
    let policy = |conn: Conn| async move {
        // A name-keyed grant first: it must not match an address.
        if let Some(http) = match_web(&conn, "*.test") {
            return Ok(http.accept(|r: &mut HttpRequest| {
                r.headers.insert("x-wrong", "name-keyed".parse().unwrap());
            }));
        }
        if let Some(http) = match_web(&conn, "203.0.113.21") {
            return Ok(http.accept(|r: &mut HttpRequest| {
                assert_eq!(r.host, "203.0.113.21");
                assert!(r.is_tls() || r.dst.port() == 80);
                inject(r);
            }));
        }
        Ok(conn.deny())
    };
    let (net, g) = start(policy, routes, Limits::default(), vec![root]);

    // TLS to an address: rustls sends no SNI; the sandbox CA's leaf carries
    // the address, and upstream TLS is verified for the address.
    let ca = net.ca_cert_der();
    let tls = tls_with_roots(&g, "203.0.113.21:443", "203.0.113.21", &[ca])
        .await
        .unwrap();
    let (status, body) = get(tls, "203.0.113.21", "/by-ip").await.unwrap();
    assert_eq!(status, 200, "{body}");
    assert!(!body.contains(SECRET));
    let seen = origin.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(
        seen[0].headers.get("authorization").map(String::as_str),
        Some(SECRET)
    );
    assert!(!seen[0].headers.contains_key("x-wrong"));

    // Plain HTTP naming the address.
    let s = g.connect(sa("203.0.113.21:80"), T).await.unwrap();
    let (status, _) = get(s, "203.0.113.21", "/plain").await.unwrap();
    assert_eq!(status, 200);
    assert_eq!(plain.seen().len(), 1);
    // A request naming a host name on that flow is refused.
    let s = g.connect(sa("203.0.113.21:80"), T).await.unwrap();
    let (status, _) = get(s, "api.test", "/named").await.unwrap();
    assert_eq!(status, 421);
    assert_eq!(plain.seen().len(), 1);
}

#[tokio::test]
async fn dns_answered_by_the_resolvers_of_a_resolver_configuration() {
    let resolver = Resolver::start(HashMap::from([(
        "conf.test.".to_string(),
        vec![Answer {
            answers: vec![("conf.test.".into(), Rec::A("203.0.113.30".parse().unwrap()))],
            ..Answer::default()
        }],
    )]))
    .await;
    // The configuration names a documentation address; the test routes it
    // to the loopback resolver.
    let conf = std::env::temp_dir().join(format!("sandbox-parity-resolv-{}", std::process::id()));
    std::fs::write(&conf, "search example\nnameserver 192.0.2.53\n").unwrap();
    let routes = RoutedConnector::new().route("192.0.2.53:53".parse().unwrap(), resolver.addr);
    let path = conf.clone();
    let policy = move |conn: Conn| {
        let path = path.clone();
        async move {
            match conn.match_dns() {
                Some(dns) => Ok(dns.accept_resolv_conf(path)),
                None => Ok(conn.deny()),
            }
        }
    };
    let (_net, g) = start(policy, routes, Limits::default(), vec![]);
    assert_eq!(
        resolve(&g, "conf.test.", "10.0.2.3:53").await,
        Some(vec!["203.0.113.30".parse::<IpAddr>().unwrap()])
    );
    assert_eq!(resolver.queries(), ["conf.test."]);
    std::fs::remove_file(conf).unwrap();
}
