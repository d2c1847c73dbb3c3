//! Real-guest egress: `debian:12` under UML with `eth0` behind the host
//! stack; guest `curl` against loopback origins reached only through a
//! RoutedConnector (no other host traffic).

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use sandbox::origin::{Origin, BODY};
use sandbox_core::net::{Conn, HttpRequest, NetworkOptions, RoutedConnector};
use sandbox_core::{images, BackendKind, BootOptions, Rootfs, Sandbox, Vm};

const SECRET: &str = "Bearer host-secret-9b1c";
const API_IP: &str = "203.0.113.10";
const DENIED_IP: &str = "203.0.113.11";

fn inject(req: &mut HttpRequest) {
    req.headers.insert("authorization", SECRET.parse().unwrap());
}

async fn boot(opts: NetworkOptions) -> Vm {
    // Guest networks are UML-only for now (no virtio-net on KVM yet).
    eprintln!("[network] backend UML: the guest network is served over UML's bess transport");
    let sandbox = Sandbox::builder()
        .rootfs(Rootfs::ephemeral(images::builtin("debian:12").unwrap()))
        .backend(BackendKind::Uml)
        .network(opts)
        .build()
        .unwrap();
    sandbox
        .boot(
            BootOptions::default()
                .hostname("net")
                .timeout(Duration::from_secs(60)),
        )
        .await
        .unwrap()
}

async fn sh(vm: &Vm, script: &str) -> (i32, String, String) {
    let out = vm.exec("sh", ["-c", script]).await.unwrap();
    (
        out.status.code.unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test]
async fn guest_curl_gets_credentials_injected_for_the_allowed_host_only() {
    let api = Origin::start(Some("api.test")).await.unwrap();
    let api_plain = Origin::start(None).await.unwrap();
    let other = Origin::start(Some("denied.test")).await.unwrap();
    let api_ip: IpAddr = API_IP.parse().unwrap();
    let denied_ip: IpAddr = DENIED_IP.parse().unwrap();
    let routes = RoutedConnector::new()
        .route(SocketAddr::new(api_ip, 443), api.addr)
        .route(SocketAddr::new(api_ip, 80), api_plain.addr)
        .route(SocketAddr::new(denied_ip, 443), other.addr);
    let policy = move |conn: Conn| async move {
        if let Some(dns) = conn.match_dns() {
            return Ok(dns.synthesize([("api.test", api_ip), ("denied.test", denied_ip)]));
        }
        if let Some(http) = conn.match_http("api.test") {
            return Ok(http.accept(inject));
        }
        Ok(conn.deny())
    };
    let opts = NetworkOptions::new(policy)
        .connector(routes)
        .add_root(api.root.clone().unwrap())
        .add_root(other.root.clone().unwrap());
    let vm = boot(opts).await;

    let (code, out, _) = sh(
        &vm,
        "cat /etc/resolv.conf; cat /sys/class/net/eth0/address; getent hosts api.test",
    )
    .await;
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("nameserver 10.0.2.3"), "{out}");
    assert!(out.contains("02:5b:00:00:00:0f"), "{out}");
    assert!(out.contains(API_IP), "{out}");

    // HTTPS: the guest trusts the sandbox CA; the origin gets the secret,
    // the guest never sees it (curl -v prints the request it sent).
    let (code, out, err) = sh(&vm, "curl -sS -v --max-time 20 https://api.test/v1/models").await;
    assert_eq!(code, 0, "{out}\n{err}\n{}", vm.console_tail(20));
    assert_eq!(out, BODY);
    assert!(!err.to_ascii_lowercase().contains("authorization"), "{err}");
    let reqs = api.requests();
    assert_eq!(reqs.len(), 1, "{reqs:?}");
    assert!(
        reqs[0].starts_with("GET /v1/models HTTP/1.1\r\n"),
        "{}",
        reqs[0]
    );
    assert!(
        reqs[0].contains(&format!("authorization: {SECRET}")),
        "{}",
        reqs[0]
    );

    // Plain HTTP with a spoofed Host header: refused on this flow.
    let (code, out, _) = sh(&vm, "curl -sS --max-time 20 -o /dev/null -w '%{http_code}' -H 'Host: denied.test' http://api.test/").await;
    assert_eq!((code, out.as_str()), (0, "421"));
    assert!(api_plain.requests().is_empty());

    // A host the policy does not grant: the connection is refused and the
    // origin sees nothing.
    let (code, _, err) = sh(&vm, "curl -sS --max-time 20 https://denied.test/").await;
    assert_ne!(code, 0, "{err}");
    assert!(other.requests().is_empty());

    // The trust store fails closed for other CAs: the guest cannot reach
    // the origin's own root-signed service directly.
    let stats = vm.network_stats().expect("the VM has a network");
    assert!(
        stats.flows_denied >= 1 && stats.flows_accepted >= 3,
        "{stats:?}"
    );
    vm.shutdown().await.unwrap();
}
