//! Starting a requested process: environment, working directory, and either
//! pipes or a new pseudo-terminal. Every process leads its own process group
//! (a pty process its own session), so signals reach its descendants.

use std::ffi::{CStr, OsStr};
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};

use sandbox_protocol::{PtySize, Spawn};

/// Environment every process starts from; request variables override it.
pub const DEFAULT_ENV: &[(&str, &str)] = &[
    (
        "PATH",
        "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    ),
    ("HOME", "/root"),
    ("LANG", "C.UTF-8"),
];

/// Set at start-up (trust-store variables when the sandbox CA is
/// installed, glibc tunables from the kernel command line); added after
/// [`DEFAULT_ENV`].
static EXTRA_ENV: std::sync::Mutex<Vec<(String, String)>> = std::sync::Mutex::new(Vec::new());

/// Adds variables every process starts with.
pub fn add_default_env(vars: &[(&str, &str)]) {
    let mut env = EXTRA_ENV.lock().unwrap_or_else(|e| e.into_inner());
    env.extend(vars.iter().map(|(k, v)| (k.to_string(), v.to_string())));
}

/// Added to [`DEFAULT_ENV`] for pty processes.
pub const DEFAULT_TERM: &str = "xterm-256color";

/// A started process and the host-facing ends of its stdio.
pub struct Started {
    pub child: Child,
    pub pid: i32,
    /// The pty master (stdin and output at once), for pty processes.
    pub pty: Option<File>,
}

fn command(req: &Spawn) -> io::Result<Command> {
    if req.program.is_empty() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "empty program name",
        ));
    }
    let mut cmd = Command::new(OsStr::from_bytes(&req.program));
    cmd.args(req.args.iter().map(|a| OsStr::from_bytes(a)));
    cmd.env_clear();
    for (k, v) in DEFAULT_ENV {
        cmd.env(k, v);
    }
    for (k, v) in EXTRA_ENV.lock().unwrap_or_else(|e| e.into_inner()).iter() {
        cmd.env(k, v);
    }
    if req.pty.is_some() {
        cmd.env("TERM", DEFAULT_TERM);
    }
    if let Some(spec) = &req.user {
        let who = crate::user::lookup(&String::from_utf8_lossy(spec))?;
        cmd.env("HOME", &who.home);
        run_as(&mut cmd, who);
    }
    for (k, v) in &req.env {
        cmd.env(OsStr::from_bytes(k), OsStr::from_bytes(v));
    }
    cmd.current_dir(OsStr::from_bytes(req.cwd.as_deref().unwrap_or(b"/")));
    Ok(cmd)
}

/// Drops the child to `who` just before exec: supplementary groups, then
/// the group, then the user (the order that keeps the right to change the
/// next). A pre_exec hook costs the posix_spawn fast path, so only
/// processes with a user pay it.
fn run_as(cmd: &mut Command, who: crate::user::Identity) {
    // SAFETY: the hook only makes async-signal-safe calls on data it owns
    // (moved in before the fork); it allocates nothing.
    unsafe {
        cmd.pre_exec(move || {
            check(libc::setgroups(who.groups.len(), who.groups.as_ptr()))?;
            check(libc::setgid(who.gid))?;
            check(libc::setuid(who.uid))?;
            Ok(())
        });
    }
}

/// Starts the process described by `req`.
pub fn start(req: &Spawn) -> io::Result<Started> {
    let mut cmd = command(req)?;
    if let Some(size) = req.pty {
        return start_pty(cmd, size);
    }
    cmd.stdin(if req.stdin {
        Stdio::piped()
    } else {
        Stdio::null()
    });
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    // Its own process group. (No pre_exec hook: that would force fork over
    // posix_spawn's vfork, and fork is expensive under UML.)
    cmd.process_group(0);
    let child = cmd.spawn()?;
    let pid = child.id() as i32;
    Ok(Started {
        child,
        pid,
        pty: None,
    })
}

fn check(rc: libc::c_int) -> io::Result<libc::c_int> {
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

/// Sets the terminal size of a pty.
pub fn resize(pty: &File, size: PtySize) -> io::Result<()> {
    let ws = libc::winsize {
        ws_row: size.rows,
        ws_col: size.cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ reads a valid winsize from the pointer.
    check(unsafe { libc::ioctl(pty.as_raw_fd(), libc::TIOCSWINSZ, &ws) }).map(|_| ())
}

fn start_pty(mut cmd: Command, size: PtySize) -> io::Result<Started> {
    // SAFETY: posix_openpt has no memory arguments.
    let fd = check(unsafe { libc::posix_openpt(libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC) })?;
    // SAFETY: `fd` is a new descriptor nothing else owns.
    let master = unsafe { File::from_raw_fd(fd) };
    let mut name = [0 as libc::c_char; 128];
    // SAFETY: the fd is a pty master; `name` is valid for its length.
    unsafe {
        check(libc::grantpt(fd))?;
        check(libc::unlockpt(fd))?;
        check(libc::ptsname_r(fd, name.as_mut_ptr(), name.len()))?;
    }
    // SAFETY: ptsname_r wrote a NUL-terminated path into `name`.
    let path = unsafe { CStr::from_ptr(name.as_ptr()) };
    resize(&master, size)?;
    let slave = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NOCTTY)
        .open(OsStr::from_bytes(path.to_bytes()))?;
    cmd.stdin(slave.try_clone()?)
        .stdout(slave.try_clone()?)
        .stderr(slave);
    // SAFETY: setsid and ioctl are async-signal-safe and touch no parent memory.
    unsafe {
        cmd.pre_exec(|| {
            check(libc::setsid())?;
            check(libc::ioctl(0, libc::TIOCSCTTY, 0))?;
            Ok(())
        });
    }
    let child = cmd.spawn()?;
    let pid = child.id() as i32;
    Ok(Started {
        child,
        pid,
        pty: Some(master),
    })
}
