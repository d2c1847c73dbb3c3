//! Starting, watching and stopping one UML guest.

use std::fs;

use sandbox_protocol::cmdline;
use std::io;
use std::os::unix::net::{UnixListener, UnixStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use sandbox_rootfs::Disk;
use sandbox_virtio::block::Block;
use sandbox_virtio::rng::Rng;
use sandbox_virtio::vhost_user::{self, Served};
use sandbox_virtio::vsock::{Vsock, VsockConnector};
use sandbox_virtio::{device_id, VirtioDevice};

use crate::jail::{self, Plan, UmlJail};
use crate::{launcher, lpj, ConsoleLog};

/// Errors starting a UML guest.
#[derive(Debug, thiserror::Error)]
pub enum UmlError {
    /// The kernel binary is missing.
    #[error("UML kernel not found at {0}: run `cargo xtask build`")]
    KernelMissing(PathBuf),
    /// The kernel process could not be confined (the message names the
    /// step and, where the host forbids namespaces, the weaker mode).
    #[error("{0}")]
    Jail(io::Error),
    /// A host resource (socket, directory, process) could not be set up.
    #[error("{what}")]
    Host {
        /// What was being set up.
        what: String,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
}

fn host(what: impl Into<String>) -> impl FnOnce(io::Error) -> UmlError {
    let what = what.into();
    move |source| UmlError::Host { what, source }
}

/// What to boot.
pub struct UmlConfig {
    /// The UML kernel executable (`linux` from an `ARCH=um` build).
    pub kernel: PathBuf,
    /// Guest memory in MiB.
    pub memory_mib: u32,
    /// The root disk, served as `/dev/vda`.
    pub root: Box<dyn Disk>,
    /// More disks, `/dev/vdb` onwards in this order.
    pub data_disks: Vec<DataDisk>,
    /// virtio-fs devices (each carries its mount tag; the agent is told
    /// where to mount them through `extra_args`).
    pub file_systems: Vec<sandbox_virtio::fs::Fs>,
    /// Sockets of external vhost-user-fs daemons (virtio-fs devices this
    /// library does not serve).
    pub external_file_systems: Vec<PathBuf>,
    /// Guest hostname, passed to the agent.
    pub hostname: String,
    /// Bytes of console output kept for error reports.
    pub console_log_bytes: usize,
    /// The vsock port the guest agent listens on.
    pub agent_port: u32,
    /// A network interface, if any.
    pub net: Option<UmlNet>,
    /// More kernel command line words (agent parameters).
    pub extra_args: Vec<String>,
    /// How the kernel process is confined.
    pub jail: UmlJail,
}

/// A guest network interface on UML's vector driver with the `bess`
/// transport: the kernel connects a `SOCK_SEQPACKET` socket to `socket`
/// (which must be listening) when the guest brings the interface up.
pub struct UmlNet {
    /// The listening socket's path.
    pub socket: PathBuf,
    /// The interface's MAC address, as `02:5b:00:00:00:0f`.
    pub mac: String,
    /// The interface's MTU (576-65534).
    pub mtu: u16,
}

/// An extra block device of a UML guest.
pub enum DataDisk {
    /// Served by our virtio-blk device.
    Served(Box<dyn Disk>),
    /// Served by an external vhost-user-blk backend listening on this
    /// socket (e.g. `qemu-storage-daemon`).
    External(PathBuf),
}

/// The guest's vsock CID (any value from 3 works; each guest has its own
/// device, so they never collide).
const GUEST_CID: u64 = 3;

/// A running UML guest. Dropping it kills the guest and cleans up.
///
/// The kernel process runs in its own process group, with `no_new_privs`,
/// a parent-death signal and (when the host allows it) an empty network
/// namespace.
pub struct UmlVm {
    id: String,
    kernel: Option<Kernel>,
    workdir: PathBuf,
    served: Vec<Served>,
    vsock: VsockConnector,
    console: ConsoleLog,
    log_thread: Option<JoinHandle<Result<(), sandbox_thread::Panicked>>>,
    counters: Vec<(String, sandbox_virtio::CounterReader)>,
}

static NEXT_ID: AtomicU64 = AtomicU64::new(0);

impl UmlVm {
    /// Starts the guest; returns as soon as the kernel process runs.
    pub fn start(cfg: UmlConfig) -> Result<Self, UmlError> {
        if !cfg.kernel.is_file() {
            return Err(UmlError::KernelMissing(cfg.kernel));
        }
        let n = NEXT_ID.fetch_add(1, Ordering::Relaxed);
        let id = format!("sbx-{}-{n}", std::process::id());
        let tmp = std::env::temp_dir();
        let workdir = crate::workdir::create(&tmp, &id)
            .map_err(host(format!("creating {}", tmp.join(&id).display())))?;
        let (vsock, connector) =
            Vsock::new(GUEST_CID).map_err(host("creating the vsock device"))?;
        let mut vm = Self {
            id: id.clone(),
            kernel: None,
            workdir,
            served: Vec::new(),
            vsock: connector,
            console: ConsoleLog::new(cfg.console_log_bytes),
            log_thread: None,
            counters: Vec::new(),
        };
        let jail_root = vm.workdir.join("jail");
        if cfg.jail.is_full() {
            fs::create_dir(&jail_root).map_err(host("creating the jail's mount point"))?;
        }
        let mut plan = Plan::new(&cfg.jail, jail_root, cfg.memory_mib, n);
        let read_only = cfg.root.read_only();
        let blk = vm.serve("blk", Block::new(cfg.root, "sandbox-root"))?;
        let blk = plan.our_socket(&blk).map_err(UmlError::Jail)?;
        let mut data = Vec::new();
        for (i, disk) in cfg.data_disks.into_iter().enumerate() {
            data.push(
                match disk {
                    DataDisk::Served(d) => {
                        let name = format!("data{i}");
                        let path = vm.serve(&name, Block::new(d, &format!("sandbox-{name}")))?;
                        plan.our_socket(&path)
                    }
                    DataDisk::External(path) => plan.their_socket(&path),
                }
                .map_err(UmlError::Jail)?,
            );
        }
        let mut file_systems = Vec::new();
        for (i, fs) in cfg.file_systems.into_iter().enumerate() {
            let path = vm.serve(&format!("fs{i}"), fs)?;
            file_systems.push(plan.our_socket(&path).map_err(UmlError::Jail)?);
        }
        for path in cfg.external_file_systems {
            file_systems.push(plan.their_socket(&path).map_err(UmlError::Jail)?);
        }
        let vsock = vm.serve("vsock", vsock)?;
        let vsock = plan.our_socket(&vsock).map_err(UmlError::Jail)?;
        let rng = vm.serve("rng", Rng::new())?;
        let rng = plan.our_socket(&rng).map_err(UmlError::Jail)?;
        let net_socket = match &cfg.net {
            Some(net) => Some(plan.our_socket(&net.socket).map_err(UmlError::Jail)?),
            None => None,
        };
        let kernel = plan.kernel(&cfg.kernel).map_err(UmlError::Jail)?;
        let uml_dir = if cfg.jail.is_full() {
            PathBuf::from(jail::JAIL_TMP)
        } else {
            vm.workdir.clone()
        };

        let mut cmd = Command::new(&kernel);
        cmd.arg(format!("mem={}M", cfg.memory_mib))
            .arg(format!("umid={id}"))
            .arg(format!("uml_dir={}", uml_dir.display()))
            .args(["con=null", "con0=null,fd:2", "ssl=null", "console=tty0"])
            .args(cmdline::ROOT)
            .arg(if read_only { "ro" } else { "rw" })
            .arg("init=/sbin/sandbox-guest")
            .args(lpj::preset().map(|l| format!("lpj={l}")))
            .arg(cmdline::param(cmdline::HOSTNAME, &cfg.hostname))
            .arg(cmdline::param(
                cmdline::CHANNEL,
                cmdline::vsock_channel(cfg.agent_port),
            ))
            .arg(format!(
                "virtio_uml.device={}:{}",
                blk.display(),
                device_id::BLOCK
            ))
            .args(
                data.iter()
                    .map(|p| format!("virtio_uml.device={}:{}", p.display(), device_id::BLOCK)),
            )
            .args(file_systems.iter().map(|p| {
                format!(
                    "virtio_uml.device={}:{}",
                    p.display(),
                    sandbox_virtio::fs::DEVICE_ID
                )
            }))
            .arg(format!(
                "virtio_uml.device={}:{}",
                vsock.display(),
                device_id::VSOCK
            ))
            .arg(format!(
                "virtio_uml.device={}:{}",
                rng.display(),
                device_id::RNG
            ));
        if let (Some(net), Some(socket)) = (&cfg.net, &net_socket) {
            cmd.arg(format!(
                "vec0:transport=bess,mtu={},dst={},mac={}",
                net.mtu,
                socket.display(),
                net.mac
            ));
        }
        cmd.args(&cfg.extra_args);
        let (reader, writer) = io::pipe().map_err(host("creating the console pipe"))?;
        let writer2 = writer
            .try_clone()
            .map_err(host("creating the console pipe"))?;
        cmd.stdin(Stdio::null()).stdout(writer).stderr(writer2);
        cmd.process_group(0);
        if !cfg.jail.is_full() {
            // UML maps its memory from a file in TMPDIR and unlinks it at
            // once (in the jail, TMPDIR is the jail's own tmpfs).
            let shm = Path::new("/dev/shm");
            cmd.env("TMPDIR", if shm.is_dir() { shm } else { &vm.workdir });
        }
        let started = plan.apply(&mut cmd).map_err(UmlError::Jail)?;
        // The launcher drops `cmd`, closing our copies of the pipe's write end.
        let spawned = launcher::spawn(cmd);
        vm.kernel = Some(match (spawned, started) {
            (Ok(child), None) => Kernel::new(child.id() as i32),
            (Ok(mut child), Some(started)) => {
                let status = child.wait().map_err(host("waiting for the jail's setup"))?;
                Kernel::new(started.kernel_pid(status).map_err(UmlError::Jail)?)
            }
            (Err(e), Some(started)) => return Err(UmlError::Jail(started.error(e))),
            (Err(e), None) => return Err(host(format!("starting {}", cfg.kernel.display()))(e)),
        });
        let log = vm.console.clone();
        vm.log_thread = Some(
            sandbox_thread::spawn("uml-console", Some(&crate::seccomp::CONSOLE), move || {
                log.capture(reader)
            })
            .map_err(host("starting the console thread"))?,
        );
        Ok(vm)
    }

    fn serve(
        &mut self,
        name: &str,
        device: impl VirtioDevice + 'static,
    ) -> Result<PathBuf, UmlError> {
        let path = self.workdir.join(format!("{name}.sock"));
        let listener =
            UnixListener::bind(&path).map_err(host(format!("binding {}", path.display())))?;
        if let Some(reader) = device.counters() {
            self.counters.push((name.to_string(), reader));
        }
        let served = vhost_user::serve(name, listener, device)
            .map_err(host(format!("serving the {name} device")))?;
        self.served.push(served);
        Ok(path)
    }

    /// Counters of the devices this backend serves, by name ("blk",
    /// "data0", "vsock", "rng").
    pub fn device_counters(&self) -> Vec<(String, sandbox_virtio::DeviceCounters)> {
        sandbox_virtio::counters::read_named(&self.counters)
    }

    /// The guest's unique id; the kernel runs with `umid=<id>`.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Connects to guest vsock `port`, retrying until the agent listens,
    /// the guest stops, or `timeout` passes.
    pub fn connect(&mut self, port: u32, timeout: Duration) -> io::Result<UnixStream> {
        let vsock = self.vsock.clone();
        vsock.connect_when_listening(port, timeout, Duration::from_millis(5), || {
            self.try_wait()
                .map(|status| format!("the guest exited ({status})"))
        })
    }

    /// The guest console captured so far.
    pub fn console(&self) -> &ConsoleLog {
        &self.console
    }

    /// Waits up to `timeout` for the console's reader to reach the end of
    /// the kernel's output (after the kernel exited: its last lines, such
    /// as a panic message, may still be in the pipe). Whether it did.
    pub fn drain_console(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            let done = self.log_thread.as_ref().is_none_or(|t| t.is_finished());
            if done || Instant::now() >= deadline {
                return done;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// The kernel process id.
    pub fn pid(&self) -> Option<u32> {
        self.kernel.as_ref().map(|k| k.pid as u32)
    }

    /// The exit status if the guest has stopped.
    pub fn try_wait(&mut self) -> Option<ExitStatus> {
        self.kernel.as_mut().and_then(|k| k.wait(false))
    }

    /// Waits up to `timeout` for the guest to stop by itself.
    pub fn wait_timeout(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(s) = self.try_wait() {
                return Some(s);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Kills the guest's whole process group, stops the devices and removes
    /// the working directory. Idempotent.
    pub fn kill(&mut self) {
        if let Some(mut kernel) = self.kernel.take() {
            // The pid only while it is unreaped (a reaped pid may be reused).
            let running = kernel.wait(false).is_none();
            // SAFETY: kill and killpg with the kernel's pid and group. In
            // the full jail the kernel is pid 1 of its pid namespace:
            // killing it kills every process of the namespace.
            unsafe {
                if running {
                    libc::kill(kernel.pid, libc::SIGKILL);
                }
                libc::killpg(kernel.pid, libc::SIGKILL);
            }
            kernel.wait(true);
            // Helpers the kernel forked may outlive the leader for a moment.
            // SAFETY: as above; ESRCH once the group is gone.
            unsafe { libc::killpg(kernel.pid, libc::SIGKILL) };
        }
        for s in self.served.drain(..) {
            s.stop();
        }
        if let Some(t) = self.log_thread.take() {
            let _ = t.join();
        }
        let _ = fs::remove_dir_all(&self.workdir);
    }
}

/// The kernel process: our child (in the full jail, the sibling the jail's
/// setup process started). It leads the process group its processes share
/// (`process_group(0)`, or its own `setsid` in the full jail), so the
/// group's id is its pid.
struct Kernel {
    pid: i32,
    status: Option<ExitStatus>,
}

impl Kernel {
    fn new(pid: i32) -> Self {
        Self { pid, status: None }
    }

    /// Reaps the kernel if it has stopped (waiting for it if `block`).
    fn wait(&mut self, block: bool) -> Option<ExitStatus> {
        use std::os::unix::process::ExitStatusExt;
        if self.status.is_none() {
            let mut raw = 0;
            let flags = if block { 0 } else { libc::WNOHANG };
            loop {
                // SAFETY: waitpid on our own child into a local.
                let r = unsafe { libc::waitpid(self.pid, &mut raw, flags) };
                if r == self.pid {
                    self.status = Some(ExitStatus::from_raw(raw));
                } else if r < 0 && io::Error::last_os_error().kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                break;
            }
        }
        self.status
    }
}

impl Drop for UmlVm {
    fn drop(&mut self) {
        self.kill();
    }
}
