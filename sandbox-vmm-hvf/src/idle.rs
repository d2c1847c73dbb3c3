//! A vCPU that executed WFI sleeps on the host until an interrupt can be
//! pending for it: its virtual timer's deadline, or a device interrupt
//! (a [`Wake`] shared by the machine's vCPUs and its interrupt pump).
//! Written for Hypervisor.framework, which hands every WFI to the VMM;
//! nothing here calls it, so it is tested on Linux.

use std::sync::{Condvar, Mutex};
use std::time::Duration;

/// `CNTV_CTL_EL0.ENABLE`.
const TIMER_ENABLE: u64 = 1;
/// `CNTV_CTL_EL0.IMASK`.
const TIMER_IMASK: u64 = 2;

/// The longest a WFI sleeps without a reason to wake: a bound, not a tick
/// (wake-ups are never lost, see [`Wake::generation`]).
pub const MAX_IDLE: Duration = Duration::from_millis(100);

/// Counter ticks until the virtual timer fires, from `CNTV_CTL_EL0`,
/// `CNTV_CVAL_EL0` and the guest's counter `now`; `None` if it cannot fire
/// (disabled or masked), `Some(0)` if it already has.
pub fn ticks_until_timer(ctl: u64, cval: u64, now: u64) -> Option<u64> {
    if ctl & TIMER_ENABLE == 0 || ctl & TIMER_IMASK != 0 {
        return None;
    }
    Some(cval.saturating_sub(now))
}

/// `ticks` of a counter whose tick is `numer / denom` nanoseconds (macOS's
/// `mach_timebase_info`), as a duration; a zero `denom` reads as 1.
pub fn ticks_to_duration(ticks: u64, numer: u32, denom: u32) -> Duration {
    let ns = u128::from(ticks) * u128::from(numer) / u128::from(denom.max(1));
    Duration::from_nanos(u64::try_from(ns).unwrap_or(u64::MAX))
}

/// How long a vCPU in WFI sleeps: until its timer, at most [`MAX_IDLE`].
pub fn idle_for(ctl: u64, cval: u64, now: u64, numer: u32, denom: u32) -> Duration {
    match ticks_until_timer(ctl, cval, now) {
        Some(t) => ticks_to_duration(t, numer, denom).min(MAX_IDLE),
        None => MAX_IDLE,
    }
}

/// Wakes sleeping vCPUs. A vCPU reads [`Wake::generation`] before it
/// enters the guest and sleeps with that value: an interrupt raised in
/// between has moved the generation on, so the sleep ends at once.
#[derive(Default)]
pub struct Wake {
    generation: Mutex<u64>,
    cond: Condvar,
}

impl Wake {
    /// The current generation.
    pub fn generation(&self) -> u64 {
        *self.generation.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Wakes every sleeper (an interrupt was raised, or the machine stops).
    pub fn notify(&self) {
        let mut g = self.generation.lock().unwrap_or_else(|e| e.into_inner());
        *g = g.wrapping_add(1);
        self.cond.notify_all();
    }

    /// Sleeps up to `limit` unless the generation is no longer `seen`;
    /// returns whether it was woken (rather than timed out).
    pub fn sleep(&self, seen: u64, limit: Duration) -> bool {
        let g = self.generation.lock().unwrap_or_else(|e| e.into_inner());
        let (g, _) = self
            .cond
            .wait_timeout_while(g, limit, |g| *g == seen)
            .unwrap_or_else(|e| e.into_inner());
        *g != seen
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Instant;

    use super::*;

    #[test]
    fn a_disabled_or_masked_timer_never_fires() {
        assert_eq!(ticks_until_timer(0, 100, 0), None);
        assert_eq!(ticks_until_timer(TIMER_ENABLE | TIMER_IMASK, 100, 0), None);
        assert_eq!(ticks_until_timer(TIMER_ENABLE, 100, 40), Some(60));
        assert_eq!(
            ticks_until_timer(TIMER_ENABLE, 100, 400),
            Some(0),
            "already due"
        );
    }

    #[test]
    fn ticks_convert_with_the_timebase() {
        // Apple silicon: 125/3 ns per tick (24 MHz).
        assert_eq!(
            ticks_to_duration(24_000_000, 125, 3),
            Duration::from_secs(1)
        );
        assert_eq!(ticks_to_duration(5, 1, 1), Duration::from_nanos(5));
        assert_eq!(ticks_to_duration(5, 1, 0), Duration::from_nanos(5));
        assert_eq!(
            ticks_to_duration(u64::MAX, u32::MAX, 1),
            Duration::from_nanos(u64::MAX)
        );
        assert_eq!(
            idle_for(TIMER_ENABLE, 48, 0, 125, 3),
            Duration::from_nanos(2000)
        );
        assert_eq!(idle_for(TIMER_ENABLE, u64::MAX, 0, 125, 3), MAX_IDLE);
        assert_eq!(idle_for(0, 0, 0, 1, 1), MAX_IDLE);
    }

    #[test]
    fn a_wake_before_the_sleep_is_not_lost() {
        let w = Wake::default();
        let seen = w.generation();
        w.notify();
        let t = Instant::now();
        assert!(w.sleep(seen, Duration::from_secs(5)));
        assert!(t.elapsed() < Duration::from_secs(1));
    }

    #[test]
    fn a_sleep_ends_on_notify_or_at_its_limit() {
        let w = Arc::new(Wake::default());
        let seen = w.generation();
        assert!(!w.sleep(seen, Duration::from_millis(10)), "timed out");
        let waker = {
            let w = w.clone();
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(20));
                w.notify();
            })
        };
        assert!(w.sleep(seen, Duration::from_secs(5)), "woken");
        waker.join().unwrap();
    }
}
