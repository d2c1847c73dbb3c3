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
use std::process::{Command, Stdio};

use sandbox_protocol::{PtySize, Spawn};

use crate::spawn;

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
    pub pid: i32,
    /// Pipes (`stdin` only when the request asked for it), for pipe
    /// processes.
    pub stdin: Option<File>,
    pub stdout: Option<File>,
    pub stderr: Option<File>,
    /// The pty master (stdin and output at once), for pty processes.
    pub pty: Option<File>,
}

/// The child's environment as `(NAME, value)` pairs, one per name (a later
/// setting replaces an earlier one in place): [`DEFAULT_ENV`], the start-up
/// additions, `TERM` for a pty, the user's `HOME`, then the request's.
fn environment(req: &Spawn, home: Option<&str>) -> Vec<(Vec<u8>, Vec<u8>)> {
    let mut env: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
    let mut set = |k: &[u8], v: &[u8]| match env.iter_mut().find(|(name, _)| name == k) {
        Some(entry) => entry.1 = v.to_vec(),
        None => env.push((k.to_vec(), v.to_vec())),
    };
    for (k, v) in DEFAULT_ENV {
        set(k.as_bytes(), v.as_bytes());
    }
    for (k, v) in EXTRA_ENV.lock().unwrap_or_else(|e| e.into_inner()).iter() {
        set(k.as_bytes(), v.as_bytes());
    }
    if req.pty.is_some() {
        set(b"TERM", DEFAULT_TERM.as_bytes());
    }
    if let Some(home) = home {
        set(b"HOME", home.as_bytes());
    }
    for (k, v) in &req.env {
        set(k, v);
    }
    env
}

/// Starts the process described by `req`: with `posix_spawn` (see
/// `spawn`), or for a request naming a user, with a fork that drops to
/// that user before exec.
pub fn start(req: &Spawn) -> io::Result<Started> {
    if req.program.is_empty() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "empty program name",
        ));
    }
    let who = match &req.user {
        Some(spec) => Some(crate::user::lookup(&String::from_utf8_lossy(spec))?),
        None => None,
    };
    let env = environment(req, who.as_ref().map(|w| w.home.as_str()));
    let cwd = req.cwd.as_deref().unwrap_or(b"/");
    if let Some(size) = req.pty {
        return start_pty(req, &env, cwd, who, size);
    }
    let (out_r, out_w) = pipe()?;
    let (err_r, err_w) = pipe()?;
    let stdin = if req.stdin { Some(pipe()?) } else { None };
    let null = c"/dev/null".to_owned();
    let pid = match who {
        Some(who) => {
            let mut cmd = command(req, &env, cwd);
            run_as(&mut cmd, who);
            cmd.stdin(match &stdin {
                Some((r, _)) => Stdio::from(r.try_clone()?),
                None => Stdio::null(),
            })
            .stdout(out_w)
            .stderr(err_w);
            cmd.process_group(0);
            cmd.spawn()?.id() as i32
        }
        None => spawn::spawn(&spawn::Spec {
            program: &req.program,
            args: &req.args,
            env: &env,
            cwd,
            stdio: [
                match &stdin {
                    Some((r, _)) => spawn::Fd::Dup(r.as_raw_fd()),
                    None => spawn::Fd::Open(&null, libc::O_RDONLY),
                },
                spawn::Fd::Dup(out_w.as_raw_fd()),
                spawn::Fd::Dup(err_w.as_raw_fd()),
            ],
            session: false,
        })?,
    };
    Ok(Started {
        pid,
        stdin: stdin.map(|(_, w)| w),
        stdout: Some(out_r),
        stderr: Some(err_r),
        pty: None,
    })
}

/// A `Command` for the forking path (a process that runs as another user).
fn command(req: &Spawn, env: &[(Vec<u8>, Vec<u8>)], cwd: &[u8]) -> Command {
    let mut cmd = Command::new(OsStr::from_bytes(&req.program));
    cmd.args(req.args.iter().map(|a| OsStr::from_bytes(a)));
    cmd.env_clear();
    for (k, v) in env {
        cmd.env(OsStr::from_bytes(k), OsStr::from_bytes(v));
    }
    cmd.current_dir(OsStr::from_bytes(cwd));
    cmd
}

/// Drops the child to `who` just before exec: supplementary groups, then
/// the group, then the user (the order that keeps the right to change the
/// next).
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

/// A pipe, both ends close-on-exec (`dup2` onto a child's descriptor
/// clears that).
fn pipe() -> io::Result<(File, File)> {
    let mut fds = [0; 2];
    // SAFETY: `fds` has room for the two descriptors.
    check(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) })?;
    // SAFETY: pipe2 returned two new descriptors nothing else owns.
    Ok(unsafe { (File::from_raw_fd(fds[0]), File::from_raw_fd(fds[1])) })
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

fn start_pty(
    req: &Spawn,
    env: &[(Vec<u8>, Vec<u8>)],
    cwd: &[u8],
    who: Option<crate::user::Identity>,
    size: PtySize,
) -> io::Result<Started> {
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
    let path = unsafe { CStr::from_ptr(name.as_ptr()) }.to_owned();
    resize(&master, size)?;
    let pid = match who {
        // The child leads a new session and opens the terminal first, which
        // makes it the controlling terminal.
        None => spawn::spawn(&spawn::Spec {
            program: &req.program,
            args: &req.args,
            env,
            cwd,
            stdio: [
                spawn::Fd::Open(&path, libc::O_RDWR),
                spawn::Fd::Dup(0),
                spawn::Fd::Dup(0),
            ],
            session: true,
        })?,
        Some(who) => {
            let slave = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .custom_flags(libc::O_NOCTTY)
                .open(OsStr::from_bytes(path.to_bytes()))?;
            let mut cmd = command(req, env, cwd);
            cmd.stdin(slave.try_clone()?)
                .stdout(slave.try_clone()?)
                .stderr(slave);
            // SAFETY: setsid and ioctl are async-signal-safe and touch no
            // parent memory.
            unsafe {
                cmd.pre_exec(|| {
                    check(libc::setsid())?;
                    check(libc::ioctl(0, libc::TIOCSCTTY, 0))?;
                    Ok(())
                });
            }
            run_as(&mut cmd, who);
            cmd.spawn()?.id() as i32
        }
    };
    Ok(Started {
        pid,
        stdin: None,
        stdout: None,
        stderr: None,
        pty: Some(master),
    })
}
