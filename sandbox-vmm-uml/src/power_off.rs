//! Waiting for a UML guest that was asked to power off.
//!
//! The guest kernel prints `reboot: Power down` once the agent has synced,
//! remounted its root read-only and called `reboot(2)`: everything the guest
//! owes its disks has been written by then. What UML does next is its own
//! teardown: `machine_power_off` runs the UML exit calls, and `virtio_uml`'s
//! unregisters every vhost-user device (del_gendisk, the ext4 shutdown that
//! follows it, vring-disable round trips to our device threads). That path
//! runs with `kmalloc_ok = 0` after the scheduler's other users are gone and
//! was seen to hang once in a CI run (the console ended in the ext4
//! shutdown's journal abort, the process never exited, and the shutdown was
//! reported as a kill). So after the power-down line the wait allows the
//! teardown [`TEARDOWN_GRACE`] and then treats the guest as powered off: the
//! caller kills the process, which the teardown would have ended anyway.

use std::time::{Duration, Instant};

use crate::UmlVm;

/// The line `kernel_power_off` prints before `machine_power_off`.
pub const POWER_DOWN_LINE: &str = "reboot: Power down";

/// How long UML's own teardown may take after the power-down line.
pub const TEARDOWN_GRACE: Duration = Duration::from_secs(2);

/// Whether a console tail shows the kernel's power-down point.
pub fn reached_power_down(console_tail: &str) -> bool {
    console_tail
        .lines()
        .any(|l| l.trim_end() == POWER_DOWN_LINE)
}

/// How a wait for power-off ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PowerOff {
    /// The kernel process exited.
    Exited,
    /// The kernel passed its power-down point, and its teardown did not
    /// end within [`TEARDOWN_GRACE`]; the process is still there.
    TeardownStuck,
    /// Neither within the timeout.
    TimedOut,
}

impl UmlVm {
    /// Waits up to `timeout` for a guest that was asked to power off (see
    /// the module docs for why a stuck teardown counts as powered off).
    pub fn wait_power_off(&mut self, timeout: Duration) -> PowerOff {
        let deadline = Instant::now() + timeout;
        let mut powered_down: Option<Instant> = None;
        loop {
            if self.try_wait().is_some() {
                return PowerOff::Exited;
            }
            let now = Instant::now();
            if powered_down.is_none() && reached_power_down(&self.console().tail(60)) {
                powered_down = Some(now);
            }
            if powered_down.is_some_and(|t| now.duration_since(t) >= TEARDOWN_GRACE) {
                return PowerOff::TeardownStuck;
            }
            if now >= deadline {
                return PowerOff::TimedOut;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_power_down_line_is_matched_as_a_whole_line() {
        let console = "sandbox-guest: shutdown requested\n\
                       EXT4-fs (vda): re-mounted.\n\
                       reboot: Power down\n\
                       EXT4-fs (vda): shut down requested (2)\n";
        assert!(reached_power_down(console));
        assert!(reached_power_down("reboot: Power down\r"));
        assert!(!reached_power_down("reboot: Restarting system\n"));
        assert!(!reached_power_down("echo reboot: Power down later\n"));
    }
}
