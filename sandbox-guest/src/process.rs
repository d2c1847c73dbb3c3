//! Starting a requested process: environment, working directory, pipes and
//! its own session (so signals and kills reach the whole process group).

use std::ffi::OsStr;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};

use sandbox_protocol::Spawn;

/// Environment every process starts from; request variables override it.
pub const DEFAULT_ENV: &[(&str, &str)] = &[
    (
        "PATH",
        "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    ),
    ("HOME", "/root"),
    ("LANG", "C.UTF-8"),
];

/// Starts the process described by `req` and returns it with its pid.
pub fn start(req: &Spawn) -> io::Result<(Child, i32)> {
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
    for (k, v) in &req.env {
        cmd.env(OsStr::from_bytes(k), OsStr::from_bytes(v));
    }
    cmd.current_dir(OsStr::from_bytes(req.cwd.as_deref().unwrap_or(b"/")));
    cmd.stdin(if req.stdin {
        Stdio::piped()
    } else {
        Stdio::null()
    });
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    // Its own process group, so signals and kills reach its descendants.
    // (No pre_exec hook: that would force fork over posix_spawn's vfork,
    // and fork is expensive under UML.)
    cmd.process_group(0);
    let child = cmd.spawn()?;
    let pid = child.id() as i32;
    Ok((child, pid))
}
