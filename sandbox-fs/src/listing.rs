//! Directory listings kept per open directory handle, so a guest reading a
//! large directory in many `readdir` calls (each resuming at an offset)
//! costs one listing, not one per call: without it, reading n entries in
//! batches of b rebuilt the whole list n/b times. A listing is taken at
//! offset 0 (an `opendir` or a rewind) and dropped at `releasedir`, which
//! gives the guest a snapshot per open directory, as POSIX allows.

use std::collections::HashMap;
use std::io;
use std::sync::{Arc, Mutex};

/// Open directories whose listings are kept at once; past that (a guest
/// holding thousands of directories open), listings are rebuilt per call
/// instead of growing host memory.
pub const MAX_CACHED: usize = 1024;

pub struct Listings<T> {
    by_handle: Mutex<HashMap<u64, Arc<Vec<T>>>>,
}

impl<T> Default for Listings<T> {
    fn default() -> Self {
        Self {
            by_handle: Mutex::new(HashMap::new()),
        }
    }
}

impl<T> Listings<T> {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Arc<Vec<T>>>> {
        self.by_handle.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The listing of open directory `handle`: the kept one when resuming
    /// past offset 0, otherwise a fresh one from `fill` (kept for the
    /// calls that follow).
    pub fn get(
        &self,
        handle: u64,
        offset: u64,
        fill: impl FnOnce() -> io::Result<Vec<T>>,
    ) -> io::Result<Arc<Vec<T>>> {
        if offset > 0 {
            if let Some(list) = self.lock().get(&handle) {
                return Ok(list.clone());
            }
        }
        let list = Arc::new(fill()?);
        let mut map = self.lock();
        if map.len() < MAX_CACHED || map.contains_key(&handle) {
            map.insert(handle, list.clone());
        }
        Ok(list)
    }

    /// Forgets the listing of a closed directory.
    pub fn release(&self, handle: u64) {
        self.lock().remove(&handle);
    }

    /// Listings kept now.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.lock().len()
    }
}

#[cfg(test)]
mod unit {
    use super::*;
    use std::cell::Cell;

    #[test]
    fn one_fill_per_open_directory_and_a_fresh_one_on_rewind() {
        let l = Listings::default();
        let fills = Cell::new(0);
        let fill = || {
            fills.set(fills.get() + 1);
            Ok(vec![1, 2, 3])
        };
        assert_eq!(*l.get(7, 0, fill).unwrap(), vec![1, 2, 3]);
        l.get(7, 2, fill).unwrap();
        l.get(7, 3, fill).unwrap();
        assert_eq!(fills.get(), 1, "resumed reads reuse the listing");
        l.get(7, 0, fill).unwrap();
        assert_eq!(fills.get(), 2, "a rewind lists again");
        l.release(7);
        l.get(7, 5, fill).unwrap();
        assert_eq!(fills.get(), 3, "a released handle has no listing");
    }

    #[test]
    fn the_number_kept_is_bounded_and_errors_are_not_kept() {
        let l = Listings::default();
        for h in 0..(MAX_CACHED as u64 + 10) {
            l.get(h, 0, || Ok(vec![h])).unwrap();
        }
        assert_eq!(l.len(), MAX_CACHED);
        let e = l.get(u64::MAX, 0, || {
            Err::<Vec<u64>, _>(io::Error::from_raw_os_error(5))
        });
        assert!(e.is_err());
        assert_eq!(l.len(), MAX_CACHED);
    }
}
