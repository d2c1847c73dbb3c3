//! Host-only test: the stack runs on its own confined thread. A guest
//! connection, a DNS query and a refused flow pass through it with no
//! syscall refused by its filter, and dropping the network ends the
//! thread. (A binary of its own: it counts the process's threads.)

mod support;

use std::net::{SocketAddr, SocketAddrV4};
use std::time::Duration;

use sandbox_net::{Conn, DirectConnector, Limits};
use support::guest::{get, resolve, start, T};
use support::Origin;

/// The stack threads of this process, each with whether a seccomp filter
/// confines it (`Seccomp: 2` in its status).
fn stack_threads() -> Vec<bool> {
    std::fs::read_dir("/proc/self/task")
        .unwrap()
        .filter_map(|t| {
            let dir = t.ok()?.path();
            let comm = std::fs::read_to_string(dir.join("comm")).ok()?;
            let status = std::fs::read_to_string(dir.join("status")).ok()?;
            (comm.trim() == "sandbox-net-sta").then(|| status.contains("Seccomp:\t2"))
        })
        .collect()
}

#[tokio::test]
async fn the_stack_runs_confined_on_its_own_thread_and_ends_with_the_network() {
    assert!(sandbox_thread::seccomp::enabled());
    let origin = Origin::start(None).await;
    let exact = origin.addr;
    let policy = move |conn: Conn| async move {
        if let Some(dns) = conn.match_dns() {
            return Ok(dns.synthesize([("origin.test", exact.ip())]));
        }
        if let Some(t) = conn.match_tcp(exact) {
            return Ok(t.accept());
        }
        Ok(conn.deny())
    };
    let (net, g) = start(
        policy,
        DirectConnector::new().allow_special_use(),
        Limits::default(),
        vec![],
    );
    let SocketAddr::V4(addr) = origin.addr else {
        panic!("the origin listens on IPv4")
    };
    assert_eq!(
        resolve(&g, "origin.test", "10.0.2.3:53").await,
        Some(vec![exact.ip()])
    );
    // Checked once the stack has run (a new thread names itself when it
    // starts).
    assert_eq!(stack_threads(), vec![true], "one stack thread, filtered");
    let s = g.connect(addr, T).await.expect("granted by address");
    let (status, _) = get(s, "origin.test", "/").await.unwrap();
    assert_eq!(status, 200);
    let refused: SocketAddrV4 = "192.0.2.1:80".parse().unwrap();
    assert!(g.connect(refused, T).await.is_err());
    assert_eq!(sandbox_thread::seccomp::violations(), vec![]);
    drop(net);
    // The drop joins the thread; the kernel wakes the joiner (clearing
    // the thread id) in the exiting thread's exit path, a moment before
    // its /proc/self/task entry goes away: allow that moment.
    let deadline = std::time::Instant::now() + Duration::from_secs(2);
    while !stack_threads().is_empty() && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(
        stack_threads(),
        vec![],
        "the stack's thread ended with the network"
    );
}
