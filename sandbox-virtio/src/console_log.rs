//! A bounded in-memory copy of the guest console.

use std::collections::VecDeque;
use std::io::Read;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// The last bytes the guest printed, bounded to a fixed size.
#[derive(Clone)]
pub struct ConsoleLog {
    inner: Arc<Mutex<VecDeque<u8>>>,
    limit: usize,
    dropped: Arc<AtomicU64>,
}

impl ConsoleLog {
    /// A log that keeps the last `limit` bytes.
    pub fn new(limit: usize) -> Self {
        Self {
            inner: Arc::default(),
            limit: limit.max(1),
            dropped: Arc::default(),
        }
    }

    /// Bytes dropped from the front to stay within the limit so far.
    pub fn dropped_bytes(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Appends bytes, dropping the oldest beyond the limit.
    pub fn push(&self, bytes: &[u8]) {
        let mut buf = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        buf.extend(bytes);
        let excess = buf.len().saturating_sub(self.limit);
        buf.drain(..excess);
        self.dropped.fetch_add(excess as u64, Ordering::Relaxed);
    }

    /// The last `lines` lines, lossily decoded.
    pub fn tail(&self, lines: usize) -> String {
        let buf = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let (a, b) = buf.as_slices();
        last_lines(&String::from_utf8_lossy(&[a, b].concat()), lines)
    }

    /// Copies everything from `src` into the log until end of file.
    pub fn capture(&self, mut src: impl Read) {
        let mut chunk = [0u8; 4096];
        while let Ok(n) = src.read(&mut chunk) {
            if n == 0 {
                break;
            }
            self.push(&chunk[..n]);
        }
    }
}

/// The last `n` lines of `text`, joined with newlines.
pub fn last_lines(text: &str, n: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(n)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_only_the_newest_bytes() {
        let log = ConsoleLog::new(10);
        log.push(b"first line\nsecond\n");
        log.push(b"third\n");
        assert_eq!(log.tail(5), "ond\nthird");
        assert_eq!(log.tail(1), "third");
        // 24 bytes pushed, 10 kept.
        assert_eq!(log.dropped_bytes(), 14);
    }
}
