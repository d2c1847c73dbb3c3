//! A real `debian:12` guest (the harness's backend) moving BULK bytes with
//! curl: through the stack to a host origin, and to a server inside the
//! same guest on its own loopback (the guest kernel's own TCP limit, the
//! reference of issue 19's goal), plus the host's curl on host loopback.

use std::net::SocketAddr;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use super::BULK;

/// Medians of 5 runs each, in MB/s as curl reports them.
pub struct RealGuest {
    pub stack_down: f64,
    pub stack_up: f64,
    pub loopback_down: f64,
    pub loopback_up: f64,
    pub host_down: f64,
}

/// The guest's own server on 127.0.0.1:8080: GET answers BULK bytes, PUT
/// reads its body and answers 200 (one connection at a time).
const GUEST_SERVER: &str = r#"
import socket
BULK = 16 << 20
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", 8080))
s.listen(8)
block = b"\x07" * (256 << 10)
while True:
    c, _ = s.accept()
    head = b""
    while b"\r\n\r\n" not in head:
        d = c.recv(65536)
        if not d:
            break
        head += d
    h, _, rest = head.partition(b"\r\n\r\n")
    if h.startswith(b"PUT"):
        n = 0
        for line in h.split(b"\r\n"):
            if line.lower().startswith(b"content-length:"):
                n = int(line.split(b":")[1])
        got = len(rest)
        while got < n:
            d = c.recv(1 << 20)
            if not d:
                break
            got += len(d)
        c.sendall(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
    else:
        c.sendall(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\nconnection: close\r\n\r\n" % BULK)
        for _ in range(BULK // len(block)):
            c.sendall(block)
    c.close()
"#;

/// An HTTP origin on host loopback: GET answers BULK bytes, PUT reads its
/// body (content-length) and answers 200.
pub async fn http_origin() -> SocketAddr {
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
                let head = String::from_utf8_lossy(&head).to_ascii_lowercase();
                if head.starts_with("put") {
                    let len = head
                        .lines()
                        .find_map(|l| l.strip_prefix("content-length:"))
                        .and_then(|v| v.trim().parse::<usize>().ok())
                        .unwrap_or(0);
                    let mut buf = vec![0u8; 256 << 10];
                    let mut got = 0;
                    while got < len {
                        match s.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => got += n,
                        }
                    }
                    let ok = "HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n";
                    let _ = s.write_all(ok.as_bytes()).await;
                    return;
                }
                let h = format!(
                    "HTTP/1.1 200 OK\r\ncontent-length: {BULK}\r\nconnection: close\r\n\r\n"
                );
                if s.write_all(h.as_bytes()).await.is_ok() {
                    super::write_bulk(&mut s, &block).await;
                }
            });
        }
    });
    addr
}

/// curl's arguments: a GET (`upload` false) or a PUT of the guest's
/// `/tmp/blob`, printing the transfer's speed in bytes/s.
fn curl(url: &str, upload: bool) -> Vec<String> {
    let speed = if upload {
        "%{speed_upload}"
    } else {
        "%{speed_download}"
    };
    let mut a: Vec<String> = ["-sf", "-o", "/dev/null", "-w", speed, "--max-time", "60"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    if upload {
        // No `Expect: 100-continue` round trip (neither server sends 100).
        a.extend(["-H", "Expect:", "-T", "/tmp/blob"].map(String::from));
    }
    a.push(url.to_string());
    a
}

fn mbps(stdout: &[u8]) -> Option<f64> {
    Some(String::from_utf8_lossy(stdout).trim().parse::<f64>().ok()? / 1e6)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Runs the guest's transfers; `None` (with the reason printed) if the
/// guest cannot boot or a transfer fails.
pub async fn run(origin: SocketAddr) -> Option<RealGuest> {
    match try_run(origin).await {
        Ok(r) => Some(r),
        Err(e) => {
            println!("  real guest: {e}");
            None
        }
    }
}

async fn try_run(origin: SocketAddr) -> Result<RealGuest, String> {
    use sandbox_core::net::{
        Conn as CoreConn, NetworkOptions as CoreOptions, RoutedConnector as CoreRoutes,
    };
    use sandbox_core::{images, BootOptions, Rootfs, Sandbox};
    let dst: SocketAddr = "203.0.113.9:80".parse().unwrap();
    let policy =
        move |c: CoreConn| async move { Ok(if c.dst() == dst { c.accept() } else { c.deny() }) };
    sandbox::ensure_artifacts().map_err(|e| format!("artifacts: {e}"))?;
    let image = images::builtin("debian:12").map_err(|e| e.to_string())?;
    let sandbox = Sandbox::builder()
        .rootfs(Rootfs::ephemeral(image))
        .backend(sandbox::backend())
        .network(CoreOptions::new(policy).connector(CoreRoutes::new().route(dst, origin)))
        .build()
        .map_err(|e| e.to_string())?;
    let vm = sandbox
        .boot(BootOptions::default())
        .await
        .map_err(|e| e.to_string())?;
    let exec = |args: Vec<String>| {
        let vm = &vm;
        async move {
            let out = vm.exec("curl", args).await.map_err(|e| e.to_string())?;
            if out.status.success() {
                mbps(&out.stdout).ok_or_else(|| "curl printed no speed".to_string())
            } else {
                Err(format!(
                    "curl failed: {}",
                    String::from_utf8_lossy(&out.stderr)
                ))
            }
        }
    };
    let made = vm
        .exec(
            "sh",
            ["-c", &format!("head -c {BULK} /dev/zero > /tmp/blob")],
        )
        .await
        .map_err(|e| e.to_string())?;
    if !made.status.success() {
        return Err("cannot write /tmp/blob in the guest".into());
    }
    let mut server = vm
        .spawn("python3", ["-c", GUEST_SERVER])
        .map_err(|e| e.to_string())?;
    server
        .ready()
        .await
        .map_err(|e| format!("python3 in the guest: {e}"))?;
    // Wait for the guest server to listen.
    let local = "http://127.0.0.1:8080/";
    let mut up = false;
    for _ in 0..100 {
        if exec(curl(local, false)).await.is_ok() {
            up = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    if !up {
        let _ = server.kill(sandbox_core::Signal::KILL);
        let mut err = String::new();
        if let Some(mut e) = server.stderr.take() {
            let _ = e.read_to_string(&mut err).await;
        }
        return Err(format!("the guest's loopback server did not start: {err}"));
    }
    let remote = format!("http://{dst}/");
    let (mut sd, mut su, mut ld, mut lu, mut hd) = (vec![], vec![], vec![], vec![], vec![]);
    for _ in 0..5 {
        sd.push(exec(curl(&remote, false)).await?);
        su.push(exec(curl(&remote, true)).await?);
        ld.push(exec(curl(local, false)).await?);
        lu.push(exec(curl(local, true)).await?);
        let out = tokio::process::Command::new("curl")
            .args(curl(&format!("http://{origin}/"), false))
            .output()
            .await
            .map_err(|e| format!("host curl: {e}"))?;
        hd.push(mbps(&out.stdout).ok_or("host curl printed no speed")?);
    }
    let _ = server.kill(sandbox_core::Signal::KILL);
    let _ = vm.shutdown().await;
    Ok(RealGuest {
        stack_down: median(sd),
        stack_up: median(su),
        loopback_down: median(ld),
        loopback_up: median(lu),
        host_down: median(hd),
    })
}
