//! The KVM backend: `sandbox-vmm-kvm` boots the x86_64 kernel with the root
//! disk, data disks, the agent's vsock, virtio-rng and (with a network)
//! virtio-net on virtio-mmio.

use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use sandbox_net::Network;
use sandbox_protocol::{cmdline, AGENT_VSOCK_PORT};
use sandbox_virtio::block::Block;
use sandbox_virtio::rng::Rng;
use sandbox_virtio::vsock::{Vsock, VsockConnector};
use sandbox_virtio::VirtioDevice;
use sandbox_vmm_kvm::{CpuProfile, GuestExit, KvmConfig, KvmVm};

use super::{Machine, MachineSpec};
use crate::snapshot::{DeviceRecord, MachineSnapshot};
use crate::Snapshot;
use crate::{artifacts, DataDisk, Error};
use sandbox_vmm_kvm::snapshot::{MachineState, MEMORY_FILE, STATE_FILE};

const CONSOLE_LOG_BYTES: usize = 256 << 10;
/// The guest architecture KVM runs on this host, and its kernel artifact.
#[cfg(not(target_arch = "aarch64"))]
pub(super) const ARCH: &str = "x86_64";
#[cfg(not(target_arch = "aarch64"))]
const KERNEL: (&str, &str) = ("kernel-x86_64", "x86_64 kernel");
#[cfg(target_arch = "aarch64")]
pub(super) const ARCH: &str = "aarch64";
#[cfg(target_arch = "aarch64")]
const KERNEL: (&str, &str) = ("kernel-arm64", "arm64 kernel");
const GUEST_CID: u64 = 3;
/// How long every vCPU gets to leave `KVM_RUN` when pausing.
const PAUSE_TIMEOUT: Duration = Duration::from_secs(5);

fn stopped() -> Error {
    Error::GuestStopped {
        reason: "the VM was stopped".into(),
        console: String::new(),
    }
}

static NEXT_ID: AtomicU64 = AtomicU64::new(0);

/// The block device serving `disk` (opened from `rootfs`) and its snapshot
/// record: over a plain image, a snapshot stores only the written blocks.
fn block(
    disk: Box<dyn sandbox_rootfs::Disk>,
    rootfs: &sandbox_rootfs::Rootfs,
    id: &str,
) -> (Block, DeviceRecord) {
    let read_only = disk.read_only();
    let base = crate::snapshot::BaseRecord::of(rootfs);
    let device = Block::new(disk, id);
    let device = match base {
        Some(_) => device.snapshot_written_only(),
        None => device,
    };
    (device, DeviceRecord::Disk { read_only, base })
}

pub(super) fn start(spec: MachineSpec, profile: CpuProfile) -> Result<Box<dyn Machine>, Error> {
    let kernel = artifacts::manifest_path(KERNEL.0, KERNEL.1)?;
    let root = spec.rootfs.open(Some(spec.events.clone()))?;
    let read_only = root.read_only();
    let (root, root_record) = block(root, &spec.rootfs, "sandbox-root");
    let mut layout = vec![root_record];
    let mut devices: Vec<Box<dyn VirtioDevice>> = vec![Box::new(root)];
    let mut names = vec!["blk".to_string()];
    for (i, disk) in spec.disks.iter().enumerate() {
        match disk {
            DataDisk::Rootfs(r) => {
                let d = r.open(Some(spec.events.clone()))?;
                let (d, record) = block(d, r, &format!("sandbox-data{i}"));
                layout.push(record);
                devices.push(Box::new(d));
                names.push(format!("data{i}"));
            }
            DataDisk::VhostUser(path) => {
                return Err(Error::InvalidConfig(format!(
                    "external vhost-user disks ({}) are served by the UML backend only",
                    path.display()
                )))
            }
        }
    }
    let (vsock, connector) =
        Vsock::new(GUEST_CID).map_err(|e| Error::Protocol(format!("vsock: {e}")))?;
    let mounts_param = crate::mount::agent_param(&spec.mounts);
    for (i, m) in spec.mounts.into_iter().enumerate() {
        match m.served {
            crate::mount::Served::Device(d, record) => {
                devices.push(Box::new(d));
                layout.push(match record {
                    crate::mount::Record::Bind(r) => DeviceRecord::Fs(r),
                    crate::mount::Record::Memory(r) => DeviceRecord::MemoryFs(r),
                    crate::mount::Record::Virtual(r) => DeviceRecord::VirtualFs(r),
                });
            }
            crate::mount::Served::External(socket) => {
                return Err(Error::InvalidConfig(format!(
                    "external vhost-user file systems ({}) are served by the UML backend only",
                    socket.display()
                )))
            }
        }
        names.push(format!("fs{i}"));
    }
    devices.push(Box::new(vsock));
    devices.push(Box::new(Rng::new()));
    names.extend(["vsock".to_string(), "rng".to_string()]);
    layout.extend([DeviceRecord::Vsock, DeviceRecord::Rng]);
    let network = match spec.network {
        Some(mut opts) => {
            opts.config.mtu = super::LINK_MTU;
            layout.push(DeviceRecord::Net((&opts.config).into()));
            let (net, network) = super::net_device(opts)?;
            devices.push(net);
            names.push("net".into());
            Some(network)
        }
        None => None,
    };
    let counters: Vec<(String, sandbox_virtio::CounterReader)> = names
        .into_iter()
        .zip(&devices)
        .filter_map(|(n, d)| Some((n, d.counters()?)))
        .collect();
    let cpus = u8::try_from(spec.cpus).unwrap_or(u8::MAX);
    let mut cmdline = format!(
        "{} {} init=/sbin/sandbox-guest {} {}",
        cmdline::ROOT.join(" "),
        if read_only { "ro" } else { "rw" },
        cmdline::param(cmdline::HOSTNAME, &spec.hostname),
        cmdline::param(cmdline::CHANNEL, cmdline::vsock_channel(AGENT_VSOCK_PORT)),
    );
    for arg in network
        .iter()
        .flat_map(super::network_args)
        .chain(mounts_param)
    {
        cmdline.push(' ');
        cmdline.push_str(&arg);
    }
    if !sandbox_vmm_kvm::console_debug() {
        // Each character the kernel prints is a port write the VMM
        // handles (a VM exit to user space): its info lines cost about
        // 1 s of a nested-PVM boot here. Warnings, errors and panics
        // still print; `SANDBOX_KVM_CONSOLE=1` keeps every line (and
        // echoes them) for debugging a boot.
        cmdline.push_str(" quiet");
    }
    if profile == CpuProfile::NestedPvm {
        // Every guest syscall is slow there: give output pumps time to
        // drain after a process exits.
        cmdline.push(' ');
        cmdline.push_str(&cmdline::param(cmdline::OUTPUT_GRACE_MS, 30_000));
    }
    let vm = KvmVm::start(KvmConfig {
        kernel,
        memory_mib: spec.memory_mib,
        cpus,
        cmdline,
        profile,
        console_log_bytes: CONSOLE_LOG_BYTES,
        devices,
    })
    .map_err(|e| Error::Kvm(e.to_string()))?;
    Ok(Box::new(KvmMachine {
        counters,
        console: vm.console().clone(),
        vm: Some(vm),
        vsock: Some(connector),
        network,
        id: next_id(),
        layout,
        memory_mounts: Vec::new(),
        memory_mib: spec.memory_mib,
        cpus: spec.cpus,
        emulated: profile == CpuProfile::NestedPvm,
    }))
}

/// Starts a machine from `snapshot`: each disk an overlay (in memory, up
/// to `opts.max_dirty_bytes`) over the snapshot's copy, read-only disks
/// the copy itself, a vsock that resets the guest's old connections, a
/// new host stack (from `opts.network`) on the snapshot's addresses.
pub(super) fn restore(
    snapshot: &Snapshot,
    opts: crate::RestoreOptions,
) -> Result<Box<dyn Machine>, Error> {
    let max_dirty_bytes = opts.max_dirty_bytes;
    let mut network_opts = opts.network;
    let mut network = None;
    let snap_err = |e: sandbox_vmm_kvm::snapshot::SnapshotError| Error::Snapshot(e.to_string());
    let dir = snapshot.dir();
    let state = MachineState::read(&dir.join(STATE_FILE)).map_err(snap_err)?;
    let record = snapshot.record();
    let mut devices: Vec<Box<dyn VirtioDevice>> = Vec::new();
    let mut names = Vec::new();
    let mut connector = None;
    let mut mounts = 0;
    let mut memory_mounts = Vec::new();
    for (i, kind) in record.devices.iter().enumerate() {
        match kind {
            DeviceRecord::Disk { read_only, base } => {
                let saved = state.disks.iter().find(|d| d.device == i).ok_or_else(|| {
                    Error::Snapshot(format!("the snapshot has no disk copy for device {i}"))
                })?;
                let path = dir.join(&saved.file);
                let open = |e: std::io::Error| {
                    Error::Snapshot(format!("opening the disk copy {}: {e}", path.display()))
                };
                let written = state.devices.get(i).and_then(|d| d.device_state.as_deref());
                let layered = base.is_some() && written.is_some();
                let saved: Box<dyn sandbox_rootfs::Disk> = match (base, written) {
                    // Only the written blocks were stored, over `base`.
                    (Some(base), Some(text)) => {
                        let written = serde_json::from_str(text).map_err(|e| {
                            Error::Snapshot(format!("device {i}'s written blocks: {e}"))
                        })?;
                        Box::new(
                            sandbox_rootfs::Layered::open(base.open()?, &path, written)
                                .map_err(open)?,
                        )
                    }
                    _ => Box::new(sandbox_rootfs::RawImage::open(&path).map_err(open)?),
                };
                let disk: Box<dyn sandbox_rootfs::Disk> = if *read_only {
                    saved
                } else {
                    Box::new(sandbox_rootfs::MemOverlay::new(saved, max_dirty_bytes))
                };
                let name = if i == 0 {
                    "sandbox-root".to_string()
                } else {
                    format!("sandbox-data{}", i - 1)
                };
                // A snapshot of this machine again stores only the blocks that
                // differ from the image (the layer's and the new ones).
                let device = Block::new(disk, &name);
                devices.push(Box::new(if layered {
                    device.snapshot_written_only()
                } else {
                    device
                }));
                names.push(if i == 0 {
                    "blk".to_string()
                } else {
                    format!("data{}", i - 1)
                });
            }
            DeviceRecord::Vsock => {
                let (vsock, c) =
                    Vsock::new(GUEST_CID).map_err(|e| Error::Protocol(format!("vsock: {e}")))?;
                devices.push(Box::new(vsock.reset_guest_connections()));
                names.push("vsock".into());
                connector = Some(c);
            }
            DeviceRecord::Rng => {
                devices.push(Box::new(Rng::new()));
                names.push("rng".into());
            }
            DeviceRecord::Fs(r) => {
                let saved = fs_state(&state, i, &r.path)?;
                devices.push(Box::new(crate::mount::bind_device(r, Some(saved))?));
                names.push(format!("fs{mounts}"));
                mounts += 1;
            }
            DeviceRecord::MemoryFs(r) => {
                let saved = fs_state(&state, i, &r.path)?;
                let fs = memory_image(&state, dir, i, &r.path)?;
                devices.push(Box::new(crate::mount::memory_device(
                    r,
                    fs.clone(),
                    Some(saved),
                )?));
                names.push(format!("fs{mounts}"));
                mounts += 1;
                memory_mounts.push((r.path.clone(), fs));
            }
            DeviceRecord::VirtualFs(r) => {
                let saved = fs_state(&state, i, &r.path)?;
                // `Snapshot::check_mounts` made sure it is there.
                let fs = opts
                    .mounts
                    .iter()
                    .find(|(p, _)| *p == r.path)
                    .and_then(|(_, m)| crate::mount::virtual_fs_of(m))
                    .map(|(fs, _)| fs)
                    .ok_or_else(|| {
                        Error::InvalidConfig(format!(
                            "the snapshot's guest has a virtual mount on {:?}: restore it with \
                             RestoreOptions::mount",
                            r.path
                        ))
                    })?;
                devices.push(Box::new(crate::mount::virtual_device(r, fs, Some(saved))?));
                names.push(format!("fs{mounts}"));
                mounts += 1;
            }
            DeviceRecord::Net(link) => {
                let mut o = network_opts.take().ok_or_else(|| {
                    Error::InvalidConfig(
                        "the snapshot's guest has a network: restore it with RestoreOptions::network(..)"
                            .into(),
                    )
                })?;
                o.config = link.into();
                let (net, n) = super::net_device(o)?;
                devices.push(net);
                names.push("net".into());
                network = Some(n);
            }
        }
    }
    let counters = names
        .into_iter()
        .zip(&devices)
        .filter_map(|(n, d)| Some((n, d.counters()?)))
        .collect();
    let memory = std::fs::File::open(dir.join(MEMORY_FILE)).map_err(|e| {
        Error::Snapshot(format!("opening the memory file in {}: {e}", dir.display()))
    })?;
    let vm = KvmVm::restore(&state, memory, devices, CONSOLE_LOG_BYTES).map_err(snap_err)?;
    Ok(Box::new(KvmMachine {
        counters,
        console: vm.console().clone(),
        vm: Some(vm),
        vsock: connector,
        network,
        id: next_id(),
        layout: record.devices.clone(),
        memory_mounts,
        memory_mib: record.memory_mib,
        cpus: record.cpus,
        emulated: super::kvm_profile() == CpuProfile::NestedPvm,
    }))
}

/// The saved file system state (the guest's ids) of the mount on `path`,
/// device `i`.
fn fs_state<'a>(state: &'a MachineState, i: usize, path: &str) -> Result<&'a str, Error> {
    state
        .devices
        .get(i)
        .and_then(|d| d.device_state.as_deref())
        .ok_or_else(|| {
            Error::Snapshot(format!(
                "the snapshot has no file system state for the mount on {path:?}"
            ))
        })
}

/// The memory mount on `path` (device `i`) as the snapshot saved it: a new
/// file system of its own.
fn memory_image(
    state: &MachineState,
    dir: &std::path::Path,
    i: usize,
    path: &str,
) -> Result<sandbox_fs::MemoryFs, Error> {
    let image = state.disks.iter().find(|d| d.device == i).ok_or_else(|| {
        Error::Snapshot(format!(
            "the snapshot has no content for the memory mount on {path:?}"
        ))
    })?;
    let file = dir.join(&image.file);
    std::fs::File::open(&file)
        .and_then(|f| sandbox_fs::MemoryFs::load_image(&mut std::io::BufReader::new(f)))
        .map_err(|e| Error::Snapshot(format!("{}: {e}", file.display())))
}

struct KvmMachine {
    /// Dropped by `kill`, releasing every thread and descriptor even while
    /// process handles still reference the machine.
    vm: Option<KvmVm>,
    console: sandbox_virtio::ConsoleLog,
    counters: Vec<(String, sandbox_virtio::CounterReader)>,
    vsock: Option<VsockConnector>,
    /// The host stack behind the guest's virtio-net device, if any.
    network: Option<Network>,
    id: String,
    /// The devices in bus order, as a snapshot records them.
    layout: Vec<DeviceRecord>,
    /// The memory mounts a restore loaded, by guest path.
    memory_mounts: Vec<(String, sandbox_fs::MemoryFs)>,
    /// Guest ring 0 runs emulated (nested PVM): everything in the guest,
    /// its power-off included, is one to two orders of magnitude slower.
    emulated: bool,
    memory_mib: u32,
    cpus: u32,
}

/// A host-unique id for a new machine.
fn next_id() -> String {
    format!(
        "kvm-{}-{}",
        std::process::id(),
        NEXT_ID.fetch_add(1, Ordering::Relaxed)
    )
}

/// How a vCPU exit ends the guest (also the text of boot errors).
fn stop_reason(exit: GuestExit) -> crate::StopReason {
    use crate::StopReason;
    match exit {
        GuestExit::PowerOff => StopReason::PowerOff,
        GuestExit::Reboot => StopReason::Reboot,
        GuestExit::Panic(line) => StopReason::Panic(line),
        GuestExit::Halted => StopReason::Crash("a vCPU halted with nothing to wake it".into()),
        GuestExit::Crashed(why) => StopReason::Crash(why),
        GuestExit::Stopped => StopReason::Killed,
    }
}

impl Machine for KvmMachine {
    fn id(&self) -> String {
        self.id.clone()
    }

    fn power_off_timeout(&self) -> Duration {
        // Measured under nested PVM on a slow day: the guest's sync and
        // read-only remount alone took 5 s, and a 10 s budget killed a
        // guest that was powering off cleanly.
        Duration::from_secs(if self.emulated { 120 } else { 10 })
    }

    fn connect_control(&mut self, timeout: Duration) -> std::io::Result<UnixStream> {
        let (Some(vm), Some(vsock)) = (&self.vm, &self.vsock) else {
            return Err(std::io::Error::new(
                std::io::ErrorKind::NotConnected,
                "the VM was stopped",
            ));
        };
        // Refused attempts cost the guest work: poll gently.
        let retry = Duration::from_millis(20);
        vsock.connect_when_listening(AGENT_VSOCK_PORT, timeout, retry, || {
            vm.exited().map(|exit| stop_reason(exit).to_string())
        })
    }

    fn console_tail(&self, lines: usize) -> String {
        self.console.tail(lines)
    }

    fn wait_exit(&mut self, timeout: Duration) -> bool {
        self.vm
            .as_ref()
            .is_none_or(|vm| vm.wait_exit(timeout).is_some())
    }

    fn kill(&mut self) {
        if let Some(mut vm) = self.vm.take() {
            vm.stop();
        }
        self.vsock = None;
        self.network = None;
    }

    fn network_stats(&self) -> Option<sandbox_net::Stats> {
        self.network.as_ref().map(Network::stats)
    }

    fn memory_mounts(&self) -> Vec<(String, sandbox_fs::MemoryFs)> {
        self.memory_mounts.clone()
    }

    fn network_ca(&self) -> Option<String> {
        self.network.as_ref().map(super::ca_body)
    }

    fn device_counters(&self) -> Vec<(String, sandbox_virtio::DeviceCounters)> {
        sandbox_virtio::counters::read_named(&self.counters)
    }

    fn console_dropped_bytes(&self) -> u64 {
        self.console.dropped_bytes()
    }

    fn pause(&mut self) -> Result<(), Error> {
        let vm = self.vm.as_ref().ok_or_else(stopped)?;
        vm.pause(PAUSE_TIMEOUT).map_err(|e| {
            Error::Kvm(format!(
                "{e}: {}",
                std::error::Error::source(&e)
                    .map(ToString::to_string)
                    .unwrap_or_default()
            ))
        })
    }

    fn resume(&mut self) -> Result<(), Error> {
        self.vm.as_ref().ok_or_else(stopped)?.resume();
        Ok(())
    }

    fn is_paused(&self) -> bool {
        self.vm.as_ref().is_some_and(KvmVm::is_paused)
    }

    fn snapshot(&mut self, dir: &std::path::Path) -> Result<MachineSnapshot, Error> {
        let vm = self.vm.as_ref().ok_or_else(stopped)?;
        let info = vm
            .snapshot(dir)
            .map_err(|e| Error::Snapshot(e.to_string()))?;
        Ok(MachineSnapshot {
            devices: self.layout.clone(),
            memory_mib: self.memory_mib,
            cpus: self.cpus,
            ram_bytes: info.ram_bytes,
            memory_bytes: info.memory_bytes,
            disk_bytes: info.disks.iter().map(|d| d.stored).sum(),
            profile: super::kvm_profile_name(),
        })
    }

    fn stop_reason(&mut self) -> Option<crate::StopReason> {
        match &self.vm {
            Some(vm) => vm.exited().map(stop_reason),
            None => Some(crate::StopReason::Killed),
        }
    }
}
