//! The UML backend's jail, checked from the host through `/proc`: what the
//! kernel process and its children are, see and may use.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use sandbox::{guest_processes, minimal, skip};
use sandbox_core::{BackendKind, BootOptions, Sandbox, UmlJail, Vm, UML_JAIL_ID_BASE};

/// Boots minimal on UML with `jail`, or says why the test cannot run.
async fn boot_uml(test: &str, jail: UmlJail) -> Option<Vm> {
    if sandbox::backend() == BackendKind::Kvm {
        skip(
            test,
            "SANDBOX_BACKEND=kvm; the jail belongs to the UML backend",
        );
        return None;
    }
    let vm = Sandbox::builder()
        .rootfs(minimal().unwrap().rootfs().clone())
        .backend(BackendKind::Uml)
        .uml_jail(jail)
        .build()
        .unwrap()
        .boot(BootOptions::default())
        .await
        .unwrap();
    Some(vm)
}

fn status_field(pid: u32, field: &str) -> String {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"))
        .trim()
        .to_string()
}

fn limit(pid: u32, name: &str) -> String {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let line = limits.lines().find(|l| l.starts_with(name)).unwrap();
    line[name.len()..]
        .split_whitespace()
        .next()
        .unwrap()
        .to_string()
}

fn ns(pid: &str, kind: &str) -> std::path::PathBuf {
    std::fs::read_link(format!("/proc/{pid}/ns/{kind}")).unwrap()
}

#[tokio::test]
async fn the_kernel_process_sees_only_its_jail() {
    const NAME: &str = "uml_jail::the_kernel_process_sees_only_its_jail";
    // A secret next to the work directories, which the jail must not see,
    // and a descriptor of it that the host leaks (no O_CLOEXEC).
    let canary = std::env::temp_dir().join(format!("jail-canary-{}", std::process::id()));
    std::fs::write(&canary, "secret").unwrap();
    let path = std::ffi::CString::new(canary.to_str().unwrap()).unwrap();
    // SAFETY: open with a NUL-terminated path; closed below.
    let leaked = unsafe { libc::open(path.as_ptr(), libc::O_RDONLY) };
    assert!(leaked >= 0);
    let Some(vm) = boot_uml(NAME, UmlJail::default()).await else {
        let _ = std::fs::remove_file(&canary);
        return;
    };
    // Guest processes (each a host process under UML) too.
    vm.exec("sh", ["-c", "sleep 5 & true"]).await.unwrap();
    let pids = guest_processes(&vm.id());
    assert!(pids.len() >= 2, "kernel and helpers: {pids:?}");
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    let mut pid1 = 0;
    for &pid in &pids {
        let map = std::fs::read_to_string(format!("/proc/{pid}/uid_map")).unwrap();
        let fields: Vec<u64> = map.split_whitespace().map(|f| f.parse().unwrap()).collect();
        assert_eq!(fields.len(), 3, "one mapping only: {map}");
        assert_eq!((fields[0], fields[2]), (0, 1), "pid {pid}: {map}");
        if root {
            assert!(
                fields[1] >= UML_JAIL_ID_BASE as u64,
                "root maps the jail to an unprivileged id: {map}"
            );
            let uid = status_field(pid, "Uid");
            assert!(uid.starts_with(&fields[1].to_string()), "host uid {uid}");
        }
        assert_eq!(status_field(pid, "NoNewPrivs"), "1", "pid {pid}");
        assert_eq!(status_field(pid, "Seccomp"), "2", "pid {pid}: filtered");
        assert_eq!(status_field(pid, "CapEff"), "0000000000000000");
        assert_eq!(status_field(pid, "CapPrm"), "0000000000000000");
        assert_eq!(status_field(pid, "CapBnd"), "0000000000000000");
        for kind in ["user", "mnt", "pid", "ipc", "uts", "net", "cgroup"] {
            assert_ne!(
                ns(&pid.to_string(), kind),
                ns("self", kind),
                "pid {pid}: {kind}"
            );
        }
        let jail_root = Path::new("/proc").join(pid.to_string()).join("root");
        let mut names: Vec<String> = std::fs::read_dir(&jail_root)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        for absent in ["etc", "home", "root", "sys", "var", "usr"] {
            assert!(
                !names.iter().any(|n| n == absent),
                "{absent} in the jail: {names:?}"
            );
        }
        assert!(names.iter().any(|n| n == "kernel"), "{names:?}");
        // Of /dev and /proc, the one file UML opens in each.
        for (dir, only) in [("dev", "null"), ("proc", "cpuinfo")] {
            let inside: Vec<_> = std::fs::read_dir(jail_root.join(dir))
                .unwrap()
                .map(|e| e.unwrap().file_name())
                .collect();
            assert_eq!(inside, [only], "/{dir} in the jail");
        }
        for fd in std::fs::read_dir(format!("/proc/{pid}/fd")).unwrap() {
            let target = std::fs::read_link(fd.unwrap().path()).unwrap_or_default();
            assert_ne!(target, canary, "pid {pid} holds the host's descriptor");
        }
        let seen = jail_root.join(canary.strip_prefix("/").unwrap());
        assert!(
            !seen.exists(),
            "the canary is reachable: {}",
            seen.display()
        );
        assert_eq!(limit(pid, "Max core file size"), "0");
        assert_eq!(limit(pid, "Max open files"), "1024");
        assert_eq!(limit(pid, "Max processes"), "4096");
        if status_field(pid, "NSpid").split_whitespace().last() == Some("1") {
            pid1 = pid;
        }
    }
    assert_ne!(pid1, 0, "the kernel is pid 1 of its own pid namespace");
    // Guest system calls never reach the host's seccomp filter (UML skips
    // them at the ptrace stop): `mount` and `unshare`, refused to the
    // kernel process, work inside the guest.
    let out = vm
        .exec(
            "sh",
            ["-c", "mkdir -p /mnt/t && mount -t tmpfs none /mnt/t && echo mounted && unshare -m true && echo unshared"],
        )
        .await
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "mounted\nunshared\n",
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::remove_file(&canary).unwrap();
    // SAFETY: our own descriptor, opened above.
    unsafe { libc::close(leaked) };
    vm.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_guest_at_its_process_limit_gets_errors_and_the_host_does_not() {
    const NAME: &str = "uml_jail::a_guest_at_its_process_limit_gets_errors_and_the_host_does_not";
    let Some(vm) = boot_uml(NAME, UmlJail::default().max_processes(48)).await else {
        return;
    };
    // Every guest process is a host process under UML: forking well past
    // the limit must fail inside the guest (the shell reports it and stops;
    // only builtins run after the loop, which need no fork).
    let out = vm
        .exec(
            "sh",
            [
                "-c",
                "i=0; while [ $i -lt 80 ]; do sleep 5 & i=$((i+1)); echo $i; done",
            ],
        )
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprintln!("[uml_jail] at the limit: {:?}; {stderr}", out.status);
    let started = stdout.lines().count();
    assert!(started < 80, "the limit stopped forks: {started} started");
    assert_ne!(out.status.code, Some(0), "{stderr}");
    assert!(
        stderr.contains("fork"),
        "the guest saw the refusal: {stderr}"
    );
    assert!(guest_processes(&vm.id()).len() <= 48);
    // The host is not limited.
    let host = Command::new("true").stdout(Stdio::null()).status().unwrap();
    assert!(host.success());
    // The guest recovers once its processes exit (killing them would need
    // a fork too: the sleeps end by themselves).
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match vm.exec("echo", ["recovered"]).await {
            Ok(o) if o.stdout == b"recovered\n" => break,
            other if Instant::now() > deadline => panic!("no recovery: {other:?}"),
            _ => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
    vm.shutdown().await.unwrap();
}

#[tokio::test]
async fn process_only_mode_keeps_the_host_view_and_the_limits() {
    const NAME: &str = "uml_jail::process_only_mode_keeps_the_host_view_and_the_limits";
    let Some(vm) = boot_uml(NAME, UmlJail::process_only()).await else {
        return;
    };
    let pids = guest_processes(&vm.id());
    assert!(!pids.is_empty());
    for pid in pids {
        assert_eq!(ns(&pid.to_string(), "user"), ns("self", "user"));
        assert_eq!(ns(&pid.to_string(), "mnt"), ns("self", "mnt"));
        assert_eq!(status_field(pid, "NoNewPrivs"), "1");
        assert_eq!(limit(pid, "Max core file size"), "0");
        assert_eq!(limit(pid, "Max open files"), "1024");
    }
    let out = vm.exec("echo", ["weaker mode"]).await.unwrap();
    assert_eq!(out.stdout, b"weaker mode\n");
    vm.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_killed_host_leaves_no_jail_behind() {
    const NAME: &str = "uml_jail::a_killed_host_leaves_no_jail_behind";
    if sandbox::backend() == BackendKind::Kvm {
        skip(
            NAME,
            "SANDBOX_BACKEND=kvm; the jail belongs to the UML backend",
        );
        return;
    }
    let overlay = std::env::temp_dir().join(format!("jail-kill-{}.qcow2", std::process::id()));
    let _ = std::fs::remove_file(&overlay);
    let mut child = Command::new(env!("CARGO_BIN_EXE_crash-writer"))
        .arg(&overlay)
        .env("SANDBOX_BACKEND", "uml")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(child.stdout.take().unwrap()),
        &mut line,
    )
    .unwrap();
    assert_eq!(line, "writing\n");
    let id = format!("sbx-{}-0", child.id());
    assert!(!guest_processes(&id).is_empty());
    // SAFETY: kill with our own child's pid.
    unsafe { libc::kill(child.id() as i32, libc::SIGKILL) };
    child.wait().unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !guest_processes(&id).is_empty() {
        assert!(
            Instant::now() < deadline,
            "jailed processes outlived the host"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let workdir = std::env::temp_dir().join(&id);
    assert!(workdir.exists(), "a killed host cannot clean up");
    // The next start sweeps it, the jail's mount point included.
    let vm = boot_uml(NAME, UmlJail::default()).await.unwrap();
    assert!(!workdir.exists(), "{} was not swept", workdir.display());
    vm.shutdown().await.unwrap();
    let _ = std::fs::remove_file(&overlay);
}

#[tokio::test]
async fn a_host_holding_more_descriptors_than_the_jail_limit_still_boots() {
    const NAME: &str = "uml_jail::a_host_holding_more_descriptors_than_the_jail_limit_still_boots";
    // A virtio-fs server keeps a descriptor per guest-visible inode, so an
    // embedding process can hold far more than the jail's `nofile`; the
    // jail's setup opens descriptors of its own after the fork, which
    // then get numbers above that limit.
    let null = std::fs::File::open("/dev/null").unwrap();
    let held: Vec<std::os::fd::OwnedFd> = (0..300)
        .map(|_| {
            std::os::fd::AsFd::as_fd(&null)
                .try_clone_to_owned()
                .unwrap()
        })
        .collect();
    let Some(vm) = boot_uml(NAME, UmlJail::default().max_open_files(128)).await else {
        return;
    };
    for pid in guest_processes(&vm.id()) {
        assert_eq!(limit(pid, "Max open files"), "128");
    }
    let out = vm.exec("echo", ["booted"]).await.unwrap();
    assert_eq!(out.stdout, b"booted\n");
    vm.shutdown().await.unwrap();
    drop(held);
}
