//! Describing a guest process once and running it as a buffered exec, a
//! spawned process with streams, or a pty.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::time::Duration;

use sandbox_protocol::{HostMsg, PtySize, Spawn, Stream};
use tokio_util::sync::CancellationToken;

use crate::client::{AbortOnDrop, Event};
use crate::process::{self, Process, Pty};
use crate::{Error, ExitStatus, Output, Vm};

/// Exit code reported when an exec's timeout killed it (as `timeout(1)`).
pub const TIMEOUT_EXIT_CODE: i32 = 124;

/// A guest command: program, arguments, environment, working directory,
/// and for execs a timeout and a cancellation token.
///
/// The environment starts from the agent's default (`PATH`, `HOME=/root`,
/// `LANG=C.UTF-8`, plus `TERM=xterm-256color` on a pty); variables set here
/// override it. The working directory defaults to the boot's `cwd`.
pub struct Command<'vm> {
    vm: &'vm Vm,
    spawn: Spawn,
    timeout: Option<Duration>,
    cancel: Option<CancellationToken>,
    kill_on_drop: bool,
}

fn bytes(s: impl AsRef<OsStr>) -> Vec<u8> {
    s.as_ref().as_bytes().to_vec()
}

impl<'vm> Command<'vm> {
    pub(crate) fn new(vm: &'vm Vm, program: impl AsRef<OsStr>, cwd: &str) -> Self {
        Self {
            vm,
            spawn: Spawn {
                program: bytes(program),
                cwd: Some(cwd.as_bytes().to_vec()),
                ..Spawn::default()
            },
            timeout: None,
            cancel: None,
            kill_on_drop: false,
        }
    }

    /// Adds one argument.
    pub fn arg(mut self, arg: impl AsRef<OsStr>) -> Self {
        self.spawn.args.push(bytes(arg));
        self
    }

    /// Adds arguments.
    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.spawn.args.extend(args.into_iter().map(bytes));
        self
    }

    /// Sets an environment variable.
    pub fn env(mut self, key: impl AsRef<OsStr>, value: impl AsRef<OsStr>) -> Self {
        self.spawn.env.push((bytes(key), bytes(value)));
        self
    }

    /// The working directory (an absolute guest path).
    pub fn cwd(mut self, dir: impl AsRef<OsStr>) -> Self {
        self.spawn.cwd = Some(bytes(dir));
        self
    }

    /// Runs the process as `user` instead of root: `name`, `uid`,
    /// `name:group` or `uid:gid`, names looked up in the guest's
    /// `/etc/passwd` and `/etc/group` as OCI runtimes do (supplementary
    /// groups from `/etc/group` when no group is named; `HOME` from the
    /// passwd entry unless [`Command::env`] sets it). An imported image's
    /// `User` is the default; `.user("0")` runs as root. An unknown name
    /// fails the spawn with [`Error::Spawn`].
    pub fn user(mut self, user: impl AsRef<str>) -> Self {
        self.spawn.user = Some(user.as_ref().as_bytes().to_vec());
        self
    }

    /// For [`Command::exec`]: kill the whole process group after `timeout`
    /// and report exit code 124, [`Output::timed_out`] and a last stderr
    /// line `sandbox: exec timed out after N ms`. The call returns within a
    /// few milliseconds of the deadline even when descendants that left the
    /// group keep the output pipes open (their later output is dropped).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// Cancellation: when `token` fires, the process group is killed and the
    /// call returns [`Error::Aborted`]. An already-cancelled token starts
    /// nothing in the guest.
    pub fn cancel_on(mut self, token: CancellationToken) -> Self {
        self.cancel = Some(token);
        self
    }

    fn program(&self) -> String {
        String::from_utf8_lossy(&self.spawn.program).into_owned()
    }

    /// Refuses what the guest could not run as asked, before anything is
    /// sent: NUL bytes (execve cannot carry them), environment names that
    /// are empty or contain `=`, a relative working directory, and a
    /// request too large for one protocol frame.
    fn validate(&self) -> Result<(), Error> {
        let s = &self.spawn;
        let bad = |what: String| Err(Error::InvalidConfig(what));
        if s.program.is_empty() || s.program.contains(&0) {
            return bad(format!(
                "program {:?} must be non-empty and free of NUL bytes",
                self.program()
            ));
        }
        if let Some(i) = s.args.iter().position(|a| a.contains(&0)) {
            return bad(format!("argument {i} contains a NUL byte"));
        }
        for (k, v) in &s.env {
            if k.is_empty() || k.contains(&b'=') || k.contains(&0) || v.contains(&0) {
                return bad(format!(
                    "environment variable {:?}: the name must be non-empty without '=' or NUL, the value without NUL",
                    String::from_utf8_lossy(k)
                ));
            }
        }
        if let Some(user) = &s.user {
            let text = String::from_utf8_lossy(user);
            let valid = match text.split_once(':') {
                Some((u, g)) => !u.is_empty() && !g.is_empty() && !g.contains(':'),
                None => !text.is_empty(),
            };
            if !valid || user.contains(&0) {
                return bad(format!(
                    "user {text:?} must be name, uid, name:group or uid:gid"
                ));
            }
        }
        if let Some(cwd) = &s.cwd {
            if cwd.first() != Some(&b'/') || cwd.contains(&0) {
                return bad(format!(
                    "cwd {:?} must be an absolute guest path",
                    String::from_utf8_lossy(cwd)
                ));
            }
        }
        let msg = HostMsg::Spawn {
            id: 0,
            spawn: s.clone(),
        };
        if let Err(sandbox_protocol::ProtocolError::TooLarge(size)) = sandbox_protocol::encode(&msg)
        {
            return bad(format!(
                "the command's program, arguments, environment and cwd take {size} bytes \
                 encoded; one request carries at most {} bytes (pass large data through \
                 stdin or a file instead)",
                sandbox_protocol::MAX_FRAME
            ));
        }
        Ok(())
    }

    fn check_cancel(&self) -> Result<(), Error> {
        match &self.cancel {
            Some(t) if t.is_cancelled() => Err(Error::Aborted),
            _ => Ok(()),
        }
    }

    /// Runs to completion and returns status, stdout and stderr.
    ///
    /// Dropping the future before it completes (under
    /// `tokio::time::timeout`, in a `select!`) cancels the process as
    /// [`Command::cancel_on`] does: its group is killed and its output
    /// discarded, and later calls are unaffected.
    pub async fn exec(self) -> Result<Output, Error> {
        self.check_cancel()?;
        self.validate()?;
        let program = self.program();
        let client = self.vm.client();
        let mut req = client.register().map_err(|r| self.vm.stopped(r))?;
        let id = req.id;
        let link = client.link();
        link.send(HostMsg::Spawn {
            id,
            spawn: self.spawn,
        })
        .map_err(|r| self.vm.stopped(r))?;
        // Dropping this future before the exit report cancels the process;
        // `abort` kills the group and asks for the exit report at once.
        let mut guard = AbortOnDrop::new(link.clone(), id);
        let deadline = self.timeout.map(|t| tokio::time::Instant::now() + t);
        let cancelled = async {
            match &self.cancel {
                Some(t) => t.cancelled().await,
                None => std::future::pending().await,
            }
        };
        tokio::pin!(cancelled);
        let mut timed_out = false;
        let (mut stdout, mut stderr) = (Vec::new(), Vec::new());
        loop {
            let expired = async {
                match deadline {
                    Some(d) if !timed_out => tokio::time::sleep_until(d).await,
                    _ => std::future::pending().await,
                }
            };
            let event = tokio::select! {
                e = req.events.recv() => e,
                () = expired => {
                    timed_out = true;
                    guard.abort();
                    continue;
                }
                () = &mut cancelled => {
                    // The guard's drop aborts the request.
                    return Err(Error::Aborted);
                }
            };
            let Some(event) = event else {
                let reason = link
                    .closed()
                    .unwrap_or_else(|| "the control channel closed".into());
                return Err(self.vm.stopped(reason));
            };
            match event {
                Event::Started { .. }
                | Event::StdinCredit(_)
                | Event::FsEntries(_)
                | Event::OutputEnd(_)
                | Event::FsDone(_) => {}
                Event::Output { stream, data } => {
                    // Buffered: hand the credit straight back.
                    let _ = link.send(HostMsg::Credit {
                        id,
                        stream,
                        bytes: data.len() as u32,
                    });
                    match stream {
                        Stream::Stdout => stdout.extend(data),
                        Stream::Stderr => stderr.extend(data),
                    }
                }
                Event::Exited { code, signal } => {
                    guard.disarm();
                    let timeout = self.timeout.filter(|_| timed_out);
                    let status = match timeout {
                        Some(t) => {
                            if !stderr.is_empty() && !stderr.ends_with(b"\n") {
                                stderr.push(b'\n');
                            }
                            stderr.extend(
                                format!("sandbox: exec timed out after {} ms\n", t.as_millis())
                                    .as_bytes(),
                            );
                            ExitStatus {
                                code: Some(TIMEOUT_EXIT_CODE),
                                signal: None,
                            }
                        }
                        None => ExitStatus::from_wire(code, signal),
                    };
                    return Ok(Output {
                        status,
                        stdout,
                        stderr,
                        timed_out: timeout,
                    });
                }
                Event::SpawnFailed { errno, message } => {
                    guard.disarm();
                    return Err(Error::Spawn {
                        program,
                        errno,
                        message,
                    });
                }
                Event::Rejected(message) => {
                    guard.disarm();
                    return Err(Error::Rejected(message));
                }
            }
        }
    }

    /// For `spawn` and `pty`: kill the guest process group when the
    /// returned handle is dropped (as tokio's `kill_on_drop`). By default a
    /// dropped handle detaches: the process keeps running, and its output
    /// is discarded with its credit returned, so it never stalls.
    pub fn kill_on_drop(mut self, kill: bool) -> Self {
        self.kill_on_drop = kill;
        self
    }

    /// Starts the process and returns its handle at once (call within a
    /// tokio runtime). Launch failures surface through [`Process::ready`].
    pub fn spawn(mut self) -> Result<Process, Error> {
        self.check_cancel()?;
        self.spawn.stdin = true;
        let kill = self.kill_on_drop;
        let mut p = self.start(process::process)?;
        if kill {
            p.kill_on_drop();
        }
        Ok(p)
    }

    /// Starts the process on a new guest pseudo-terminal of `size`.
    pub fn pty(mut self, size: PtySize) -> Result<Pty, Error> {
        self.check_cancel()?;
        self.spawn.stdin = true;
        self.spawn.pty = Some(size);
        let kill = self.kill_on_drop;
        let mut p = self.start(process::pty)?;
        if kill {
            p.kill_on_drop();
        }
        Ok(p)
    }

    fn start<T>(
        self,
        build: impl FnOnce(crate::client::Request, String, crate::client::Link, process::Console) -> T,
    ) -> Result<T, Error> {
        self.validate()?;
        let program = self.program();
        let client = self.vm.client();
        let req = client.register().map_err(|r| self.vm.stopped(r))?;
        let link = client.link().clone();
        link.send(HostMsg::Spawn {
            id: req.id,
            spawn: self.spawn,
        })
        .map_err(|r| self.vm.stopped(r))?;
        Ok(build(req, program, link, self.vm.console_fn()))
    }
}
