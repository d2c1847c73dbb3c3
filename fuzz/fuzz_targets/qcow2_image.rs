//! A qcow2 file made of arbitrary bytes: the header, L1 and L2 tables and
//! compressed cluster descriptors are all hostile. Opening and reading must
//! return data or errors, never panic. (Backing files are refused here so
//! the fuzzer cannot make the reader open host paths.)
#![no_main]

use libfuzzer_sys::fuzz_target;
use sandbox_rootfs::{Disk, Qcow2Image};

fuzz_target!(|data: &[u8]| {
    let path = std::env::temp_dir().join(format!("fuzz-qcow2-{}", std::process::id()));
    if std::fs::write(&path, data).is_err() {
        return;
    }
    if let Ok(mut img) = Qcow2Image::open_standalone(&path) {
        let size = img.size();
        let mut buf = vec![0u8; 64 << 10];
        for offset in [0, size / 3, size.saturating_sub(4096)] {
            let len = (size - offset.min(size)).min(buf.len() as u64) as usize;
            let _ = img.read_at(offset, &mut buf[..len]);
        }
    }
});
