//! The vhost-user adapter's validation of front-end requests.

use vhost::vhost_user::message::{VhostUserConfigFlags, VhostUserVringAddrFlags};
use vhost::vhost_user::VhostUserBackendReqHandlerMut;
use virtio_queue::Queue;

use super::VhostUserBackend;
use crate::{ActivationContext, DeviceError, VirtioDevice};

/// A device with two queues and an 8-byte config that never activates.
struct Dummy;

impl VirtioDevice for Dummy {
    fn device_type(&self) -> u32 {
        99
    }
    fn queue_max_sizes(&self) -> &[u16] {
        &[64, 64]
    }
    fn features(&self) -> u64 {
        1 << 32
    }
    fn read_config(&self, offset: u64, data: &mut [u8]) {
        crate::device::read_config_bytes(&[1, 2, 3, 4, 5, 6, 7, 8], offset, data);
    }
    fn activate(&mut self, _ctx: ActivationContext) -> Result<(), DeviceError> {
        Ok(())
    }
    fn reset(&mut self) -> Option<Vec<Queue>> {
        None
    }
}

#[test]
fn features_include_protocol_features_and_unknown_bits_are_refused() {
    let mut b = VhostUserBackend::new(Dummy);
    assert_eq!(b.get_features().unwrap(), (1 << 32) | (1 << 30));
    assert!(b.set_features(1 << 32).is_ok());
    assert!(b.set_features(1 << 5).is_err());
}

#[test]
fn queue_sizes_and_indices_are_validated() {
    let mut b = VhostUserBackend::new(Dummy);
    assert!(b.set_vring_num(0, 64).is_ok());
    // Front ends may ask for up to FRONT_END_MAX_RING whatever the device's
    // own maximum (QEMU's virtio-mmio offers 1024); beyond that is refused.
    assert!(b
        .set_vring_num(0, super::backend::FRONT_END_MAX_RING.into())
        .is_ok());
    assert!(
        b.set_vring_num(0, u32::from(super::backend::FRONT_END_MAX_RING) * 2)
            .is_err(),
        "above the maximum"
    );
    assert!(b.set_vring_num(1, 48).is_err(), "not a power of two");
    assert!(b.set_vring_num(1, 0).is_err());
    assert!(b.set_vring_num(2, 16).is_err(), "no such queue");
    assert!(b.set_vring_base(0, 1 << 16).is_err());
    assert!(b.set_vring_enable(7, true).is_err());
}

#[test]
fn ring_addresses_outside_the_memory_table_are_refused() {
    let mut b = VhostUserBackend::new(Dummy);
    // No memory table yet: nothing can be translated.
    assert!(b
        .set_vring_addr(
            0,
            VhostUserVringAddrFlags::empty(),
            0x1000,
            0x2000,
            0x3000,
            0
        )
        .is_err());
}

#[test]
fn config_reads_are_bounded_and_zero_filled() {
    let mut b = VhostUserBackend::new(Dummy);
    let flags = VhostUserConfigFlags::empty();
    assert_eq!(b.get_config(6, 4, flags).unwrap(), vec![7, 8, 0, 0]);
    assert_eq!(b.get_config(u32::MAX, 2, flags).unwrap(), vec![0, 0]);
    assert!(b.get_config(0, 1 << 20, flags).is_err());
}

#[test]
fn a_refused_request_closes_the_connection_instead_of_hanging() {
    use std::io::{Read, Write};
    let dir = std::env::temp_dir().join(format!("vu-refuse-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("dev.sock");
    let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
    let served = super::serve("refuse", listener, Dummy).unwrap();
    let mut front = std::os::unix::net::UnixStream::connect(&path).unwrap();
    front
        .set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .unwrap();
    // VHOST_USER_SET_VRING_NUM (8), version 1, 8-byte payload: queue 0 with
    // 4096 entries, above what any front end may ask for.
    let mut msg = Vec::new();
    for word in [8u32, 1, 8, 0, 4096] {
        msg.extend_from_slice(&word.to_le_bytes());
    }
    front.write_all(&msg).unwrap();
    let mut buf = [0u8; 64];
    assert_eq!(front.read(&mut buf).unwrap(), 0, "closed, not left waiting");
    served.stop();
    let _ = std::fs::remove_dir_all(&dir);
}

/// A device whose code panics when the front end asks for its features.
struct Panics;

impl VirtioDevice for Panics {
    fn device_type(&self) -> u32 {
        99
    }
    fn queue_max_sizes(&self) -> &[u16] {
        &[64]
    }
    fn features(&self) -> u64 {
        panic!("a bug reached by a front-end message")
    }
    fn read_config(&self, _offset: u64, _data: &mut [u8]) {}
    fn activate(&mut self, _ctx: ActivationContext) -> Result<(), DeviceError> {
        Ok(())
    }
    fn reset(&mut self) -> Option<Vec<Queue>> {
        None
    }
}

#[test]
fn a_panic_in_device_code_ends_the_session_and_nothing_else() {
    use std::io::{Read, Write};
    let dir = std::env::temp_dir().join(format!("vu-panic-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("dev.sock");
    let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
    let served = super::serve("panics", listener, Panics).unwrap();
    let mut front = std::os::unix::net::UnixStream::connect(&path).unwrap();
    front
        .set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .unwrap();
    // VHOST_USER_GET_FEATURES (1), version 1, no payload.
    let mut msg = Vec::new();
    for word in [1u32, 1, 0] {
        msg.extend_from_slice(&word.to_le_bytes());
    }
    front.write_all(&msg).unwrap();
    let mut buf = [0u8; 64];
    assert_eq!(front.read(&mut buf).unwrap(), 0, "the session ends");
    // The server thread ended normally (the panic was contained), and this
    // process goes on.
    served.stop();
    let _ = std::fs::remove_dir_all(&dir);
}
