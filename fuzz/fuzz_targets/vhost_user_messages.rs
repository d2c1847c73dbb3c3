//! vhost-user messages from the front end (UML's virtio_uml runs in the guest kernel, so every message is guest controlled).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| sandbox_virtio::fuzzing::vhost_user_messages(data));
