//! virtio-mmio register reads and writes as a KVM guest issues them: feature negotiation, queue set-up, status transitions, config space.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| sandbox_virtio::fuzzing::mmio_registers(data));
