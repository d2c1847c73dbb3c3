//! Host-only tests: a guest flow to the host's own loopback (a frame sent
//! straight to 127.0.0.1 through the gateway, as a root guest can craft)
//! is reached only by an exact-address grant on a connector that allows
//! special-use destinations; wildcard grants, name grants whose DNS answer
//! points at loopback, and the default `DirectConnector` all refuse it.

mod support;

use std::net::{IpAddr, SocketAddr, SocketAddrV4};

use sandbox_net::{Conn, DirectConnector, Limits};
use support::guest::{get, resolve, start, T};
use support::Origin;

fn v4(a: SocketAddr) -> SocketAddrV4 {
    match a {
        SocketAddr::V4(a) => a,
        SocketAddr::V6(_) => panic!("the origin listens on IPv4"),
    }
}

#[tokio::test]
async fn a_wildcard_grant_never_reaches_the_hosts_loopback() {
    let origin = Origin::start(None).await;
    let port = origin.addr.port();
    let policy = move |conn: Conn| async move {
        let wildcard = format!("*:{port}");
        if let Some(t) = conn.match_tcp(wildcard.as_str()) {
            return Ok(t.accept());
        }
        Ok(conn.deny())
    };
    let (net, g) = start(
        policy,
        DirectConnector::new().allow_special_use(),
        Limits::default(),
        vec![],
    );
    assert!(g.connect(v4(origin.addr), T).await.is_err());
    assert_eq!(origin.accepts(), 0);
    assert_eq!(net.stats().flows_denied, 1);
}

#[tokio::test]
async fn a_granted_name_that_resolves_to_loopback_is_not_reached() {
    let origin = Origin::start(None).await;
    let lo: IpAddr = origin.addr.ip();
    let policy = move |conn: Conn| async move {
        if let Some(dns) = conn.match_dns() {
            return Ok(dns.synthesize([("rebind.test", lo)]));
        }
        if let Some(t) = conn.match_tcp("rebind.test") {
            return Ok(t.accept());
        }
        if let Some(h) = conn.match_http("rebind.test") {
            return Ok(h.accept_unchanged());
        }
        Ok(conn.deny())
    };
    let (net, g) = start(
        policy,
        DirectConnector::new().allow_special_use(),
        Limits::default(),
        vec![],
    );
    assert_eq!(
        resolve(&g, "rebind.test.", "10.0.2.3:53").await,
        Some(vec![lo])
    );
    assert!(g.connect(v4(origin.addr), T).await.is_err());
    assert_eq!(origin.accepts(), 0);
    assert!(net.stats().flows_denied >= 1);
}

#[tokio::test]
async fn the_default_connector_refuses_loopback_even_when_the_policy_accepts() {
    let origin = Origin::start(None).await;
    let accept_all = |conn: Conn| async move { Ok(conn.accept()) };
    let (net, g) = start(
        accept_all,
        DirectConnector::new(),
        Limits::default(),
        vec![],
    );
    assert!(g.connect(v4(origin.addr), T).await.is_err());
    assert_eq!(origin.accepts(), 0);
    let s = net.stats();
    // Accepted by the policy, refused by the connector: the dial failed.
    assert_eq!((s.flows_denied, s.dials_failed), (0, 1), "{s:?}");
}

#[tokio::test]
async fn an_exact_address_grant_with_the_switch_reaches_loopback() {
    let origin = Origin::start(None).await;
    let exact = origin.addr;
    let policy = move |conn: Conn| async move {
        if let Some(t) = conn.match_tcp(exact) {
            return Ok(t.accept());
        }
        Ok(conn.deny())
    };
    let (_net, g) = start(
        policy,
        DirectConnector::new().allow_special_use(),
        Limits::default(),
        vec![],
    );
    let s = g
        .connect(v4(origin.addr), T)
        .await
        .expect("granted by address");
    let (status, body) = get(s, "whatever", "/lo").await.unwrap();
    assert_eq!(status, 200);
    assert!(body.contains("hello from the origin"));
    assert_eq!(origin.accepts(), 1);
}
