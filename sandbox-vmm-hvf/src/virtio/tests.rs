//! The bus and the interrupt pump with `sandbox-virtio`'s real virtio-rng,
//! driven register by register as the guest's virtio-mmio driver does.

use std::sync::mpsc;
use std::time::Duration;

use vm_memory::{Bytes, GuestAddress};

use super::*;

const RAM: u64 = layout::RAM_BASE;
const DESC: u64 = RAM + 0x1000;
const AVAIL: u64 = RAM + 0x2000;
const USED: u64 = RAM + 0x3000;
const BUF: u64 = RAM + 0x4000;

fn memory() -> Arc<GuestMemory> {
    Arc::new(GuestMemory::from_ranges(&[(GuestAddress(RAM), 1 << 20)]).unwrap())
}

fn rngs(n: usize) -> Vec<Box<dyn VirtioDevice>> {
    (0..n)
        .map(|_| Box::new(sandbox_virtio::rng::Rng::new()) as Box<dyn VirtioDevice>)
        .collect()
}

fn reg(bus: &VirtioBus, n: usize, off: u64) -> u32 {
    let mut b = [0u8; 4];
    assert!(bus.read(
        layout::VIRTIO_BASE + n as u64 * layout::VIRTIO_STRIDE + off,
        &mut b
    ));
    u32::from_le_bytes(b)
}

fn set(bus: &VirtioBus, n: usize, off: u64, v: u32) {
    assert!(bus.write(
        layout::VIRTIO_BASE + n as u64 * layout::VIRTIO_STRIDE + off,
        &v.to_le_bytes()
    ));
}

#[test]
fn each_transport_answers_at_its_window_and_nothing_else_does() {
    let layout = Layout::new(1, 64, 2).unwrap();
    let (bus, irqs) = VirtioBus::new(&layout, rngs(2), memory()).unwrap();
    for n in 0..2 {
        assert_eq!(reg(&bus, n, 0x00), 0x7472_6976, "magic of transport {n}");
        assert_eq!(reg(&bus, n, 0x08), sandbox_virtio::device_id::RNG);
    }
    let mut b = [0u8; 4];
    assert!(!bus.read(layout::VIRTIO_BASE + 2 * layout::VIRTIO_STRIDE, &mut b));
    assert!(!bus.read(layout::VIRTIO_BASE - 4, &mut b));
    assert!(!bus.write(layout::UART_BASE, &b));
    assert_eq!(
        irqs.iter().map(|(_, i)| *i).collect::<Vec<_>>(),
        [32 + layout::VIRTIO_SPI, 33 + layout::VIRTIO_SPI]
    );
}

#[test]
fn a_device_count_other_than_the_layouts_is_refused() {
    let layout = Layout::new(1, 64, 1).unwrap();
    let err = VirtioBus::new(&layout, rngs(2), memory()).err().unwrap();
    assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
}

#[test]
fn a_request_notified_through_the_bus_is_answered_and_raises_the_transports_spi() {
    let mem = memory();
    let layout = Layout::new(1, 64, 2).unwrap();
    let (bus, irqs) = VirtioBus::new(&layout, rngs(2), mem.clone()).unwrap();
    let (tx, rx) = mpsc::channel();
    let _pump = IrqPump::start(irqs, move |intid| {
        let _ = tx.send(intid);
    })
    .unwrap();
    // One 64-byte device-writable buffer in a 16-entry queue.
    mem.write_obj(BUF, GuestAddress(DESC)).unwrap();
    mem.write_obj(64u32, GuestAddress(DESC + 8)).unwrap();
    mem.write_obj(2u16, GuestAddress(DESC + 12)).unwrap(); // VIRTQ_DESC_F_WRITE
    mem.write_obj(0u16, GuestAddress(AVAIL + 4)).unwrap(); // ring[0] = desc 0
    mem.write_obj(1u16, GuestAddress(AVAIL + 2)).unwrap(); // idx
    let n = 1; // the second transport: its SPI must be the one raised
    set(&bus, n, 0x70, 1);
    set(&bus, n, 0x70, 3);
    set(&bus, n, 0x24, 1);
    set(&bus, n, 0x20, 1); // VIRTIO_F_VERSION_1 (bit 32)
    set(&bus, n, 0x70, 0xb);
    assert_eq!(reg(&bus, n, 0x70), 0xb, "FEATURES_OK kept");
    set(&bus, n, 0x30, 0);
    set(&bus, n, 0x38, 16);
    for (off, addr) in [(0x80, DESC), (0x90, AVAIL), (0xa0, USED)] {
        set(&bus, n, off, addr as u32);
        set(&bus, n, off + 4, (addr >> 32) as u32);
    }
    set(&bus, n, 0x44, 1);
    set(&bus, n, 0x70, 0xf);
    assert_eq!(reg(&bus, n, 0x70), 0xf, "DRIVER_OK: the device is active");
    set(&bus, n, 0x50, 0); // QueueNotify: queue 0
    let raised = rx
        .recv_timeout(Duration::from_secs(5))
        .expect("an interrupt");
    assert_eq!(raised, layout::spi_intid(layout::VIRTIO_SPI + 1));
    let used_idx: u16 = mem.read_obj(GuestAddress(USED + 2)).unwrap();
    let used_len: u32 = mem.read_obj(GuestAddress(USED + 8)).unwrap();
    assert_eq!((used_idx, used_len), (1, 64));
    let mut bytes = [0u8; 64];
    mem.read_slice(&mut bytes, GuestAddress(BUF)).unwrap();
    assert!(bytes.iter().any(|b| *b != 0), "random bytes written");
    assert_eq!(
        reg(&bus, n, 0x60) & 1,
        1,
        "the used-ring interrupt is pending"
    );
    set(&bus, n, 0x64, 1);
    assert_eq!(reg(&bus, n, 0x60), 0, "acknowledged");
    bus.shutdown();
    assert_eq!(reg(&bus, n, 0x70), 0, "shut down: reset");
}

#[test]
fn the_pump_stops_when_dropped() {
    let irq = event_fd().unwrap();
    let writer = irq.try_clone().unwrap();
    let (tx, rx) = mpsc::channel();
    let pump = IrqPump::start(vec![(irq, 40)], move |i| {
        let _ = tx.send(i);
    })
    .unwrap();
    writer.write(1).unwrap();
    assert_eq!(rx.recv_timeout(Duration::from_secs(5)).unwrap(), 40);
    drop(pump);
    assert!(rx.recv_timeout(Duration::from_millis(50)).is_err(), "ended");
}
