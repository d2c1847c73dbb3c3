//! Snapshots on the KVM backend, on whatever `/dev/kvm` this machine has
//! (here: nested PVM, where a boot takes about a minute). One guest is
//! booted; it writes a file and starts a detached counter; a snapshot is
//! taken while it runs; three forks are restored from it. Each fork has the
//! file, a counter that goes on, writes of its own that the others do not
//! see, and its own random bytes; the original runs on unaffected (checked
//! before the forks start, then shut down to spare the CPU). A state
//! file that was changed, truncated or comes from another version is
//! refused.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use sandbox_core::{
    images, BackendKind, BootOptions, Error, Resources, RestoreOptions, Rootfs, Sandbox, Snapshot,
    Vm,
};

fn step(name: &str, since: Instant) {
    eprintln!("[snapshot] {name}: {:.2?}", since.elapsed());
}

async fn sh(vm: &Vm, script: &str) -> String {
    let out = vm.exec("sh", ["-c", script]).await.unwrap();
    assert_eq!(
        out.status.code,
        Some(0),
        "{script}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Shell that prints the counter, rereading while the counter's shell
/// rewrites the file (its `echo >` truncates first); `read` is a builtin,
/// so this costs no process start (each is slow under nested PVM).
const COUNT: &str = "while :; do read c < /tmp/count && [ -n \"$c\" ] && break; done; echo $c";

/// Runs `script; COUNT` and returns the script's output lines and the count.
async fn with_count(vm: &Vm, script: &str) -> (Vec<String>, u64) {
    let out = sh(vm, &format!("{script}; {COUNT}")).await;
    let mut lines: Vec<String> = out.lines().map(str::to_string).collect();
    let count = lines.pop().unwrap().trim().parse().unwrap();
    (lines, count)
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

#[tokio::test(flavor = "multi_thread")]
async fn a_snapshot_forks_into_independent_guests() {
    let probe = sandbox_core::probe_kvm();
    if let sandbox_core::KvmProbe::Missing(why) = &probe {
        sandbox::skip(
            "snapshot::a_snapshot_forks_into_independent_guests",
            &format!("/dev/kvm is not usable here ({why})"),
        );
        return;
    }
    let t = Instant::now();
    let vm = Sandbox::builder()
        .rootfs(Rootfs::ephemeral(images::builtin("minimal").unwrap()))
        .resources(Resources {
            cpus: 1,
            memory_mib: 256,
        })
        .backend(BackendKind::Kvm)
        .build()
        .unwrap()
        .boot(BootOptions::default().timeout(Duration::from_secs(900)))
        .await
        .unwrap();
    step("boot", t);

    let t = Instant::now();
    // A counter in its own session (the agent ends the processes of a
    // connection that goes away, and a restore replaces the connection);
    // `read -t 1` on a FIFO nobody writes waits a second without a fork.
    let (_, before) = with_count(
        &vm,
        "echo before > /root/note; \
         setsid sh -c 'mkfifo /tmp/tick; exec 3<>/tmp/tick; i=0; \
         while :; do i=$((i+1)); echo $i > /tmp/count; read -t 1 x <&3; done' \
         </dev/null >/dev/null 2>&1 & sleep 2",
    )
    .await;
    assert!(before >= 1);
    step("file and counter", t);

    let dir = std::env::temp_dir().join(format!("sandbox-snapshot-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let t = Instant::now();
    let snapshot = vm.snapshot(&dir).await.unwrap();
    step("snapshot", t);
    eprintln!(
        "[snapshot] RAM {} MiB, memory file stores {} MiB, disks {} MiB",
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

    // The original runs on.
    let (note, original) = with_count(&vm, "cat /root/note; echo original > /root/who").await;
    assert_eq!(note, ["before"]);
    assert!(original > before, "the original's counter goes on");
    assert_eq!(sh(&vm, "cat /root/who").await, "original\n");
    // Every idle guest costs CPU under nested PVM: the forks run alone.
    vm.shutdown().await.unwrap();

    // Three forks, from the directory alone (as after a host restart).
    let t = Instant::now();
    let snapshot = Snapshot::open(&dir).unwrap();
    let forks = snapshot
        .fork(
            3,
            RestoreOptions::default().timeout(Duration::from_secs(300)),
        )
        .await
        .unwrap();
    step("restore x3", t);
    let mut random = Vec::new();
    let mut counts = Vec::new();
    for (i, fork) in forks.iter().enumerate() {
        let t = Instant::now();
        let (out, count) = with_count(
            fork,
            &format!(
                "cat /root/note; echo fork{i} > /root/who; head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \\n'; echo"
            ),
        )
        .await;
        step(&format!("fork {i} first exec"), t);
        assert_eq!(out[0], "before", "fork {i} has the file");
        assert!(count >= before, "fork {i} starts from the snapshot's count");
        random.push(out[1].clone());
        counts.push(count);
    }
    for (i, fork) in forks.iter().enumerate() {
        let (who, count) = with_count(fork, "cat /root/who").await;
        assert_eq!(
            who,
            [format!("fork{i}")],
            "fork {i} sees its own write only"
        );
        assert!(count > counts[i], "fork {i}'s counter goes on");
    }
    random.sort();
    random.dedup();
    assert_eq!(random.len(), 3, "each fork has its own random bytes");
    assert!(random.iter().all(|r| r.len() == 64), "{random:?}");

    for fork in forks {
        fork.shutdown().await.unwrap();
    }

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
        match Sandbox::restore(&snap, RestoreOptions::default()).await {
            Err(Error::Snapshot(e)) => assert!(e.contains(expected), "{e}"),
            Err(other) => panic!("{}: {other}", copy.display()),
            Ok(_) => panic!("{} was restored", copy.display()),
        }
        std::fs::remove_dir_all(copy).unwrap();
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test]
async fn uml_guests_say_snapshots_need_kvm() {
    let vm = sandbox::boot("no-snapshot").await.unwrap();
    if vm.backend() != BackendKind::Uml {
        sandbox::skip(
            "snapshot::uml_guests_say_snapshots_need_kvm",
            "the harness chose another backend than UML",
        );
        return;
    }
    let dir = std::env::temp_dir().join(format!("sandbox-uml-snapshot-{}", std::process::id()));
    match vm.snapshot(&dir).await {
        Err(e @ Error::Unsupported { .. }) => assert!(e.to_string().contains("KVM"), "{e}"),
        other => panic!("{other:?}"),
    }
    assert!(!dir.join("machine.json").exists());
    vm.shutdown().await.unwrap();
}
