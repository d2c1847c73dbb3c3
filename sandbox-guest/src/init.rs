//! PID 1 duties: mount the API file systems, create the /dev links, set the
//! hostname, open the control channel, and power off at the end.

use std::ffi::CString;
use std::fs::{File, OpenOptions};
use std::io;
use std::process::ExitCode;

use crate::{net, server, vsock};

// The kernel command-line keys the host configures the agent with.
use sandbox_protocol::cmdline::{
    find as param, parse_mounts, CA as CA_KEY, CHANNEL as CHANNEL_KEY, HOSTNAME as HOSTNAME_KEY,
    MOUNTS as MOUNTS_KEY, NET as NET_KEY, OUTPUT_GRACE_MS as OUTPUT_GRACE_KEY,
    POWEROFF as POWEROFF_KEY,
};

pub fn run() -> ExitCode {
    mount_all();
    let cmdline = std::fs::read_to_string("/proc/cmdline").unwrap_or_default();
    let hostname = param(&cmdline, HOSTNAME_KEY).unwrap_or("sandbox");
    if let Err(e) = set_hostname(hostname) {
        log(&format!("cannot set hostname {hostname:?}: {e}"));
    }
    if let Err(e) = crate::etc::install_hostname(hostname) {
        log(&format!("cannot write /etc/hostname and /etc/hosts: {e}"));
    }
    if let Err(e) = net::loopback_up() {
        log(&format!("cannot bring lo up: {e}"));
    }
    if let Err(e) = setup_network(&cmdline) {
        // Fail closed: a guest that was promised a network with a trusted
        // interception CA does not start without it.
        log(&format!("{e}: refusing to start"));
        return power_off();
    }
    if let Err(e) = setup_mounts(&cmdline) {
        // Fail closed: a guest promised a workspace does not start without
        // it (the host's boot error carries this line).
        log(&format!("{e}: refusing to start"));
        return power_off();
    }
    // The VMM sets glibc tunables and Go's CPU options on the kernel
    // command line where the guest kernel cannot switch some CPU state
    // (see the KVM backend's nested-PVM profile); the kernel put them in
    // our environment and every process inherits them.
    for name in ["GLIBC_TUNABLES", "GODEBUG"] {
        if let Ok(value) = std::env::var(name) {
            crate::process::add_default_env(&[(name, &value)]);
        }
    }
    crate::job::set_output_grace(param(&cmdline, OUTPUT_GRACE_KEY).and_then(|v| v.parse().ok()));
    let channel = param(&cmdline, CHANNEL_KEY).unwrap_or("vsock:1024");
    if let Err(e) = serve_channel(channel) {
        log(&format!("control channel {channel}: {e}"));
    }
    power_off()
}

fn setup_network(cmdline: &str) -> Result<(), String> {
    if let Some(v) = param(cmdline, NET_KEY) {
        let p = net::parse(v).ok_or_else(|| format!("malformed {NET_KEY}={v}"))?;
        net::configure(&p).map_err(|e| format!("network set-up failed: {e}"))?;
    }
    if let Some(ca) = param(cmdline, CA_KEY) {
        net::install_ca(ca).map_err(|e| format!("cannot install the sandbox CA: {e}"))?;
        crate::process::add_default_env(&[
            ("SSL_CERT_FILE", net::BUNDLE),
            ("CURL_CA_BUNDLE", net::BUNDLE),
            ("REQUESTS_CA_BUNDLE", net::BUNDLE),
            ("NODE_EXTRA_CA_CERTS", "/run/sandbox/ca.pem"),
        ]);
    }
    Ok(())
}

/// Mounts the host's virtio-fs file systems where the host asked.
fn setup_mounts(cmdline: &str) -> Result<(), String> {
    let Some(v) = param(cmdline, MOUNTS_KEY) else {
        return Ok(());
    };
    let list = parse_mounts(v).ok_or_else(|| format!("malformed {MOUNTS_KEY}={v}"))?;
    for (tag, path) in list {
        std::fs::create_dir_all(&path)
            .map_err(|e| format!("cannot create the mount point {path}: {e}"))?;
        try_mount(&tag, &path, "virtiofs", libc::MS_NODEV, "")
            .map_err(|e| format!("cannot mount the host file system {tag} on {path}: {e}"))?;
    }
    Ok(())
}

/// Writes a line to the kernel log, which the host captures with the console.
pub fn log(msg: &str) {
    log_as("sandbox-guest", msg);
}

/// Writes `tag: msg` to the kernel log (or stderr outside a VM).
pub fn log_as(tag: &str, msg: &str) {
    let line = format!("{tag}: {msg}\n");
    if let Ok(mut f) = OpenOptions::new().write(true).open("/dev/kmsg") {
        let _ = io::Write::write_all(&mut f, line.as_bytes());
    } else {
        eprint!("{line}");
    }
}

fn mount(src: &str, target: &str, fstype: &str, flags: libc::c_ulong, data: &str) {
    let _ = std::fs::create_dir_all(target);
    if let Err(err) = try_mount(src, target, fstype, flags, data) {
        if err.raw_os_error() != Some(libc::EBUSY) {
            log(&format!("mount {fstype} on {target}: {err}"));
        }
    }
}

fn try_mount(
    src: &str,
    target: &str,
    fstype: &str,
    flags: libc::c_ulong,
    data: &str,
) -> io::Result<()> {
    let c = |s: &str| CString::new(s).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL));
    let (src_c, target_c, fstype_c, data_c) = (c(src)?, c(target)?, c(fstype)?, c(data)?);
    // SAFETY: all pointers are valid NUL-terminated strings that outlive the call.
    let rc = unsafe {
        libc::mount(
            src_c.as_ptr(),
            target_c.as_ptr(),
            fstype_c.as_ptr(),
            flags,
            data_c.as_ptr().cast(),
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn mount_all() {
    let nosuid_nodev_noexec = libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC;
    mount("proc", "/proc", "proc", nosuid_nodev_noexec, "");
    mount("sysfs", "/sys", "sysfs", nosuid_nodev_noexec, "");
    mount("devtmpfs", "/dev", "devtmpfs", libc::MS_NOSUID, "mode=0755");
    mount(
        "devpts",
        "/dev/pts",
        "devpts",
        libc::MS_NOSUID | libc::MS_NOEXEC,
        "mode=0620,ptmxmode=0666",
    );
    mount(
        "shm",
        "/dev/shm",
        "tmpfs",
        libc::MS_NOSUID | libc::MS_NODEV,
        "mode=1777",
    );
    mount(
        "tmpfs",
        "/tmp",
        "tmpfs",
        libc::MS_NOSUID | libc::MS_NODEV,
        "mode=1777",
    );
    mount(
        "tmpfs",
        "/run",
        "tmpfs",
        libc::MS_NOSUID | libc::MS_NODEV,
        "mode=0755",
    );
    mount("mqueue", "/dev/mqueue", "mqueue", nosuid_nodev_noexec, "");
    mount(
        "cgroup2",
        "/sys/fs/cgroup",
        "cgroup2",
        nosuid_nodev_noexec,
        "",
    );
    for (link, target) in [
        ("/dev/fd", "/proc/self/fd"),
        ("/dev/stdin", "/proc/self/fd/0"),
        ("/dev/stdout", "/proc/self/fd/1"),
        ("/dev/stderr", "/proc/self/fd/2"),
        ("/dev/ptmx", "pts/ptmx"),
    ] {
        if std::fs::symlink_metadata(link).is_err() {
            if let Err(e) = std::os::unix::fs::symlink(target, link) {
                log(&format!("symlink {link}: {e}"));
            }
        }
    }
}

pub fn set_hostname(name: &str) -> io::Result<()> {
    // SAFETY: the pointer and length describe a valid byte buffer.
    let rc = unsafe { libc::sethostname(name.as_ptr().cast(), name.len()) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Serves the control channel named on the kernel command line
/// (`vsock:PORT`): host connections on a vsock port, one thread each, until
/// a `Shutdown` request powers the guest off.
fn serve_channel(name: &str) -> io::Result<()> {
    let port = name
        .strip_prefix("vsock:")
        .and_then(|p| p.parse().ok())
        .ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("the control channel must be vsock:PORT, not {name:?}"),
            )
        })?;
    let listener = vsock::listen(port)?;
    loop {
        let conn = vsock::accept(&listener)?;
        std::thread::Builder::new()
            .name("conn".into())
            .spawn(move || {
                if serve_guarded(conn) == Some(server::Ended::Shutdown) {
                    let _ = power_off();
                }
            })?;
    }
}

/// Serves one connection; a panic is logged instead of killing PID 1.
fn serve_guarded(conn: File) -> Option<server::Ended> {
    match std::panic::catch_unwind(|| server::serve(conn, server::Role::Init)) {
        Ok(Ok(ended)) => Some(ended),
        Ok(Err(e)) => {
            log(&format!("connection failed: {e}"));
            None
        }
        Err(_) => {
            log("the agent panicked serving a connection");
            None
        }
    }
}

/// Writes to the VMM's power-off port (x86 only; nothing elsewhere).
fn power_off_port(port: u16) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: ioperm grants this process the one port; the `out` then only
    // reaches the VMM, which stops the VM.
    unsafe {
        if port != 0 && libc::ioperm(u64::from(port), 1, 1) == 0 {
            std::arch::asm!("out dx, al", in("dx") port, in("al") 0u8, options(nostack));
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = port;
}

/// Kills what is left, syncs, unmounts and powers off. Never returns in a VM.
fn power_off() -> ExitCode {
    // SAFETY: plain syscalls with no memory arguments.
    unsafe {
        libc::kill(-1, libc::SIGKILL);
        libc::sync();
    }
    for target in [
        "/sys/fs/cgroup",
        "/dev/mqueue",
        "/run",
        "/tmp",
        "/dev/shm",
        "/dev/pts",
    ] {
        if let Ok(t) = CString::new(target) {
            // SAFETY: `t` is a valid NUL-terminated path.
            unsafe { libc::umount2(t.as_ptr(), libc::MNT_DETACH) };
        }
    }
    mount("", "/", "", libc::MS_REMOUNT | libc::MS_RDONLY, "");
    // SAFETY: a plain syscall.
    unsafe { libc::sync() };
    let cmdline = std::fs::read_to_string("/proc/cmdline").unwrap_or_default();
    // `port:0x501` (KVM, no ACPI): power off by writing to that I/O port,
    // with a reset as the fallback.
    if let Some(port) = param(&cmdline, POWEROFF_KEY).and_then(|v| v.strip_prefix("port:")) {
        let port = u16::from_str_radix(port.trim_start_matches("0x"), 16).unwrap_or(0);
        power_off_port(port);
        // SAFETY: plain syscall; only returns on failure.
        unsafe { libc::reboot(libc::RB_AUTOBOOT) };
    }
    // SAFETY: plain syscall; only returns on failure.
    unsafe { libc::reboot(libc::RB_POWER_OFF) };
    log(&format!("power off failed: {}", io::Error::last_os_error()));
    ExitCode::FAILURE
}
