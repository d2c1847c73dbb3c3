//! Host-only tests: an HTTP grant is bound to a scheme and a port. A
//! credential-injecting HTTPS grant for a name never serves another port
//! of that name or cleartext on 80, and cleartext grants send no changed
//! headers (credentials) unless the policy opted in.

mod support;

use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use sandbox_net::{Conn, HttpRequest, HttpScheme, Limits, RoutedConnector};
use support::guest::{get, resolve, sa, start, tls_client, T};
use support::Origin;

const SECRET: &str = "Bearer host-secret-b1nd";

fn inject(req: &mut HttpRequest) {
    req.headers.insert("authorization", SECRET.parse().unwrap());
}

#[tokio::test]
async fn an_https_grant_serves_only_tls_on_its_port() {
    let tls = Origin::start(Some("api.test")).await;
    let plain = Origin::start(None).await;
    let ip: IpAddr = "203.0.113.60".parse().unwrap();
    let routes = RoutedConnector::new()
        .route("203.0.113.60:443".parse().unwrap(), tls.addr)
        .route("203.0.113.60:8443".parse().unwrap(), tls.addr)
        .route("203.0.113.60:80".parse().unwrap(), plain.addr);
    let seen: Arc<Mutex<Vec<(HttpScheme, u16)>>> = Arc::default();
    let s2 = seen.clone();
    let policy = move |conn: Conn| {
        let s2 = s2.clone();
        async move {
            if let Some(dns) = conn.match_dns() {
                return Ok(dns.synthesize([("api.test", ip)]));
            }
            if let Some(h) = conn.match_http("api.test") {
                return Ok(h.accept(move |r: &mut HttpRequest| {
                    s2.lock().unwrap().push((r.scheme, r.dst.port()));
                    inject(r);
                }));
            }
            Ok(conn.deny())
        }
    };
    let (net, g) = start(
        policy,
        routes,
        Limits::default(),
        vec![tls.root.clone().unwrap()],
    );
    resolve(&g, "api.test.", "10.0.2.3:53").await.unwrap();

    let s = tls_client(&g, &net, "203.0.113.60:443", "api.test", &[])
        .await
        .unwrap();
    assert_eq!(get(s, "api.test", "/ok").await.unwrap().0, 200);
    assert_eq!(*seen.lock().unwrap(), [(HttpScheme::Https, 443)]);
    // Another port of the granted name, and cleartext on 80: not granted.
    assert!(tls_client(&g, &net, "203.0.113.60:8443", "api.test", &[])
        .await
        .is_err());
    assert!(g.connect(sa("203.0.113.60:80"), T).await.is_err());
    // Cleartext on the granted HTTPS port: closed, nothing upstream.
    let s = g.connect(sa("203.0.113.60:443"), T).await.unwrap();
    assert!(get(s, "api.test", "/plain").await.is_err());
    assert_eq!(tls.seen().len(), 1);
    assert_eq!(plain.accepts(), 0);
    assert_eq!(seen.lock().unwrap().len(), 1);
}

#[tokio::test]
async fn cleartext_grants_send_no_credentials_without_an_opt_in() {
    let plain = Origin::start(None).await;
    let alt = Origin::start(None).await;
    let ip: IpAddr = "203.0.113.61".parse().unwrap();
    let routes = RoutedConnector::new()
        .route("203.0.113.61:80".parse().unwrap(), plain.addr)
        .route("203.0.113.61:8080".parse().unwrap(), alt.addr);
    let policy = move |conn: Conn| async move {
        if let Some(dns) = conn.match_dns() {
            return Ok(dns.synthesize([("api.test", ip)]));
        }
        // Port 80: the middleware injects, without the opt-in.
        if let Some(h) = conn.match_http("http://api.test") {
            return Ok(h.accept(|r: &mut HttpRequest| {
                if r.uri.path() == "/inject" {
                    inject(r);
                }
            }));
        }
        // Port 8080: injection with the explicit opt-in.
        if let Some(h) = conn.match_http("http://api.test:8080") {
            assert_eq!((h.scheme(), h.port()), (HttpScheme::Http, 8080));
            return Ok(h.allow_cleartext_credentials().accept(inject));
        }
        Ok(conn.deny())
    };
    let (net, g) = start(policy, routes, Limits::default(), vec![]);
    resolve(&g, "api.test.", "10.0.2.3:53").await.unwrap();

    // A request the middleware leaves alone goes through.
    let s = g.connect(sa("203.0.113.61:80"), T).await.unwrap();
    assert_eq!(get(s, "api.test", "/untouched").await.unwrap().0, 200);
    // One it would add a credential to is refused; nothing goes upstream.
    let s = g.connect(sa("203.0.113.61:80"), T).await.unwrap();
    let (status, body) = get(s, "api.test", "/inject").await.unwrap();
    assert_eq!(status, 403, "{body}");
    assert!(!body.contains(SECRET));
    let seen = plain.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].path, "/untouched");
    assert!(!seen[0].headers.contains_key("authorization"));
    // TLS on a cleartext grant is another service: closed.
    assert!(tls_client(&g, &net, "203.0.113.61:80", "api.test", &[])
        .await
        .is_err());
    assert_eq!(plain.seen().len(), 1);

    // With the opt-in, the credential goes out on the named port.
    let s = g.connect(sa("203.0.113.61:8080"), T).await.unwrap();
    assert_eq!(get(s, "api.test", "/opted-in").await.unwrap().0, 200);
    assert_eq!(
        alt.seen()[0]
            .headers
            .get("authorization")
            .map(String::as_str),
        Some(SECRET)
    );
    assert_eq!(
        alt.seen()[0].headers.get("host").map(String::as_str),
        Some("api.test:8080")
    );
}
