//! Arbitrary guest bytes through the ClientHello reader of TLS
//! pass-through grants: never a panic, and any name it returns is a
//! plausible host name.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sandbox_net::http::hello::{parse, Hello};

fuzz_target!(|data: &[u8]| {
    if let Hello::Tls {
        server_name: Some(name),
    } = parse(data)
    {
        assert!(name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-._".contains(&b)));
    }
});
