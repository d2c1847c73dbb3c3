//! virtio-net receive and transmit chains over hostile guest memory, with a host frame to deliver.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| sandbox_virtio::fuzzing::net_queues(data));
