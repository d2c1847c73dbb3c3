//! Arbitrary guest bytes through the HTTP/1.1 request-framing tracker that
//! guards against smuggling: never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| sandbox_net::fuzzing::http1_framing(data));
