//! virtio-blk over guest memory made of arbitrary bytes: descriptor tables,
//! rings, request headers and lengths are all hostile.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| sandbox_virtio::fuzzing::block_queue(data));
