//! Reused buffers for large frames. At UML's 65000-byte MTU every data
//! segment is a 64 KiB frame; allocating and zeroing one per segment was a
//! pass over every byte carried. Buffers of consumed large frames come
//! back here (from the stack's and the sim guest's link device, and from
//! the frame socket once a frame is sent) and the next large frame reuses
//! one. Small frames (ACKs, MTU-1500 segments) are allocated as before.
//!
//! Process-wide and bounded: at most [`KEEP`] buffers (4 MiB) wait here.
//! Lock-free: the stack's thread gives back what the sim guest's or the
//! frame socket's tasks take, and a mutex here was contended (a futex
//! wake-up per frame).

use std::sync::LazyLock;

use crossbeam_queue::ArrayQueue;

/// Frames at least this long are pooled.
pub(crate) const LARGE: usize = 16 << 10;
/// Buffers kept at most.
const KEEP: usize = 64;

static POOL: LazyLock<ArrayQueue<Vec<u8>>> = LazyLock::new(|| ArrayQueue::new(KEEP));

fn pop() -> Option<Vec<u8>> {
    POOL.pop()
}

/// A buffer of `len` bytes for smoltcp to fill. Its contents are
/// unspecified (an earlier frame's bytes) unless it is freshly allocated:
/// the caller overwrites all of it.
pub(crate) fn frame(len: usize) -> Vec<u8> {
    if len >= LARGE {
        if let Some(mut b) = pop() {
            // Pooled buffers hold at least LARGE initialized bytes:
            // shrinking is free, growing zeroes only the difference.
            if b.len() >= len {
                b.truncate(len);
            } else {
                b.resize(len, 0);
            }
            return b;
        }
    }
    vec![0u8; len]
}

/// An empty buffer with room for `cap` bytes, to receive into.
pub(crate) fn empty(cap: usize) -> Vec<u8> {
    match pop() {
        Some(mut b) if b.capacity() >= cap => {
            b.clear();
            b
        }
        _ => Vec::with_capacity(cap),
    }
}

/// Returns a consumed frame's buffer for reuse (kept only if it is large).
pub(crate) fn give(b: Vec<u8>) {
    if b.len() < LARGE {
        return;
    }
    // A full pool drops the buffer.
    let _ = POOL.push(b);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn large_buffers_come_back_small_ones_do_not() {
        // Other tests share the pool: work with capacities, not counts.
        let a = frame(LARGE + 100);
        assert_eq!(a.len(), LARGE + 100);
        give(a);
        give(vec![1u8; 64]); // small: dropped
        let b = frame(LARGE + 50);
        assert_eq!(b.len(), LARGE + 50);
        // Whichever pooled buffer came back, a smaller request shrinks it
        // and a larger one grows it to exactly the length asked.
        let c = frame(LARGE * 3);
        assert_eq!(c.len(), LARGE * 3);
        let e = empty(LARGE * 2);
        assert!(e.is_empty() && e.capacity() >= LARGE * 2);
        assert_eq!(frame(60), vec![0u8; 60]);
    }
}
