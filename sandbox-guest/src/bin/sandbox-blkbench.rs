//! Guest-side block benchmark used by `benches/block.rs` (not part of the
//! agent): queue-depth-1 `O_DIRECT` I/O on a block device, timed inside the
//! guest.
//!
//! `sandbox-blkbench DEVICE MODE BLOCK_BYTES TOTAL_BYTES SPAN_BYTES SEED`
//! with MODE one of `seqread`, `seqwrite`, `randread`, `randwrite`. Prints
//! the elapsed nanoseconds (writes include a final `fdatasync`).

use std::alloc::{alloc_zeroed, dealloc, Layout};
use std::fs::OpenOptions;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::process::ExitCode;
use std::time::Instant;

const ALIGN: usize = 4096;

/// A zeroed buffer aligned for `O_DIRECT`.
struct Aligned {
    ptr: *mut u8,
    layout: Layout,
}

impl Aligned {
    fn new(len: usize) -> Option<Self> {
        let layout = Layout::from_size_align(len, ALIGN).ok()?;
        // SAFETY: the layout has a non-zero size (checked by the caller).
        let ptr = unsafe { alloc_zeroed(layout) };
        (!ptr.is_null()).then_some(Self { ptr, layout })
    }

    fn as_mut(&mut self) -> &mut [u8] {
        // SAFETY: ptr points to layout.size() bytes we own, zero-initialized.
        unsafe { std::slice::from_raw_parts_mut(self.ptr, self.layout.size()) }
    }
}

impl Drop for Aligned {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with this layout.
        unsafe { dealloc(self.ptr, self.layout) }
    }
}

fn run(args: &[String]) -> Result<u128, String> {
    let [dev, mode, block, total, span, seed] = args else {
        return Err("usage: sandbox-blkbench DEVICE MODE BLOCK TOTAL SPAN SEED".into());
    };
    let num = |s: &str| s.parse::<u64>().map_err(|e| format!("{s}: {e}"));
    let (block, total, span, mut x) = (num(block)?, num(total)?, num(span)?, num(seed)? | 1);
    if block == 0 || block % 512 != 0 || span < block {
        return Err("BLOCK must be a non-zero multiple of 512 and SPAN at least BLOCK".into());
    }
    let write = mode.ends_with("write");
    let random = mode.starts_with("rand");
    let file = OpenOptions::new()
        .read(true)
        .write(write)
        .custom_flags(libc::O_DIRECT)
        .open(dev)
        .map_err(|e| format!("{dev}: {e}"))?;
    let mut buf = Aligned::new(block as usize).ok_or("out of memory")?;
    buf.as_mut().fill(0xa5);
    let slots = span / block;
    let start = Instant::now();
    for i in 0..total / block {
        let slot = if random {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x % slots
        } else {
            i % slots
        };
        let at = slot * block;
        let r = if write {
            file.write_all_at(buf.as_mut(), at)
        } else {
            file.read_exact_at(buf.as_mut(), at)
        };
        r.map_err(|e| format!("{mode} at {at}: {e}"))?;
    }
    if write {
        file.sync_data().map_err(|e| format!("fdatasync: {e}"))?;
    }
    Ok(start.elapsed().as_nanos())
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match run(&args) {
        Ok(ns) => {
            println!("{ns}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("sandbox-blkbench: {e}");
            ExitCode::from(2)
        }
    }
}
