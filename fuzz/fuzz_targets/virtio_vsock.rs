//! virtio-vsock transmit and receive handling over guest memory made of
//! arbitrary bytes: packet headers, lengths and rings are all hostile.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| sandbox_virtio::fuzzing::vsock_queues(data));
