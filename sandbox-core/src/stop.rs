//! Telling the host when the guest ends: a watcher per VM notices the
//! agent's channel closing, waits briefly for the backend to say how the
//! guest stopped, releases the backend's host processes and threads at
//! once, and reports [`VmEvent::Stopped`] exactly once (also for a
//! host-side shutdown or drop).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::client::Ended;
use crate::vm::{lock, SharedMachine};
use crate::VmEvent;

/// How the guest stopped.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum StopReason {
    /// The guest powered off (`Vm::shutdown`, or `poweroff` inside).
    PowerOff,
    /// The guest asked for a reboot; a sandbox does not restart, so this
    /// ends it.
    Reboot,
    /// The guest kernel panicked: the panic line from the console.
    Panic(String),
    /// The guest or its VMM failed otherwise (a triple fault, the UML
    /// kernel process killed by a signal, the agent's channel closing
    /// while the guest kept running): what is known.
    Crash(String),
    /// The host stopped it: dropped, or killed after a shutdown timed out.
    Killed,
}

impl std::fmt::Display for StopReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::PowerOff => f.write_str("the guest powered off"),
            Self::Reboot => f.write_str("the guest rebooted"),
            Self::Panic(line) => write!(f, "the guest kernel panicked: {line}"),
            Self::Crash(why) => write!(f, "the guest crashed: {why}"),
            Self::Killed => f.write_str("the host stopped the guest"),
        }
    }
}

/// The panic line of a console tail, if the kernel panicked.
pub(crate) fn panic_line(console: &str) -> Option<String> {
    console
        .lines()
        .rev()
        .find_map(|l| l.split_once("Kernel panic - not syncing: "))
        .map(|(_, why)| why.trim().to_string())
}

/// Sends `VmEvent::Stopped` at most once per VM.
pub(crate) struct StopReport {
    sent: AtomicBool,
    events: tokio::sync::broadcast::Sender<VmEvent>,
}

impl StopReport {
    pub(crate) fn new(events: tokio::sync::broadcast::Sender<VmEvent>) -> Arc<Self> {
        Arc::new(Self {
            sent: AtomicBool::new(false),
            events,
        })
    }

    /// Reports `reason` unless a stop was reported already.
    pub(crate) fn report(&self, reason: StopReason) {
        if !self.sent.swap(true, Ordering::AcqRel) {
            log::info!("VM stopped: {reason}");
            let _ = self.events.send(VmEvent::Stopped { reason });
        }
    }

    pub(crate) fn reported(&self) -> bool {
        self.sent.load(Ordering::Acquire)
    }
}

/// How long the backend may take to show how the guest stopped after the
/// agent's channel closed.
const SETTLE: Duration = Duration::from_secs(5);

/// Watches one VM: when the agent's channel closes (and no host-side stop
/// was reported), learns the reason, kills what is left of the machine and
/// reports it.
pub(crate) fn watch(mut ended: Ended, machine: SharedMachine, report: Arc<StopReport>) {
    tokio::spawn(async move {
        if ended.wait_for(|e| *e).await.is_err() || report.reported() {
            return;
        }
        let deadline = Instant::now() + SETTLE;
        let reason = loop {
            {
                // Checked under the machine lock: a host-side shutdown or
                // drop kills and reports while holding it.
                let mut m = lock(&machine);
                if report.reported() {
                    return;
                }
                if let Some(r) = m.stop_reason() {
                    break r;
                }
            }
            if Instant::now() >= deadline {
                break StopReason::Crash(
                    "the agent's control channel closed while the guest kept running".into(),
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        let m = machine.clone();
        let _ = tokio::task::spawn_blocking(move || {
            let mut m = lock(&m);
            m.kill();
            report.report(reason);
        })
        .await;
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_last_panic_line_is_the_reason() {
        let console = "[ 1.0] boot\n[ 2.0] Kernel panic - not syncing: first\n[ 2.1] Kernel panic - not syncing: sysrq triggered crash \n";
        assert_eq!(
            panic_line(console).as_deref(),
            Some("sysrq triggered crash")
        );
        assert_eq!(panic_line("reboot: Power down\n"), None);
    }

    #[tokio::test]
    async fn a_stop_is_reported_once() {
        let (tx, mut rx) = tokio::sync::broadcast::channel(4);
        let r = StopReport::new(tx);
        r.report(StopReason::Reboot);
        r.report(StopReason::Killed);
        assert!(matches!(
            rx.recv().await,
            Ok(VmEvent::Stopped {
                reason: StopReason::Reboot
            })
        ));
        assert!(rx.try_recv().is_err());
    }
}
