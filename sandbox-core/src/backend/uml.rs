//! The User-Mode Linux backend adapter.

use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use sandbox_protocol::AGENT_VSOCK_PORT;

use sandbox_net::{BessListener, Network, NetworkOptions};
use sandbox_vmm_uml::{DataDisk as UmlDisk, UmlConfig, UmlNet, UmlVm};

use super::{Machine, MachineSpec};
use crate::artifacts;
use crate::{DataDisk, Error};

/// Console bytes kept for error reports.
const CONSOLE_LOG_BYTES: usize = 256 << 10;

pub(super) fn start(spec: MachineSpec) -> Result<Box<dyn Machine>, Error> {
    let kernel = artifacts::manifest_path("kernel-uml", "UML kernel")?;
    let root = spec.rootfs.open(Some(spec.events.clone()))?;
    let mut data_disks = Vec::new();
    for disk in &spec.disks {
        data_disks.push(match disk {
            DataDisk::Rootfs(r) => UmlDisk::Served(r.open(Some(spec.events.clone()))?),
            DataDisk::VhostUser(path) => UmlDisk::External(path.clone()),
        });
    }
    let mut extra_args: Vec<String> = crate::mount::agent_param(&spec.mounts)
        .into_iter()
        .collect();
    let mut file_systems = Vec::new();
    let mut external_file_systems = Vec::new();
    for m in spec.mounts {
        match m.served {
            crate::mount::Served::Device(d, _) => file_systems.push(d),
            crate::mount::Served::External(socket) => external_file_systems.push(socket),
        }
    }
    let mut net = None;
    let mut network = None;
    if let Some(opts) = spec.network {
        let (uml_net, started, args) = start_network(opts)?;
        net = Some(uml_net);
        network = Some(started);
        extra_args.extend(args);
    }
    let vm = UmlVm::start(UmlConfig {
        kernel,
        memory_mib: spec.memory_mib,
        root,
        data_disks,
        file_systems,
        external_file_systems,
        hostname: spec.hostname,
        console_log_bytes: CONSOLE_LOG_BYTES,
        agent_port: AGENT_VSOCK_PORT,
        net,
        extra_args,
        jail: spec.uml_jail,
    })?;
    Ok(Box::new(UmlMachine(vm, network)))
}

static NEXT_NET: AtomicU64 = AtomicU64::new(0);

/// Listens for the guest's `bess` link and starts the host stack on it;
/// returns the interface, the network and the agent's parameters.
fn start_network(mut opts: NetworkOptions) -> Result<(UmlNet, GuestNetwork, Vec<String>), Error> {
    // A fresh directory only we can enter: no other local user can reach
    // (or pre-empt) the socket the guest kernel connects to.
    let id = format!(
        "sbx-net-{}-{}",
        std::process::id(),
        NEXT_NET.fetch_add(1, Ordering::Relaxed)
    );
    let tmp = std::env::temp_dir();
    let dir = sandbox_vmm_uml::workdir::create(&tmp, &id)
        .map_err(|e| Error::Net(format!("creating {}: {e}", tmp.join(&id).display())))?;
    let path = dir.join("link.sock");
    let listener = BessListener::bind(&path).map_err(|e| {
        let _ = std::fs::remove_dir(&dir);
        Error::Net(format!("listening on {}: {e}", path.display()))
    })?;
    opts.config.mtu = super::LINK_MTU;
    let (mac, mtu) = (opts.config.guest_mac_text(), opts.config.mtu);
    let network = Network::start_bess(listener, opts).map_err(|e| {
        let _ = std::fs::remove_dir_all(&dir);
        Error::Net(e.to_string())
    })?;
    let args = super::network_args(&network);
    let link = UmlNet {
        socket: path,
        mac,
        mtu,
    };
    Ok((link, GuestNetwork { network, dir }, args))
}

/// A UML guest's network and the private directory of its link socket.
struct GuestNetwork {
    network: Network,
    dir: std::path::PathBuf,
}

impl Drop for GuestNetwork {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The guest and, if it has one, its network (stopped with the guest).
struct UmlMachine(UmlVm, Option<GuestNetwork>);

impl Machine for UmlMachine {
    fn id(&self) -> String {
        self.0.id().to_string()
    }

    fn connect_control(&mut self, timeout: Duration) -> std::io::Result<UnixStream> {
        self.0.connect(AGENT_VSOCK_PORT, timeout)
    }

    fn console_tail(&self, lines: usize) -> String {
        self.0.console().tail(lines)
    }

    fn wait_exit(&mut self, timeout: Duration) -> bool {
        // A teardown stuck after the kernel's power-down point counts as
        // powered off: the guest's disks were synced before it.
        match self.0.wait_power_off(timeout) {
            sandbox_vmm_uml::PowerOff::Exited => true,
            sandbox_vmm_uml::PowerOff::TeardownStuck => {
                log::warn!(
                    "the UML kernel passed its power-down point but its teardown did not end \
                     within {:?}; killing it",
                    sandbox_vmm_uml::TEARDOWN_GRACE
                );
                true
            }
            sandbox_vmm_uml::PowerOff::TimedOut => false,
        }
    }

    fn kill(&mut self) {
        self.0.kill();
        self.1 = None;
    }

    fn network_stats(&self) -> Option<sandbox_net::Stats> {
        self.1.as_ref().map(|n| n.network.stats())
    }

    fn device_counters(&self) -> Vec<(String, sandbox_virtio::DeviceCounters)> {
        self.0.device_counters()
    }

    fn console_dropped_bytes(&self) -> u64 {
        self.0.console().dropped_bytes()
    }

    fn pause(&mut self) -> Result<(), Error> {
        Err(uml_cannot_pause("pause"))
    }

    fn resume(&mut self) -> Result<(), Error> {
        Err(uml_cannot_pause("resume"))
    }

    fn stop_reason(&mut self) -> Option<crate::StopReason> {
        // A panicking or rebooting UML kernel may still be running (it
        // re-executes itself to reboot): the console says so first.
        if let Some(reason) = console_reason(&self.0.console().tail(40)) {
            return Some(reason);
        }
        let status = self.0.try_wait()?;
        // Its last lines may still have been in the console pipe.
        self.0.drain_console(Duration::from_secs(1));
        let console = self.0.console().tail(40);
        Some(console_reason(&console).unwrap_or_else(|| exit_reason(status, &console)))
    }
}

/// A panic or a reboot the console shows.
fn console_reason(console: &str) -> Option<crate::StopReason> {
    if let Some(line) = crate::stop::panic_line(console) {
        return Some(crate::StopReason::Panic(line));
    }
    console
        .contains("reboot: Restarting system")
        .then_some(crate::StopReason::Reboot)
}

/// Why a UML kernel process that exited did so, from its status and its
/// console's last lines (panics and reboots are read off the console
/// before this).
fn exit_reason(status: std::process::ExitStatus, console: &str) -> crate::StopReason {
    use crate::StopReason;
    use std::os::unix::process::ExitStatusExt;
    let aborted = status.code() == Some(sandbox_vmm_uml::ABORT_EXIT_CODE)
        || status.signal() == Some(libc::SIGABRT);
    if status.success() {
        return StopReason::PowerOff;
    }
    if sandbox_vmm_uml::reached_power_down(console) {
        // The guest powered off (its disks were synced before this line);
        // what failed is UML's own teardown after it, as with a teardown
        // that hangs (`wait_exit`).
        log::warn!(
            "the UML kernel passed its power-down point and then ended with {status} in its \
             teardown; reporting the power-off the guest asked for. Console tail:\n{}",
            sandbox_virtio::last_lines(console, 8)
        );
        return StopReason::PowerOff;
    }
    let what = if aborted {
        "the UML kernel aborted (a fatal fault in the kernel)".to_string()
    } else {
        match status.signal() {
            Some(libc::SIGSYS) => "the UML kernel process made a host system call outside its \
                 jail's seccomp allow-list and was killed (SIGSYS; the host kernel log's audit \
                 type=1326 line names the call); please report the guest workload"
                .to_string(),
            Some(sig) => format!("the UML kernel process was killed by signal {sig}"),
            None => format!("the UML kernel process exited with {status}"),
        }
    };
    StopReason::Crash(format!(
        "{what}; console tail:\n{}",
        sandbox_virtio::last_lines(console, 8)
    ))
}

/// UML runs each guest address space in a host process under its kernel's
/// ptrace: a stop signal to those processes reaches the guest kernel as an
/// unexpected signal (it kills the guest process), and stopping the kernel
/// alone leaves a busy guest process running. Without a cgroup freezer
/// there is no sound pause.
fn uml_cannot_pause(what: &'static str) -> Error {
    Error::Unsupported {
        what,
        backend: "uml",
        why: "UML guest processes are host processes traced by the guest kernel, which no signal \
              stops soundly; pause and snapshots need the KVM backend (BackendKind::Kvm)"
            .into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::StopReason;
    use std::os::unix::process::ExitStatusExt;
    use std::process::ExitStatus;

    const RUNNING: &str = "sandbox-guest: ready\nsome output\n";
    const POWERED_DOWN: &str = "sandbox-guest: shutdown requested\nreboot: Power down\n";

    fn crash(r: StopReason) -> String {
        match r {
            StopReason::Crash(why) => why,
            other => panic!("not a crash: {other:?}"),
        }
    }

    #[test]
    fn exit_statuses_are_told_apart() {
        let exited = |code: i32| ExitStatus::from_raw(code << 8);
        let signalled = |sig: i32| ExitStatus::from_raw(sig);
        assert_eq!(exit_reason(exited(0), RUNNING), StopReason::PowerOff);
        let why = crash(exit_reason(exited(127), RUNNING));
        assert!(why.starts_with("the UML kernel aborted"), "{why}");
        assert!(why.ends_with("some output"), "{why}");
        let why = crash(exit_reason(signalled(libc::SIGABRT), RUNNING));
        assert!(why.starts_with("the UML kernel aborted"), "{why}");
        let why = crash(exit_reason(signalled(libc::SIGSYS), RUNNING));
        assert!(why.contains("seccomp allow-list"), "{why}");
        let why = crash(exit_reason(signalled(libc::SIGKILL), RUNNING));
        assert!(why.contains("signal 9"), "{why}");
        let why = crash(exit_reason(exited(3), RUNNING));
        assert!(why.contains("exit status: 3"), "{why}");
    }

    #[test]
    fn a_teardown_failure_after_the_power_down_point_is_the_power_off() {
        for status in [
            ExitStatus::from_raw(127 << 8),
            ExitStatus::from_raw(libc::SIGSYS),
        ] {
            assert_eq!(exit_reason(status, POWERED_DOWN), StopReason::PowerOff);
        }
    }
}
