//! Ordinary agent work on the default ephemeral root, against the real
//! package registries: `apt-get update` and `apt-get install` through HTTP
//! interception of the Debian mirror, then `pip install` and `npm install`
//! through HTTPS interception of PyPI and the npm registry, with DNS from
//! the host's own resolvers. (Pass-through would also do where the guest
//! trusts the registries' issuers; on this project's machines the
//! registries are reached through a TLS proxy whose CA only the host
//! trusts, so interception, which verifies upstream with the host's
//! roots, is what works here.) Prints how long each step took and how much the
//! root's scratch file grew (the figures in docs/rootfs.md).
//!
//! Needs the registries to be reachable from the host, so it is an example
//! and not a test. `cargo run --release --example package_installs` (after
//! `cargo xtask build`).

use std::time::Instant;

use sandbox_core::net::{Conn, HostMatcher, NetworkOptions};
use sandbox_core::{images, BootOptions, Rootfs, Sandbox, Vm};

/// The names the guest may reach.
const REGISTRIES: &[&str] = &[
    "deb.debian.org",
    "pypi.org",
    "files.pythonhosted.org",
    "registry.npmjs.org",
];

/// Steps: a label and a shell script run in the guest.
const STEPS: &[(&str, &str)] = &[
    ("apt-get update", "apt-get update -q"),
    (
        "apt-get install hello python3-pip npm",
        "DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
         hello python3-pip npm && hello",
    ),
    (
        "pip install requests rich",
        "pip install -q --break-system-packages requests rich && \
         python3 -c 'import requests, rich; print(requests.__version__)'",
    ),
    (
        "npm install lodash express",
        "mkdir -p /root/app && cd /root/app && npm init -y >/dev/null && \
         npm install --no-audit --no-fund lodash express && \
         node -e 'console.log(require(\"lodash\").VERSION)'",
    ),
];

async fn used_kib(vm: &Vm) -> u64 {
    let out = vm.exec("df", ["-k", "--output=used", "/"]).await;
    out.ok()
        .and_then(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .nth(1)?
                .trim()
                .parse()
                .ok()
        })
        .unwrap_or(0)
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // The repository's harness: builds the Debian images on the first run
    // after `cargo xtask quickstart`, which leaves them out.
    sandbox::ensure_artifacts()?;
    let policy = |conn: Conn| async move {
        if let Some(dns) = conn.match_dns() {
            return Ok(dns.accept_host_resolvers());
        }
        // apt speaks plain HTTP, pip and npm HTTPS: all intercepted
        // (nothing to inject here). One matcher for every registry: a
        // grant covers only the names its matcher accepts, and here the
        // registries share addresses.
        // A grant is bound to a scheme and port: HTTPS on 443, and the
        // same names over cleartext on 80 as a second grant.
        let registry = HostMatcher::predicate(|name| REGISTRIES.contains(&name));
        let grant = conn
            .match_http(registry.clone())
            .or_else(|| conn.match_http(registry.cleartext()));
        if let Some(http) = grant {
            return Ok(http.accept_unchanged());
        }
        Ok(conn.deny())
    };
    let sandbox = Sandbox::builder()
        .rootfs(Rootfs::ephemeral(images::builtin("debian:12")?))
        .network(NetworkOptions::new(policy))
        .build()?;
    let vm = sandbox
        .boot(BootOptions::default().hostname("installs"))
        .await?;
    println!("root: {}", sandbox.rootfs().describe());
    let mut before = used_kib(&vm).await;
    for (label, script) in STEPS {
        let started = Instant::now();
        let out = vm.exec("sh", ["-c", script]).await?;
        let after = used_kib(&vm).await;
        println!(
            "{label}: exit {:?} in {:.1} s, root file system +{} MiB",
            out.status.code,
            started.elapsed().as_secs_f64(),
            after.saturating_sub(before) / 1024
        );
        if !out.status.success() {
            let tail = String::from_utf8_lossy(&out.stderr);
            let tail: Vec<&str> = tail.lines().rev().take(10).collect();
            for line in tail.iter().rev() {
                println!("  | {line}");
            }
            break;
        }
        before = after;
    }
    vm.shutdown().await?;
    Ok(())
}
