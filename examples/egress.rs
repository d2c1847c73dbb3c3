//! Network egress with a host-held credential: the guest's `curl` reaches
//! an allowed HTTPS origin and the host injects an `authorization` header
//! the guest never sees; a host the policy does not grant fails.
//!
//! Everything stays on this machine: the two "internet" origins are
//! HTTPS servers on loopback with their own test root (trusted through
//! `add_root`), DNS answers are synthesized by the host, and a
//! `RoutedConnector` sends the granted addresses to those origins. In
//! production you would accept real resolvers (`dns.accept([...])`) and
//! keep the default `DirectConnector`.
//!
//! `cargo run --example egress` (after `cargo xtask build`).

use std::net::{IpAddr, SocketAddr};

use sandbox::origin::Origin;
use sandbox_core::net::{Conn, HttpRequest, NetworkOptions, RoutedConnector};
use sandbox_core::{images, BootOptions, Rootfs, Sandbox};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // The repository's harness: builds the Debian images on the first run
    // after `cargo xtask quickstart`, which leaves them out.
    sandbox::ensure_artifacts()?;
    let api = Origin::start(Some("api.example.test")).await?;
    let other = Origin::start(Some("other.example.test")).await?;
    let api_ip: IpAddr = "203.0.113.10".parse()?;
    let other_ip: IpAddr = "203.0.113.11".parse()?;

    let policy = move |conn: Conn| async move {
        // DNS from the guest, to any resolver address, is answered here.
        if let Some(dns) = conn.match_dns() {
            return Ok(dns.synthesize([
                ("api.example.test", api_ip),
                ("other.example.test", other_ip),
            ]));
        }
        // HTTPS to api.example.test (by DNS attribution, not by the
        // guest's Host header or SNI) gets the token added upstream.
        if let Some(http) = conn.match_http("api.example.test") {
            return Ok(http.accept(|req: &mut HttpRequest| {
                req.headers
                    .insert("authorization", "Bearer sk-host-only".parse().unwrap());
            }));
        }
        Ok(conn.deny()) // default deny
    };
    let network = NetworkOptions::new(policy)
        .connector(
            RoutedConnector::new()
                .route(SocketAddr::new(api_ip, 443), api.addr)
                .route(SocketAddr::new(other_ip, 443), other.addr),
        )
        .add_root(api.root.clone().expect("TLS origin"))
        .add_root(other.root.clone().expect("TLS origin"));

    let sandbox = Sandbox::builder()
        .rootfs(Rootfs::ephemeral(images::builtin("debian:12")?))
        .network(network)
        .build()?;
    let vm = sandbox
        .boot(BootOptions::default().hostname("egress"))
        .await?;

    for url in [
        "https://api.example.test/v1/models",
        "https://other.example.test/",
    ] {
        let out = vm
            .exec("curl", ["-sS", "--max-time", "20", "-D", "-", url])
            .await?;
        println!("guest$ curl {url}\n  exit {:?}", out.status.code);
        for line in String::from_utf8_lossy(&out.stdout)
            .lines()
            .chain(String::from_utf8_lossy(&out.stderr).lines())
        {
            println!("  | {line}");
        }
    }
    for (name, origin) in [("api.example.test", &api), ("other.example.test", &other)] {
        println!(
            "origin {name} received {} request(s)",
            origin.requests().len()
        );
        for head in origin.requests() {
            for line in head.lines().filter(|l| !l.is_empty()) {
                println!("  > {line}");
            }
        }
    }
    println!("network counters: {:?}", vm.network_stats());
    vm.shutdown().await?;
    Ok(())
}
