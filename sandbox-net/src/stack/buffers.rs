//! Socket buffer memory that costs nothing until it is used.
//!
//! Each TCP socket gets a receive and a send ring ([`super::Rings`]):
//! large rings are what let one wake-up of the stack move a whole window.
//! Allocated from the heap they would be zeroed (and so resident) up
//! front, which makes every connection pay a memset of megabytes and
//! keeps idle connections' memory resident. An anonymous private mapping
//! is zero-filled by the kernel page by page as the ring is first written,
//! so an idle or short-lived connection touches a few pages.
//!
//! First writes fault pages in, which under nested virtualization costs
//! microseconds per page: rings of closed connections go back to a small
//! [`Pool`] (per network) and serve the next connections warm.

use std::io;
use std::ptr::NonNull;

/// One anonymous read-write mapping, unmapped on drop.
pub(crate) struct Mapping {
    ptr: NonNull<u8>,
    len: usize,
}

// SAFETY: the mapping is plain memory owned by this value; nothing about
// it is tied to the thread that created it.
unsafe impl Send for Mapping {}

impl Mapping {
    /// Maps `len` (> 0) zero bytes; no page is touched until written.
    pub(crate) fn new(len: usize) -> io::Result<Self> {
        if len == 0 {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "empty mapping"));
        }
        // SAFETY: a fresh anonymous mapping at an address of the kernel's
        // choosing; no existing memory is affected. The result is checked.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let ptr = NonNull::new(p.cast()).ok_or_else(|| io::Error::other("mmap returned null"))?;
        Ok(Self { ptr, len })
    }

    /// The whole mapping as a slice that outlives this borrow.
    ///
    /// # Safety
    /// The caller must stop using the slice (drop whatever holds it)
    /// before this `Mapping` is dropped, and must not call this twice for
    /// slices that are alive at the same time.
    pub(crate) unsafe fn slice(&self) -> &'static mut [u8] {
        // SAFETY: ptr..ptr+len is a live read-write mapping owned by self;
        // the caller guarantees exclusivity and that the slice dies first.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the region mapped in `new`; by the
        // contract of `slice` no reference into it is alive.
        unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.len) };
    }
}

/// Rings of closed sockets kept for reuse, at most [`Pool::MAX`]. A
/// reused ring holds stale bytes of an earlier connection of the same
/// network, which is harmless: a ring only ever yields what was written
/// into it since it was handed out.
#[derive(Default)]
pub(crate) struct Pool {
    free: Vec<Mapping>,
}

impl Pool {
    /// Rings kept at most (4 connections' worth).
    const MAX: usize = 8;

    /// A ring of `len` bytes, reused when one is free.
    pub(crate) fn take(&mut self, len: usize) -> io::Result<Mapping> {
        match self.free.iter().position(|m| m.len == len) {
            Some(i) => Ok(self.free.swap_remove(i)),
            None => Mapping::new(len),
        }
    }

    /// Returns a ring (unmapped when the pool is full).
    pub(crate) fn give(&mut self, m: Mapping) {
        if self.free.len() < Self::MAX {
            self.free.push(m);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{Mapping, Pool};

    #[test]
    fn the_pool_reuses_rings_and_stays_bounded() {
        let mut pool = Pool::default();
        let a = pool.take(1 << 16).unwrap();
        let at = a.ptr;
        pool.give(a);
        let b = pool.take(1 << 16).unwrap();
        assert_eq!(b.ptr, at, "a returned ring is reused");
        let other = pool.take(1 << 16).unwrap();
        assert_ne!(other.ptr, at);
        for _ in 0..2 * Pool::MAX {
            pool.give(Mapping::new(4096).unwrap());
        }
        assert_eq!(pool.free.len(), Pool::MAX);
        drop((b, other));
    }

    #[test]
    fn a_mapping_reads_zero_and_keeps_writes() {
        let m = Mapping::new(1 << 20).unwrap();
        // SAFETY: the only slice of `m`, dropped before `m`.
        let s = unsafe { m.slice() };
        assert!(s.iter().step_by(4096).all(|b| *b == 0));
        s[12345] = 7;
        s[(1 << 20) - 1] = 9;
        assert_eq!((s[12345], s[(1 << 20) - 1]), (7, 9));
    }

    #[test]
    fn an_empty_mapping_is_an_error() {
        assert!(Mapping::new(0).is_err());
    }
}
