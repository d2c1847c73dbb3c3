//! `vm.metrics()`: every device's counters move with the work that should
//! move them (UML; tests/kvm.rs checks virtio-net on KVM).

use sandbox::assert_virtio_hwrng;
use sandbox_core::metrics::{DeviceCounters, VmMetrics};
use sandbox_core::net::{Conn, NetworkOptions};
use sandbox_core::BootOptions;

fn blk(m: &VmMetrics) -> sandbox_core::metrics::BlockCounters {
    match m.device("blk") {
        Some(DeviceCounters::Block(b)) => b.clone(),
        other => panic!("no block counters: {other:?}"),
    }
}

fn vsock(m: &VmMetrics) -> sandbox_core::metrics::VsockCounters {
    match m.device("vsock") {
        Some(DeviceCounters::Vsock(v)) => v.clone(),
        other => panic!("no vsock counters: {other:?}"),
    }
}

#[tokio::test]
async fn device_counters_move_with_guest_work() {
    let policy = |conn: Conn| async move { Ok(conn.deny()) };
    let sandbox = sandbox_core::Sandbox::builder()
        .rootfs(sandbox_core::Rootfs::ephemeral(
            sandbox_core::images::builtin("minimal").unwrap(),
        ))
        .backend(sandbox::backend())
        .network(NetworkOptions::new(policy))
        .build()
        .unwrap();
    let vm = sandbox
        .boot(BootOptions::default().hostname("metrics"))
        .await
        .unwrap();
    let before = vm.metrics();
    assert!(before.boot_time > std::time::Duration::ZERO);
    assert_eq!(before.live_processes, 0);
    // Booting read the root disk over virtio-blk and talked over vsock.
    let b0 = blk(&before);
    assert!(b0.requests > 0 && b0.read_bytes > 0, "{b0:?}");
    let v0 = vsock(&before);
    assert!(v0.connections >= 1, "{v0:?}");

    // Writes and a flush.
    let out = vm
        .exec("sh", ["-c", "head -c 1048576 /dev/zero > /root/m && sync"])
        .await
        .unwrap();
    assert_eq!(out.status.code, Some(0));
    let b1 = blk(&vm.metrics());
    assert!(b1.write_bytes >= b0.write_bytes + (1 << 20), "{b1:?}");
    assert!(b1.flushes > b0.flushes, "{b1:?}");
    assert!(b1.mean_flush().is_some());

    // 8 MiB host -> guest through the file API: bytes move, and the
    // guest's receive credit runs out at least once.
    let big = vec![7u8; 8 << 20];
    vm.fs()
        .write_file("/root/big", &big, Default::default())
        .await
        .unwrap();
    let v1 = vsock(&vm.metrics());
    assert!(v1.to_guest_bytes >= v0.to_guest_bytes + (8 << 20), "{v1:?}");
    assert!(v1.from_guest_bytes > v0.from_guest_bytes, "{v1:?}");
    assert!(v1.credit_stalls > 0, "{v1:?}");

    // virtio-rng.
    assert_virtio_hwrng(&vm, true).await;
    match vm.metrics().device("rng") {
        Some(DeviceCounters::Rng(r)) => assert!(r.bytes >= 4096, "{r:?}"),
        other => panic!("no rng counters: {other:?}"),
    }

    // Live processes.
    let p = vm.spawn("sleep", ["30"]).unwrap();
    p.ready().await.unwrap();
    assert_eq!(vm.metrics().live_processes, 1);
    p.kill(sandbox_core::Signal::KILL).unwrap();
    p.exit().await.unwrap();
    assert_eq!(vm.metrics().live_processes, 0);

    // The network: a denied connection still moves frames.
    let _ = vm
        .exec("bash", ["-c", "exec 3<>/dev/tcp/203.0.113.5/80 || true"])
        .await;
    let n = vm.metrics().network.expect("a network");
    assert!(n.frames_in > 0 && n.flows_denied >= 1, "{n:?}");
    vm.shutdown().await.unwrap();
    // Every device thread ran under its syscall filter and needed nothing
    // outside it.
    assert!(sandbox_core::seccomp::enabled());
    assert_eq!(sandbox_core::seccomp::violations(), vec![]);
}
