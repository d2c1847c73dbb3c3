//! The snapshot flow of tests/kvm.rs, on the suite's one booted guest
//! (`tests/kvm.rs` boots it with a network and a writable bind mount on
//! `/work`). Before the snapshot the guest writes a file and starts a
//! detached counter, which also appends each count to a file in the mount
//! through a descriptor it holds open. The snapshot is taken while it runs;
//! the original goes on (its counter too) and then runs the whole-stack
//! steps, while two forks are restored from the snapshot, each with its own
//! host network stack. Each fork has the file, a counter that goes on,
//! writes of its own that the others do not see, its own random bytes, its
//! own interception CA and machine-id, the hostname the restore gave it,
//! reaches a loopback origin through its own stack, and finds the mount
//! served again (the host's files, its own writes landing on the host, the
//! counter's old descriptor still appending), and its own copy of the
//! memory mount on `/mem`, and the application's file system on `/virt`
//! served again from what the restore passes. A new process restores the snapshot from its
//! directory alone. A restore without a network,
//! and a state file that was changed, truncated or comes from another
//! version, are refused.
//!
//! Under nested PVM each guest process start costs seconds, so the flow
//! starts almost none: checks go through the file API (one agent thread
//! per request, no new process).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use sandbox_core::net::{Conn, NetworkOptions, RoutedConnector};
use sandbox_core::vfs::MemoryFs;
use sandbox_core::{Error, Mount, RestoreOptions, Sandbox, Snapshot, Vm};

fn step(name: &str, since: Instant) {
    eprintln!(
        "[kvm/snapshot] {name}: {:.1} s",
        since.elapsed().as_secs_f64()
    );
}

/// The counter's current value, read through the file API (its shell
/// rewrites the file with `echo >`, which truncates first: an empty read
/// is retried).
async fn count(vm: &Vm) -> u64 {
    for _ in 0..200 {
        let text = vm.fs().read_file("/tmp/count").await.unwrap();
        if let Ok(n) = String::from_utf8_lossy(&text).trim().parse() {
            return n;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("/tmp/count stayed empty")
}

async fn read(vm: &Vm, path: &str) -> String {
    String::from_utf8(vm.fs().read_file(path).await.unwrap()).unwrap()
}

async fn write(vm: &Vm, path: &str, text: &str) {
    vm.fs()
        .write_file(path, text.as_bytes(), Default::default())
        .await
        .unwrap();
}

/// Waits until the counter moved past `than`: it ticks once a second.
async fn count_above(vm: &Vm, than: u64) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let now = count(vm).await;
        if now > than || Instant::now() > deadline {
            return now;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// The guest's one grant: raw TCP to `DST` (the forks' script names it),
/// routed to the loopback origin.
const DST: &str = "203.0.113.5:8080";

fn network(origin: std::net::SocketAddr) -> NetworkOptions {
    let dst: std::net::SocketAddr = DST.parse().unwrap();
    NetworkOptions::new(move |conn: Conn| async move {
        Ok(if conn.dst() == dst {
            conn.accept()
        } else {
            conn.deny()
        })
    })
    .connector(RoutedConnector::new().route(dst, origin))
}

/// A copy of the snapshot directory (its big files hard-linked) whose
/// state file `change` rewrites.
fn altered(dir: &Path, name: &str, change: impl FnOnce(&mut Vec<u8>)) -> PathBuf {
    let copy = dir.with_file_name(format!(
        "{}-{name}",
        dir.file_name().unwrap().to_string_lossy()
    ));
    let _ = std::fs::remove_dir_all(&copy);
    std::fs::create_dir_all(&copy).unwrap();
    for entry in std::fs::read_dir(dir).unwrap() {
        let entry = entry.unwrap();
        std::fs::hard_link(entry.path(), copy.join(entry.file_name())).unwrap();
    }
    let state = copy.join("state");
    let mut bytes = std::fs::read(&state).unwrap();
    std::fs::remove_file(&state).unwrap();
    change(&mut bytes);
    std::fs::write(&state, bytes).unwrap();
    copy
}

/// Lines in the mount's `sub/ticks` on the host.
fn ticks(share: &Path) -> usize {
    std::fs::read_to_string(share.join("sub/ticks"))
        .unwrap_or_default()
        .lines()
        .count()
}

/// The host directory the suite's guest binds writable on `/work`.
pub fn share() -> PathBuf {
    let share = std::env::temp_dir().join(format!("sandbox-snapshot-share-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&share);
    std::fs::create_dir_all(share.join("sub")).unwrap();
    std::fs::write(share.join("sub/host.txt"), b"from the host\n").unwrap();
    share
}

/// The memory file system the suite's guest mounts on `/mem`.
pub fn memory() -> MemoryFs {
    MemoryFs::new().file("/seed.txt", "seeded\n").unwrap()
}

/// The application's own file system the suite's guest mounts on `/virt`
/// (a `MemoryFs` served as `Mount::virtual_fs`: the application's code).
pub fn app_fs() -> MemoryFs {
    MemoryFs::new()
}

/// What the forks' checks start from.
pub struct Taken {
    dir: PathBuf,
    share: PathBuf,
    /// The original's memory mount.
    memory: MemoryFs,
    /// The application's file system behind `/virt`.
    app: MemoryFs,
    /// The counter at the snapshot.
    before: u64,
    /// The original's interception CA.
    ca: String,
    /// The original's uptime just before the snapshot, and when it was read.
    uptime: (f64, Instant),
}

async fn uptime(vm: &Vm) -> f64 {
    let text = read(vm, "/proc/uptime").await;
    let first = text.split_whitespace().next().unwrap_or_default();
    first
        .parse()
        .unwrap_or_else(|_| panic!("/proc/uptime: {text:?}"))
}

/// Starts the counter in `vm`, snapshots it, and checks the original goes
/// on. The original's counter then stops appending to the mount, so that
/// what the forks append is theirs.
pub async fn take(vm: &Vm, share: PathBuf, memory: MemoryFs, app: MemoryFs) -> Taken {
    let t = Instant::now();
    write(vm, "/root/note", "before\n").await;
    vm.fs().mkdir("/mem/dir", false).await.unwrap();
    write(vm, "/mem/dir/before.txt", "in memory before\n").await;
    write(vm, "/virt/before.txt", "virtual before\n").await;
    // A counter in its own session (the agent ends the process group of an
    // exec when its main process exits, and the processes of a connection
    // that goes away: a restore replaces the connection); `read -t 1` on a
    // FIFO nobody writes (the counter inherits the starter's descriptor)
    // waits a second without a fork. It appends to the mount while
    // /tmp/append exists (builtins only). The starter waits, with builtins
    // only, for the first count: by then `setsid` has moved the counter
    // out of the exec's process group. (The loop's status is its last
    // `read`'s, a timeout: `:` ends with 0.)
    let out = vm
        .exec(
            "sh",
            [
                "-c",
                "mkfifo /tmp/tick; exec 3<>/tmp/tick; exec 4>>/work/sub/ticks; : > /tmp/append; \
                 setsid sh -c 'cd /work/sub; i=0; while :; do i=$((i+1)); echo $i > /tmp/count; \
                 [ -e /tmp/append ] && echo $i >&4; read -t 1 x <&3; done' \
                 </dev/null >/dev/null 2>&1 & \
                 until [ -s /tmp/count ]; do read -t 1 x <&3; done; :",
            ],
        )
        .await
        .unwrap();
    assert_eq!(out.status.code, Some(0), "{out:?}");
    let before = count(vm).await;
    assert!(before >= 1);
    assert_eq!(read(vm, "/work/sub/host.txt").await, "from the host\n");
    step("file and counter", t);

    let dir = std::env::temp_dir().join(format!("sandbox-snapshot-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let uptime = (uptime(vm).await, Instant::now());
    let t = Instant::now();
    let snapshot = vm.snapshot(&dir).await.unwrap();
    step("snapshot", t);
    eprintln!(
        "[kvm/snapshot] RAM {} MiB, memory file stores {} MiB, disks {} MiB",
        snapshot.ram_bytes() >> 20,
        snapshot.memory_bytes() >> 20,
        snapshot.disk_bytes() >> 20
    );
    assert_eq!(snapshot.ram_bytes(), 256 << 20);
    assert!(
        snapshot.memory_bytes() < snapshot.ram_bytes(),
        "zero pages are holes"
    );
    assert!(
        matches!(vm.snapshot(&dir).await, Err(Error::Snapshot(e)) if e.contains("already holds")),
        "a second snapshot into the same directory is refused"
    );
    assert!(ticks(&share) >= 1, "the counter appends to the mount");

    // The original runs on.
    let t = Instant::now();
    assert_eq!(read(vm, "/root/note").await, "before\n");
    write(vm, "/root/who", "original\n").await;
    let original = count_above(vm, before).await;
    assert!(original > before, "the original's counter goes on");
    assert_eq!(read(vm, "/root/who").await, "original\n");
    let ca = read(vm, "/run/sandbox/ca.pem").await;
    vm.fs().remove("/tmp/append", false, false).await.unwrap();
    write(vm, "/mem/who.txt", "original\n").await;
    step("the original after the snapshot", t);
    Taken {
        dir,
        share,
        memory,
        app,
        before,
        ca,
        uptime,
    }
}

/// Forks the snapshot twice and checks each fork.
pub async fn forks(taken: Taken) {
    let Taken {
        dir,
        share,
        memory,
        app,
        before,
        ca,
        uptime: (snapshot_uptime, read_at),
    } = taken;
    let origin = sandbox::origin::Origin::start(None).await.unwrap();
    let mut cas = vec![ca];
    // The original's last append is a second behind it at most.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let ticks_before_forks = ticks(&share);

    // Two forks, from the directory alone (as after a host restart).
    let t = Instant::now();
    let snapshot = Snapshot::open(&dir).unwrap();
    match Sandbox::restore(&snapshot, RestoreOptions::default()).await {
        Err(Error::InvalidConfig(e)) => assert!(e.contains("RestoreOptions::network"), "{e}"),
        other => panic!("a restore without a network: {other:?}"),
    }
    let networked = RestoreOptions::default().network(network(origin.addr));
    match Sandbox::restore(&snapshot, networked).await {
        Err(Error::InvalidConfig(e)) => {
            assert!(e.contains("RestoreOptions::mount(\"/virt\""), "{e}")
        }
        other => panic!("a restore without the virtual mount: {other:?}"),
    }
    let forks = snapshot
        .fork(
            2,
            RestoreOptions::default()
                .timeout(Duration::from_secs(600))
                .network(network(origin.addr))
                .mount("/virt", Mount::virtual_fs(app.clone()))
                .hostname("forked")
                .new_machine_id(),
        )
        .await
        .unwrap();
    step("restore x2", t);
    // The guest's monotonic clock continues from the snapshot: it counts
    // the fork's run since the restore, not the wait of at least 2.5 s
    // before it (under nested PVM a TSC-timed guest jumped by the wait).
    let ran = uptime(&forks[0]).await - snapshot_uptime;
    let since = read_at.elapsed().as_secs_f64();
    assert!(
        (0.0..since - 2.0).contains(&ran),
        "fork 0's uptime moved {ran:.2} s from the snapshot's; {since:.2} s passed on the host, \
         2.5 s of them before the restore"
    );
    let mut random = Vec::new();
    let mut counts = Vec::new();
    let mut machine_ids = Vec::new();
    for (i, fork) in forks.iter().enumerate() {
        let t = Instant::now();
        assert_eq!(read(fork, "/root/note").await, "before\n", "fork {i}");
        // The mount is served again: the guest's cached names and new
        // lookups reach the host's files, and its writes land there.
        assert_eq!(read(fork, "/work/sub/host.txt").await, "from the host\n");
        write(fork, &format!("/work/fork{i}"), "written by a fork\n").await;
        // The memory mount: each fork has its own copy of the snapshot's.
        assert_eq!(read(fork, "/mem/seed.txt").await, "seeded\n");
        assert_eq!(
            read(fork, "/mem/dir/before.txt").await,
            "in memory before\n"
        );
        write(fork, "/mem/who.txt", &format!("fork{i}\n")).await;
        // The virtual mount: the application's file system, shared by the
        // forks as the application serves it to both.
        assert_eq!(read(fork, "/virt/before.txt").await, "virtual before\n");
        write(fork, &format!("/virt/fork{i}.txt"), "from a fork\n").await;
        assert_eq!(
            app.read_file(&format!("/fork{i}.txt")).unwrap(),
            b"from a fork\n"
        );
        let own = fork.memory_mount("/mem").expect("the fork's memory mount");
        assert_eq!(
            own.read_file("/who.txt").unwrap(),
            format!("fork{i}\n").as_bytes()
        );
        assert_eq!(
            std::fs::read_to_string(share.join(format!("fork{i}"))).unwrap(),
            "written by a fork\n"
        );
        let c = count(fork).await;
        assert!(c >= before, "fork {i} starts from the snapshot's count");
        counts.push(c);
        write(fork, "/root/who", &format!("fork{i}\n")).await;
        cas.push(read(fork, "/run/sandbox/ca.pem").await);
        assert_eq!(read(fork, "/etc/hostname").await, "forked\n", "fork {i}");
        let id = read(fork, "/etc/machine-id").await;
        assert!(
            id.len() == 33 && id[..32].bytes().all(|b| b.is_ascii_hexdigit()),
            "fork {i}: {id:?}"
        );
        machine_ids.push(id);
        step(&format!("fork {i} file checks"), t);
    }
    for (i, fork) in forks.iter().enumerate() {
        let t = Instant::now();
        assert_eq!(
            read(fork, "/root/who").await,
            format!("fork{i}\n"),
            "fork {i} sees its own write only"
        );
        // One exec per fork (sh, od, nc; busybox starts in about a second
        // here, bash in ten): a restored guest runs new processes, its
        // random generator was reseeded (the file API refuses devices),
        // and its network is a new stack of its own.
        let script = format!(
            "read h < /proc/sys/kernel/hostname; echo $h; od -An -N32 -tx1 /dev/urandom; echo; \
             exec busybox nc 203.0.113.5 8080 <<EOF\nGET /fork{i} HTTP/1.0\r\n\r\nEOF"
        );
        let out = fork.exec("sh", ["-c", &script]).await.unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let (name, rest) = text.split_once('\n').unwrap_or((&text, ""));
        assert_eq!(name, "forked", "the kernel's hostname");
        let (hex, http) = rest.split_once("\n\n").unwrap_or((rest, ""));
        let hex: String = hex.split_whitespace().collect();
        assert_eq!(hex.len(), 64, "{out:?}");
        random.push(hex);
        assert!(
            http.starts_with("HTTP/1.1 200 OK\r\n") && http.ends_with(sandbox::origin::BODY),
            "fork {i}: {out:?}\n{}",
            fork.console_tail(30)
        );
        let stats = fork.network_stats().unwrap();
        assert_eq!(stats.flows_accepted, 1, "fork {i}'s own stack: {stats:?}");
        step(&format!("fork {i} exec"), t);
        let c = count_above(fork, counts[i]).await;
        assert!(c > counts[i], "fork {i}'s counter goes on");
    }
    // The counters' descriptors, opened before the snapshot, were reopened
    // on each restore: their appends reach the host's file.
    let deadline = Instant::now() + Duration::from_secs(120);
    while ticks(&share) <= ticks_before_forks + 2 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert!(
        ticks(&share) > ticks_before_forks + 2,
        "the forks' counters append to the mount: {} lines, {ticks_before_forks} before the forks",
        ticks(&share)
    );
    assert_ne!(random[0], random[1], "each fork has its own random bytes");
    assert_eq!(
        memory.read_file("/who.txt").unwrap(),
        b"original\n",
        "the original's memory mount is its own"
    );
    assert_eq!(
        forks[0]
            .memory_mount("/mem")
            .unwrap()
            .read_file("/who.txt")
            .unwrap(),
        b"fork0\n",
        "fork 0's copy kept its own write"
    );
    assert_ne!(
        machine_ids[0], machine_ids[1],
        "each fork has its own machine-id"
    );
    for (i, ca) in cas.iter().enumerate() {
        assert!(ca.starts_with("-----BEGIN CERTIFICATE-----"), "{ca}");
        assert_eq!(
            cas.iter().filter(|c| *c == ca).count(),
            1,
            "CA {i} (0: the original, then the forks) is its own"
        );
    }
    let mut requests = origin.requests();
    requests.sort();
    assert!(
        requests[0].starts_with("GET /fork0 ") && requests[1].starts_with("GET /fork1 "),
        "{requests:?}"
    );

    for fork in forks {
        let t = Instant::now();
        fork.shutdown().await.unwrap();
        step("a fork's shutdown", t);
    }

    // A process that never saw the VM restores it from the directory alone
    // (as after a host restart).
    let t = Instant::now();
    let probe_dir = dir.clone();
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_restore-probe"))
            .arg(&probe_dir)
            .output()
    })
    .await
    .unwrap()
    .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "before\nseeded\n");
    step("a restore in a new process", t);

    // Bad state files are refused before anything starts.
    let version = altered(&dir, "version", |b| b[8] = b[8].wrapping_add(1));
    let changed = altered(&dir, "changed", |b| {
        let last = b.len() - 2;
        b[last] ^= 0x20;
    });
    let truncated = altered(&dir, "truncated", |b| b.truncate(b.len() / 2));
    for (copy, expected) in [
        (&version, "state version"),
        (&changed, "checksum"),
        (&truncated, "truncated"),
    ] {
        let snap = Snapshot::open(copy).unwrap();
        let opts = RestoreOptions::default()
            .network(network(origin.addr))
            .mount("/virt", Mount::virtual_fs(app.clone()));
        match Sandbox::restore(&snap, opts).await {
            Err(Error::Snapshot(e)) => assert!(e.contains(expected), "{e}"),
            Err(other) => panic!("{}: {other}", copy.display()),
            Ok(_) => panic!("{} was restored", copy.display()),
        }
        std::fs::remove_dir_all(copy).unwrap();
    }
    std::fs::remove_dir_all(&dir).unwrap();
    std::fs::remove_dir_all(&share).unwrap();
}
