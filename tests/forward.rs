//! `vm.forward_tcp`: guest TCP services reached from the host over the
//! agent link, in a guest without a network. The guest servers are a small
//! Python program in `debian:12`: an echo port, a source, a sink, and a
//! source that records how far it got (for backpressure).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use sandbox_core::fs::WriteOptions;
use sandbox_core::{BootOptions, ForwardOptions, Rootfs, Sandbox, Vm};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const ECHO: u16 = 7001;
const SOURCE: u16 = 7002;
const SINK: u16 = 7003;
const COUNTED: u16 = 7004;
/// Bytes the source ports send.
const SOURCE_BYTES: usize = 32 << 20;

const SERVERS: &str = r#"
import hashlib, socket, sys, threading

def pattern(n):
    block = bytes(range(256)) * 256
    while n > 0:
        chunk = block[: min(n, len(block))]
        n -= len(chunk)
        yield chunk

def echo(c):
    while True:
        data = c.recv(65536)
        if not data:
            break
        c.sendall(data)
    c.shutdown(socket.SHUT_WR)

def source(c):
    for chunk in pattern(SOURCE_BYTES):
        c.sendall(chunk)

def sink(c):
    h, n = hashlib.sha256(), 0
    while True:
        data = c.recv(65536)
        if not data:
            break
        h.update(data)
        n += len(data)
    c.sendall(f"{n} {h.hexdigest()}\n".encode())

def counted(c):
    sent = 0
    for chunk in pattern(SOURCE_BYTES):
        c.sendall(chunk)
        sent += len(chunk)
        with open("/tmp/counted", "w") as f:
            f.write(str(sent))

def serve(port, handler):
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("127.0.0.1", port))
    s.listen(128)
    def run(c):
        with c:
            handler(c)
    while True:
        c, _ = s.accept()
        threading.Thread(target=run, args=(c,), daemon=True).start()

SOURCE_BYTES = int(sys.argv[1])
for port, handler in [(7001, echo), (7002, source), (7003, sink), (7004, counted)]:
    threading.Thread(target=serve, args=(port, handler), daemon=True).start()
print("ready", flush=True)
threading.Event().wait()
"#;

fn pattern(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i % 256) as u8).collect()
}

fn loopback() -> SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

/// Boots `debian:12` without a network and starts the servers.
async fn boot() -> (Vm, sandbox_core::Process) {
    let sandbox = Sandbox::builder()
        .rootfs(Rootfs::ephemeral(sandbox::builtin("debian:12")))
        .backend(sandbox::backend())
        .build()
        .unwrap();
    let vm = sandbox
        .boot(BootOptions::default().hostname("fwd"))
        .await
        .unwrap();
    vm.fs()
        .write_file(
            "/tmp/servers.py",
            SERVERS.as_bytes(),
            WriteOptions::default(),
        )
        .await
        .unwrap();
    let mut servers = vm
        .spawn("python3", ["/tmp/servers.py", &SOURCE_BYTES.to_string()])
        .unwrap();
    let mut out = servers.stdout.take().unwrap();
    let mut line = [0u8; 6];
    tokio::time::timeout(Duration::from_secs(60), out.read_exact(&mut line))
        .await
        .expect("the guest servers start")
        .unwrap();
    assert_eq!(&line, b"ready\n");
    (vm, servers)
}

#[tokio::test]
async fn bytes_flow_both_ways_with_half_close() {
    let (vm, _servers) = boot().await;
    let echo = vm.forward_tcp(loopback(), ECHO).unwrap();
    assert!(echo.local_addr().ip().is_loopback());
    assert_eq!(echo.guest_port(), ECHO);

    // Echo: the host half-closes, the guest answers everything and then
    // half-closes in turn.
    let mut c = TcpStream::connect(echo.local_addr()).await.unwrap();
    let sent = pattern(3 << 20);
    let (mut rd, mut wr) = c.split();
    let send = async {
        wr.write_all(&sent).await.unwrap();
        wr.shutdown().await.unwrap();
    };
    let mut back = Vec::new();
    let recv = rd.read_to_end(&mut back);
    let (_, got) = tokio::join!(send, recv);
    got.unwrap();
    assert_eq!(back.len(), sent.len());
    assert!(back == sent, "the echo came back changed");

    // Download: 32 MiB from the guest, byte for byte.
    let source = vm.forward_tcp(loopback(), SOURCE).unwrap();
    let mut c = TcpStream::connect(source.local_addr()).await.unwrap();
    let mut got = Vec::new();
    c.read_to_end(&mut got).await.unwrap();
    assert_eq!(got.len(), SOURCE_BYTES);
    assert!(
        got == pattern(SOURCE_BYTES),
        "the download came back changed"
    );

    // Upload: the guest hashes what arrives after the host's half-close.
    let sink = vm.forward_tcp(loopback(), SINK).unwrap();
    let mut c = TcpStream::connect(sink.local_addr()).await.unwrap();
    let data: Vec<u8> = (0..(24u32 << 20))
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
        .collect();
    c.write_all(&data).await.unwrap();
    c.shutdown().await.unwrap();
    let mut answer = String::new();
    c.read_to_string(&mut answer).await.unwrap();
    let want = format!("{} {}\n", data.len(), hex::encode(Sha256::digest(&data)));
    assert_eq!(answer, want);
    vm.shutdown().await.unwrap();
}

#[tokio::test]
async fn many_concurrent_connections_each_get_their_own_bytes() {
    let (vm, _servers) = boot().await;
    let echo = vm.forward_tcp(loopback(), ECHO).unwrap();
    let addr = echo.local_addr();
    let clients = (0..48u8).map(|n| {
        tokio::spawn(async move {
            let mut c = TcpStream::connect(addr).await.unwrap();
            let sent: Vec<u8> = (0..65536u32).map(|i| (i as u8) ^ n).collect();
            let (mut rd, mut wr) = c.split();
            let send = async {
                wr.write_all(&sent).await.unwrap();
                wr.shutdown().await.unwrap();
            };
            let mut back = Vec::new();
            let (_, r) = tokio::join!(send, rd.read_to_end(&mut back));
            r.unwrap();
            back == sent
        })
    });
    for (n, c) in clients.enumerate() {
        assert!(c.await.unwrap(), "connection {n} got someone else's bytes");
    }
    // Nothing is left open in the guest afterwards.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let ss = vm
            .exec("sh", ["-c", "ls /proc/$(pgrep -o python3)/fd | wc -l"])
            .await
            .unwrap();
        let fds: usize = String::from_utf8_lossy(&ss.stdout).trim().parse().unwrap();
        // stdin, stdout, stderr and four listeners (plus Python's own).
        if fds <= 10 {
            break;
        }
        assert!(Instant::now() < deadline, "{fds} descriptors still open");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    vm.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_port_without_listener_closes_the_host_connection_promptly() {
    let (vm, _servers) = boot().await;
    let nobody = vm.forward_tcp(loopback(), 7999).unwrap();
    let started = Instant::now();
    let mut c = TcpStream::connect(nobody.local_addr()).await.unwrap();
    let mut buf = [0u8; 16];
    let read = tokio::time::timeout(Duration::from_secs(10), c.read(&mut buf))
        .await
        .expect("the host connection is closed, not left hanging");
    assert!(
        matches!(read, Ok(0) | Err(_)),
        "no bytes come from a port nobody listens on: {read:?}"
    );
    eprintln!("closed after {} ms", started.elapsed().as_millis());
    // The forward keeps working once a listener exists.
    let echo = vm.forward_tcp(loopback(), ECHO).unwrap();
    let mut c = TcpStream::connect(echo.local_addr()).await.unwrap();
    c.write_all(b"still here").await.unwrap();
    c.shutdown().await.unwrap();
    let mut back = Vec::new();
    c.read_to_end(&mut back).await.unwrap();
    assert_eq!(back, b"still here");
    vm.shutdown().await.unwrap();
}

/// Bytes the counted source reports sent so far.
async fn sent(vm: &Vm) -> usize {
    let text = vm.fs().read_file("/tmp/counted").await.unwrap_or_default();
    String::from_utf8_lossy(&text).parse::<usize>().unwrap_or(0)
}

#[tokio::test]
async fn a_host_that_does_not_read_stalls_the_guest_writer() {
    let (vm, _servers) = boot().await;
    let counted = vm.forward_tcp(loopback(), COUNTED).unwrap();
    let mut c = TcpStream::connect(counted.local_addr()).await.unwrap();
    // Not reading: what the guest could send is bounded by socket buffers
    // on both ends plus one credit window on the link.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let stalled = sent(&vm).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(sent(&vm).await, stalled, "the guest kept sending");
    assert!(
        stalled < SOURCE_BYTES / 2,
        "the guest sent {stalled} bytes to a host that read nothing"
    );
    eprintln!("stalled after {stalled} bytes");
    let mut got = Vec::new();
    c.read_to_end(&mut got).await.unwrap();
    assert_eq!(got.len(), SOURCE_BYTES);
    assert_eq!(sent(&vm).await, SOURCE_BYTES);
    vm.shutdown().await.unwrap();
}

#[tokio::test]
async fn binding_rules_and_dropping_the_forward() {
    let (vm, _servers) = boot().await;
    let wide: SocketAddr = "0.0.0.0:0".parse().unwrap();
    let refused = vm.forward_tcp(wide, ECHO).unwrap_err().to_string();
    assert!(refused.contains("allow_non_loopback"), "{refused}");
    assert!(vm.forward_tcp(loopback(), 0).is_err());
    let open = vm
        .forward_tcp_with(wide, ECHO, ForwardOptions::default().allow_non_loopback())
        .unwrap();
    assert!(open.local_addr().ip().is_unspecified());
    let addr = SocketAddr::from(([127, 0, 0, 1], open.local_addr().port()));
    let mut c = TcpStream::connect(addr).await.unwrap();
    c.write_all(b"ping").await.unwrap();
    let mut buf = [0u8; 4];
    c.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"ping");
    // Dropping the forward resets the open connection and stops listening.
    drop(open);
    let mut rest = Vec::new();
    let r = tokio::time::timeout(Duration::from_secs(10), c.read_to_end(&mut rest))
        .await
        .expect("the open connection ends when the forward is dropped");
    assert!(rest.is_empty(), "{r:?}");
    assert!(TcpStream::connect(addr).await.is_err());
    // And after the VM is gone, a forward's port refuses connections.
    let echo = vm.forward_tcp(loopback(), ECHO).unwrap();
    let addr = echo.local_addr();
    vm.shutdown().await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(addr).await.is_ok() {
        assert!(Instant::now() < deadline, "still listening after shutdown");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
