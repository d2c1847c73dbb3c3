//! Defining a sandbox once and booting VMs from it.

use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use sandbox_protocol::HostMsg;
use sandbox_rootfs::RootfsEvent;

use crate::backend::{self, BackendKind, MachineSpec};
use crate::client::{Client, Link};
use crate::vm::Vm;
use crate::{Error, Image, Rootfs, VmEvent};

/// The guest kernel log line for a root file system condition.
fn guest_notice(e: &RootfsEvent) -> Option<String> {
    match e {
        RootfsEvent::DirtyLimitReached { max_dirty_bytes } => Some(format!(
            "the root disk's write budget is used up (max_dirty_bytes = {} MiB); \
             writes to new blocks fail with I/O errors until shutdown",
            max_dirty_bytes >> 20
        )),
        // May repeat at every retry: the host's event is enough.
        RootfsEvent::StoreFailed { .. } => None,
    }
}

/// Events kept for subscribers that lag behind.
pub(crate) const EVENT_BACKLOG: usize = 64;
/// How long one blocking connection attempt to the agent may hold the
/// machine during boot (see `Sandbox::boot`).
const CONNECT_SLICE: Duration = Duration::from_millis(200);

/// Guest resources.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Resources {
    /// Virtual CPUs (UML is always uniprocessor).
    pub cpus: u32,
    /// Guest memory in MiB.
    pub memory_mib: u32,
}

impl Default for Resources {
    fn default() -> Self {
        Self {
            cpus: 1,
            memory_mib: 256,
        }
    }
}

/// Per-boot options.
#[derive(Clone, Debug)]
pub struct BootOptions {
    hostname: String,
    cwd: Option<String>,
    timeout: Duration,
    #[cfg(target_os = "linux")]
    mounts: Vec<(String, crate::Mount)>,
}

impl Default for BootOptions {
    fn default() -> Self {
        Self {
            hostname: "sandbox".into(),
            cwd: None,
            timeout: Duration::from_secs(60),
            #[cfg(target_os = "linux")]
            mounts: Vec::new(),
        }
    }
}

/// Refuses a hostname the guest kernel or `/etc/hosts` could not take.
pub(crate) fn check_hostname(h: &str) -> Result<(), Error> {
    let ok = !h.is_empty()
        && h.len() <= 64
        && h.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
        && !h.starts_with('-');
    if ok {
        Ok(())
    } else {
        Err(Error::InvalidConfig(format!(
            "hostname {h:?} must be 1-64 characters of letters, digits, '-' and '.'"
        )))
    }
}

impl BootOptions {
    /// Guest hostname (default `sandbox`).
    pub fn hostname(mut self, name: impl Into<String>) -> Self {
        self.hostname = name.into();
        self
    }

    /// Default working directory of later process calls (default: the
    /// image's `WorkingDir` for an imported image, else `/`).
    pub fn cwd(mut self, dir: impl Into<String>) -> Self {
        self.cwd = Some(dir.into());
        self
    }

    /// Mounts `mount` at the absolute guest path `path` (several per boot;
    /// paths must not repeat or nest, and `/proc`, `/sys`, `/dev` and
    /// `/run/sandbox` are refused). The agent mounts it before `boot()`
    /// returns; `cwd` may point into it. On a read-only root the mount
    /// point must already exist in the image. Linux only (virtio-fs is
    /// not built for macOS yet).
    #[cfg(target_os = "linux")]
    pub fn mount(mut self, path: impl Into<String>, mount: crate::Mount) -> Self {
        self.mounts.push((path.into(), mount));
        self
    }

    /// How long to wait for the guest agent (default 60 s).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    fn validate(&self) -> Result<(), Error> {
        check_hostname(&self.hostname)?;
        if let Some(cwd) = self.cwd.as_ref().filter(|c| !c.starts_with('/')) {
            return Err(Error::InvalidConfig(format!(
                "cwd {cwd:?} must be an absolute guest path"
            )));
        }
        Ok(())
    }
}

/// Most data disks a sandbox takes.
pub const MAX_DATA_DISKS: usize = 8;

/// A block device besides the root.
#[derive(Clone, Debug)]
pub enum DataDisk {
    /// Served by the library's virtio-blk device, with any write mode
    /// (an empty data image under `Rootfs::persistent` is a durable volume).
    Rootfs(Box<Rootfs>),
    /// Served by an external vhost-user-blk backend listening on this Unix
    /// socket, e.g. `qemu-storage-daemon --export type=vhost-user-blk`.
    /// UML backend only.
    VhostUser(std::path::PathBuf),
}

impl From<Rootfs> for DataDisk {
    fn from(r: Rootfs) -> Self {
        DataDisk::Rootfs(Box::new(r))
    }
}

/// Builder for [`Sandbox`]; nothing starts until [`Sandbox::boot`].
#[derive(Clone, Debug, Default)]
pub struct SandboxBuilder {
    rootfs: Option<Rootfs>,
    disks: Vec<DataDisk>,
    resources: Resources,
    backend: BackendKind,
    network: Option<sandbox_net::NetworkOptions>,
    #[cfg(target_os = "linux")]
    uml_jail: crate::UmlJail,
}

impl SandboxBuilder {
    /// The root file system and its write mode.
    pub fn rootfs(mut self, rootfs: Rootfs) -> Self {
        self.rootfs = Some(rootfs);
        self
    }

    /// Shorthand for `.rootfs(Rootfs::read_only(image))`.
    pub fn image(self, image: Image) -> Self {
        self.rootfs(Rootfs::read_only(image))
    }

    /// Adds a block device after the root: `/dev/vdb`, `/dev/vdc`, ... in
    /// the order added (the guest does not mount it). At most
    /// [`MAX_DATA_DISKS`].
    pub fn disk(mut self, disk: impl Into<DataDisk>) -> Self {
        self.disks.push(disk.into());
        self
    }

    /// CPU and memory.
    pub fn resources(mut self, resources: Resources) -> Self {
        self.resources = resources;
        self
    }

    /// Gives the guests a network: `eth0` behind the host's userspace
    /// stack, every new flow decided by `options.policy` (default deny),
    /// DNS answered by the host, HTTP(S) interception with a per-VM CA the
    /// guest trusts. Without this call guests have no network interface.
    /// UML carries the guest's frames over its `bess` transport, KVM over
    /// a virtio-net device; both feed the same host stack.
    pub fn network(mut self, options: crate::net::NetworkOptions) -> Self {
        self.network = Some(options);
        self
    }

    /// How the UML backend confines its kernel process (default: the full
    /// jail, see [`crate::UmlJail`]; [`crate::UmlJail::process_only`] for
    /// hosts that forbid user namespaces). The KVM backend ignores it.
    /// Linux only, like UML.
    #[cfg(target_os = "linux")]
    pub fn uml_jail(mut self, jail: crate::UmlJail) -> Self {
        self.uml_jail = jail;
        self
    }

    /// Which backend boots the VMs (default [`BackendKind::Auto`]).
    pub fn backend(mut self, backend: BackendKind) -> Self {
        self.backend = backend;
        self
    }

    /// Validates the definition. Starts nothing.
    pub fn build(self) -> Result<Sandbox, Error> {
        let rootfs = self.rootfs.ok_or_else(|| {
            Error::InvalidConfig(
                "no root file system: call .rootfs(Rootfs::ephemeral(images::builtin(\"minimal\")?))"
                    .into(),
            )
        })?;
        let image = rootfs.image();
        if !image.path.is_file() {
            return Err(Error::ArtifactMissing {
                what: format!("image {:?}", image.name),
                path: image.path.clone(),
            });
        }
        if self.disks.len() > MAX_DATA_DISKS {
            return Err(Error::InvalidConfig(format!(
                "{} data disks; at most {MAX_DATA_DISKS}",
                self.disks.len()
            )));
        }
        let r = self.resources;
        if !(64..=65536).contains(&r.memory_mib) {
            return Err(Error::InvalidConfig(format!(
                "memory_mib {} is outside 64..=65536",
                r.memory_mib
            )));
        }
        if !(1..=64).contains(&r.cpus) {
            return Err(Error::InvalidConfig(format!(
                "cpus {} is outside 1..=64",
                r.cpus
            )));
        }
        Ok(Sandbox {
            rootfs,
            disks: self.disks,
            resources: r,
            backend: self.backend,
            network: self.network,
            #[cfg(target_os = "linux")]
            uml_jail: self.uml_jail,
        })
    }
}

/// A validated sandbox definition; boots any number of independent VMs.
#[derive(Clone, Debug)]
pub struct Sandbox {
    rootfs: Rootfs,
    disks: Vec<DataDisk>,
    resources: Resources,
    backend: BackendKind,
    network: Option<sandbox_net::NetworkOptions>,
    #[cfg(target_os = "linux")]
    uml_jail: crate::UmlJail,
}

impl Sandbox {
    /// Starts defining a sandbox.
    pub fn builder() -> SandboxBuilder {
        SandboxBuilder::default()
    }

    /// The root file system image.
    pub fn image(&self) -> &Image {
        self.rootfs.image()
    }

    /// The root file system and its write mode.
    pub fn rootfs(&self) -> &Rootfs {
        &self.rootfs
    }

    /// The block devices besides the root.
    pub fn data_disks(&self) -> &[DataDisk] {
        &self.disks
    }

    /// The network options, if guests have a network.
    pub fn network_options(&self) -> Option<&sandbox_net::NetworkOptions> {
        self.network.as_ref()
    }

    /// Boots a VM and returns once its agent is ready.
    pub async fn boot(&self, opts: BootOptions) -> Result<Vm, Error> {
        opts.validate()?;
        let started = Instant::now();
        let (kind, why) = backend::select(self.backend)?;
        let (events, _) = tokio::sync::broadcast::channel(EVENT_BACKLOG);
        let sender = events.clone();
        // The guest hears about host-side disk conditions in its kernel log
        // once the control channel exists.
        let notices: Arc<OnceLock<Link>> = Arc::default();
        let notice_link = notices.clone();
        let spec = MachineSpec {
            events: Arc::new(move |e| {
                if let (Some(link), Some(text)) = (notice_link.get(), guest_notice(&e)) {
                    let _ = link.send(HostMsg::Notice { text });
                }
                let _ = sender.send(VmEvent::Rootfs(e));
            }),
            rootfs: self.rootfs.clone(),
            disks: self.disks.clone(),
            memory_mib: self.resources.memory_mib,
            cpus: self.resources.cpus,
            hostname: opts.hostname.clone(),
            network: self.network.clone(),
            #[cfg(target_os = "linux")]
            mounts: crate::mount::prepare(&opts.mounts)?,
            #[cfg(target_os = "linux")]
            uml_jail: self.uml_jail.clone(),
        };
        #[cfg(target_os = "linux")]
        let memory_mounts: Vec<_> = spec
            .mounts
            .iter()
            .filter_map(|m| Some((m.path.clone(), m.memory.clone()?)))
            .collect();
        let machine = tokio::task::spawn_blocking(move || backend::start(kind, spec))
            .await
            .map_err(|e| Error::Protocol(format!("starting the backend panicked: {e}")))??;
        let run = self.rootfs.image().run.clone();
        // The boot option wins over the image's WorkingDir.
        let cwd = opts
            .cwd
            .clone()
            .or_else(|| run.working_dir.clone())
            .unwrap_or_else(|| "/".into());
        let vm = connect(
            machine,
            kind,
            why,
            (cwd, run),
            (started, opts.timeout),
            events,
            Some(notices),
        )
        .await;
        #[cfg(target_os = "linux")]
        let vm = vm.map(|vm| vm.with_memory_mounts(memory_mounts));
        vm
    }
}

/// Connects to a started machine's agent within the boot timeout and
/// returns the VM; on failure the machine is killed and the error carries
/// its console. `notices` receives the control link once it exists.
pub(crate) async fn connect(
    machine: Box<dyn backend::Machine>,
    kind: BackendKind,
    why: String,
    (cwd, run): (String, sandbox_rootfs::oci::RunDefaults),
    (started, timeout): (Instant, Duration),
    events: tokio::sync::broadcast::Sender<VmEvent>,
    notices: Option<Arc<OnceLock<Link>>>,
) -> Result<Vm, Error> {
    // Connect in short slices: if this future is dropped mid-boot, the
    // machine comes back from its blocking slice within one slice and
    // is dropped (killed) then, not when the whole boot timeout ends.
    let mut machine = machine;
    let control = loop {
        let slice = timeout
            .saturating_sub(started.elapsed())
            .min(CONNECT_SLICE)
            .max(Duration::from_millis(1));
        let (m, control) = tokio::task::spawn_blocking(move || {
            let mut machine = machine;
            let control = machine.connect_control(slice);
            (machine, control)
        })
        .await
        .map_err(|e| Error::Protocol(format!("connecting to the guest panicked: {e}")))?;
        machine = m;
        match control {
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut && started.elapsed() < timeout => {}
            other => break other,
        }
    };
    let left = timeout.saturating_sub(started.elapsed());
    let connected = match control {
        Ok(stream) => match tokio::time::timeout(left, Client::connect(stream)).await {
            Ok(result) => result,
            Err(_) => Err(Error::BootTimeout {
                seconds: timeout.as_secs(),
                console: String::new(),
            }),
        },
        Err(e) if e.kind() == std::io::ErrorKind::TimedOut => Err(Error::BootTimeout {
            seconds: timeout.as_secs(),
            console: String::new(),
        }),
        Err(e) => Err(Error::GuestStopped {
            reason: e.to_string(),
            console: String::new(),
        }),
    };
    let client = match connected {
        Ok(client) => client,
        Err(e) => {
            // Every boot failure carries the guest console and leaves
            // nothing running.
            let console = machine.console_tail(40);
            machine.kill();
            return Err(match e {
                Error::BootTimeout { seconds, .. } => Error::BootTimeout { seconds, console },
                Error::GuestStopped { reason, .. } | Error::Protocol(reason) => {
                    Error::GuestStopped { reason, console }
                }
                other => other,
            });
        }
    };
    if let Some(notices) = notices {
        let _ = notices.set(client.link().clone());
    }
    Ok(Vm::new(
        client,
        machine,
        kind,
        why,
        (cwd, run),
        started.elapsed(),
        events,
    ))
}
