//! Guest TCP through the network stack (host-only: a smoltcp guest on an
//! in-memory frame link, the real host stack, a loopback origin reached
//! through HostEgress), next to plain loopback TCP to the same origin in
//! the same run as the limit.
//!
//! Groups: `upload` (guest sends 16 MiB to the origin), `download` (the
//! origin sends 16 MiB to the guest), `connect` (one TCP connection set
//! up, policy decision and upstream dial included, then closed). `stack`
//! runs the link at MTU 65000 (the Linux backends' link: UML's `bess`
//! socket and KVM's virtio-net), `stack_mtu1500` at macOS's virtio-net MTU
//! (bulk groups only): the stack's cost is mostly per frame. Prints
//! MB/s, connections/s and the ratio stack/loopback at the end, then a
//! real `debian:12` guest's curl download and upload through the stack
//! next to the same guest's curl against a server on its own loopback
//! (plain timing, median of 5; `real_guest.rs`; skipped with
//! `SANDBOX_BENCH_NET_NO_GUEST=1`).
//! `cargo bench --bench net`.

use std::collections::BTreeMap;
use std::net::{SocketAddr, SocketAddrV4};
use std::sync::Mutex;
use std::time::{Duration, Instant};

mod real_guest;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use sandbox_net::sim::SimGuest;
use sandbox_net::{Conn, FramePort, Network, NetworkOptions, RoutedConnector};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

pub(crate) const BULK: usize = 16 << 20;

/// The MTU of the Linux backends' links (sandbox-core's `LINK_MTU`).
const LINK_MTU: u16 = 65000;
/// The MTU of macOS's virtio-net link.
const SMALL_MTU: u16 = 1500;
/// The bench path of the stack at [`SMALL_MTU`] (`stack` runs at
/// [`LINK_MTU`]).
const SMALL_PATH: &str = "stack_mtu1500";

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
            tokio::spawn(async move { write_bulk(&mut s, &block).await });
        }
    });
    tokio::spawn(async move {
        while let Ok((s, _)) = conn.accept().await {
            drop(s);
        }
    });
    addrs
}

/// Writes BULK bytes to `s`, `block` at a time (false if the peer went).
pub(crate) async fn write_bulk(s: &mut TcpStream, block: &[u8]) -> bool {
    let mut left = BULK;
    while left > 0 {
        let n = left.min(block.len());
        if s.write_all(&block[..n]).await.is_err() {
            return false;
        }
        left -= n;
    }
    true
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
    // One guest at the Linux backends' MTU and one at macOS's: the
    // stack's cost is mostly per frame.
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
    let (guest, net) = start(LINK_MTU);
    let (small, small_net) = start(SMALL_MTU);
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
    let b = &small;
    measure(
        c,
        &rt,
        "upload",
        SMALL_PATH,
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
        SMALL_PATH,
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
    drop((guest, net, small, small_net));
    // SANDBOX_BENCH_NET_NO_GUEST=1 skips the real guest (stack-only runs,
    // profiles).
    let real = if std::env::var_os("SANDBOX_BENCH_NET_NO_GUEST").is_some() {
        None
    } else {
        rt.block_on(async { real_guest::run(real_guest::http_origin().await).await })
    };

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
        for path in ["stack", SMALL_PATH] {
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
    if let Some(r) = real {
        let ratio = |a: f64, b: f64| if b > 0.0 { a / b } else { 0.0 };
        println!(
            "  real guest download: {:.1} MB/s through the stack, {:.1} MB/s on the guest's loopback, ratio {:.3} (host curl on host loopback {:.1} MB/s)",
            r.stack_down, r.loopback_down, ratio(r.stack_down, r.loopback_down), r.host_down
        );
        println!(
            "  real guest upload:   {:.1} MB/s through the stack, {:.1} MB/s on the guest's loopback, ratio {:.3}",
            r.stack_up, r.loopback_up, ratio(r.stack_up, r.loopback_up)
        );
    }
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
