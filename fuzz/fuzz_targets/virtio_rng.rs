//! virtio-rng requests over hostile guest memory.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| sandbox_virtio::fuzzing::rng_queue(data));
