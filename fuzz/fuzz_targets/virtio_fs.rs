//! FUSE requests in descriptor chains to virtio-fs, over a memory file
//! system and a confined passthrough of a scratch directory, both in the
//! `Tracked` id layer, then the ids saved and restored into a new
//! passthrough; nothing next to the scratch directory may change.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| sandbox_virtio::fuzzing::fs_requests(data));
