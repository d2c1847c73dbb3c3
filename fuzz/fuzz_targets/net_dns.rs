//! Arbitrary guest DNS messages: answered (or FORMERR, or dropped) and
//! attributed without a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| sandbox_net::fuzzing::dns(data));
