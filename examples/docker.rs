//! Docker in a sandbox: boots the built-in `debian:12-docker` image,
//! starts `dockerd`, imports a small image made on the host (no registry
//! is needed), builds an image from a Dockerfile, runs it as a web server
//! with a published port, and fetches its page from the host through
//! `vm.forward_tcp`. Prints each step's time.
//!
//! `cargo run --example docker` (after `cargo xtask build`; docs/docker.md)

use std::time::{Duration, Instant};

use sandbox::docker::{busybox_rootfs_tar, DOCKERFILE};
use sandbox_core::docker::Dockerd;
use sandbox_core::fs::WriteOptions;
use sandbox_core::{images, BootOptions, Resources, Rootfs, Sandbox, Vm};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;

/// Runs `script` in the guest and fails with its stderr if it fails.
async fn run(vm: &Vm, script: &str) -> Result<String> {
    let out = vm.exec("bash", ["-c", script]).await?;
    if !out.status.success() {
        return Err(format!(
            "`{script}` failed ({:?}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        )
        .into());
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn step(what: &str, since: Instant) {
    println!("{what:<48} {:>8.2} s", since.elapsed().as_secs_f64());
}

#[tokio::main]
async fn main() -> Result<()> {
    // The repository's harness: builds the Debian images on the first run
    // after `cargo xtask quickstart`, which leaves them out.
    sandbox::ensure_artifacts()?;
    let image = images::builtin("debian:12-docker")?;
    let sandbox = Sandbox::builder()
        .rootfs(Rootfs::ephemeral(image))
        .resources(Resources {
            cpus: 2,
            memory_mib: 1024,
        })
        .build()?;

    let t = Instant::now();
    let vm = sandbox
        .boot(
            BootOptions::default()
                .hostname("docker")
                .timeout(Duration::from_secs(300)),
        )
        .await?;
    step(&format!("boot ({:?} backend)", vm.backend()), t);

    let t = Instant::now();
    let dockerd = Dockerd::start(&vm).await?;
    step("dockerd started, `docker info` answers", t);

    let t = Instant::now();
    vm.fs()
        .write_file(
            "/tmp/busybox.tar",
            &busybox_rootfs_tar()?,
            WriteOptions::default(),
        )
        .await?;
    run(&vm, "docker import /tmp/busybox.tar local/busybox").await?;
    step("docker import of a busybox root (made on the host)", t);

    let t = Instant::now();
    let ctx = WriteOptions {
        create_parents: true,
    };
    vm.fs()
        .write_file("/tmp/ctx/Dockerfile", DOCKERFILE.as_bytes(), ctx)
        .await?;
    vm.fs()
        .write_file("/tmp/ctx/extra.txt", b"copied by the Dockerfile\n", ctx)
        .await?;
    run(&vm, "docker build -q -t local/web /tmp/ctx").await?;
    step("docker build (FROM, RUN, COPY)", t);

    let t = Instant::now();
    run(&vm, "docker run -d --name web -p 8080:80 local/web").await?;
    run(
        &vm,
        "for i in $(seq 100); do curl -sf localhost:8080/ >/dev/null && exit 0; sleep 0.1; done; exit 1",
    )
    .await?;
    step("docker run -d -p 8080:80, page served", t);

    let t = Instant::now();
    let forward = vm.forward_tcp("127.0.0.1:0".parse()?, 8080)?;
    let mut conn = tokio::net::TcpStream::connect(forward.local_addr()).await?;
    conn.write_all(b"GET /extra.txt HTTP/1.0\r\n\r\n").await?;
    let mut answer = String::new();
    conn.read_to_string(&mut answer).await?;
    step("host GET through vm.forward_tcp", t);
    let body = answer.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    println!(
        "http://{}/extra.txt (guest port 8080) answered: {}",
        forward.local_addr(),
        body.trim()
    );

    let t = Instant::now();
    drop(forward);
    // Removing the container first spares dockerd's stop timeout: busybox
    // httpd as a container's PID 1 ignores SIGTERM.
    run(&vm, "docker rm -f web").await?;
    dockerd.stop().await?;
    vm.shutdown().await?;
    step("dockerd stopped, VM shut down", t);
    Ok(())
}
