//! Credit windows: how many bytes a producer may still send before the
//! consumer grants more. Output pumps block here instead of buffering; the
//! process output multiplexer polls instead and is woken by a grant.

use std::sync::{Condvar, Mutex};

pub struct Window {
    state: Mutex<(u64, bool)>,
    changed: Condvar,
    /// Called after every grant and close (the multiplexer's wake-up).
    waker: Option<fn()>,
}

impl Window {
    pub fn new(initial: u32) -> Self {
        Self {
            state: Mutex::new((u64::from(initial), false)),
            changed: Condvar::new(),
            waker: None,
        }
    }

    /// A window whose grants and close also call `waker`.
    pub fn waking(initial: u32, waker: fn()) -> Self {
        Self {
            waker: Some(waker),
            ..Self::new(initial)
        }
    }

    fn changed(&self) {
        self.changed.notify_all();
        if let Some(wake) = self.waker {
            wake();
        }
    }

    /// Adds credit.
    pub fn grant(&self, bytes: u32) {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        s.0 = s.0.saturating_add(u64::from(bytes));
        drop(s);
        self.changed();
    }

    /// Wakes every waiter for good.
    pub fn close(&self) {
        self.state.lock().unwrap_or_else(|e| e.into_inner()).1 = true;
        self.changed();
    }

    /// Waits for credit; `None` once closed.
    pub fn wait(&self) -> Option<u64> {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        while s.0 == 0 && !s.1 {
            s = self.changed.wait(s).unwrap_or_else(|e| e.into_inner());
        }
        (!s.1).then_some(s.0)
    }

    /// The credit left, without waiting; `None` once closed.
    pub fn credit(&self) -> Option<u64> {
        let s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        (!s.1).then_some(s.0)
    }

    /// Uses credit after sending `bytes`.
    pub fn consume(&self, bytes: usize) {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        s.0 = s.0.saturating_sub(bytes as u64);
    }
}
