//! Pausing a guest: every vCPU thread leaves `KVM_RUN` and parks until the
//! VM resumes or stops.

use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::Duration;

#[derive(Debug, Default)]
struct State {
    paused: bool,
    /// vCPU threads waiting in [`Gate::park`].
    parked: usize,
    /// Set once the VM stops: parked threads leave and never park again.
    stopped: bool,
}

/// Shared by the VM and its vCPU threads.
#[derive(Debug, Default)]
pub struct Gate {
    state: Mutex<State>,
    changed: Condvar,
}

impl Gate {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether a pause was asked for (checked by vCPU threads before each
    /// `KVM_RUN`).
    pub fn is_paused(&self) -> bool {
        let s = self.lock();
        s.paused && !s.stopped
    }

    /// Asks vCPU threads to park; they do at their next loop turn.
    pub fn request_pause(&self) {
        self.lock().paused = true;
        self.changed.notify_all();
    }

    /// Lets parked vCPU threads run again.
    pub fn resume(&self) {
        self.lock().paused = false;
        self.changed.notify_all();
    }

    /// Releases every parked thread for good (the VM stops).
    pub fn stop(&self) {
        self.lock().stopped = true;
        self.changed.notify_all();
    }

    /// Called by a vCPU thread: waits while the VM is paused. Returns true
    /// if it parked (the guest was stopped for a while).
    pub fn park(&self) -> bool {
        let mut s = self.lock();
        if !s.paused || s.stopped {
            return false;
        }
        s.parked += 1;
        self.changed.notify_all();
        while s.paused && !s.stopped {
            s = self.changed.wait(s).unwrap_or_else(|e| e.into_inner());
        }
        s.parked -= 1;
        self.changed.notify_all();
        true
    }

    /// Waits up to `step` for `count` threads to be parked; returns how
    /// many are.
    pub fn wait_parked(&self, count: usize, step: Duration) -> usize {
        let s = self.lock();
        if s.parked >= count {
            return s.parked;
        }
        let (s, _) = self
            .changed
            .wait_timeout(s, step)
            .unwrap_or_else(|e| e.into_inner());
        s.parked
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn threads_park_until_resumed_and_leave_on_stop() {
        let gate = Arc::new(Gate::default());
        assert!(!gate.park(), "not paused: no parking");
        gate.request_pause();
        let threads: Vec<_> = (0..3)
            .map(|_| {
                let g = gate.clone();
                std::thread::spawn(move || g.park())
            })
            .collect();
        let mut parked = 0;
        for _ in 0..1000 {
            parked = gate.wait_parked(3, Duration::from_millis(10));
            if parked == 3 {
                break;
            }
        }
        assert_eq!(parked, 3);
        gate.resume();
        for t in threads {
            assert!(t.join().unwrap());
        }
        assert_eq!(gate.wait_parked(1, Duration::ZERO), 0);

        gate.request_pause();
        let g = gate.clone();
        let t = std::thread::spawn(move || g.park());
        while gate.wait_parked(1, Duration::from_millis(10)) < 1 {}
        gate.stop();
        assert!(t.join().unwrap());
        assert!(!gate.is_paused(), "a stopped VM is never paused");
        assert!(!gate.park());
    }
}
