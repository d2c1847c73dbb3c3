//! How guest processes end.

use std::fmt;

/// A Linux signal number, with names for the common ones.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Signal(pub i32);

impl Signal {
    /// SIGHUP.
    pub const HUP: Signal = Signal(1);
    /// SIGINT.
    pub const INT: Signal = Signal(2);
    /// SIGKILL.
    pub const KILL: Signal = Signal(9);
    /// SIGUSR1.
    pub const USR1: Signal = Signal(10);
    /// SIGUSR2.
    pub const USR2: Signal = Signal(12);
    /// SIGTERM.
    pub const TERM: Signal = Signal(15);

    /// The conventional name, e.g. `SIGTERM`.
    pub fn name(self) -> Option<&'static str> {
        Some(match self.0 {
            1 => "SIGHUP",
            2 => "SIGINT",
            3 => "SIGQUIT",
            6 => "SIGABRT",
            9 => "SIGKILL",
            10 => "SIGUSR1",
            12 => "SIGUSR2",
            13 => "SIGPIPE",
            14 => "SIGALRM",
            15 => "SIGTERM",
            _ => return None,
        })
    }
}

impl fmt::Display for Signal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.name() {
            Some(n) => f.write_str(n),
            None => write!(f, "signal {}", self.0),
        }
    }
}

/// How a guest process ended: exactly one of `code` and `signal` is set.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ExitStatus {
    /// Exit code, when it exited normally (124 after an exec timeout).
    pub code: Option<i32>,
    /// The signal that ended it.
    pub signal: Option<Signal>,
}

impl ExitStatus {
    /// Exited with code 0.
    pub fn success(&self) -> bool {
        self.code == Some(0)
    }

    pub(crate) fn from_wire(code: Option<i32>, signal: Option<i32>) -> Self {
        Self {
            code,
            signal: signal.map(Signal),
        }
    }
}

/// Result of an exec: status and all output.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Output {
    /// How the process ended.
    pub status: ExitStatus,
    /// Everything it wrote to stdout.
    pub stdout: Vec<u8>,
    /// Everything it wrote to stderr; after a timeout, it ends with the
    /// line `sandbox: exec timed out after N ms`.
    pub stderr: Vec<u8>,
    /// The timeout that killed it, if one did.
    pub(crate) timed_out: Option<std::time::Duration>,
}

impl Output {
    /// Whether the exec's timeout killed the process (its status is then
    /// exit code 124, as `timeout(1)` reports).
    pub fn timed_out(&self) -> bool {
        self.timed_out.is_some()
    }

    /// The timeout that killed the process, if one did.
    pub fn timeout(&self) -> Option<std::time::Duration> {
        self.timed_out
    }
}
