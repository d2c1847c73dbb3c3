//! Guest TCP through the network stack (host-only: a smoltcp guest on an
//! in-memory frame link, the real host stack, a loopback origin reached
//! through HostEgress), next to plain loopback TCP to the same origin in
//! the same run as the limit.
//!
//! Groups: `upload` (guest sends 16 MiB to the origin), `download` (the
//! origin sends 16 MiB to the guest), `connect` (one TCP connection set
//! up, policy decision and upstream dial included, then closed). `stack`
//! runs the link at MTU 1500 (KVM's virtio-net), `stack_mtu65000` at UML's
//! link MTU (bulk groups only): the stack's cost is mostly per frame. Prints
//! MB/s, connections/s and the ratio stack/loopback at the end, then a
//! real `debian:12` guest's curl download through the stack next to the
//! host's curl on loopback (plain timing, median of 5).
//! `cargo bench --bench net`.

use std::collections::BTreeMap;
use std::net::{SocketAddr, SocketAddrV4};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use sandbox_net::sim::SimGuest;
use sandbox_net::{Conn, FramePort, Network, NetworkOptions, RoutedConnector};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const BULK: usize = 16 << 20;

/// The MTU of UML's `bess` link (sandbox-core's UML adapter).
const UML_MTU: u16 = 65000;
/// The bench path of the stack at [`UML_MTU`] (`stack` runs at 1500).
const UML_PATH: &str = "stack_mtu65000";

/// (group, path) -> (units, seconds) summed over iterations.
type Totals = BTreeMap<(&'static str, &'static str), (f64, f64)>;
static TOTALS: Mutex<Totals> = Mutex::new(BTreeMap::new());

fn record(group: &'static str, path: &'static str, units: f64, d: Duration) {
    let mut t = TOTALS.lock().unwrap();
    let e = t.entry((group, path)).or_default();
    e.0 += units;
    e.1 += d.as_secs_f64();
}

/// Origin on loopback: on port `up` reads to the end then acks one byte; on
/// `down` writes BULK bytes then closes; on `conn` closes at once.
async fn origin() -> (SocketAddr, SocketAddr, SocketAddr) {
    let up = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let down = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let conn = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addrs = (
        up.local_addr().unwrap(),
        down.local_addr().unwrap(),
        conn.local_addr().unwrap(),
    );
    tokio::spawn(async move {
        while let Ok((mut s, _)) = up.accept().await {
            tokio::spawn(async move {
                let mut buf = vec![0u8; 256 << 10];
                while let Ok(n) = s.read(&mut buf).await {
                    if n == 0 {
                        break;
                    }
                }
                let _ = s.write_all(b"k").await;
            });
        }
    });
    tokio::spawn(async move {
        let block = vec![7u8; 256 << 10];
        while let Ok((mut s, _)) = down.accept().await {
            let block = block.clone();
            tokio::spawn(async move {
                let mut left = BULK;
                while left > 0 {
                    let n = left.min(block.len());
                    if s.write_all(&block[..n]).await.is_err() {
                        return;
                    }
                    left -= n;
                }
            });
        }
    });
    tokio::spawn(async move {
        while let Ok((s, _)) = conn.accept().await {
            drop(s);
        }
    });
    addrs
}

/// An HTTP origin on loopback answering every request with BULK bytes.
async fn http_origin() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        let block = vec![7u8; 256 << 10];
        while let Ok((mut s, _)) = l.accept().await {
            let block = block.clone();
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut b = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") {
                    if s.read(&mut b).await.unwrap_or(0) == 0 {
                        return;
                    }
                    head.push(b[0]);
                }
                let h = format!(
                    "HTTP/1.1 200 OK\r\ncontent-length: {BULK}\r\nconnection: close\r\n\r\n"
                );
                if s.write_all(h.as_bytes()).await.is_err() {
                    return;
                }
                let mut left = BULK;
                while left > 0 {
                    let n = left.min(block.len());
                    if s.write_all(&block[..n]).await.is_err() {
                        return;
                    }
                    left -= n;
                }
            });
        }
    });
    addr
}

async fn upload(mut s: impl AsyncRead + AsyncWrite + Unpin) {
    let block = vec![3u8; 64 << 10];
    for _ in 0..BULK / block.len() {
        s.write_all(&block).await.unwrap();
    }
    s.shutdown().await.unwrap();
    let mut ack = [0u8; 1];
    s.read_exact(&mut ack).await.unwrap();
}

async fn download(mut s: impl AsyncRead + AsyncWrite + Unpin) {
    let mut buf = vec![0u8; 256 << 10];
    let mut got = 0;
    loop {
        let n = s.read(&mut buf).await.unwrap();
        if n == 0 {
            break;
        }
        got += n;
    }
    assert_eq!(got, BULK);
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let (up, down, conn) = rt.block_on(origin());
    let dst = |port: u16| SocketAddrV4::new("203.0.113.5".parse().unwrap(), port);
    let routes = RoutedConnector::new()
        .route(dst(1).into(), up)
        .route(dst(2).into(), down)
        .route(dst(3).into(), conn);
    // One guest at KVM's virtio-net MTU (the default) and one at the MTU
    // UML's `bess` link runs at: the stack's cost is mostly per frame.
    let start = |mtu: u16| {
        let routes = routes.clone();
        rt.block_on(async move {
            let (host, guest) = FramePort::pair(1024);
            let policy = |c: Conn| async move { Ok(c.accept()) };
            let mut opts = NetworkOptions::new(policy).connector(routes);
            opts.config.mtu = mtu;
            let net = Network::start(host, opts).unwrap();
            (SimGuest::start(guest, net.config()), net)
        })
    };
    let (guest, net) = start(1500);
    let (big, big_net) = start(UML_MTU);
    let timeout = Duration::from_secs(30);

    let (g, up_ep) = (&guest, dst(1));
    compare(
        c,
        &rt,
        "upload",
        Throughput::Bytes(BULK as u64),
        10,
        move || async move { upload(g.connect(up_ep, timeout).await.unwrap()).await },
        move || async move { upload(TcpStream::connect(up).await.unwrap()).await },
    );
    let b = &big;
    measure(
        c,
        &rt,
        "upload",
        UML_PATH,
        Throughput::Bytes(BULK as u64),
        10,
        move || async move { upload(b.connect(up_ep, timeout).await.unwrap()).await },
    );
    let down_ep = dst(2);
    compare(
        c,
        &rt,
        "download",
        Throughput::Bytes(BULK as u64),
        10,
        move || async move { download(g.connect(down_ep, timeout).await.unwrap()).await },
        move || async move { download(TcpStream::connect(down).await.unwrap()).await },
    );
    measure(
        c,
        &rt,
        "download",
        UML_PATH,
        Throughput::Bytes(BULK as u64),
        10,
        move || async move { download(b.connect(down_ep, timeout).await.unwrap()).await },
    );
    let conn_ep = dst(3);
    compare(
        c,
        &rt,
        "connect",
        Throughput::Elements(1),
        100,
        move || async move { drop(g.connect(conn_ep, timeout).await.unwrap()) },
        move || async move { drop(TcpStream::connect(conn).await.unwrap()) },
    );
    drop((guest, net, big, big_net));
    let real = rt.block_on(async {
        let http = http_origin().await;
        real_guest_download(http).await
    });

    let t = TOTALS.lock().unwrap();
    println!("\nnet summary (stack = through sandbox-net, loopback = plain host TCP):");
    for group in ["upload", "download", "connect"] {
        let rate = |path| t.get(&(group, path)).map(|(u, s)| u / s).unwrap_or(0.0);
        let l = rate("loopback");
        let unit = if group == "connect" {
            "connections/s"
        } else {
            "MB/s"
        };
        let k = if group == "connect" { 1.0 } else { 1e6 };
        for path in ["stack", UML_PATH] {
            let s = rate(path);
            if s == 0.0 {
                continue;
            }
            println!(
                "  {group:9} {path:16} {:10.1} {unit}  loopback {:10.1} {unit}  ratio {:.3}",
                s / k,
                l / k,
                if l > 0.0 { s / l } else { 0.0 }
            );
        }
    }
    match real {
        Some((g, h)) => println!(
            "  real guest: curl download {g:.1} MB/s through the stack, host curl on loopback {h:.1} MB/s, ratio {:.3}",
            g / h
        ),
        None => println!("  real guest: could not boot debian:12 (run `cargo xtask build`)"),
    }
}

/// A real guest (`debian:12`, the harness's backend) downloading BULK bytes
/// with curl through the stack, and the host's own curl on loopback: MB/s
/// as curl reports them (median of 5). `None` if the guest cannot boot.
async fn real_guest_download(origin: SocketAddr) -> Option<(f64, f64)> {
    use sandbox_core::net::{
        Conn as CoreConn, NetworkOptions as CoreOptions, RoutedConnector as CoreRoutes,
    };
    use sandbox_core::{images, BootOptions, Rootfs, Sandbox};
    let dst: SocketAddr = "203.0.113.9:80".parse().unwrap();
    let policy =
        move |c: CoreConn| async move { Ok(if c.dst() == dst { c.accept() } else { c.deny() }) };
    let sandbox = Sandbox::builder()
        .rootfs(Rootfs::ephemeral({
            sandbox::ensure_artifacts().ok()?;
            images::builtin("debian:12").ok()?
        }))
        .backend(sandbox::backend())
        .network(CoreOptions::new(policy).connector(CoreRoutes::new().route(dst, origin)))
        .build()
        .ok()?;
    let vm = sandbox.boot(BootOptions::default()).await.ok()?;
    let curl = |url: String| {
        [
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{speed_download}",
            "--max-time",
            "60",
        ]
        .iter()
        .map(|s| s.to_string())
        .chain([url])
        .collect::<Vec<_>>()
    };
    let mut guest = Vec::new();
    let mut host = Vec::new();
    for _ in 0..5 {
        let out = vm.exec("curl", curl(format!("http://{dst}/"))).await.ok()?;
        guest.push(String::from_utf8_lossy(&out.stdout).parse::<f64>().ok()? / 1e6);
        let out = tokio::process::Command::new("curl")
            .args(curl(format!("http://{origin}/")))
            .output()
            .await
            .ok()?;
        host.push(String::from_utf8_lossy(&out.stdout).parse::<f64>().ok()? / 1e6);
    }
    let _ = vm.shutdown().await;
    let median = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    Some((median(guest), median(host)))
}

/// One group: the same workload through the stack and over plain loopback
/// TCP, each run's time recorded for the summary.
fn compare<S, SF, L, LF>(
    c: &mut Criterion,
    rt: &tokio::runtime::Runtime,
    group: &'static str,
    throughput: Throughput,
    samples: usize,
    stack: S,
    loopback: L,
) where
    S: Fn() -> SF,
    SF: std::future::Future<Output = ()>,
    L: Fn() -> LF,
    LF: std::future::Future<Output = ()>,
{
    measure(c, rt, group, "stack", throughput.clone(), samples, stack);
    measure(c, rt, group, "loopback", throughput, samples, loopback);
}

/// Benchmarks `f` as `group/path` and records its times for the summary.
fn measure<F, FF>(
    c: &mut Criterion,
    rt: &tokio::runtime::Runtime,
    group: &'static str,
    path: &'static str,
    throughput: Throughput,
    samples: usize,
    f: F,
) where
    F: Fn() -> FF,
    FF: std::future::Future<Output = ()>,
{
    let units = match throughput {
        Throughput::Bytes(n) | Throughput::Elements(n) => n as f64,
        _ => 1.0,
    };
    let mut g = c.benchmark_group(group);
    g.throughput(throughput).sample_size(samples);
    g.bench_function(path, |b| {
        b.to_async(rt).iter(|| async {
            let t = Instant::now();
            f().await;
            record(group, path, units, t.elapsed());
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
