//! Arbitrary guest Ethernet frames into the network stack's ingress path:
//! dropped or processed, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| sandbox_net::fuzzing::frame(data));
