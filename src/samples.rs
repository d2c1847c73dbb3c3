//! Per-call times a bench keeps beside criterion's own statistics, for a
//! summary of medians and goal ratios at its end.

use std::sync::Mutex;
use std::time::Duration;

/// Named durations, shareable as a `static`.
pub struct Samples(Mutex<Vec<(String, Duration)>>);

impl Samples {
    pub const fn new() -> Self {
        Self(Mutex::new(Vec::new()))
    }

    /// Records one call of `name` that took `d`.
    pub fn record(&self, name: &str, d: Duration) {
        self.lock().push((name.to_string(), d));
    }

    /// The median of `name`'s records (warm-up included); `None` if it has
    /// none (a filtered-out bench).
    pub fn median(&self, name: &str) -> Option<Duration> {
        let mut v: Vec<Duration> = self
            .lock()
            .iter()
            .filter(|(n, _)| n == name)
            .map(|(_, d)| *d)
            .collect();
        v.sort();
        v.get(v.len() / 2).copied()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<(String, Duration)>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Default for Samples {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_median_is_per_name() {
        let s = Samples::new();
        for ms in [5, 1, 3] {
            s.record("a", Duration::from_millis(ms));
        }
        s.record("b", Duration::from_millis(100));
        assert_eq!(s.median("a"), Some(Duration::from_millis(3)));
        assert_eq!(s.median("b"), Some(Duration::from_millis(100)));
        assert_eq!(s.median("c"), None);
    }
}
