//! Snapshots of KVM guests: [`Vm::snapshot`], [`Sandbox::restore`] and
//! [`Snapshot::fork`] (docs/snapshots.md).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::backend::{self, BackendKind};
use crate::{Error, Sandbox, Vm};

/// The snapshot directory's description of the machine.
const RECORD_FILE: &str = "machine.json";
/// Bumped when [`Record`] changes shape.
const RECORD_FORMAT: u32 = 1;

/// A device of the snapshotted machine, in bus order.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum DeviceRecord {
    /// A block device; its disk is copied into the snapshot.
    Disk {
        /// Whether the guest saw it read-only.
        read_only: bool,
    },
    /// The agent's vsock.
    Vsock,
    /// virtio-rng.
    Rng,
}

/// What a restore must match: the CPU and the protocol the guest's agent
/// speaks.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Compat {
    /// `full` or `nested-pvm`.
    pub profile: String,
    /// The host CPU's model name.
    pub cpu_model: String,
    /// The agent protocol version of the library that took it.
    pub protocol: u32,
    /// The kernel build's key (recorded; the kernel in the snapshot's
    /// memory is the one that runs).
    pub kernel: String,
}

/// What the backend reports about a snapshot it took.
pub(crate) struct MachineSnapshot {
    pub devices: Vec<DeviceRecord>,
    pub memory_mib: u32,
    pub cpus: u32,
    pub ram_bytes: u64,
    pub memory_bytes: u64,
    pub disk_bytes: u64,
    pub profile: String,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct Record {
    pub format: u32,
    pub memory_mib: u32,
    pub cpus: u32,
    pub devices: Vec<DeviceRecord>,
    pub compat: Compat,
    pub cwd: String,
    pub run: sandbox_rootfs::oci::RunDefaults,
    pub ram_bytes: u64,
    pub memory_bytes: u64,
    pub disk_bytes: u64,
}

/// A snapshot on disk: a paused guest's memory, CPU, device and disk
/// state, restorable any number of times, in this process or another.
#[derive(Clone, Debug)]
pub struct Snapshot {
    dir: PathBuf,
    record: Record,
}

/// How to restore a snapshot.
#[derive(Clone, Debug)]
pub struct RestoreOptions {
    /// How long the restored guest's agent gets to answer.
    pub timeout: Duration,
    /// Bytes of guest writes each restored disk keeps in host memory
    /// (past it the guest gets `ENOSPC`).
    pub max_dirty_bytes: u64,
}

impl Default for RestoreOptions {
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(120),
            max_dirty_bytes: sandbox_rootfs::DEFAULT_MAX_DIRTY_BYTES,
        }
    }
}

impl RestoreOptions {
    /// Sets [`RestoreOptions::timeout`].
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }
}

fn snapshot_error(what: impl std::fmt::Display) -> Error {
    Error::Snapshot(what.to_string())
}

/// The host CPU's model name (from `/proc/cpuinfo`).
pub(crate) fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find_map(|l| l.strip_prefix("model name"))
                .map(|v| v.trim_start_matches([' ', '\t', ':']).trim().to_string())
        })
        .unwrap_or_default()
}

fn kernel_key() -> String {
    crate::artifacts::manifest("kernel-x86_64", "x86_64 kernel")
        .ok()
        .and_then(|m| m["key"].as_str().map(str::to_string))
        .unwrap_or_default()
}

impl Snapshot {
    /// Opens a snapshot directory written by [`Vm::snapshot`] (in this
    /// process or an earlier one). The state and memory files are checked
    /// when it is restored.
    pub fn open(dir: impl AsRef<Path>) -> Result<Self, Error> {
        let dir = dir.as_ref().to_path_buf();
        let path = dir.join(RECORD_FILE);
        let text = std::fs::read_to_string(&path).map_err(|e| {
            snapshot_error(format!(
                "{} is not a snapshot: reading {}: {e}",
                dir.display(),
                path.display()
            ))
        })?;
        let record: Record = serde_json::from_str(&text)
            .map_err(|e| snapshot_error(format!("{} is corrupt: {e}", path.display())))?;
        if record.format != RECORD_FORMAT {
            return Err(snapshot_error(format!(
                "{} has format {}, this library reads {RECORD_FORMAT}: take the snapshot again",
                path.display(),
                record.format
            )));
        }
        Ok(Self { dir, record })
    }

    /// The snapshot's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Guest RAM.
    pub fn ram_bytes(&self) -> u64 {
        self.record.ram_bytes
    }

    /// Bytes of RAM the memory file stores (zero pages are holes).
    pub fn memory_bytes(&self) -> u64 {
        self.record.memory_bytes
    }

    /// Bytes of disk data the snapshot stores.
    pub fn disk_bytes(&self) -> u64 {
        self.record.disk_bytes
    }

    /// Restores `n` VMs from this snapshot, one after another. They share
    /// the memory file's unchanged pages and nothing else: each has its
    /// own disk overlays, fresh randomness and its own host side.
    pub async fn fork(&self, n: usize, opts: RestoreOptions) -> Result<Vec<Vm>, Error> {
        let mut vms = Vec::with_capacity(n);
        for _ in 0..n {
            vms.push(Sandbox::restore(self, opts.clone()).await?);
        }
        Ok(vms)
    }

    pub(crate) fn record(&self) -> &Record {
        &self.record
    }

    /// Refuses a restore this host cannot run.
    fn check_host(&self) -> Result<(), Error> {
        let c = &self.record.compat;
        if c.protocol != sandbox_protocol::PROTOCOL_VERSION {
            return Err(snapshot_error(format!(
                "the snapshot's agent speaks protocol v{}, this library v{}: take the snapshot again with this library",
                c.protocol,
                sandbox_protocol::PROTOCOL_VERSION
            )));
        }
        let model = cpu_model();
        if c.cpu_model != model {
            return Err(snapshot_error(format!(
                "the snapshot was taken on a {:?} CPU, this host has {model:?}: restore it on the same CPU model",
                c.cpu_model
            )));
        }
        let profile = backend::kvm_profile_name();
        if c.profile != profile {
            return Err(snapshot_error(format!(
                "the snapshot was taken under the {} KVM profile, this host runs {profile}",
                c.profile
            )));
        }
        Ok(())
    }
}

impl Vm {
    /// Writes a snapshot of this guest into `dir` (created; it must not
    /// hold a snapshot already) and returns it. The guest is paused while
    /// its memory, CPU, device and disk state are saved, and then runs on
    /// (a paused guest stays paused). KVM backend only; guests with a
    /// network or mounts cannot be snapshotted yet (a clear error says so).
    pub async fn snapshot(&self, dir: impl AsRef<Path>) -> Result<Snapshot, Error> {
        let dir = dir.as_ref().to_path_buf();
        if dir.join(RECORD_FILE).exists() {
            return Err(snapshot_error(format!(
                "{} already holds a snapshot: choose an empty directory",
                dir.display()
            )));
        }
        let machine = self.machine();
        let for_blocking = dir.clone();
        let taken =
            tokio::task::spawn_blocking(move || crate::vm::lock(&machine).snapshot(&for_blocking))
                .await
                .map_err(|e| snapshot_error(format!("taking the snapshot panicked: {e}")))??;
        let (cwd, run) = self.run_defaults();
        let record = Record {
            format: RECORD_FORMAT,
            memory_mib: taken.memory_mib,
            cpus: taken.cpus,
            devices: taken.devices,
            compat: Compat {
                profile: taken.profile,
                cpu_model: cpu_model(),
                protocol: sandbox_protocol::PROTOCOL_VERSION,
                kernel: kernel_key(),
            },
            cwd,
            run,
            ram_bytes: taken.ram_bytes,
            memory_bytes: taken.memory_bytes,
            disk_bytes: taken.disk_bytes,
        };
        let text = serde_json::to_string_pretty(&record)
            .map_err(|e| snapshot_error(format!("encoding the record: {e}")))?;
        let path = dir.join(RECORD_FILE);
        std::fs::write(&path, text)
            .map_err(|e| snapshot_error(format!("writing {}: {e}", path.display())))?;
        Ok(Snapshot { dir, record })
    }
}

impl Sandbox {
    /// Starts a VM from `snapshot`: its memory mapped copy-on-write from
    /// the snapshot, its disks as overlays over the snapshot's copies, its
    /// vsock reset (the guest's old control connection fails; processes
    /// the old connection started are ended by the agent, detached ones
    /// run on), its random generator reseeded with host entropy and its
    /// wall clock set. Returns when the agent answers.
    pub async fn restore(snapshot: &Snapshot, opts: RestoreOptions) -> Result<Vm, Error> {
        snapshot.check_host()?;
        let started = Instant::now();
        let (events, _) = tokio::sync::broadcast::channel(crate::sandbox::EVENT_BACKLOG);
        let snap = snapshot.clone();
        let max_dirty = opts.max_dirty_bytes;
        let machine = tokio::task::spawn_blocking(move || backend::restore_kvm(&snap, max_dirty))
            .await
            .map_err(|e| snapshot_error(format!("restoring panicked: {e}")))??;
        let record = snapshot.record();
        let vm = crate::sandbox::connect(
            machine,
            BackendKind::Kvm,
            format!("restored from {}", snapshot.dir().display()),
            (record.cwd.clone(), record.run.clone()),
            (started, opts.timeout),
            events,
            None,
        )
        .await?;
        let mut entropy = vec![0u8; 256];
        std::io::Read::read_exact(
            &mut std::fs::File::open("/dev/urandom")
                .map_err(|e| snapshot_error(format!("host randomness: {e}")))?,
            &mut entropy,
        )
        .map_err(|e| snapshot_error(format!("host randomness: {e}")))?;
        let unix_time_ns = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        vm.send(sandbox_protocol::HostMsg::Restored {
            entropy,
            unix_time_ns,
        })?;
        Ok(vm)
    }
}
