//! The User-Mode Linux backend adapter.

use std::os::unix::net::UnixStream;
use std::time::Duration;

use sandbox_protocol::AGENT_VSOCK_PORT;
use sandbox_vmm_uml::{DataDisk as UmlDisk, UmlConfig, UmlVm};

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
    let vm = UmlVm::start(UmlConfig {
        kernel,
        memory_mib: spec.memory_mib,
        root,
        data_disks,
        hostname: spec.hostname,
        console_log_bytes: CONSOLE_LOG_BYTES,
        agent_port: AGENT_VSOCK_PORT,
    })?;
    Ok(Box::new(UmlMachine(vm)))
}

struct UmlMachine(UmlVm);

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
        self.0.wait_timeout(timeout).is_some()
    }

    fn kill(&mut self) {
        self.0.kill();
    }
}
