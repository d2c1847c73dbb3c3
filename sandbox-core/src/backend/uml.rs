//! The User-Mode Linux backend adapter.

use std::os::unix::net::UnixStream;
use std::time::Duration;

use sandbox_rootfs::MemOverlay;
use sandbox_vmm_uml::{UmlConfig, UmlVm};

use super::{Machine, MachineSpec};
use crate::artifacts;
use crate::Error;

/// Console bytes kept for error reports.
const CONSOLE_LOG_BYTES: usize = 256 << 10;
/// Writes the in-memory overlay accepts before failing with EIO.
const MAX_DIRTY_BYTES: u64 = 64 << 20;

pub(super) fn start(spec: MachineSpec) -> Result<Box<dyn Machine>, Error> {
    let kernel = artifacts::manifest_path("kernel-uml", "UML kernel")?;
    let root = MemOverlay::open(&spec.image.path, MAX_DIRTY_BYTES).map_err(Error::io(format!(
        "opening image {}",
        spec.image.path.display()
    )))?;
    let vm = UmlVm::start(UmlConfig {
        kernel,
        memory_mib: spec.memory_mib,
        root: Box::new(root),
        hostname: spec.hostname,
        console_log_bytes: CONSOLE_LOG_BYTES,
    })?;
    Ok(Box::new(UmlMachine(vm)))
}

struct UmlMachine(UmlVm);

impl Machine for UmlMachine {
    fn id(&self) -> String {
        self.0.id().to_string()
    }

    fn take_control(&mut self) -> Option<UnixStream> {
        self.0.take_control()
    }

    fn console_tail(&self, lines: usize) -> String {
        self.0.console().tail(lines)
    }

    fn has_exited(&mut self) -> bool {
        self.0.try_wait().is_some()
    }

    fn wait_exit(&mut self, timeout: Duration) -> bool {
        self.0.wait_timeout(timeout).is_some()
    }

    fn kill(&mut self) {
        self.0.kill();
    }
}
