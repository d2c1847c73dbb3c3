//! A running VM and the calls made on it.

use std::ffi::OsStr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sandbox_protocol::{HostMsg, PtySize};

use crate::backend::{BackendKind, Machine};
use crate::client::Client;
use crate::forward::{Forward, ForwardOptions};
use crate::process::{Console, Process, Pty};
use crate::stop::{StopReason, StopReport};
use crate::{Command, Error, Output};

/// Something that happened to a running VM.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum VmEvent {
    /// A root file system condition.
    Rootfs(sandbox_rootfs::RootfsEvent),
    /// The guest ended (sent exactly once per VM). By the time it is
    /// delivered the backend's host processes and threads are gone.
    Stopped {
        /// How it ended.
        reason: StopReason,
    },
}

pub(crate) type SharedMachine = Arc<Mutex<Box<dyn Machine>>>;

/// A booted VM. Dropping it kills the guest (use [`Vm::shutdown`] for a
/// clean power-off).
pub struct Vm {
    client: Client,
    events: tokio::sync::broadcast::Sender<VmEvent>,
    stop: Arc<StopReport>,
    machine: SharedMachine,
    backend: BackendKind,
    backend_reason: String,
    cwd: String,
    run: sandbox_rootfs::oci::RunDefaults,
    boot_time: Duration,
    /// The memory mounts' file systems, by guest path.
    #[cfg(target_os = "linux")]
    memory_mounts: Vec<(String, sandbox_fs::MemoryFs)>,
}

pub(crate) fn lock(m: &SharedMachine) -> std::sync::MutexGuard<'_, Box<dyn Machine>> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Vm {
    pub(crate) fn new(
        client: Client,
        machine: Box<dyn Machine>,
        backend: BackendKind,
        backend_reason: String,
        (cwd, run): (String, sandbox_rootfs::oci::RunDefaults),
        boot_time: Duration,
        events: tokio::sync::broadcast::Sender<VmEvent>,
    ) -> Self {
        let machine = Arc::new(Mutex::new(machine));
        let stop = StopReport::new(events.clone());
        crate::stop::watch(client.ended(), machine.clone(), stop.clone());
        Self {
            client,
            events,
            stop,
            machine,
            backend,
            backend_reason,
            cwd,
            run,
            boot_time,
            #[cfg(target_os = "linux")]
            memory_mounts: Vec::new(),
        }
    }

    #[cfg(target_os = "linux")]
    pub(crate) fn with_memory_mounts(mut self, m: Vec<(String, sandbox_fs::MemoryFs)>) -> Self {
        self.memory_mounts = m;
        self
    }

    /// The file system of the memory mount on guest path `path`: the one
    /// given to [`crate::Mount::memory`] for a booted VM, and for a VM
    /// restored from a snapshot its own copy of the snapshot's content
    /// (each fork has its own). `None` if no memory mount is there.
    #[cfg(target_os = "linux")]
    pub fn memory_mount(&self, path: &str) -> Option<sandbox_fs::MemoryFs> {
        self.memory_mounts
            .iter()
            .find(|(p, _)| p == path)
            .map(|(_, fs)| fs.clone())
    }

    /// A host-unique id of this VM. Under UML the kernel process and its
    /// helpers carry `umid=<id>` on their command line.
    pub fn id(&self) -> String {
        lock(&self.machine).id()
    }

    /// Events about this VM from now on: a full ephemeral overlay, and
    /// [`VmEvent::Stopped`] once when the guest ends (power-off, reboot,
    /// panic, crash, or the host stopping it). A subscriber that falls
    /// behind by more than 64 events sees `RecvError::Lagged`.
    pub fn subscribe(&self) -> tokio::sync::broadcast::Receiver<VmEvent> {
        self.events.subscribe()
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

    /// Counters of the VM's network (frames, flows accepted, denied and
    /// limited, failed dials), or `None` without a network.
    pub fn network_stats(&self) -> Option<crate::net::Stats> {
        lock(&self.machine).network_stats()
    }

    /// Counters of this VM: boot time, live processes, each device
    /// (docs/metrics.md), the network, console bytes dropped.
    pub fn metrics(&self) -> crate::metrics::VmMetrics {
        let m = lock(&self.machine);
        crate::metrics::VmMetrics {
            boot_time: self.boot_time,
            live_processes: self.client.live_processes(),
            devices: m.device_counters(),
            network: m.network_stats(),
            console_dropped_bytes: m.console_dropped_bytes(),
        }
    }

    pub(crate) fn stopped(&self, reason: String) -> Error {
        Error::GuestStopped {
            reason,
            console: self.console_tail(30),
        }
    }

    pub(crate) fn client(&self) -> &Client {
        &self.client
    }

    pub(crate) fn console_fn(&self) -> Console {
        let machine = self.machine.clone();
        Arc::new(move || lock(&machine).console_tail(30))
    }

    /// The guest file system.
    pub fn fs(&self) -> crate::fs::Fs<'_> {
        crate::fs::Fs::new(self)
    }

    /// A command to configure (cwd, env, timeout, cancellation) and then
    /// `exec`, `spawn` or run on a `pty`.
    pub fn command(&self, program: impl AsRef<OsStr>) -> Command<'_> {
        let mut c = Command::new(self, program, &self.cwd);
        for kv in &self.run.env {
            if let Some((k, v)) = kv.split_once('=') {
                c = c.env(k, v);
            }
        }
        if let Some(user) = &self.run.user {
            c = c.user(user);
        }
        c
    }

    /// A command for the image's own `Entrypoint` and `Cmd` (an imported
    /// image's OCI config), as `docker run IMAGE [ARGS]` would run it:
    /// non-empty `args` replace `Cmd`; the entrypoint stays. Configure it
    /// further like any [`Vm::command`]. An image with neither is an
    /// [`Error::InvalidConfig`].
    pub fn image_command<I, S>(&self, args: I) -> Result<Command<'_>, Error>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let args: Vec<std::ffi::OsString> = args
            .into_iter()
            .map(|a| a.as_ref().to_os_string())
            .collect();
        let mut argv: Vec<std::ffi::OsString> =
            self.run.entrypoint.iter().map(Into::into).collect();
        if args.is_empty() {
            argv.extend(self.run.cmd.iter().map(Into::into));
        } else {
            argv.extend(args);
        }
        let Some((program, rest)) = argv.split_first() else {
            return Err(Error::InvalidConfig(
                "the image has no Entrypoint or Cmd: pass a program to Vm::command".into(),
            ));
        };
        Ok(self.command(program).args(rest))
    }

    /// Runs `program` with `args` and collects its output. A program that
    /// cannot start is an [`Error::Spawn`] carrying the guest errno. For
    /// options use [`Vm::command`].
    pub async fn exec<I, S>(&self, program: impl AsRef<OsStr>, args: I) -> Result<Output, Error>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.command(program).args(args).exec().await
    }

    /// Starts `program` with `args` and returns its handle at once.
    pub fn spawn<I, S>(&self, program: impl AsRef<OsStr>, args: I) -> Result<Process, Error>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.command(program).args(args).spawn()
    }

    /// Starts `program` with `args` on a guest terminal of `size`.
    pub fn pty<I, S>(
        &self,
        program: impl AsRef<OsStr>,
        args: I,
        size: PtySize,
    ) -> Result<Pty, Error>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.command(program).args(args).pty(size)
    }

    /// Exposes guest TCP port `guest_port` (a service listening on the
    /// guest's `127.0.0.1`, or on `::1` only) on the host address `host` (port 0 picks a free
    /// port: see [`Forward::local_addr`]). Connections travel over the
    /// agent link, so this works with or without a guest network and on
    /// every backend. `host` must be a loopback address (use
    /// [`Vm::forward_tcp_with`] to expose it further). Needs a Tokio
    /// runtime; the forward lives until dropped or until the VM stops.
    pub fn forward_tcp(
        &self,
        host: std::net::SocketAddr,
        guest_port: u16,
    ) -> Result<Forward, Error> {
        self.forward_tcp_with(host, guest_port, ForwardOptions::default())
    }

    /// [`Vm::forward_tcp`] with options.
    pub fn forward_tcp_with(
        &self,
        host: std::net::SocketAddr,
        guest_port: u16,
        options: ForwardOptions,
    ) -> Result<Forward, Error> {
        crate::forward::start(
            self.client.link().clone(),
            self.client.ended(),
            self.console_fn(),
            host,
            guest_port,
            options,
        )
    }

    #[cfg_attr(not(target_os = "linux"), allow(dead_code))] // snapshots: Linux only
    pub(crate) fn machine(&self) -> SharedMachine {
        self.machine.clone()
    }

    #[cfg_attr(not(target_os = "linux"), allow(dead_code))] // snapshots: Linux only
    /// The working directory and run defaults commands start with.
    pub(crate) fn run_defaults(&self) -> (String, sandbox_rootfs::oci::RunDefaults) {
        (self.cwd.clone(), self.run.clone())
    }

    #[cfg_attr(not(target_os = "linux"), allow(dead_code))] // snapshots: Linux only
    /// Sends a message to the agent.
    pub(crate) fn send(&self, msg: HostMsg) -> Result<(), Error> {
        self.client
            .link()
            .send(msg)
            .map_err(|_| self.stopped("the agent connection is closed".into()))
    }

    /// Pauses the guest (KVM backend): every vCPU stops until
    /// [`Vm::resume`]. Processes inside see no error; their clocks show the
    /// time paused once they run again. Calls made meanwhile (`exec`,
    /// file operations) wait for the resume, and their timeouts keep
    /// counting. The UML backend returns [`Error::Unsupported`].
    /// docs/snapshots.md says more.
    pub fn pause(&self) -> Result<(), Error> {
        lock(&self.machine).pause()
    }

    /// Lets a paused guest run again; a running guest is left alone.
    pub fn resume(&self) -> Result<(), Error> {
        lock(&self.machine).resume()
    }

    /// Whether the guest is paused.
    pub fn is_paused(&self) -> bool {
        lock(&self.machine).is_paused()
    }

    /// Asks the guest to sync, unmount and power off, then releases every
    /// host resource. A guest that does not stop in time is killed. A
    /// paused guest is resumed first.
    pub async fn shutdown(self) -> Result<(), Error> {
        {
            let mut m = lock(&self.machine);
            if m.is_paused() {
                let _ = m.resume();
            }
        }
        let _ = self.client.link().send(HostMsg::Shutdown);
        let machine = self.machine.clone();
        let stop = self.stop.clone();
        let clean = tokio::task::spawn_blocking(move || {
            let mut m = lock(&machine);
            let timeout = m.power_off_timeout();
            let clean = m.wait_exit(timeout);
            let reason = if clean {
                m.stop_reason().unwrap_or(StopReason::PowerOff)
            } else {
                StopReason::Killed
            };
            m.kill();
            // Reported while the machine is still locked, so the watcher
            // (which checks under the same lock) cannot report first from
            // the killed machine.
            stop.report(reason);
            clean
        })
        .await
        .unwrap_or(false);
        self.stop.report(StopReason::Killed);
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
        let mut m = lock(&self.machine);
        m.kill();
        self.stop.report(StopReason::Killed);
    }
}
