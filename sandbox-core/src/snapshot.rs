//! Snapshots of KVM guests: [`Vm::snapshot`], [`Sandbox::restore`] and
//! [`Snapshot::fork`] (docs/snapshots.md).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::backend::{self, BackendKind};
use crate::{Error, Sandbox, Vm};

/// The snapshot directory's description of the machine.
const RECORD_FILE: &str = "machine.json";
/// Bumped when [`Record`] changes shape. Format 1 (whole disk copies,
/// no [`BaseRecord`]) is still read.
const RECORD_FORMAT: u32 = 2;

/// The image under a disk whose snapshot stores only the written blocks.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct BaseRecord {
    name: String,
    path: PathBuf,
    qcow2: bool,
    arch: String,
    sha256: String,
    size: u64,
}

impl BaseRecord {
    /// The image under `rootfs` if the disk it opens is that image or an
    /// ephemeral overlay over it (which can list its written blocks).
    pub(crate) fn of(rootfs: &crate::Rootfs) -> Option<Self> {
        use sandbox_rootfs::{ImageFormat, Source, WriteMode};
        let Source::Image(image) = rootfs.source() else {
            return None;
        };
        match rootfs.write_mode() {
            WriteMode::ReadOnly | WriteMode::Ephemeral { .. } => Some(Self {
                name: image.name.clone(),
                path: image.path.clone(),
                qcow2: image.format == ImageFormat::Qcow2,
                arch: image.arch.clone(),
                sha256: image.sha256.clone(),
                size: image.size,
            }),
            _ => None,
        }
    }

    /// Opens the image again as a read-only disk, after checking it is
    /// still the one the snapshot was taken over.
    pub(crate) fn open(&self) -> Result<Box<dyn sandbox_rootfs::Disk>, Error> {
        let image = sandbox_rootfs::Image {
            name: self.name.clone(),
            path: self.path.clone(),
            format: if self.qcow2 {
                sandbox_rootfs::ImageFormat::Qcow2
            } else {
                sandbox_rootfs::ImageFormat::Raw
            },
            arch: self.arch.clone(),
            sha256: self.sha256.clone(),
            size: self.size,
            facts: Default::default(),
            run: Default::default(),
        };
        image.open_disk().map_err(|e| {
            snapshot_error(format!(
                "the snapshot stores only the blocks written over image {:?} ({}), which \
                 must be unchanged: {e}",
                self.name,
                self.path.display()
            ))
        })
    }
}

/// A device of the snapshotted machine, in bus order.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum DeviceRecord {
    /// A block device; its disk is copied into the snapshot, or only the
    /// blocks written over `base`.
    Disk {
        /// Whether the guest saw it read-only.
        read_only: bool,
        /// The image the disk was an ephemeral or read-only view of: the
        /// snapshot then holds only the blocks written over it, and a
        /// restore opens (and verifies) the image again.
        #[serde(default)]
        base: Option<BaseRecord>,
    },
    /// The agent's vsock.
    Vsock,
    /// virtio-rng.
    Rng,
    /// virtio-net: the link the guest's kernel was configured with. A
    /// restore puts a new host stack on the same addresses.
    Net(NetRecord),
    /// virtio-fs serving a bind mount: a restore serves the same source
    /// again and finds the guest's inodes and open files in it.
    Fs(crate::mount::BindRecord),
    /// virtio-fs serving a memory mount: its content is in the snapshot
    /// (one copy per restore), and the guest's ids are found again in it.
    MemoryFs(crate::mount::MemoryRecord),
    /// virtio-fs serving the application's own file system: a restore
    /// serves the one `RestoreOptions::mount` names and finds the guest's
    /// ids again in it.
    VirtualFs(crate::mount::MemoryRecord),
}

/// The addresses of a guest's link ([`sandbox_net::NetConfig`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct NetRecord {
    pub guest_ip: std::net::Ipv4Addr,
    pub gateway_ip: std::net::Ipv4Addr,
    pub dns_ip: std::net::Ipv4Addr,
    pub prefix_len: u8,
    pub gateway_mac: [u8; 6],
    pub guest_mac: [u8; 6],
    pub mtu: u16,
}

impl From<&sandbox_net::NetConfig> for NetRecord {
    fn from(c: &sandbox_net::NetConfig) -> Self {
        Self {
            guest_ip: c.guest_ip,
            gateway_ip: c.gateway_ip,
            dns_ip: c.dns_ip,
            prefix_len: c.prefix_len,
            gateway_mac: c.gateway_mac,
            guest_mac: c.guest_mac,
            mtu: c.mtu,
        }
    }
}

impl From<&NetRecord> for sandbox_net::NetConfig {
    fn from(r: &NetRecord) -> Self {
        Self {
            guest_ip: r.guest_ip,
            gateway_ip: r.gateway_ip,
            dns_ip: r.dns_ip,
            prefix_len: r.prefix_len,
            gateway_mac: r.gateway_mac,
            guest_mac: r.guest_mac,
            mtu: r.mtu,
        }
    }
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
    /// The host side of the network, required exactly when the snapshot's
    /// guest had one. Each restored VM gets its own stack with these
    /// options (policy, connector, limits, extra roots) on the snapshot's
    /// addresses (`config` is ignored: the guest's kernel keeps the
    /// addresses it had), a new interception CA, and no flows: a guest TCP
    /// connection open at the snapshot is reset when it next sends.
    pub network: Option<sandbox_net::NetworkOptions>,
    /// A new hostname for the restored guest (the kernel's, `/etc/hostname`
    /// and `/etc/hosts`); `None` keeps the snapshot's.
    pub hostname: Option<String>,
    /// Give the restored guest a new random `/etc/machine-id` (each fork
    /// its own); `false` keeps the snapshot's.
    pub new_machine_id: bool,
    /// The application's file systems for the snapshot's virtual mounts
    /// (`Mount::virtual_fs`), by guest path: required exactly for those,
    /// since they live in the application's code. Bind and memory mounts
    /// come back from the snapshot by themselves.
    pub mounts: Vec<(String, crate::Mount)>,
}

impl Default for RestoreOptions {
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(120),
            max_dirty_bytes: sandbox_rootfs::DEFAULT_MAX_DIRTY_BYTES,
            network: None,
            hostname: None,
            new_machine_id: false,
            mounts: Vec::new(),
        }
    }
}

impl RestoreOptions {
    /// Sets [`RestoreOptions::timeout`].
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Sets [`RestoreOptions::network`].
    pub fn network(mut self, network: sandbox_net::NetworkOptions) -> Self {
        self.network = Some(network);
        self
    }

    /// Sets [`RestoreOptions::hostname`] (checked as
    /// `BootOptions::hostname` is, when the restore starts).
    pub fn hostname(mut self, name: impl Into<String>) -> Self {
        self.hostname = Some(name.into());
        self
    }

    /// Sets [`RestoreOptions::new_machine_id`].
    pub fn new_machine_id(mut self) -> Self {
        self.new_machine_id = true;
        self
    }

    /// Serves the snapshot's virtual mount on guest path `path` with
    /// `mount` (a `Mount::virtual_fs`; see [`RestoreOptions::mounts`]). The
    /// guest's open files and inodes there are found again by name in it.
    pub fn mount(mut self, path: impl Into<String>, mount: crate::Mount) -> Self {
        self.mounts.push((path.into(), mount));
        self
    }
}

/// Fills `buf` from the host's random generator.
fn host_random(buf: &mut [u8]) -> Result<(), Error> {
    let mut urandom = std::fs::File::open("/dev/urandom")
        .map_err(|e| snapshot_error(format!("host randomness: {e}")))?;
    std::io::Read::read_exact(&mut urandom, buf)
        .map_err(|e| snapshot_error(format!("host randomness: {e}")))
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
        if !(1..=RECORD_FORMAT).contains(&record.format) {
            return Err(snapshot_error(format!(
                "{} has format {}, this library reads 1 to {RECORD_FORMAT}: take the snapshot again",
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

    /// Bytes of disk data the snapshot stores (with memory mounts'
    /// content).
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

    /// Refuses a network for a snapshot without one, and a restore without
    /// one for a snapshot that has one.
    fn check_network(&self, opts: &RestoreOptions) -> Result<(), Error> {
        let has = self
            .record
            .devices
            .iter()
            .any(|d| matches!(d, DeviceRecord::Net(_)));
        match (has, opts.network.is_some()) {
            (true, false) => Err(Error::InvalidConfig(
                "the snapshot's guest has a network: restore it with RestoreOptions::network(..) \
                 (its host side, policy included, is not stored in the snapshot)"
                    .into(),
            )),
            (false, true) => Err(Error::InvalidConfig(
                "the snapshot's guest has no network device: restore it without RestoreOptions::network"
                    .into(),
            )),
            _ => Ok(()),
        }
    }

    /// The snapshot's virtual mounts and the restore's
    /// [`RestoreOptions::mounts`] must name the same guest paths.
    fn check_mounts(&self, opts: &RestoreOptions) -> Result<(), Error> {
        let wanted: Vec<&str> = self
            .record
            .devices
            .iter()
            .filter_map(|d| match d {
                DeviceRecord::VirtualFs(r) => Some(r.path.as_str()),
                _ => None,
            })
            .collect();
        for path in &wanted {
            if !opts.mounts.iter().any(|(p, _)| p == path) {
                return Err(Error::InvalidConfig(format!(
                    "the snapshot's guest has a virtual mount on {path:?}: restore it with \
                     RestoreOptions::mount({path:?}, Mount::virtual_fs(..)) (the application's \
                     file system is not stored in the snapshot)"
                )));
            }
        }
        for (path, mount) in &opts.mounts {
            if !wanted.contains(&path.as_str()) {
                return Err(Error::InvalidConfig(format!(
                    "RestoreOptions::mount({path:?}, ..): the snapshot's guest has no virtual \
                     mount there"
                )));
            }
            if crate::mount::virtual_fs_of(mount).is_none() {
                return Err(Error::InvalidConfig(format!(
                    "RestoreOptions::mount({path:?}, ..) must be a Mount::virtual_fs (bind and \
                     memory mounts come back from the snapshot)"
                )));
            }
        }
        Ok(())
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
    /// (a paused guest stays paused). KVM backend only. Bind mounts are
    /// recorded and served again from their sources on restore; memory
    /// mounts' content is copied (each restore gets its own, see
    /// [`Vm::memory_mount`]); a virtual mount's file system is the
    /// application's and is passed again with [`RestoreOptions::mount`]. A guest with a network can, and is restored with
    /// [`RestoreOptions::network`].
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
        snapshot.check_network(&opts)?;
        snapshot.check_mounts(&opts)?;
        if let Some(h) = &opts.hostname {
            crate::sandbox::check_hostname(h)?;
        }
        let hostname = opts.hostname.clone();
        let machine_id = if opts.new_machine_id {
            let mut id = [0u8; 16];
            host_random(&mut id)?;
            Some(id.iter().map(|b| format!("{b:02x}")).collect::<String>())
        } else {
            None
        };
        let started = Instant::now();
        let (events, _) = tokio::sync::broadcast::channel(crate::sandbox::EVENT_BACKLOG);
        let snap = snapshot.clone();
        let timeout = opts.timeout;
        let machine = tokio::task::spawn_blocking(move || backend::restore_kvm(&snap, opts))
            .await
            .map_err(|e| snapshot_error(format!("restoring panicked: {e}")))??;
        let record = snapshot.record();
        let memory_mounts = machine.memory_mounts();
        let vm = crate::sandbox::connect(
            machine,
            BackendKind::Kvm,
            format!("restored from {}", snapshot.dir().display()),
            (record.cwd.clone(), record.run.clone()),
            (started, timeout),
            events,
            None,
        )
        .await?
        .with_memory_mounts(memory_mounts);
        let mut entropy = vec![0u8; 256];
        host_random(&mut entropy)?;
        let unix_time_ns = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        let ca = crate::vm::lock(&vm.machine()).network_ca();
        vm.send(sandbox_protocol::HostMsg::Restored {
            entropy,
            unix_time_ns,
            ca,
            hostname,
            machine_id,
        })?;
        Ok(vm)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snapshot_with(devices: Vec<DeviceRecord>) -> Snapshot {
        Snapshot {
            dir: PathBuf::from("/nonexistent"),
            record: Record {
                format: RECORD_FORMAT,
                memory_mib: 256,
                cpus: 1,
                devices,
                compat: Compat {
                    profile: "full".into(),
                    cpu_model: String::new(),
                    protocol: sandbox_protocol::PROTOCOL_VERSION,
                    kernel: String::new(),
                },
                cwd: "/".into(),
                run: Default::default(),
                ram_bytes: 0,
                memory_bytes: 0,
                disk_bytes: 0,
            },
        }
    }

    fn deny() -> sandbox_net::NetworkOptions {
        sandbox_net::NetworkOptions::new(sandbox_net::deny_all())
    }

    /// A disk stored as blocks over an image opens that image again only
    /// while it is unchanged; otherwise the error says what changed.
    #[test]
    fn the_base_image_must_be_unchanged() {
        let path = std::env::temp_dir().join(format!("snapshot-base-{}", std::process::id()));
        std::fs::write(&path, vec![7u8; 8192]).unwrap();
        let sha256 = sandbox_rootfs::sha256_file(&path).unwrap();
        let base = BaseRecord {
            name: "test".into(),
            path: path.clone(),
            qcow2: false,
            arch: String::new(),
            sha256,
            size: 8192,
        };
        let mut disk = base.open().unwrap();
        let mut buf = [0u8; 4];
        disk.read_at(4096, &mut buf).unwrap();
        assert_eq!(buf, [7; 4]);
        std::fs::write(&path, vec![8u8; 8192]).unwrap();
        match base.open() {
            Err(Error::Snapshot(e)) => assert!(e.contains("must be unchanged"), "{e}"),
            other => panic!("expected a refusal, got {:?}", other.map(|_| ())),
        }
        std::fs::remove_file(&path).unwrap();
        assert!(base.open().is_err(), "a missing image is refused too");
    }

    #[test]
    fn only_plain_images_under_read_only_and_ephemeral_roots_are_referenced() {
        let image = sandbox_rootfs::Image {
            name: "i".into(),
            path: "/nonexistent/i.ext4".into(),
            format: sandbox_rootfs::ImageFormat::Raw,
            arch: String::new(),
            sha256: "00".into(),
            size: 4096,
            facts: Default::default(),
            run: Default::default(),
        };
        let of = |r: crate::Rootfs| BaseRecord::of(&r).map(|b| b.path);
        let path = Some(image.path.clone());
        assert_eq!(of(crate::Rootfs::read_only(image.clone())), path);
        assert_eq!(of(crate::Rootfs::ephemeral(image.clone())), path);
        assert_eq!(
            of(crate::Rootfs::ephemeral(image.clone()).in_memory()),
            path
        );
        assert_eq!(of(crate::Rootfs::persistent(image, "/tmp/o.qcow2")), None);
    }

    #[test]
    fn a_link_survives_the_record_and_converts_back() {
        let config = sandbox_net::NetConfig {
            guest_ip: std::net::Ipv4Addr::new(10, 9, 8, 7),
            mtu: 1500,
            ..Default::default()
        };
        let devices = vec![DeviceRecord::Vsock, DeviceRecord::Net((&config).into())];
        let text = serde_json::to_string(&devices).unwrap();
        let back: Vec<DeviceRecord> = serde_json::from_str(&text).unwrap();
        assert_eq!(back, devices);
        let DeviceRecord::Net(link) = &back[1] else {
            panic!("{back:?}")
        };
        assert_eq!(sandbox_net::NetConfig::from(link), config);
    }

    #[test]
    fn the_network_option_must_match_the_snapshot() {
        let link = DeviceRecord::Net((&sandbox_net::NetConfig::default()).into());
        let with = snapshot_with(vec![DeviceRecord::Vsock, link]);
        let without = snapshot_with(vec![DeviceRecord::Vsock]);
        let plain = RestoreOptions::default();
        let networked = RestoreOptions::default().network(deny());
        assert!(
            matches!(with.check_network(&plain), Err(Error::InvalidConfig(e)) if e.contains("RestoreOptions::network(..)"))
        );
        assert!(
            matches!(without.check_network(&networked), Err(Error::InvalidConfig(e)) if e.contains("no network"))
        );
        assert!(with.check_network(&networked).is_ok());
        assert!(without.check_network(&plain).is_ok());
    }

    #[test]
    fn virtual_mounts_must_be_passed_exactly_and_as_virtual_file_systems() {
        let record = crate::mount::MemoryRecord {
            path: "/virt".into(),
            tag: "sbxfs0".into(),
            deadline_ms: 10_000,
        };
        let with = snapshot_with(vec![DeviceRecord::VirtualFs(record)]);
        let without = snapshot_with(vec![DeviceRecord::Vsock]);
        let app = crate::vfs::MemoryFs::new();
        let given = RestoreOptions::default().mount("/virt", crate::Mount::virtual_fs(app.clone()));
        let missing = RestoreOptions::default();
        let elsewhere =
            RestoreOptions::default().mount("/other", crate::Mount::virtual_fs(app.clone()));
        let bind = RestoreOptions::default().mount("/virt", crate::Mount::bind("/tmp").read_only());
        let refused = |snap: &Snapshot, opts: &RestoreOptions, what: &str| matches!(snap.check_mounts(opts), Err(Error::InvalidConfig(e)) if e.contains(what));
        assert!(with.check_mounts(&given).is_ok());
        assert!(without.check_mounts(&missing).is_ok());
        assert!(refused(&with, &missing, "RestoreOptions::mount(\"/virt\""));
        assert!(refused(
            &with,
            &elsewhere,
            "RestoreOptions::mount(\"/virt\""
        ));
        assert!(refused(&without, &given, "no virtual mount there"));
        assert!(refused(&with, &bind, "must be a Mount::virtual_fs"));
        // A memory mount's file system also serves as one.
        let memory = RestoreOptions::default().mount("/virt", crate::Mount::memory(&app));
        assert!(with.check_mounts(&memory).is_ok());
    }
}
