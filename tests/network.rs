//! Real-guest egress: `debian:12` (and the minimal image) with `eth0`
//! behind the host stack, on the backend the harness picks (UML here):
//! guest `curl`, bash and python against loopback origins reached only
//! through a RoutedConnector (no other host traffic).

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use sandbox::origin::{Origin, BODY};
use sandbox_core::net::{Conn, HttpRequest, NetworkOptions, RoutedConnector};
use sandbox_core::{images, BootOptions, Rootfs, Sandbox, Vm};

const SECRET: &str = "Bearer host-secret-9b1c";
const API_IP: &str = "203.0.113.10";
const DENIED_IP: &str = "203.0.113.11";
const PASS_IP: &str = "203.0.113.13";

fn inject(req: &mut HttpRequest) {
    req.headers.insert("authorization", SECRET.parse().unwrap());
}

async fn boot(opts: NetworkOptions) -> Vm {
    let sandbox = Sandbox::builder()
        .rootfs(Rootfs::ephemeral(sandbox::builtin("debian:12")))
        .backend(sandbox::backend())
        .network(opts)
        .build()
        .unwrap();
    let vm = sandbox
        .boot(
            BootOptions::default()
                .hostname("net")
                .timeout(Duration::from_secs(60)),
        )
        .await
        .unwrap();
    eprintln!(
        "[network] backend {:?} ({})",
        vm.backend(),
        vm.backend_reason()
    );
    vm
}

/// A bash script doing an HTTP/1.0 GET over `/dev/tcp/<host>/<port>`.
fn http_get(host_port: &str, path: &str) -> String {
    format!(
        "exec 3<>/dev/tcp/{host_port} && printf 'GET {path} HTTP/1.0\\r\\n\\r\\n' >&3 && cat <&3"
    )
}

async fn sh(vm: &Vm, script: &str) -> (i32, String, String) {
    let out = vm.exec("bash", ["-c", script]).await.unwrap();
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
    let pass = Origin::start(Some("pass.test")).await.unwrap();
    let api_ip: IpAddr = API_IP.parse().unwrap();
    let denied_ip: IpAddr = DENIED_IP.parse().unwrap();
    let pass_ip: IpAddr = PASS_IP.parse().unwrap();
    let routes = RoutedConnector::new()
        .route(SocketAddr::new(api_ip, 443), api.addr)
        .route(SocketAddr::new(api_ip, 80), api_plain.addr)
        .route(SocketAddr::new(denied_ip, 443), other.addr)
        .route(SocketAddr::new(pass_ip, 443), pass.addr);
    let policy = move |conn: Conn| async move {
        if let Some(dns) = conn.match_dns() {
            return Ok(dns.synthesize([
                ("api.test", api_ip),
                ("denied.test", denied_ip),
                ("pass.test", pass_ip),
            ]));
        }
        if let Some(http) = conn.match_http("api.test") {
            return Ok(http.accept(inject));
        }
        // Cleartext to the same name is a separate grant; without
        // `allow_cleartext_credentials` the injection is refused.
        if let Some(http) = conn.match_http("http://api.test") {
            return Ok(http.accept(inject));
        }
        if let Some(http) = conn.match_http("pass.test") {
            return Ok(http.accept_passthrough());
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
    // Plain HTTP to the granted name: the credential would travel in the
    // clear, so the request is refused (403) and nothing goes upstream.
    let (code, out, _) = sh(
        &vm,
        "curl -sS --max-time 20 -o /dev/null -w '%{http_code}' http://api.test/",
    )
    .await;
    assert_eq!((code, out.as_str()), (0, "403"));
    assert!(api_plain.requests().is_empty());

    // A host the policy does not grant: the connection is refused and the
    // origin sees nothing.
    let (code, _, err) = sh(&vm, "curl -sS --max-time 20 https://denied.test/").await;
    assert_ne!(code, 0, "{err}");
    assert!(other.requests().is_empty());

    // Pass-through: the origin's own certificate reaches the guest (curl
    // trusting only the origin's root succeeds; the default store, which
    // holds the sandbox CA, does not), and no header is injected.
    let der = pass.root.clone().unwrap();
    vm.fs()
        .write_file("/tmp/pass-root.der", der.as_ref(), Default::default())
        .await
        .unwrap();
    let (code, out, err) = sh(
        &vm,
        "openssl x509 -inform DER -in /tmp/pass-root.der -out /tmp/pass-root.pem && \
         curl -sS --max-time 20 --cacert /tmp/pass-root.pem https://pass.test/direct",
    )
    .await;
    assert_eq!((code, out.as_str()), (0, BODY), "{err}");
    let (code, _, err) = sh(&vm, "curl -sS --max-time 20 https://pass.test/intercepted").await;
    assert_ne!(
        code, 0,
        "the sandbox CA must not verify a pass-through flow: {err}"
    );
    let reqs = pass.requests();
    assert_eq!(reqs.len(), 1, "{reqs:?}");
    assert!(
        reqs[0].starts_with("GET /direct HTTP/1.1\r\n"),
        "{}",
        reqs[0]
    );
    assert!(!reqs[0].contains("authorization"), "{}", reqs[0]);

    let stats = vm.network_stats().expect("the VM has a network");
    assert!(
        stats.flows_denied >= 1 && stats.flows_accepted >= 3,
        "{stats:?}"
    );
    vm.shutdown().await.unwrap();
}

/// A DNS A query over UDP or TCP from the guest, printing the response
/// code, the answer count and the last answer's address.
const DNS_QUERY: &str = r#"
import socket, struct, sys
mode, server, name = sys.argv[1:4]
m = struct.pack('>HHHHHH', 0x1234, 0x0100, 1, 0, 0, 0)
m += b''.join(bytes([len(p)]) + p.encode() for p in name.split('.')) + b'\0' + struct.pack('>HH', 1, 1)
if mode == 'tcp':
    s = socket.create_connection((server, 53), timeout=10)
    s.sendall(struct.pack('>H', len(m)) + m)
    n = struct.unpack('>H', s.recv(2))[0]
    r = b''
    while len(r) < n:
        r += s.recv(n - len(r))
else:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(10)
    s.sendto(m, (server, 53))
    r = s.recv(4096)
print(r[3] & 15, struct.unpack('>H', r[6:8])[0], '.'.join(str(b) for b in r[-4:]))
"#;

#[tokio::test]
async fn raw_tcp_grants_and_dns_over_udp_and_tcp_to_any_resolver() {
    let raw = Origin::start(None).await.unwrap();
    let raw_ip: IpAddr = "203.0.113.12".parse().unwrap();
    let api_ip: IpAddr = API_IP.parse().unwrap();
    // Only the raw endpoint is routed: a DNS query that leaked to a real
    // resolver would fail in the connector instead of being answered.
    let routes = RoutedConnector::new().route(SocketAddr::new(raw_ip, 8080), raw.addr);
    let policy = move |conn: Conn| async move {
        if let Some(dns) = conn.match_dns() {
            // Decided per query: names outside api.test are refused.
            if !dns.is_under(["api.test"]) {
                return Ok(dns.refuse());
            }
            return Ok(dns.synthesize([("api.test", api_ip)]));
        }
        if let Some(tcp) = conn.match_tcp("203.0.113.12:8080") {
            return Ok(tcp.accept());
        }
        Ok(conn.deny())
    };
    let vm = boot(NetworkOptions::new(policy).connector(routes)).await;

    let (code, out, err) = sh(&vm, "curl -sS --max-time 20 http://203.0.113.12:8080/raw").await;
    assert_eq!((code, out.as_str()), (0, BODY), "{err}");
    let reqs = raw.requests();
    assert_eq!(reqs.len(), 1);
    assert!(reqs[0].starts_with("GET /raw HTTP/1.1\r\n"), "{}", reqs[0]);
    assert!(
        !reqs[0].contains("authorization"),
        "raw flows get nothing injected"
    );
    // Another port on the same address is not granted.
    let (code, _, _) = sh(&vm, "curl -sS --max-time 20 http://203.0.113.12:8081/").await;
    assert_ne!(code, 0);

    for (mode, server) in [
        ("udp", "10.0.2.3"),
        ("tcp", "10.0.2.3"),
        ("udp", "8.8.8.8"),
        ("tcp", "1.1.1.1"),
    ] {
        let out = vm
            .exec("python3", ["-c", DNS_QUERY, mode, server, "api.test"])
            .await
            .unwrap();
        assert_eq!(
            String::from_utf8_lossy(&out.stdout).trim(),
            format!("0 1 {API_IP}"),
            "{mode} to {server}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        // The same flow kind with a name carrying data: refused by the
        // host (REFUSED = 5, no answers), forwarded nowhere.
        let out = vm
            .exec(
                "python3",
                ["-c", DNS_QUERY, mode, server, "c2VjcmV0.exfil.test"],
            )
            .await
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.starts_with("5 0 "), "{mode} to {server}: {text}");
    }
    let stats = vm.network_stats().unwrap();
    assert!(
        stats.dns_denied >= 4 && stats.dns_answered >= 4,
        "{stats:?}"
    );
    vm.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_read_only_busybox_guest_without_a_trust_store_gets_its_network() {
    // The minimal image: read-only root, no /etc/ssl; the resolver file is
    // a link into /run/sandbox and the CA goes to /run/sandbox only.
    let origin = Origin::start(None).await.unwrap();
    let dst: SocketAddr = "203.0.113.5:8080".parse().unwrap();
    let policy = move |conn: Conn| async move {
        Ok(if conn.dst() == dst {
            conn.accept()
        } else {
            conn.deny()
        })
    };
    let sandbox = Sandbox::builder()
        .image(images::builtin("minimal").unwrap())
        .backend(sandbox::backend())
        .network(
            NetworkOptions::new(policy).connector(RoutedConnector::new().route(dst, origin.addr)),
        )
        .build()
        .unwrap();
    let vm = sandbox.boot(BootOptions::default()).await.unwrap();
    let (code, out, err) = sh(
        &vm,
        "cat /etc/resolv.conf /run/sandbox/ca.pem; echo $SSL_CERT_FILE",
    )
    .await;
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("nameserver 10.0.2.3"), "{out}");
    assert!(out.contains("-----BEGIN CERTIFICATE-----"), "{out}");
    assert!(out.contains("/run/sandbox/ca-certificates.crt"), "{out}");
    // A raw grant, through bash's /dev/tcp (the image's busybox wget
    // crashes in static glibc's resolver code before it connects); any
    // other destination is refused.
    let (code, out, err) = sh(&vm, &http_get("203.0.113.5/8080", "/ro")).await;
    assert_eq!(code, 0, "{err}");
    assert!(
        out.starts_with("HTTP/1.1 200 OK\r\n") && out.ends_with(BODY),
        "{out}"
    );
    let (code, _, err) = sh(&vm, &http_get("203.0.113.5/80", "/")).await;
    assert_ne!(code, 0);
    assert!(err.contains("Connection refused"), "{err}");
    assert_eq!(origin.requests().len(), 1);
    vm.shutdown().await.unwrap();
}
