//! The KVM backend end to end, chosen explicitly, on whatever `/dev/kvm`
//! this machine has (here: nested PVM, where a boot takes tens of seconds
//! and each process start seconds). The suite boots one guest, with two
//! vCPUs (SMP), and that boot is the suite's real boot test. It is
//! snapshotted after a short setup (`kvm/snapshot.rs`). Then two things run
//! at the same time: the original runs the whole-stack steps, and forks
//! restored from the snapshot run the snapshot checks.
//!
//! The whole-stack steps: exec with stdout, stderr and exit code on the
//! root's persistent overlay; spawn with stdin; a signal; a pty; a guest
//! HTTP request (bash /dev/tcp) through virtio-net and the host network
//! stack; the file API; the guest's hardware rng (virtio-rng); a read-only
//! bind over virtio-fs; pause and resume; a clean power-off; the written
//! file found on the host in the overlay (its blocks went through
//! virtio-blk on virtio-mmio). The descriptor and syscall-filter checks run
//! after both. `KVM_STRESS_EXECS=N` adds N more execs (soak runs).

#[path = "kvm/snapshot.rs"]
mod snapshot;

use std::path::Path;
use std::time::{Duration, Instant};

use sandbox_core::net::{Conn, NetworkOptions, RoutedConnector};
use sandbox_core::{
    images, BackendKind, BootOptions, Mount, PtySize, Resources, Rootfs, Sandbox, Signal,
};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};

fn open_fds() -> Vec<String> {
    let Ok(dir) = std::fs::read_dir("/proc/self/fd") else {
        return Vec::new();
    };
    let mut fds: Vec<String> = dir
        .filter_map(|e| {
            let e = e.ok()?;
            let target = std::fs::read_link(e.path()).ok()?;
            Some(format!(
                "{} -> {}",
                e.file_name().to_string_lossy(),
                target.display()
            ))
        })
        .collect();
    fds.sort();
    fds
}

fn step(name: &str, since: Instant) {
    eprintln!("[kvm] {name}: {:.1} s", since.elapsed().as_secs_f64());
}

/// Reads a file out of the ext4 inside a qcow2 overlay, on the host.
fn host_read(overlay: &Path, file: &str) -> String {
    let raw = overlay.with_extension("raw");
    let convert = std::process::Command::new("qemu-img")
        .args(["convert", "-O", "raw"])
        .arg(overlay)
        .arg(&raw)
        .status()
        .expect("qemu-img (Debian qemu-utils) is installed");
    assert!(convert.success());
    let out = std::process::Command::new("/sbin/debugfs")
        .args(["-R", &format!("cat {file}")])
        .arg(&raw)
        .output()
        .expect("debugfs (Debian e2fsprogs) is installed");
    std::fs::remove_file(&raw).unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn the_kvm_backend_runs_the_whole_stack_and_snapshots() {
    let probe = sandbox_core::probe_kvm();
    eprintln!("[kvm] probe: {probe:?}");
    if let sandbox_core::KvmProbe::Missing(why) = &probe {
        // Not a pass: say why nothing ran.
        sandbox::skip(
            "kvm::the_kvm_backend_runs_the_whole_stack_and_snapshots",
            &format!("/dev/kvm is not usable here ({why})"),
        );
        return;
    }
    sandbox::ensure_artifacts().expect("the x86_64 kernel");
    let fds_before = open_fds();
    let start = Instant::now();
    // A loopback origin the guest reaches through its virtio-net device
    // and the host stack (a raw TCP grant).
    let origin = sandbox::origin::Origin::start(None).await.unwrap();
    let (bulk_addr, bulk) = bulk_server().await;
    let dst: std::net::SocketAddr = "203.0.113.5:8080".parse().unwrap();
    let bulk_dst: std::net::SocketAddr = "203.0.113.5:9".parse().unwrap();
    let network = NetworkOptions::new(move |conn: Conn| async move {
        Ok(if conn.dst() == dst || conn.dst() == bulk_dst {
            conn.accept()
        } else {
            conn.deny()
        })
    })
    .connector(
        RoutedConnector::new()
            .route(dst, origin.addr)
            .route(bulk_dst, bulk_addr),
    );
    // A host directory the guest sees read-only over virtio-fs (mmio), and
    // the snapshot flow's writable one.
    let shared = std::env::temp_dir().join(format!("sandbox-kvm-share-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&shared);
    std::fs::create_dir_all(&shared).unwrap();
    std::fs::write(shared.join("hello.txt"), b"shared from the host\n").unwrap();
    let writable = snapshot::share();
    let memory = snapshot::memory();
    let app = snapshot::app_fs();
    let overlay = std::env::temp_dir().join(format!("sandbox-kvm-{}.qcow2", std::process::id()));
    let _ = std::fs::remove_file(&overlay);
    let image = images::builtin("minimal").unwrap();
    let vm = Sandbox::builder()
        .rootfs(Rootfs::persistent(image.clone(), &overlay))
        .resources(Resources {
            cpus: 2,
            memory_mib: 256,
        })
        .backend(BackendKind::Kvm)
        .network(network)
        .build()
        .unwrap()
        .boot(
            BootOptions::default()
                .hostname("kvm")
                .mount("/workspace", Mount::bind(&shared).read_only())
                .mount("/work", Mount::bind(&writable).writable())
                .mount("/mem", Mount::memory(&memory))
                .mount("/virt", Mount::virtual_fs(app.clone()))
                .timeout(Duration::from_secs(900)),
        )
        .await
        .unwrap();
    eprintln!("[kvm] backend {:?}: {}", vm.backend(), vm.backend_reason());
    step("boot to agent ready", start);
    assert_eq!(vm.backend(), BackendKind::Kvm);
    let taken = snapshot::take(&vm, writable, memory, app).await;
    // The first failure ends the test; the other flow is dropped with the
    // runtime.
    tokio::try_join!(
        tokio::spawn(whole_stack(vm, origin, bulk, shared.clone(), overlay)),
        tokio::spawn(snapshot::forks(taken))
    )
    .unwrap();
    step("both flows", start);
    // (Removed only now: the snapshot flow restores the read-only bind too.)
    std::fs::remove_dir_all(&shared).unwrap();
    // The vCPU threads and the device threads (started for them by the
    // spawner thread when the driver activates a device on the mmio bus)
    // ran under their syscall filters and needed nothing outside them.
    assert_eq!(sandbox_core::seccomp::violations(), vec![]);
    // With every handle dropped, every vCPU thread, device thread and
    // descriptor is gone. Give exiting threads a moment to drop what they
    // hold.
    let deadline = Instant::now() + Duration::from_secs(10);
    while open_fds().len() > fds_before.len() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(open_fds(), fds_before, "descriptors leaked by the VMs");
}

/// Bytes the bulk step sends each way.
const BULK: usize = 400_000;

/// A loopback server for the bulk step: per connection, reads a line
/// "UP DOWN", then UP bytes, writes DOWN bytes and closes; reports UP as
/// counted. (The line spares the guest's busybox `nc` a half-close, which
/// it does not do at its input's end.)
async fn bulk_server() -> (
    std::net::SocketAddr,
    tokio::sync::mpsc::UnboundedReceiver<usize>,
) {
    use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        // The step's two connections; then the listener closes.
        for _ in 0..2 {
            let Ok((s, _)) = listener.accept().await else {
                return;
            };
            let mut s = tokio::io::BufReader::new(s);
            let mut line = String::new();
            s.read_line(&mut line).await.unwrap();
            let sizes: Vec<usize> = line
                .split_whitespace()
                .map(|n| n.parse().unwrap())
                .collect();
            let (up, down) = (sizes[0], sizes[1]);
            let mut buf = vec![0u8; 64 << 10];
            let mut got = 0;
            while got < up {
                let n = s.read(&mut buf).await.unwrap();
                assert!(n > 0, "the guest closed after {got} of {up} bytes");
                got += n;
            }
            let block = vec![b'x'; 64 << 10];
            let mut left = down;
            while left > 0 {
                let n = left.min(block.len());
                s.write_all(&block[..n]).await.unwrap();
                left -= n;
            }
            s.shutdown().await.unwrap();
            let _ = tx.send(got);
        }
    });
    (addr, rx)
}

async fn whole_stack(
    vm: sandbox_core::Vm,
    origin: sandbox::origin::Origin,
    mut bulk: tokio::sync::mpsc::UnboundedReceiver<usize>,
    shared: std::path::PathBuf,
    overlay: std::path::PathBuf,
) {
    // exec: stdout, stderr, exit code; both vCPUs online. (Shell builtins
    // only, here and below where a check allows: a process start costs
    // about a second on this emulating host.)
    let t = Instant::now();
    let out = vm
        .exec(
            "sh",
            [
                "-c",
                "read h < /proc/sys/kernel/hostname; echo $h; \
                 set -- /sys/devices/system/cpu/cpu[0-9]*; echo $#; echo oops >&2; exit 3",
            ],
        )
        .await
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "kvm\n2\n");
    assert_eq!(out.stderr, b"oops\n");
    assert_eq!(out.status.code, Some(3));
    step("exec", t);

    {
        // spawn: stdin streamed in, stdout out, exit status.
        let t = Instant::now();
        let mut p = vm.spawn("cat", [""; 0]).unwrap();
        p.ready().await.unwrap();
        let mut stdin = p.stdin.take().unwrap();
        stdin.write_all(b"through stdin on kvm").await.unwrap();
        stdin.shutdown().await.unwrap();
        let mut text = String::new();
        p.stdout
            .take()
            .unwrap()
            .read_to_string(&mut text)
            .await
            .unwrap();
        let status = p.exit().await.unwrap();
        assert_eq!(
            (text.as_str(), status.code, status.signal),
            ("through stdin on kvm", Some(0), None),
            "{}",
            vm.console_tail(30)
        );
        step("spawn with stdin", t);
    }
    {
        // A signal delivered to a running process and reported.
        let t = Instant::now();
        let p = vm.spawn("sleep", ["600"]).unwrap();
        p.ready().await.unwrap();
        p.kill(Signal::TERM).unwrap();
        let status = p.exit().await.unwrap();
        assert_eq!((status.code, status.signal), (None, Some(Signal::TERM)));
        step("spawn + SIGTERM", t);
    }
    {
        // A terminal: a shell sees a tty of the requested size.
        let t = Instant::now();
        let mut sh = vm
            .pty(
                "sh",
                [""; 0],
                PtySize {
                    rows: 33,
                    cols: 101,
                },
            )
            .unwrap();
        sh.ready().await.unwrap();
        sh.input
            .write_all(b"test -t 0 && stty size; exit 4\n")
            .await
            .unwrap();
        let mut seen = Vec::new();
        sh.output.read_to_end(&mut seen).await.unwrap();
        let seen = String::from_utf8_lossy(&seen);
        assert!(seen.contains("33 101"), "{seen:?}");
        assert_eq!(sh.exit().await.unwrap().code, Some(4));
        step("pty", t);
    }

    let stress: usize = std::env::var("KVM_STRESS_EXECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    for i in 0..stress {
        let t = Instant::now();
        let out = vm
            .exec("sh", ["-c", &format!("echo run-{i}")])
            .await
            .unwrap();
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            format!("run-{i}\n"),
            "{:?} {}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr),
            vm.console_tail(30)
        );
        step(&format!("stress exec {i}"), t);
    }

    // The network: eth0 on virtio-net, a raw grant to the origin.
    let t = Instant::now();
    // (busybox nc, not wget: busybox wget in the minimal image crashes in
    // static glibc's resolver code on every backend. Not bash's /dev/tcp
    // either: a bash start costs about ten seconds here, a busybox one
    // about one.)
    let get = "exec busybox nc 203.0.113.5 8080 <<EOF\nGET /kvm HTTP/1.0\r\n\r\nEOF";
    let out = vm.exec("sh", ["-c", get]).await.unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.starts_with("HTTP/1.1 200 OK\r\n") && text.ends_with(sandbox::origin::BODY),
        "{:?} {text} {} {:?}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr),
        vm.network_stats(),
        vm.console_tail(30)
    );
    assert!(origin.requests()[0].starts_with("GET /kvm HTTP/1.0\r\n"));
    let stats = vm.network_stats().unwrap();
    assert!(stats.flows_accepted >= 1, "{stats:?}");
    // The virtio-net device's own counters moved.
    match vm.metrics().device("net") {
        Some(sandbox_core::metrics::DeviceCounters::Net(n)) => {
            assert!(n.tx_frames > 0 && n.rx_frames > 0, "{n:?}")
        }
        other => panic!("no virtio-net counters: {other:?}"),
    }
    step("guest HTTP request through virtio-net", t);

    // Bulk each way over the 65000-byte link: 64 KiB frames, not 1514.
    let t = Instant::now();
    let mtu = vm
        .exec("sh", ["-c", "read m < /sys/class/net/eth0/mtu; echo $m"])
        .await
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&mtu.stdout).trim(), "65000");
    let frames = || match vm.metrics().device("net") {
        Some(sandbox_core::metrics::DeviceCounters::Net(n)) => (n.tx_frames, n.rx_frames),
        other => panic!("no virtio-net counters: {other:?}"),
    };
    let mut used = Vec::new();
    for (up, down) in [(BULK, 0), (0, BULK)] {
        let before = frames();
        let cmd = format!(
            "{{ echo {up} {down}; busybox head -c {up} /dev/zero; }} \
             | busybox nc 203.0.113.5 9 | busybox wc -c"
        );
        let out = tokio::time::timeout(Duration::from_secs(180), vm.exec("sh", ["-c", &cmd]))
            .await
            .expect("the bulk transfer finishes")
            .unwrap();
        assert_eq!(
            String::from_utf8_lossy(&out.stdout).trim(),
            down.to_string(),
            "{:?} {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(bulk.recv().await, Some(up), "bytes the host got");
        let after = frames();
        // Frames in the data's direction. The download's segments are the
        // host stack's (up to 64960 bytes each; at MTU 1500 they would be
        // at least 274 frames). The upload's are sized by busybox nc's
        // small writes, so only its bytes are checked.
        let n = if up > 0 {
            after.0 - before.0
        } else {
            after.1 - before.1
        };
        if down > 0 {
            assert!(n < 150, "{n} frames carried {BULK} bytes to the guest");
        }
        used.push(n);
    }
    step(
        &format!("{BULK} bytes up in {} frames, down in {}", used[0], used[1]),
        t,
    );

    // The file API.
    let t = Instant::now();
    let fs = vm.fs();
    let note = b"written over vsock\n";
    fs.write_file("/root/kvm-note", note, Default::default())
        .await
        .unwrap();
    assert_eq!(fs.read_file("/root/kvm-note").await.unwrap(), note);
    step("fs write + read", t);

    // virtio-rng: the guest's hardware rng is ours and yields bytes.
    let t = Instant::now();
    sandbox::assert_virtio_hwrng(&vm, false).await;
    step("virtio-rng read", t);

    // virtio-fs over mmio: the host file reads back, a write is refused.
    let t = Instant::now();
    let out = vm
        .exec(
            "sh",
            [
                "-c",
                "read l < /workspace/hello.txt; echo $l; echo x > /workspace/new 2>&1",
            ],
        )
        .await
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(text.starts_with("shared from the host\n"), "{text}");
    assert!(text.contains("Read-only file system"), "{text}");
    assert!(!shared.join("new").exists());
    step("virtio-fs read-only bind", t);

    {
        // pause/resume: a shell printing a count once a second (its
        // `read -t 1` sleeps without a fork) prints nothing while the VM
        // is paused, then goes on with the next number: it saw no error.
        let t = Instant::now();
        let mut p = vm
            .spawn(
                "sh",
                [
                    "-c",
                    "i=0; while :; do i=$((i+1)); echo $i; read -t 1 x; done",
                ],
            )
            .unwrap();
        p.ready().await.unwrap();
        let _stdin = p.stdin.take().unwrap();
        let mut lines = tokio::io::BufReader::new(p.stdout.take().unwrap()).lines();
        let line = Duration::from_secs(60);
        let count = |l: Option<String>| l.unwrap().trim().parse::<u64>().unwrap();
        let mut last = count(
            tokio::time::timeout(line, lines.next_line())
                .await
                .unwrap()
                .unwrap(),
        );
        vm.pause().unwrap();
        assert!(vm.is_paused());
        // What the guest had already sent arrives; then nothing.
        while let Ok(l) = tokio::time::timeout(Duration::from_millis(1500), lines.next_line()).await
        {
            last = count(l.unwrap());
        }
        let quiet = tokio::time::timeout(Duration::from_secs(3), lines.next_line()).await;
        assert!(quiet.is_err(), "output while paused: {quiet:?}");
        vm.resume().unwrap();
        assert!(!vm.is_paused());
        let next = count(
            tokio::time::timeout(line, lines.next_line())
                .await
                .unwrap()
                .unwrap(),
        );
        assert_eq!(next, last + 1, "the count goes on after the resume");
        p.kill(Signal::KILL).unwrap();
        p.exit().await.unwrap();
        step("pause and resume", t);
    }

    let t = Instant::now();
    let mut events = vm.subscribe();
    vm.shutdown().await.unwrap();
    step("shutdown", t);
    // The power-off came through the VMM's power-off port: reported once.
    let stopped = loop {
        match events.recv().await {
            Ok(sandbox_core::VmEvent::Stopped { reason }) => break reason,
            Ok(_) => continue,
            Err(e) => panic!("no Stopped event: {e}"),
        }
    };
    assert_eq!(stopped, sandbox_core::StopReason::PowerOff);
    assert_eq!(
        host_read(&overlay, "/root/kvm-note"),
        "written over vsock\n"
    );
    let check = std::process::Command::new("qemu-img")
        .args(["check", "-q"])
        .arg(&overlay)
        .status()
        .unwrap();
    assert!(check.success(), "qemu-img check");
    std::fs::remove_file(&overlay).unwrap();
}
