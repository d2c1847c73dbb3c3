//! Docker in the guest (`debian:12-docker`, UML here): the daemon's
//! lifecycle, an image imported offline, `docker build` and `docker run`,
//! bridge networking (container to container, a published port, the
//! host reaching it through `vm.forward_tcp`), container egress under the
//! sandbox policy, the ephemeral write budget, and persistence.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use sandbox::docker::{busybox_rootfs_tar, DOCKERFILE, PAGE};
use sandbox::origin::{Origin, BODY};
use sandbox_core::docker::Dockerd;
use sandbox_core::fs::WriteOptions;
use sandbox_core::net::{Conn, HttpRequest, NetworkOptions, RoutedConnector};
use sandbox_core::{BootOptions, Resources, Rootfs, Sandbox, Vm, VmEvent};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Docker wants more than the default 256 MiB.
const MEMORY_MIB: u32 = 1024;

async fn boot(rootfs: Rootfs, network: Option<NetworkOptions>) -> Vm {
    let mut builder = Sandbox::builder()
        .rootfs(rootfs)
        .resources(Resources {
            cpus: 1,
            memory_mib: MEMORY_MIB,
        })
        .backend(sandbox::backend());
    if let Some(n) = network {
        builder = builder.network(n);
    }
    let vm = builder
        .build()
        .unwrap()
        .boot(
            BootOptions::default()
                .hostname("docker")
                .timeout(Duration::from_secs(120)),
        )
        .await
        .unwrap();
    eprintln!(
        "[docker] backend {:?}, booted in {} ms",
        vm.backend(),
        vm.boot_time().as_millis()
    );
    vm
}

fn image() -> sandbox_core::Image {
    sandbox::builtin("debian:12-docker")
}

/// Runs a bash script; returns (code, stdout, stderr).
async fn sh(vm: &Vm, script: &str) -> (i32, String, String) {
    let out = vm.exec("bash", ["-c", script]).await.unwrap();
    (
        out.status.code.unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Runs a script that must succeed; returns its stdout.
async fn ok(vm: &Vm, script: &str) -> String {
    let (code, out, err) = sh(vm, script).await;
    assert_eq!(code, 0, "{script}\nstdout: {out}\nstderr: {err}");
    out
}

/// Starts dockerd and imports the busybox image as `local/busybox`.
async fn docker_with_busybox(vm: &Vm) -> Dockerd {
    let dockerd = Dockerd::start(vm).await.unwrap();
    eprintln!(
        "[docker] dockerd ready after {} ms",
        dockerd.ready_after().as_millis()
    );
    let tar = busybox_rootfs_tar().unwrap();
    vm.fs()
        .write_file("/tmp/busybox.tar", &tar, WriteOptions::default())
        .await
        .unwrap();
    ok(vm, "docker import /tmp/busybox.tar local/busybox").await;
    dockerd
}

/// An HTTP/1.0 GET from the host; returns the body.
async fn host_get(addr: SocketAddr, path: &str) -> String {
    let mut c = tokio::net::TcpStream::connect(addr).await.unwrap();
    c.write_all(format!("GET {path} HTTP/1.0\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut answer = String::new();
    c.read_to_string(&mut answer).await.unwrap();
    let (head, body) = answer.split_once("\r\n\r\n").unwrap_or((&answer, ""));
    assert!(
        head.starts_with("HTTP/1.") && head[8..].starts_with(" 200"),
        "{answer}"
    );
    body.to_string()
}

#[tokio::test]
async fn docker_builds_and_runs_containers_the_host_can_reach() {
    let image = image();
    assert!(
        image
            .facts
            .get("docker")
            .is_some_and(|v| v.starts_with("20.10")),
        "{:?}",
        image.facts
    );
    let vm = boot(Rootfs::ephemeral(image), None).await;
    let dockerd = docker_with_busybox(&vm).await;
    let info = ok(&vm, "docker info --format '{{.Driver}} {{.CgroupVersion}}'").await;
    assert_eq!(info.trim(), "overlay2 2");

    // A container runs and its exit code comes back.
    let (code, _, err) = sh(&vm, "docker run --rm local/busybox sh -c 'exit 3'").await;
    assert_eq!(code, 3, "{err}");
    ok(&vm, "docker run --rm local/busybox true").await;

    // docker build: FROM the imported image, RUN and COPY.
    vm.fs()
        .write_file("/tmp/ctx/Dockerfile", DOCKERFILE.as_bytes(), mkdirs())
        .await
        .unwrap();
    vm.fs()
        .write_file("/tmp/ctx/extra.txt", b"extra\n", WriteOptions::default())
        .await
        .unwrap();
    ok(&vm, "docker build -q -t local/web /tmp/ctx").await;

    // A published port answers on the guest's localhost.
    ok(&vm, "docker run -d --name web -p 8080:80 local/web").await;
    let page = ok(
        &vm,
        "for i in $(seq 50); do curl -sf localhost:8080/built.txt && exit 0; sleep 0.2; done; exit 1",
    )
    .await;
    assert_eq!(page, "built\n");

    // Another container reaches it by its bridge address.
    let ip = ok(
        &vm,
        "docker inspect -f '{{.NetworkSettings.IPAddress}}' web",
    )
    .await;
    let ip: IpAddr = ip.trim().parse().unwrap();
    let page = ok(
        &vm,
        &format!("docker run --rm local/busybox wget -qO- http://{ip}/extra.txt"),
    )
    .await;
    assert_eq!(page, "extra\n");

    // The host reaches the published port through the agent link.
    let forward = vm
        .forward_tcp("127.0.0.1:0".parse().unwrap(), 8080)
        .unwrap();
    assert_eq!(host_get(forward.local_addr(), "/").await, PAGE);
    assert_eq!(
        host_get(forward.local_addr(), "/built.txt").await,
        "built\n"
    );

    dockerd.stop().await.unwrap();
    let (code, _, _) = sh(&vm, "docker info").await;
    assert_ne!(code, 0, "dockerd is stopped");
    vm.shutdown().await.unwrap();
}

fn mkdirs() -> WriteOptions {
    WriteOptions {
        create_parents: true,
    }
}

#[tokio::test]
async fn container_egress_is_decided_by_the_sandbox_policy() {
    let api = Origin::start(Some("api.test")).await.unwrap();
    let api_ip: IpAddr = "203.0.113.10".parse().unwrap();
    let denied_ip: IpAddr = "203.0.113.11".parse().unwrap();
    let routes = RoutedConnector::new().route(SocketAddr::new(api_ip, 443), api.addr);
    let policy = move |conn: Conn| async move {
        if let Some(dns) = conn.match_dns() {
            return Ok(dns.synthesize([("api.test", api_ip), ("denied.test", denied_ip)]));
        }
        if let Some(http) = conn.match_http("api.test") {
            return Ok(http.accept(|req: &mut HttpRequest| {
                req.headers
                    .insert("authorization", "Bearer container-secret".parse().unwrap());
            }));
        }
        Ok(conn.deny())
    };
    let network = NetworkOptions::new(policy)
        .connector(routes)
        .add_root(api.root.clone().unwrap());
    let vm = boot(Rootfs::ephemeral(image()), Some(network)).await;
    let dockerd = docker_with_busybox(&vm).await;
    // The container runs the guest's curl (bind-mounted /usr) and trusts
    // the guest's CA store, which holds the sandbox CA.
    let curl = "docker run --rm -v /usr:/usr:ro -v /etc/ssl:/etc/ssl:ro local/busybox \
                /usr/bin/curl -sS --max-time 20";
    let body = ok(&vm, &format!("{curl} https://api.test/from-container")).await;
    assert_eq!(body, BODY);
    let reqs = api.requests();
    assert_eq!(reqs.len(), 1, "{reqs:?}");
    assert!(reqs[0].starts_with("GET /from-container HTTP/1.1\r\n"));
    assert!(reqs[0].contains("authorization: Bearer container-secret"));
    // A destination the policy does not grant fails inside the container.
    let (code, _, err) = sh(&vm, &format!("{curl} https://denied.test/")).await;
    assert_ne!(code, 0, "{err}");
    assert_eq!(api.requests().len(), 1);
    let stats = vm.network_stats().unwrap();
    assert!(stats.flows_denied >= 1, "{stats:?}");
    dockerd.stop().await.unwrap();
    vm.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_used_up_write_budget_fails_docker_and_tells_the_host() {
    const BUDGET: u64 = 96 << 20;
    let vm = boot(Rootfs::ephemeral(image()).max_dirty_bytes(BUDGET), None).await;
    let mut events = vm.subscribe();
    let dockerd = docker_with_busybox(&vm).await;
    // A layer larger than what is left of the budget (random bytes: the
    // overlay stores no all-zero blocks).
    let (code, out, err) = sh(
        &vm,
        "docker run --name big local/busybox sh -c \
         'dd if=/dev/urandom of=/big bs=1M count=200 conv=fsync'",
    )
    .await;
    assert_ne!(code, 0, "the write must fail\n{out}\n{err}");
    let event = tokio::time::timeout(Duration::from_secs(30), events.recv())
        .await
        .expect("the host hears about the budget")
        .unwrap();
    assert_eq!(
        event,
        VmEvent::Rootfs(sandbox_core::RootfsEvent::DirtyLimitReached {
            max_dirty_bytes: BUDGET
        })
    );
    // Docker reports the guest's I/O error, or, when ext4 has already
    // turned the file system read-only over that error (a race between
    // the journal and dd's next write), EROFS; the host's event (and a
    // kernel log line in the guest) names the budget.
    assert!(
        err.contains("Input/output error") || err.contains("Read-only file system"),
        "{err}"
    );
    // ext4 shuts the root down once its journal cannot be written (new
    // processes fail with EIO: docs/docker.md), but the agent still
    // answers and the VM stops cleanly.
    let uptime = vm.fs().read_file("/proc/uptime").await.unwrap();
    assert!(!uptime.is_empty());
    drop(dockerd);
    let _ = vm.shutdown().await;
}

#[tokio::test]
async fn images_and_containers_survive_a_reboot_on_a_persistent_root() {
    let dir = std::env::temp_dir().join(format!("sandbox-docker-persist-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let overlay = dir.join("root.qcow2");
    {
        let vm = boot(Rootfs::persistent(image(), &overlay), None).await;
        let dockerd = docker_with_busybox(&vm).await;
        ok(
            &vm,
            "docker run --name keep local/busybox sh -c 'echo kept > /data.txt'",
        )
        .await;
        dockerd.stop().await.unwrap();
        vm.shutdown().await.unwrap();
    }
    {
        let vm = boot(Rootfs::persistent(image(), &overlay), None).await;
        let dockerd = Dockerd::start(&vm).await.unwrap();
        let images = ok(&vm, "docker images --format '{{.Repository}}'").await;
        assert!(images.lines().any(|l| l == "local/busybox"), "{images}");
        let kept = ok(&vm, "docker cp keep:/data.txt - | tar -xO").await;
        assert_eq!(kept, "kept\n");
        dockerd.stop().await.unwrap();
        vm.shutdown().await.unwrap();
    }
    let check = std::process::Command::new("qemu-img")
        .arg("check")
        .arg(&overlay)
        .output()
        .unwrap();
    assert!(
        check.status.success(),
        "qemu-img check: {}{}",
        String::from_utf8_lossy(&check.stdout),
        String::from_utf8_lossy(&check.stderr)
    );
    let _ = std::fs::remove_dir_all(&dir);
}
