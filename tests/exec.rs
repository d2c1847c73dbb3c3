//! `vm.exec` against real guests (UML here; KVM where the probe finds
//! hardware virtualization once that backend exists).

use sandbox::{boot, guest_processes};
use sandbox_core::Error;

#[tokio::test]
async fn exit_codes_zero_and_non_zero() {
    let vm = boot("codes").await.unwrap();
    let ok = vm.exec("true", [""; 0]).await.unwrap();
    assert_eq!(ok.status.code, Some(0));
    assert!(ok.status.success());
    let three = vm.exec("sh", ["-c", "exit 3"]).await.unwrap();
    assert_eq!(three.status.code, Some(3));
    assert_eq!(three.status.signal, None);
    assert!(!three.status.success());
    let killed = vm.exec("sh", ["-c", "kill -9 $$"]).await.unwrap();
    assert_eq!(killed.status.code, None);
    assert_eq!(killed.status.signal, Some(sandbox_core::Signal::KILL));
    vm.shutdown().await.unwrap();
}

#[tokio::test]
async fn stdout_and_stderr_are_kept_apart() {
    let vm = boot("streams").await.unwrap();
    let out = vm
        .exec("sh", ["-c", "echo to-out; echo to-err >&2; echo more-out"])
        .await
        .unwrap();
    assert_eq!(out.stdout, b"to-out\nmore-out\n");
    assert_eq!(out.stderr, b"to-err\n");
    vm.shutdown().await.unwrap();
}

#[tokio::test]
async fn one_mebibyte_of_stdout_arrives_intact() {
    let vm = boot("bigout").await.unwrap();
    let out = vm
        .exec("sh", ["-c", "yes 0123456789abcdef | head -c 1048576"])
        .await
        .unwrap();
    assert_eq!(out.status.code, Some(0));
    assert_eq!(out.stdout.len(), 1 << 20);
    let line = b"0123456789abcdef\n";
    assert!(out.stdout.chunks(line.len()).all(|c| c == &line[..c.len()]));
    vm.shutdown().await.unwrap();
}

#[tokio::test]
async fn eight_concurrent_execs_on_one_vm() {
    let vm = boot("concurrent").await.unwrap();
    let runs = (0..8).map(|i| {
        let vm = &vm;
        async move {
            let script =
                format!("sleep 0.$((RANDOM % 3)); echo job-{i}; echo err-{i} >&2; exit {i}");
            (i, vm.exec("bash", ["-c", script.as_str()]).await.unwrap())
        }
    });
    for (i, out) in futures::future::join_all(runs).await {
        assert_eq!(out.stdout, format!("job-{i}\n").into_bytes());
        assert_eq!(out.stderr, format!("err-{i}\n").into_bytes());
        assert_eq!(out.status.code, Some(i));
    }
    vm.shutdown().await.unwrap();
}

#[tokio::test]
async fn two_vms_boot_at_once_and_stay_separate() {
    let (a, b) = tokio::join!(boot("vm-a"), boot("vm-b"));
    let (a, b) = (a.unwrap(), b.unwrap());
    assert_ne!(a.id(), b.id());
    let ha = a.exec("hostname", [""; 0]).await.unwrap();
    let hb = b.exec("hostname", [""; 0]).await.unwrap();
    assert_eq!(ha.stdout, b"vm-a\n");
    assert_eq!(hb.stdout, b"vm-b\n");
    // A file written in one guest does not appear in the other.
    a.exec("sh", ["-c", "echo a > /root/mark"]).await.unwrap();
    let seen = b.exec("cat", ["/root/mark"]).await.unwrap();
    assert_ne!(seen.status.code, Some(0));
    a.shutdown().await.unwrap();
    b.shutdown().await.unwrap();
}

#[tokio::test]
async fn shutdown_and_drop_leave_no_host_processes() {
    let vm = boot("leftovers").await.unwrap();
    let id = vm.id();
    assert!(
        !guest_processes(&id).is_empty(),
        "the guest's host processes should be visible while it runs"
    );
    vm.shutdown().await.unwrap();
    assert_eq!(guest_processes(&id), Vec::<u32>::new());
    let workdir = std::env::temp_dir().join(&id);
    assert!(!workdir.exists(), "{} was left behind", workdir.display());

    let vm = boot("dropped").await.unwrap();
    let id = vm.id();
    vm.exec("true", [""; 0]).await.unwrap();
    drop(vm);
    assert_eq!(guest_processes(&id), Vec::<u32>::new());
    assert!(!std::env::temp_dir().join(&id).exists());
}

#[tokio::test]
async fn a_missing_command_is_a_clear_error() {
    let vm = boot("missing").await.unwrap();
    let err = vm.exec("no-such-command", ["x"]).await.unwrap_err();
    match &err {
        Error::Spawn { program, errno, .. } => {
            assert_eq!(program, "no-such-command");
            assert_eq!(*errno, 2, "ENOENT");
        }
        other => panic!("expected a spawn error, got {other:?}"),
    }
    assert!(err.to_string().contains("no-such-command"));
    // The VM is still usable afterwards.
    let out = vm.exec("echo", ["still here"]).await.unwrap();
    assert_eq!(out.stdout, b"still here\n");
    vm.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_guest_that_dies_fails_in_flight_calls_clearly() {
    let vm = boot("crash").await.unwrap();
    let leader = sandbox::uml_kernel_process(&vm.id()).expect("the UML kernel process");
    let in_flight = vm.exec("sleep", ["60"]);
    let killer = async {
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        // SAFETY: kill has no memory arguments; `leader` is our own child.
        unsafe { libc::kill(leader as i32, libc::SIGKILL) };
    };
    let started = std::time::Instant::now();
    let (result, ()) = tokio::join!(in_flight, killer);
    match result {
        Err(Error::GuestStopped { reason, console }) => {
            assert!(!reason.is_empty());
            assert!(
                console.contains("Run /sbin/sandbox-guest"),
                "the error carries the console: {console}"
            );
        }
        other => panic!("expected GuestStopped, got {other:?}"),
    }
    assert!(started.elapsed() < std::time::Duration::from_secs(20));
    // Later calls fail the same way instead of hanging.
    assert!(matches!(
        vm.exec("true", [""; 0]).await,
        Err(Error::GuestStopped { .. })
    ));
    drop(vm);
}

#[tokio::test]
async fn a_kernel_panic_in_the_guest_is_reported() {
    let vm = boot("panic").await.unwrap();
    // SysRq 'c' crashes the guest kernel on purpose.
    let result = vm
        .exec("sh", ["-c", "echo c > /proc/sysrq-trigger; sleep 30"])
        .await;
    match result {
        Err(Error::GuestStopped { console, .. }) => {
            assert!(
                console.contains("sysrq") || console.contains("Kernel panic"),
                "{console}"
            );
        }
        other => panic!("expected GuestStopped, got {other:?}"),
    }
}

#[tokio::test]
async fn the_uml_kernel_process_has_no_host_network() {
    let vm = boot("netns").await.unwrap();
    const NAME: &str = "exec::the_uml_kernel_process_has_no_host_network";
    if vm.backend() != sandbox_core::BackendKind::Uml {
        sandbox::skip(NAME, "only meaningful for the UML backend");
        vm.shutdown().await.unwrap();
        return;
    }
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        sandbox::skip(NAME, "not root: unshare(CLONE_NEWNET) may be refused");
        vm.shutdown().await.unwrap();
        return;
    }
    let ours = std::fs::read_link("/proc/self/ns/net").unwrap();
    let pids = guest_processes(&vm.id());
    assert!(!pids.is_empty(), "no UML kernel process found");
    for pid in pids {
        let theirs = std::fs::read_link(format!("/proc/{pid}/ns/net")).unwrap();
        assert_ne!(theirs, ours, "pid {pid} shares the host network namespace");
        // And it cannot dump core (guest memory) onto the host's disk.
        let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
        let core = limits
            .lines()
            .find(|l| l.starts_with("Max core file size"))
            .unwrap();
        assert_eq!(
            core.split_whitespace().collect::<Vec<_>>()[4..6],
            ["0", "0"],
            "pid {pid}: {core}"
        );
    }
    vm.shutdown().await.unwrap();
}
