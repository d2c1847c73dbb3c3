//! The process API against a real guest: exec options, spawn handles,
//! signals, cancellation, backpressure and concurrency.

use std::time::{Duration, Instant};

use sandbox::boot;
use sandbox_core::{BootOptions, CancellationToken, Error, Signal, NOT_STARTED};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[tokio::test]
async fn exec_with_cwd_env_and_default_environment() {
    let vm = boot("opts").await.unwrap();
    let out = vm
        .command("sh")
        .args(["-c", "pwd; echo $FOO; echo $HOME; echo $PATH"])
        .cwd("/tmp")
        .env("FOO", "bar")
        .exec()
        .await
        .unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines[..3], ["/tmp", "bar", "/root"]);
    assert!(lines[3].contains("/usr/bin") && lines[3].contains("/bin"));
    // Omitted args mean an empty argv; the default cwd comes from boot.
    let pwd = vm.exec("pwd", [""; 0]).await.unwrap();
    assert_eq!(pwd.stdout, b"/\n");
    vm.shutdown().await.unwrap();

    let vm = sandbox::minimal()
        .unwrap()
        .boot(BootOptions::default().cwd("/tmp"))
        .await
        .unwrap();
    assert_eq!(vm.exec("pwd", [""; 0]).await.unwrap().stdout, b"/tmp\n");
    vm.shutdown().await.unwrap();
}

async fn sleepers(vm: &sandbox_core::Vm) -> usize {
    let out = vm
        .exec("sh", ["-c", "ps -o comm | grep -c '^sleep$' || true"])
        .await
        .unwrap();
    String::from_utf8(out.stdout)
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

#[tokio::test]
async fn a_timeout_kills_the_whole_group_with_code_124() {
    let vm = boot("timeout").await.unwrap();
    let started = Instant::now();
    let out = vm
        .command("sh")
        .args(["-c", "sleep 30 & sleep 31; echo never"])
        .timeout(Duration::from_millis(500))
        .exec()
        .await
        .unwrap();
    assert_eq!(out.status.code, Some(124));
    assert_eq!(out.status.signal, None);
    assert!(out.stdout.is_empty());
    assert!(started.elapsed() < Duration::from_secs(10));
    assert_eq!(sleepers(&vm).await, 0, "the background sleep died too");
    vm.shutdown().await.unwrap();
}

#[tokio::test]
async fn cancellation_aborts_and_leaves_the_vm_usable() {
    let vm = boot("cancel").await.unwrap();
    let token = CancellationToken::new();
    let t2 = token.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(300)).await;
        t2.cancel();
    });
    // A descendant in another session keeps the stdout pipe open.
    let started = Instant::now();
    let err = vm
        .command("sh")
        .args(["-c", "setsid sleep 30 & sleep 30"])
        .cancel_on(token)
        .exec()
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Aborted), "{err:?}");
    // Prompt, although the descendant holds stdout.
    let late = started.elapsed().saturating_sub(Duration::from_millis(300));
    eprintln!(
        "cancelled exec returned {} ms after the cancel",
        late.as_millis()
    );
    assert!(late < Duration::from_millis(1000), "{late:?} late");
    let out = vm.exec("echo", ["after"]).await.unwrap();
    assert_eq!(out.stdout, b"after\n");
    vm.shutdown().await.unwrap();
}

#[tokio::test]
async fn bad_process_input_is_refused_at_once_with_a_clear_error() {
    let vm = boot("badinput").await.unwrap();
    let invalid = |r: Result<sandbox_core::Output, Error>| match r {
        Err(Error::InvalidConfig(m)) => m,
        other => panic!("expected a clear refusal, got {other:?}"),
    };
    // An argument larger than one protocol frame: refused, not hung.
    let big = "x".repeat(2 << 20);
    let m = tokio::time::timeout(Duration::from_secs(10), vm.exec("echo", [big.as_str()]))
        .await
        .expect("refused at once, not hung");
    assert!(invalid(m).contains("at most"));
    for (k, v) in [("", "x"), ("A=B", "x"), ("A\0B", "x"), ("A", "x\0y")] {
        let m = invalid(vm.command("true").env(k, v).exec().await);
        assert!(m.contains("environment variable"), "{m}");
    }
    let m = invalid(vm.command("true").cwd("relative").exec().await);
    assert!(m.contains("absolute"), "{m}");
    assert!(vm.command("true").cwd("relative").spawn().is_err());
    // A missing working directory is named as such.
    match vm.command("true").cwd("/no/such/dir").exec().await {
        Err(Error::Spawn { errno, message, .. }) => {
            assert_eq!(errno, libc::ENOENT);
            assert!(
                message.contains("working directory /no/such/dir"),
                "{message}"
            );
        }
        other => panic!("expected a spawn error, got {other:?}"),
    }
    // Nothing was poisoned.
    assert_eq!(vm.exec("echo", ["ok"]).await.unwrap().stdout, b"ok\n");
    vm.shutdown().await.unwrap();
}

#[tokio::test]
async fn dropping_an_exec_future_kills_the_guest_process() {
    let vm = boot("dropexec").await.unwrap();
    // `yes` writes far more than the credit window: before, the dropped
    // call left it running, blocked on a full pipe, forever.
    let dropped = tokio::time::timeout(
        Duration::from_millis(500),
        vm.command("sh").args(["-c", "yes; echo never"]).exec(),
    )
    .await;
    assert!(dropped.is_err(), "yes never ends on its own");
    let mut left = usize::MAX;
    for _ in 0..50 {
        let out = vm
            .exec("sh", ["-c", "ps -o comm | grep -c '^yes$' || true"])
            .await
            .unwrap();
        left = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();
        if left == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(left, 0, "the dropped exec's process is gone");
    // Later requests are unaffected.
    let out = vm.exec("echo", ["after"]).await.unwrap();
    assert_eq!(out.stdout, b"after\n");
    vm.shutdown().await.unwrap();
}

/// How many guest processes named `comm` run, waiting up to 5 s for it to
/// reach `want`.
async fn count_settles(vm: &sandbox_core::Vm, comm: &str, want: usize) -> usize {
    let script = format!("ps -o comm | grep -c '^{comm}$' || true");
    let mut n = usize::MAX;
    for _ in 0..50 {
        let out = vm.exec("sh", ["-c", &script]).await.unwrap();
        n = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();
        if n == want {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    n
}

#[tokio::test]
async fn dropped_spawn_handles_detach_or_kill_as_asked() {
    let vm = boot("dropspawn").await.unwrap();
    // Default: a dropped handle detaches; the process keeps running, and
    // its output (far past the credit window) never stalls it.
    let p = vm
        .spawn("sh", ["-c", "head -c 8000000 /dev/zero; exec sleep 300"])
        .unwrap();
    p.ready().await.unwrap();
    drop(p);
    assert_eq!(count_settles(&vm, "sleep", 1).await, 1, "detached");
    // kill_on_drop: the group is killed when the handle goes.
    let p = vm
        .command("sh")
        .args(["-c", "exec yes"])
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    p.ready().await.unwrap();
    assert_eq!(count_settles(&vm, "yes", 1).await, 1);
    drop(p);
    assert_eq!(count_settles(&vm, "yes", 0).await, 0, "killed on drop");
    // A pty too.
    let t = vm
        .command("sh")
        .args(["-c", "exec yes"])
        .kill_on_drop(true)
        .pty(sandbox_core::PtySize { rows: 24, cols: 80 })
        .unwrap();
    t.ready().await.unwrap();
    drop(t);
    assert_eq!(count_settles(&vm, "yes", 0).await, 0, "pty killed on drop");
    // A handle whose process already exited sends nothing harmful.
    let p = vm.command("true").kill_on_drop(true).spawn().unwrap();
    p.exit().await.unwrap();
    drop(p);
    assert_eq!(vm.exec("echo", ["after"]).await.unwrap().stdout, b"after\n");
    vm.shutdown().await.unwrap();
}

#[tokio::test]
async fn an_already_cancelled_token_launches_nothing() {
    let vm = boot("precancel").await.unwrap();
    let token = CancellationToken::new();
    token.cancel();
    let spawned = vm
        .command("touch")
        .arg("/tmp/spawned")
        .cancel_on(token.clone())
        .spawn();
    assert!(matches!(spawned, Err(Error::Aborted)));
    let execd = vm
        .command("touch")
        .arg("/tmp/execd")
        .cancel_on(token)
        .exec()
        .await;
    assert!(matches!(execd, Err(Error::Aborted)));
    let check = vm
        .exec("sh", ["-c", "ls /tmp/spawned /tmp/execd"])
        .await
        .unwrap();
    assert_ne!(check.status.code, Some(0), "neither file exists");
    vm.shutdown().await.unwrap();
}

#[tokio::test]
async fn spawn_streams_stdin_and_stdout() {
    let vm = boot("spawn").await.unwrap();
    let mut p = vm.spawn("cat", [""; 0]).unwrap();
    assert!(p.ready().await.unwrap() > 1);
    let mut stdin = p.stdin.take().unwrap();
    stdin.write_all(b"hello through stdin").await.unwrap();
    stdin.shutdown().await.unwrap();
    assert!(
        stdin.write_all(b"late").await.is_err(),
        "writes after close fail"
    );
    let mut out = String::new();
    p.stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .await
        .unwrap();
    assert_eq!(out, "hello through stdin");
    let status = p.exit().await.unwrap();
    assert_eq!((status.code, status.signal), (Some(0), None));
    vm.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_missing_command_fails_ready_but_exit_resolves() {
    let vm = boot("spawnmissing").await.unwrap();
    let p = vm.spawn("/no/such/binary", ["x"]).unwrap();
    match p.ready().await {
        Err(Error::Spawn { errno, .. }) => assert_eq!(errno, 2),
        other => panic!("expected a spawn error, got {other:?}"),
    }
    assert_eq!(p.exit().await.unwrap(), NOT_STARTED);
    vm.shutdown().await.unwrap();
}

#[tokio::test]
async fn signals_are_delivered_and_reported() {
    let vm = boot("signals").await.unwrap();
    for sig in [
        Signal::TERM,
        Signal::KILL,
        Signal::INT,
        Signal::HUP,
        Signal::USR1,
    ] {
        let p = vm.spawn("sleep", ["30"]).unwrap();
        p.ready().await.unwrap();
        p.kill(sig).unwrap();
        let status = p.exit().await.unwrap();
        assert_eq!(status.signal, Some(sig), "{sig}");
        assert_eq!(status.code, None);
    }
    vm.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_slow_reader_blocks_the_guest_and_host_memory_stays_bounded() {
    let vm = boot("backpressure").await.unwrap();
    let total: u64 = 1 << 30;
    // dd in 64 KiB blocks: busybox `head` writes in small blocks and is
    // itself limited to about 28 MB/s by UML's syscall cost.
    let mut p = vm
        .spawn("dd", ["if=/dev/zero", "bs=65536", "count=16384"])
        .unwrap();
    p.ready().await.unwrap();
    let before = sandbox::rss_bytes();
    assert!(before > 0, "VmRSS is readable");
    let mut stdout = p.stdout.take().unwrap();
    // Not reading: the guest blocks on its pipe after one credit window.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut peak = sandbox::rss_bytes();
    // Another process is not held up meanwhile.
    assert_eq!(vm.exec("echo", ["free"]).await.unwrap().stdout, b"free\n");
    // Now read all of it, slowly at first.
    let mut buf = vec![0u8; 1 << 16];
    let mut got = 0u64;
    while got < total {
        let n = stdout.read(&mut buf).await.unwrap();
        assert!(n > 0, "early end of stream at {got}");
        assert!(buf[..n].iter().all(|b| *b == 0));
        got += n as u64;
        if got < (4 << 20) {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        if got % (64 << 20) < n as u64 {
            peak = peak.max(sandbox::rss_bytes());
        }
    }
    assert_eq!(stdout.read(&mut buf).await.unwrap(), 0);
    assert_eq!(p.exit().await.unwrap().code, Some(0));
    peak = peak.max(sandbox::rss_bytes());
    let growth = peak.saturating_sub(before);
    eprintln!("1 GiB streamed; host RSS growth {} MiB", growth >> 20);
    assert!(growth < 64 << 20, "host RSS grew by {} MiB", growth >> 20);
    vm.shutdown().await.unwrap();
}

#[tokio::test]
async fn fifty_concurrent_spawns_on_one_vm() {
    let vm = boot("fifty").await.unwrap();
    let mut procs = Vec::new();
    for i in 0..50 {
        procs.push((
            i,
            vm.spawn("sh", ["-c", &format!("echo p{i}; exit {}", i % 7)])
                .unwrap(),
        ));
    }
    for (i, mut p) in procs {
        let mut out = String::new();
        p.stdout
            .take()
            .unwrap()
            .read_to_string(&mut out)
            .await
            .unwrap();
        assert_eq!(out, format!("p{i}\n"));
        assert_eq!(p.exit().await.unwrap().code, Some(i % 7));
    }
    vm.shutdown().await.unwrap();
}

#[tokio::test]
async fn environment_facts_from_config_and_guest() {
    use sandbox_core::FactSource;
    let sandbox = sandbox::minimal().unwrap();
    let config = sandbox.environment_facts();
    let has = |facts: &[sandbox_core::Fact], source, topic: &str, relation: &str, value: &str| {
        facts.iter().any(|f| {
            f.source == source
                && f.topic == topic
                && f.relation == relation
                && f.value.contains(value)
        })
    };
    assert!(has(&config, FactSource::Config, "image", "is", "minimal"));
    assert!(has(
        &config,
        FactSource::Config,
        "rootfs",
        "write_mode",
        "ephemeral"
    ));
    assert!(has(&config, FactSource::Config, "shell", "is", "/bin/bash"));
    let vm = boot("facts").await.unwrap();
    let guest = vm.environment_facts().await.unwrap();
    assert!(has(&guest, FactSource::Guest, "kernel", "is", "Linux 6.12"));
    assert!(has(
        &guest,
        FactSource::Guest,
        "distro",
        "is",
        "sandbox minimal"
    ));
    assert!(has(&guest, FactSource::Guest, "command", "present", "bash"));
    assert!(has(
        &guest,
        FactSource::Guest,
        "command",
        "missing",
        "python3"
    ));
    assert!(has(
        &guest,
        FactSource::Guest,
        "command",
        "missing",
        "docker"
    ));
    vm.shutdown().await.unwrap();
}
