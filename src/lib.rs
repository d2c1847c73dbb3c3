//! Test harness shared by the repository's integration tests, examples and
//! benches (not part of the published API): boots the built-in image on the
//! backend chosen by `SANDBOX_BACKEND` (`uml`, `kvm` or `auto`, default auto)
//! and inspects the host for leftovers.

pub mod docker;
pub mod ensure;
pub mod oci_fixture;
pub mod origin;
pub mod samples;

pub use ensure::{builtin, ensure_artifacts};

use sandbox_core::{images, BackendKind, BootOptions, Error, Rootfs, Sandbox, Vm};

/// Records that the calling test cannot run here, and why; the test then
/// returns. libtest has no run-time skip, so the line goes to stderr and to
/// the file `SANDBOX_SKIP_LOG` names (`cargo xtask ci` sets it), and the
/// final tally reports the test as skipped, not passed.
pub fn skip(test: &str, why: &str) {
    eprintln!("[skip] {test}: {why}");
    if let Some(path) = std::env::var_os("SANDBOX_SKIP_LOG") {
        use std::io::Write;
        let line = format!("{test}\t{}\n", why.replace(['\n', '\t'], " "));
        let written = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .and_then(|mut f| f.write_all(line.as_bytes()));
        if let Err(e) = written {
            panic!("recording the skip of {test} in {path:?}: {e}");
        }
    }
}

/// The backend the tests use, from `SANDBOX_BACKEND`.
pub fn backend() -> BackendKind {
    match std::env::var("SANDBOX_BACKEND").as_deref() {
        Ok("uml") => BackendKind::Uml,
        Ok("kvm") => {
            // The x86_64 kernel is not part of the quickstart's build.
            ensure_artifacts().expect("the x86_64 kernel");
            BackendKind::Kvm
        }
        _ => BackendKind::Auto,
    }
}

/// A sandbox over the built-in `minimal` image with an ephemeral writable
/// root (writes in an unlinked scratch file, dropped at shutdown).
pub fn minimal() -> Result<Sandbox, Error> {
    Sandbox::builder()
        .rootfs(Rootfs::ephemeral(images::builtin("minimal")?))
        .backend(backend())
        .build()
}

/// Boots a minimal VM with `hostname`, printing which backend runs it.
pub async fn boot(hostname: &str) -> Result<Vm, Error> {
    let vm = minimal()?
        .boot(BootOptions::default().hostname(hostname))
        .await?;
    eprintln!(
        "[harness] {hostname}: backend {:?} ({}), booted in {} ms",
        vm.backend(),
        vm.backend_reason(),
        vm.boot_time().as_millis()
    );
    Ok(vm)
}

/// Asserts that the guest's hardware rng is our virtio-rng device and that
/// 4096 bytes come out of `/dev/hwrng`. With `select`, `virtio_rng.0` is
/// chosen first (UML's own host-backed rng is the default there); without
/// it, it must already be the current one.
pub async fn assert_virtio_hwrng(vm: &Vm, select: bool) {
    // Builtins and one `head`, exec'd by the shell: each process start
    // costs about a second on an emulating KVM host.
    let script = format!(
        "cd /sys/class/misc/hw_random && {}read c < rng_current && echo $c && \
         exec head -c 4096 /dev/hwrng",
        if select {
            "echo virtio_rng.0 > rng_current && "
        } else {
            ""
        }
    );
    let out = vm.exec("sh", ["-c", &script]).await.unwrap();
    let (name, bytes) = out.stdout.split_at(
        out.stdout
            .iter()
            .position(|b| *b == b'\n')
            .map_or(0, |i| i + 1),
    );
    assert_eq!(
        (String::from_utf8_lossy(name).as_ref(), bytes.len()),
        ("virtio_rng.0\n", 4096),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Host processes whose command line carries `umid=<id>`: the UML kernel of
/// VM `id` and every helper process it forked.
pub fn guest_processes(id: &str) -> Vec<u32> {
    let needle = format!("umid={id}");
    processes_with_arg(|arg| arg == needle.as_bytes())
}

/// The UML kernel process of VM `id`: the one of [`guest_processes`]
/// whose parent is not one of them (it forked all the others).
pub fn uml_kernel_process(id: &str) -> Option<u32> {
    let pids = guest_processes(id);
    pids.iter().copied().find(|pid| {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        let ppid = status
            .lines()
            .find_map(|l| l.strip_prefix("PPid:"))
            .and_then(|v| v.trim().parse::<u32>().ok());
        ppid.is_some_and(|p| !pids.contains(&p))
    })
}

/// Host processes with a command-line argument for which `matches` holds.
pub fn processes_with_arg(matches: impl Fn(&[u8]) -> bool) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .map(|c| c.split(|b| *b == 0).any(&matches))
                .unwrap_or(false)
        })
        .collect()
}

/// This process's resident memory in bytes (from `/proc/self/status`).
pub fn rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

/// Boots a VM with `rootfs` on the test backend, default options.
pub async fn boot_rootfs(rootfs: Rootfs) -> Result<Vm, Error> {
    Sandbox::builder()
        .rootfs(rootfs)
        .backend(backend())
        .build()?
        .boot(BootOptions::default())
        .await
}

/// `qemu-storage-daemon` exporting an image file over vhost-user-blk
/// (writable) on a Unix socket; killed on drop.
pub struct Qsd(std::process::Child);

impl Qsd {
    /// Exports `file` (`format`: `raw` or `qcow2`) on `socket` and waits
    /// until it listens. Panics if it cannot (tests and benches only).
    pub fn start(file: &std::path::Path, format: &str, socket: &std::path::Path) -> Self {
        let child = std::process::Command::new("qemu-storage-daemon")
            .arg("--blockdev")
            .arg(format!("driver=file,node-name=file,filename={}", file.display()))
            .arg("--blockdev")
            .arg(format!("driver={format},node-name=disk,file=file"))
            .arg("--export")
            .arg(format!(
                "type=vhost-user-blk,id=exp0,node-name=disk,writable=on,addr.type=unix,addr.path={}",
                socket.display()
            ))
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("qemu-storage-daemon (Debian qemu-utils) is installed");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while !socket.exists() {
            assert!(
                std::time::Instant::now() < deadline,
                "qemu-storage-daemon did not listen"
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        // Connectable by the UML jail's unprivileged uid.
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(socket, std::fs::Permissions::from_mode(0o666))
            .expect("making the qemu-storage-daemon socket connectable");
        Self(child)
    }
}

impl Drop for Qsd {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
