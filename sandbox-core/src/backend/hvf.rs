//! The macOS backend's adapter: `sandbox-vmm-hvf`'s Hypervisor.framework
//! VMM with `sandbox-virtio`'s devices on its virtio-mmio transports (the
//! root and data disks, the agent's vsock channel, virtio-rng), booting
//! the arm64 kernel and images that `BackendKind::QemuArm64` verifies on
//! Linux hosts.
//!
//! Type-checked and linted for `aarch64-apple-darwin` here; it has never
//! run (there is no Mac on this project's machines). Not yet: mounts
//! (virtio-fs is Linux-only), pause and snapshots. docs/hvf-backend.md.

use std::io;
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use sandbox_protocol::AGENT_VSOCK_PORT;
use sandbox_virtio::block::Block;
use sandbox_virtio::rng::Rng;
use sandbox_virtio::vsock::{Vsock, VsockConnector};
use sandbox_virtio::{ConsoleLog, VirtioDevice};
use sandbox_vmm_hvf::hvf::{Machine as HvfVm, Outcome};
use sandbox_vmm_hvf::layout::Layout;

use super::{Machine, MachineSpec};
use crate::{artifacts, Error, StopReason};

const CONSOLE_LOG_BYTES: usize = 256 << 10;
const GUEST_CID: u64 = 3;

static NEXT_ID: AtomicU64 = AtomicU64::new(0);

fn unsupported(what: &'static str, why: &str) -> Error {
    Error::Unsupported {
        what,
        backend: "hvf",
        why: why.into(),
    }
}

/// Starts a guest.
pub(crate) fn start(spec: MachineSpec) -> Result<Box<dyn Machine>, Error> {
    super::arm64::check_image(spec.rootfs.image(), "BackendKind::Hvf")?;
    let kernel_path = artifacts::manifest_path("kernel-arm64", "arm64 kernel")?;
    let kernel = std::fs::read(&kernel_path)
        .map_err(|e| Error::Protocol(format!("reading {}: {e}", kernel_path.display())))?;
    let root = spec.rootfs.open(Some(spec.events.clone()))?;
    let read_only = root.read_only();
    let mut named: Vec<(String, Box<dyn VirtioDevice>)> =
        vec![("blk".into(), Box::new(Block::new(root, "sandbox-root")))];
    for (name, block) in super::data_disks(&spec)? {
        named.push((name, Box::new(block)));
    }
    let (vsock, connector) = Vsock::new(GUEST_CID)
        .map_err(|e| Error::Protocol(format!("creating the vsock device: {e}")))?;
    named.push(("vsock".into(), Box::new(vsock)));
    named.push(("rng".into(), Box::new(Rng::new())));
    let network = match spec.network {
        Some(mut opts) => {
            // The device's frames cross a datagram socket pair, whose
            // messages macOS limits to 2 KiB by default
            // (`net.local.dgram.maxdgram`): standard frames only.
            opts.config.mtu = 1500;
            let (net, network) = super::net_device(opts)?;
            named.push(("net".into(), net));
            Some(network)
        }
        None => None,
    };
    let counters = named
        .iter()
        .filter_map(|(name, d)| Some((name.clone(), d.counters()?)))
        .collect();
    let devices: Vec<_> = named.into_iter().map(|(_, d)| d).collect();
    let layout = Layout::new(spec.cpus, u64::from(spec.memory_mib), devices.len())
        .map_err(|e| Error::InvalidConfig(e.to_string()))?;
    let extra: Vec<String> = network.iter().flat_map(super::network_args).collect();
    let bootargs = super::arm64::bootargs(read_only, &spec.hostname, &extra);
    let console = ConsoleLog::new(CONSOLE_LOG_BYTES);
    let vm = HvfVm::boot(layout, &kernel, &bootargs, devices, console.clone()).map_err(|e| {
        Error::BackendUnavailable {
            requested: super::BackendKind::Hvf.name(),
            reason: e.to_string(),
        }
    })?;
    let n = NEXT_ID.fetch_add(1, Ordering::Relaxed);
    Ok(Box::new(HvfMachine {
        id: format!("sbx-hvf-{}-{n}", std::process::id()),
        vm: Some(vm),
        vsock: connector,
        console,
        counters,
        network,
        outcome: None,
    }))
}

/// A running guest. Dropping it stops the vCPUs and the devices.
struct HvfMachine {
    id: String,
    vm: Option<HvfVm>,
    vsock: VsockConnector,
    console: ConsoleLog,
    counters: Vec<(String, sandbox_virtio::CounterReader)>,
    network: Option<sandbox_net::Network>,
    /// How the guest ended, once known.
    outcome: Option<Outcome>,
}

impl HvfMachine {
    fn poll_outcome(&mut self, timeout: Duration) -> Option<&Outcome> {
        if self.outcome.is_none() {
            self.outcome = self.vm.as_ref().and_then(|vm| vm.wait_timeout(timeout));
        }
        self.outcome.as_ref()
    }
}

impl Machine for HvfMachine {
    fn id(&self) -> String {
        self.id.clone()
    }

    fn connect_control(&mut self, timeout: Duration) -> io::Result<UnixStream> {
        let vsock = self.vsock.clone();
        vsock.connect_when_listening(AGENT_VSOCK_PORT, timeout, Duration::from_millis(5), || {
            self.poll_outcome(Duration::ZERO)
                .map(|o| format!("the guest stopped before its agent listened ({o:?})"))
        })
    }

    fn console_tail(&self, lines: usize) -> String {
        self.console.tail(lines)
    }

    fn wait_exit(&mut self, timeout: Duration) -> bool {
        self.poll_outcome(timeout).is_some()
    }

    fn kill(&mut self) {
        if let Some(vm) = self.vm.take() {
            vm.stop();
            if self.outcome.is_none() {
                self.outcome = vm.wait_timeout(Duration::from_secs(1));
            }
            // Joins the vCPU threads, stops the devices, frees guest RAM.
            drop(vm);
        }
    }

    fn stop_reason(&mut self) -> Option<StopReason> {
        let console = self.console.tail(40);
        if let Some(line) = crate::stop::panic_line(&console) {
            return Some(StopReason::Panic(line));
        }
        Some(match self.poll_outcome(Duration::ZERO)?.clone() {
            Outcome::PowerOff => StopReason::PowerOff,
            Outcome::Reset => StopReason::Reboot,
            Outcome::Stopped => StopReason::Killed,
            Outcome::Crash(why) => StopReason::Crash(format!(
                "{why}; console:\n{}",
                sandbox_virtio::last_lines(&console, 8)
            )),
        })
    }

    fn network_stats(&self) -> Option<sandbox_net::Stats> {
        self.network.as_ref().map(sandbox_net::Network::stats)
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
        Err(unsupported(
            "pause",
            "the macOS backend cannot pause guests yet",
        ))
    }

    fn resume(&mut self) -> Result<(), Error> {
        Err(unsupported(
            "resume",
            "the macOS backend cannot pause guests yet",
        ))
    }
}

impl Drop for HvfMachine {
    fn drop(&mut self) {
        self.kill();
    }
}
