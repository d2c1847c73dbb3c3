//! The KVM backend: `sandbox-vmm-kvm` boots the x86_64 kernel with the root
//! disk, data disks, the agent's vsock, virtio-rng and (with a network)
//! virtio-net on virtio-mmio.

use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use sandbox_net::Network;
use sandbox_protocol::{cmdline, AGENT_VSOCK_PORT};
use sandbox_virtio::block::Block;
use sandbox_virtio::net::Net;
use sandbox_virtio::rng::Rng;
use sandbox_virtio::vsock::{Vsock, VsockConnector};
use sandbox_virtio::VirtioDevice;
use sandbox_vmm_kvm::{CpuProfile, GuestExit, KvmConfig, KvmVm};

use super::{Machine, MachineSpec};
use crate::{artifacts, DataDisk, Error};

const CONSOLE_LOG_BYTES: usize = 256 << 10;
const GUEST_CID: u64 = 3;

static NEXT_ID: AtomicU64 = AtomicU64::new(0);

pub(super) fn start(spec: MachineSpec, profile: CpuProfile) -> Result<Box<dyn Machine>, Error> {
    let kernel = artifacts::manifest_path("kernel-x86_64", "x86_64 kernel")?;
    let root = spec.rootfs.open(Some(spec.events.clone()))?;
    let read_only = root.read_only();
    let mut devices: Vec<Box<dyn VirtioDevice>> = vec![Box::new(Block::new(root, "sandbox-root"))];
    let mut names = vec!["blk".to_string()];
    for (i, disk) in spec.disks.iter().enumerate() {
        match disk {
            DataDisk::Rootfs(r) => {
                let d = r.open(Some(spec.events.clone()))?;
                devices.push(Box::new(Block::new(d, &format!("sandbox-data{i}"))));
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
            crate::mount::Served::Device(d) => devices.push(Box::new(d)),
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
    let network = match spec.network {
        Some(mut opts) => {
            // Our virtio-net device carries standard frames only.
            opts.config.mtu = 1500;
            let (net, host_end) = Net::new(opts.config.guest_mac)
                .map_err(|e| Error::Net(format!("creating the virtio-net device: {e}")))?;
            devices.push(Box::new(net));
            names.push("net".into());
            Some(Network::start_seqpacket(host_end, opts).map_err(|e| Error::Net(e.to_string()))?)
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
        "root=/dev/vda rootfstype=ext4 rootwait {} init=/sbin/sandbox-guest {} {}",
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
    let id = format!(
        "kvm-{}-{}",
        std::process::id(),
        NEXT_ID.fetch_add(1, Ordering::Relaxed)
    );
    Ok(Box::new(KvmMachine {
        counters,
        console: vm.console().clone(),
        vm: Some(vm),
        vsock: Some(connector),
        network,
        id,
    }))
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

    fn device_counters(&self) -> Vec<(String, sandbox_virtio::DeviceCounters)> {
        sandbox_virtio::counters::read_named(&self.counters)
    }

    fn console_dropped_bytes(&self) -> u64 {
        self.console.dropped_bytes()
    }

    fn stop_reason(&mut self) -> Option<crate::StopReason> {
        match &self.vm {
            Some(vm) => vm.exited().map(stop_reason),
            None => Some(crate::StopReason::Killed),
        }
    }
}
