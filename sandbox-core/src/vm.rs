//! A running VM and the calls made on it.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sandbox_protocol::{HostMsg, Spawn, Stream};

use crate::backend::{BackendKind, Machine};
use crate::client::{Client, Event};
use crate::Error;

/// How long `shutdown` waits for a clean power-off before killing the guest.
const POWER_OFF_TIMEOUT: Duration = Duration::from_secs(10);

/// How a guest process ended: exactly one of `code` and `signal` is set.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ExitStatus {
    /// Exit code, when it exited normally.
    pub code: Option<i32>,
    /// Signal number, when a signal ended it.
    pub signal: Option<i32>,
}

impl ExitStatus {
    /// Exited with code 0.
    pub fn success(&self) -> bool {
        self.code == Some(0)
    }
}

/// Result of [`Vm::exec`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Output {
    /// How the process ended.
    pub status: ExitStatus,
    /// Everything it wrote to stdout.
    pub stdout: Vec<u8>,
    /// Everything it wrote to stderr.
    pub stderr: Vec<u8>,
}

type SharedMachine = Arc<Mutex<Box<dyn Machine>>>;

/// A booted VM. Dropping it kills the guest (use [`Vm::shutdown`] for a
/// clean power-off).
pub struct Vm {
    client: Client,
    machine: SharedMachine,
    backend: BackendKind,
    backend_reason: String,
    cwd: String,
    boot_time: Duration,
}

fn lock(m: &SharedMachine) -> std::sync::MutexGuard<'_, Box<dyn Machine>> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Vm {
    pub(crate) fn new(
        client: Client,
        machine: Box<dyn Machine>,
        backend: BackendKind,
        backend_reason: String,
        cwd: String,
        boot_time: Duration,
    ) -> Self {
        Self {
            client,
            machine: Arc::new(Mutex::new(machine)),
            backend,
            backend_reason,
            cwd,
            boot_time,
        }
    }

    /// A host-unique id of this VM. Under UML the kernel process and its
    /// helpers carry `umid=<id>` on their command line.
    pub fn id(&self) -> String {
        lock(&self.machine).id()
    }

    /// The backend that runs this VM.
    pub fn backend(&self) -> BackendKind {
        self.backend
    }

    /// Why that backend was chosen.
    pub fn backend_reason(&self) -> &str {
        &self.backend_reason
    }

    /// Time from `boot()` to the agent's greeting.
    pub fn boot_time(&self) -> Duration {
        self.boot_time
    }

    /// The agent's version string.
    pub fn agent_version(&self) -> &str {
        &self.client.hello.agent_version
    }

    /// The last `lines` lines of the guest console.
    pub fn console_tail(&self, lines: usize) -> String {
        lock(&self.machine).console_tail(lines)
    }

    fn stopped(&self, reason: String) -> Error {
        Error::GuestStopped {
            reason,
            console: self.console_tail(30),
        }
    }

    /// Runs `program` with `args` in the guest and collects its output.
    /// A program that cannot start is an [`Error::Spawn`] carrying the errno.
    pub async fn exec<I, S>(&self, program: impl AsRef<OsStr>, args: I) -> Result<Output, Error>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let program = program.as_ref();
        let spawn = Spawn {
            program: program.as_bytes().to_vec(),
            args: args
                .into_iter()
                .map(|a| a.as_ref().as_bytes().to_vec())
                .collect(),
            env: Vec::new(),
            cwd: Some(self.cwd.as_bytes().to_vec()),
            stdin: false,
        };
        let mut req = self.client.register().map_err(|r| self.stopped(r))?;
        self.client
            .send(HostMsg::Spawn { id: req.id, spawn })
            .map_err(|r| self.stopped(r))?;
        let (mut stdout, mut stderr) = (Vec::new(), Vec::new());
        loop {
            let Some(event) = req.events.recv().await else {
                let reason = self
                    .client
                    .closed()
                    .unwrap_or_else(|| "the control channel closed".into());
                return Err(self.stopped(reason));
            };
            match event {
                Event::Started => {}
                Event::Output {
                    stream: Stream::Stdout,
                    data,
                } => stdout.extend(data),
                Event::Output {
                    stream: Stream::Stderr,
                    data,
                } => stderr.extend(data),
                Event::Exited { code, signal } => {
                    return Ok(Output {
                        status: ExitStatus { code, signal },
                        stdout,
                        stderr,
                    })
                }
                Event::SpawnFailed { errno, message } => {
                    return Err(Error::Spawn {
                        program: program.to_string_lossy().into_owned(),
                        errno,
                        message,
                    })
                }
                Event::Rejected(message) => return Err(Error::Rejected(message)),
            }
        }
    }

    /// Asks the guest to sync, unmount and power off, then releases every
    /// host resource. A guest that does not stop in time is killed.
    pub async fn shutdown(self) -> Result<(), Error> {
        let _ = self.client.send(HostMsg::Shutdown);
        let machine = self.machine.clone();
        let clean = tokio::task::spawn_blocking(move || {
            let mut m = lock(&machine);
            let clean = m.wait_exit(POWER_OFF_TIMEOUT);
            m.kill();
            clean
        })
        .await
        .unwrap_or(false);
        if clean {
            Ok(())
        } else {
            Err(self.stopped("the guest did not power off in time and was killed".into()))
        }
    }
}

impl std::fmt::Debug for Vm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vm")
            .field("id", &self.id())
            .field("backend", &self.backend)
            .field("boot_time", &self.boot_time)
            .finish_non_exhaustive()
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        lock(&self.machine).kill();
    }
}
