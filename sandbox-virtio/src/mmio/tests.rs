//! The virtio-mmio state machine against a recording device, and a real
//! block request through the transport with a synthetic queue in guest
//! memory.

use std::sync::atomic::AtomicUsize;

use super::*;
use crate::{DeviceError, VIRTIO_F_VERSION_1};
use vm_memory::{Bytes, GuestAddress};

#[derive(Default)]
struct Seen {
    activations: AtomicUsize,
    resets: AtomicUsize,
    features: Mutex<u64>,
    desc: Mutex<u64>,
    interrupt: Mutex<Option<Arc<dyn Interrupt>>>,
}

struct Recorder(Arc<Seen>);

impl VirtioDevice for Recorder {
    fn device_type(&self) -> u32 {
        42
    }
    fn queue_max_sizes(&self) -> &[u16] {
        &[16, 8]
    }
    fn features(&self) -> u64 {
        VIRTIO_F_VERSION_1 | 0b101
    }
    fn read_config(&self, offset: u64, data: &mut [u8]) {
        data.fill((offset as u8).wrapping_add(1));
    }
    fn activate(&mut self, ctx: ActivationContext) -> Result<(), DeviceError> {
        self.0.activations.fetch_add(1, Ordering::SeqCst);
        *self.0.features.lock().unwrap() = ctx.acked_features;
        *self.0.desc.lock().unwrap() = ctx.queues[0].desc_table();
        *self.0.interrupt.lock().unwrap() = Some(ctx.interrupt);
        Ok(())
    }
    fn reset(&mut self) -> Option<Vec<Queue>> {
        self.0.resets.fetch_add(1, Ordering::SeqCst);
        None
    }
}

fn mem() -> Arc<GuestMemory> {
    Arc::new(GuestMemory::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap())
}

fn device() -> (MmioDevice, Arc<Seen>, EventFd) {
    let seen = Arc::new(Seen::default());
    let irq = EventFd::new(libc::EFD_NONBLOCK).unwrap();
    let dev = MmioDevice::new(
        Box::new(Recorder(seen.clone())),
        mem(),
        irq.try_clone().unwrap(),
    )
    .unwrap();
    (dev, seen, irq)
}

fn r(dev: &MmioDevice, offset: u64) -> u32 {
    let mut b = [0u8; 4];
    dev.read(offset, &mut b);
    u32::from_le_bytes(b)
}

fn w(dev: &MmioDevice, offset: u64, v: u32) {
    dev.write(offset, &v.to_le_bytes());
}

/// The Linux driver's handshake, with queue `q` at `base`.
fn handshake(dev: &MmioDevice, features_hi: u32) {
    w(dev, 0x70, STATUS_ACKNOWLEDGE);
    w(dev, 0x70, STATUS_ACKNOWLEDGE | STATUS_DRIVER);
    w(dev, 0x24, 0);
    w(dev, 0x20, 0b111);
    w(dev, 0x24, 1);
    w(dev, 0x20, features_hi);
    w(
        dev,
        0x70,
        STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK,
    );
    for (q, base) in [(0u32, 0x1000u32), (1, 0x4000)] {
        w(dev, 0x30, q);
        w(dev, 0x38, 8);
        w(dev, 0x80, base);
        w(dev, 0x84, 0);
        w(dev, 0x90, base + 0x100);
        w(dev, 0x94, 0);
        w(dev, 0xa0, base + 0x200);
        w(dev, 0xa4, 0);
        w(dev, 0x44, 1);
    }
}

#[test]
fn identification_and_feature_windows() {
    let (dev, _, _) = device();
    assert_eq!(r(&dev, 0x00), MAGIC);
    assert_eq!(r(&dev, 0x04), 2);
    assert_eq!(r(&dev, 0x08), 42);
    w(&dev, 0x14, 0);
    assert_eq!(r(&dev, 0x10), 0b101);
    w(&dev, 0x14, 1);
    assert_eq!(r(&dev, 0x10), 1, "VERSION_1 is bit 32");
    w(&dev, 0x14, 7);
    assert_eq!(r(&dev, 0x10), 0);
    w(&dev, 0x30, 1);
    assert_eq!(r(&dev, 0x34), 8);
    w(&dev, 0x30, 9);
    assert_eq!(r(&dev, 0x34), 0, "no such queue");
    let mut cfg = [0u8; 2];
    dev.read(0x104, &mut cfg);
    assert_eq!(cfg, [5, 5]);
}

#[test]
fn driver_ok_activates_with_the_acked_features_and_queue_addresses() {
    let (dev, seen, irq) = device();
    handshake(&dev, 1);
    assert_ne!(r(&dev, 0x70) & STATUS_FEATURES_OK, 0);
    w(
        &dev,
        0x70,
        STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK | STATUS_DRIVER_OK,
    );
    assert_eq!(seen.activations.load(Ordering::SeqCst), 1);
    assert_eq!(
        *seen.features.lock().unwrap(),
        VIRTIO_F_VERSION_1 | 0b101,
        "only offered bits"
    );
    assert_eq!(*seen.desc.lock().unwrap(), 0x1000);
    // Queue registers are frozen once active.
    w(&dev, 0x30, 0);
    w(&dev, 0x80, 0x9000);
    // The device interrupts: status bit set, irqfd raised; ack clears it.
    let interrupt = seen.interrupt.lock().unwrap().clone().unwrap();
    interrupt.signal_used_queue(0);
    assert_eq!(r(&dev, 0x60), INT_USED_RING);
    assert_eq!(irq.read().unwrap(), 1);
    w(&dev, 0x64, INT_USED_RING);
    assert_eq!(r(&dev, 0x60), 0);
    // Reset stops the device and clears the state.
    w(&dev, 0x70, 0);
    assert_eq!(seen.resets.load(Ordering::SeqCst), 1);
    assert_eq!(r(&dev, 0x70), 0);
    assert_eq!(r(&dev, 0x44), 0);
}

#[test]
fn a_driver_without_version_1_or_ready_queues_is_not_activated() {
    let (dev, seen, _) = device();
    handshake(&dev, 0);
    assert_eq!(
        r(&dev, 0x70) & STATUS_FEATURES_OK,
        0,
        "legacy drivers are refused"
    );
    w(&dev, 0x70, 0xf);
    assert_eq!(seen.activations.load(Ordering::SeqCst), 0);

    let (dev, seen, _) = device();
    handshake(&dev, 1);
    w(&dev, 0x30, 1);
    w(&dev, 0x44, 0);
    w(&dev, 0x70, 0xf);
    assert_eq!(seen.activations.load(Ordering::SeqCst), 0);
    assert_ne!(r(&dev, 0x70) & STATUS_NEEDS_RESET, 0);
}

#[test]
fn garbage_accesses_are_ignored() {
    let (dev, seen, _) = device();
    dev.write(0x70, &[1, 2]); // wrong width
    dev.write(0x30, &[0xff; 8]);
    w(&dev, 0x30, u32::MAX);
    w(&dev, 0x38, 4096);
    w(&dev, 0x50, 77);
    w(&dev, 0x200, 1);
    let mut big = [0u8; 8];
    dev.read(0x60, &mut big);
    dev.read(0xfff, &mut [0u8; 1]);
    assert_eq!(seen.activations.load(Ordering::SeqCst), 0);
}

#[test]
fn a_block_read_through_the_transport() {
    let mem = mem();
    let irq = EventFd::new(libc::EFD_NONBLOCK).unwrap();
    let mut disk = sandbox_rootfs::MemDisk::new(64 << 10);
    sandbox_rootfs::Disk::write_at(&mut disk, 512, b"sector one").unwrap();
    let block = crate::block::Block::new(Box::new(disk), "mmio-test");
    let dev = MmioDevice::new(Box::new(block), mem.clone(), irq.try_clone().unwrap()).unwrap();
    w(&dev, 0x70, 3);
    w(&dev, 0x24, 1);
    w(&dev, 0x20, 1);
    w(&dev, 0x70, 0xb);
    w(&dev, 0x30, 0);
    w(&dev, 0x38, 8);
    for (reg, addr) in [(0x80, 0x1000u32), (0x90, 0x2000), (0xa0, 0x3000)] {
        w(&dev, reg, addr);
        w(&dev, reg + 4, 0);
    }
    w(&dev, 0x44, 1);
    w(&dev, 0x70, 0xf);
    assert_eq!(r(&dev, 0x70), 0xf);
    // Request: header (IN, sector 1) -> 512-byte buffer -> status byte.
    let header = [0u32.to_le_bytes(), 0u32.to_le_bytes()].concat();
    mem.write_slice(&header, GuestAddress(0x5000)).unwrap();
    mem.write_obj(1u64, GuestAddress(0x5008)).unwrap();
    let desc = |i: u64, addr: u64, len: u32, flags: u16, next: u16| {
        let base = 0x1000 + i * 16;
        mem.write_obj(addr, GuestAddress(base)).unwrap();
        mem.write_obj(len, GuestAddress(base + 8)).unwrap();
        mem.write_obj(flags, GuestAddress(base + 12)).unwrap();
        mem.write_obj(next, GuestAddress(base + 14)).unwrap();
    };
    desc(0, 0x5000, 16, 1, 1); // NEXT
    desc(1, 0x6000, 512, 1 | 2, 2); // NEXT | WRITE
    desc(2, 0x7000, 1, 2, 0); // WRITE
    mem.write_obj(0u16, GuestAddress(0x2004)).unwrap(); // ring[0] = head 0
    mem.write_obj(1u16, GuestAddress(0x2002)).unwrap(); // avail idx
    dev.kicks()[0].write(1).unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while mem.read_obj::<u16>(GuestAddress(0x3002)).unwrap() != 1 {
        assert!(
            std::time::Instant::now() < deadline,
            "the request completes"
        );
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    let mut data = [0u8; 10];
    mem.read_slice(&mut data, GuestAddress(0x6000)).unwrap();
    assert_eq!(&data, b"sector one");
    assert_eq!(
        mem.read_obj::<u8>(GuestAddress(0x7000)).unwrap(),
        0,
        "status OK"
    );
    assert_eq!(r(&dev, 0x60) & INT_USED_RING, INT_USED_RING);
    assert!(irq.read().unwrap() >= 1);
    dev.shutdown();
}

/// A device whose worker panics on its first queue event: a bug that
/// guest input reaches.
struct Panicky(Option<crate::worker::Worker>);

struct PanickingHandler;

impl crate::worker::Handler for PanickingHandler {
    fn queue_event(&mut self, _idx: usize, _queues: &mut [Queue], _mem: &GuestMemory) -> u64 {
        panic!("a device bug");
    }
}

impl VirtioDevice for Panicky {
    fn device_type(&self) -> u32 {
        crate::device_id::RNG
    }
    fn queue_max_sizes(&self) -> &[u16] {
        &[16, 8]
    }
    fn features(&self) -> u64 {
        VIRTIO_F_VERSION_1
    }
    fn read_config(&self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }
    fn activate(&mut self, ctx: ActivationContext) -> Result<(), DeviceError> {
        self.0 = Some(crate::worker::Worker::spawn(
            "panicky",
            PanickingHandler,
            ctx,
            Vec::new(),
            None,
        )?);
        Ok(())
    }
    fn reset(&mut self) -> Option<Vec<Queue>> {
        self.0.take().map(crate::worker::Worker::stop)
    }
}

#[test]
fn a_panicking_device_worker_fails_the_device_not_the_host() {
    let irq = EventFd::new(libc::EFD_NONBLOCK).unwrap();
    let dev = MmioDevice::new(Box::new(Panicky(None)), mem(), irq.try_clone().unwrap()).unwrap();
    handshake(&dev, 1);
    w(&dev, 0x70, 0xf);
    // The worker panics at once; the driver sees NEEDS_RESET and a
    // configuration interrupt.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while r(&dev, 0x70) & STATUS_NEEDS_RESET == 0 {
        assert!(std::time::Instant::now() < deadline, "NEEDS_RESET is set");
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    assert_eq!(r(&dev, 0x70), 0xf | STATUS_NEEDS_RESET);
    assert_ne!(r(&dev, 0x60) & 2, 0, "configuration interrupt pending");
    assert!(irq.read().unwrap() >= 1);
    // A reset clears it, and the device can be set up again.
    w(&dev, 0x70, 0);
    assert_eq!(r(&dev, 0x70), 0);
    dev.shutdown();
}

/// A block device over a memory disk with `text` at sector 1, driven
/// through the transport to DRIVER_OK (queue 0 at 0x1000/0x2000/0x3000).
fn block_device(mem: &Arc<GuestMemory>, text: &[u8]) -> MmioDevice {
    let irq = EventFd::new(libc::EFD_NONBLOCK).unwrap();
    let mut disk = sandbox_rootfs::MemDisk::new(64 << 10);
    sandbox_rootfs::Disk::write_at(&mut disk, 512, text).unwrap();
    let block = crate::block::Block::new(Box::new(disk), "mmio-snapshot");
    MmioDevice::new(Box::new(block), mem.clone(), irq).unwrap()
}

fn drive_to_ready(dev: &MmioDevice) {
    w(dev, 0x70, 3);
    w(dev, 0x24, 1);
    w(dev, 0x20, 1);
    w(dev, 0x70, 0xb);
    w(dev, 0x30, 0);
    w(dev, 0x38, 8);
    for (reg, addr) in [(0x80, 0x1000u32), (0x90, 0x2000), (0xa0, 0x3000)] {
        w(dev, reg, addr);
        w(dev, reg + 4, 0);
    }
    w(dev, 0x44, 1);
    w(dev, 0x70, 0xf);
}

/// Reads sector 1 through request number `n` (avail slot `n`), waits for
/// used index `n + 1`, returns the first bytes read.
fn read_sector_one(mem: &GuestMemory, dev: &MmioDevice, n: u16) -> Vec<u8> {
    mem.write_slice(&[0u8; 16], GuestAddress(0x6000)).unwrap();
    mem.write_obj(0u32, GuestAddress(0x5000)).unwrap();
    mem.write_obj(1u64, GuestAddress(0x5008)).unwrap();
    for (i, (addr, len, flags, next)) in [
        (0x5000u64, 16u32, 1u16, 1u16),
        (0x6000, 512, 3, 2),
        (0x7000, 1, 2, 0),
    ]
    .into_iter()
    .enumerate()
    {
        let base = 0x1000 + i as u64 * 16;
        mem.write_obj(addr, GuestAddress(base)).unwrap();
        mem.write_obj(len, GuestAddress(base + 8)).unwrap();
        mem.write_obj(flags, GuestAddress(base + 12)).unwrap();
        mem.write_obj(next, GuestAddress(base + 14)).unwrap();
    }
    let slot = 0x2004 + u64::from(n % 8) * 2;
    mem.write_obj(0u16, GuestAddress(slot)).unwrap();
    mem.write_obj(n + 1, GuestAddress(0x2002)).unwrap();
    dev.kicks()[0].write(1).unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while mem.read_obj::<u16>(GuestAddress(0x3002)).unwrap() != n + 1 {
        assert!(
            std::time::Instant::now() < deadline,
            "request {n} completes"
        );
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
    let mut data = vec![0u8; 10];
    mem.read_slice(&mut data, GuestAddress(0x6000)).unwrap();
    data
}

#[test]
fn a_quiesced_device_goes_on_and_a_restored_one_continues_the_rings() {
    let mem = mem();
    let dev = block_device(&mem, b"original!!");
    drive_to_ready(&dev);
    assert_eq!(read_sector_one(&mem, &dev, 0), b"original!!");

    // Quiesced and served again: the same disk, the next ring position.
    let state = dev.quiesce();
    assert!(state.active);
    assert_eq!(state.status, 0xf);
    assert_eq!(
        (state.queues[0].next_avail, state.queues[0].next_used),
        (1, 1)
    );
    assert_eq!(dev.quiesce(), state, "quiescing twice changes nothing");
    dev.unquiesce().unwrap();
    assert_eq!(read_sector_one(&mem, &dev, 1), b"original!!");
    let state = dev.quiesce();
    assert_eq!(state.queues[0].next_avail, 2);
    // The quiesced disk, copied whole and sparsely.
    let copy = std::env::temp_dir().join(format!("sbx-mmio-disk-{}", std::process::id()));
    let out = std::fs::File::options()
        .create(true)
        .truncate(true)
        .read(true)
        .write(true)
        .open(&copy)
        .unwrap();
    assert_eq!(dev.save_disk(&out).unwrap().unwrap(), 4096);
    let bytes = std::fs::read(&copy).unwrap();
    assert_eq!(bytes.len(), 64 << 10);
    assert_eq!(&bytes[512..522], b"original!!");
    std::fs::remove_file(&copy).unwrap();

    // Through serde (as in a state file), into a new device over the
    // same memory: it serves at once, from position 2.
    let json = serde_json::to_string(&state).unwrap();
    let state: MmioState = serde_json::from_str(&json).unwrap();
    let irq = EventFd::new(libc::EFD_NONBLOCK).unwrap();
    let mut disk = sandbox_rootfs::MemDisk::new(64 << 10);
    sandbox_rootfs::Disk::write_at(&mut disk, 512, b"restored!!").unwrap();
    let block = crate::block::Block::new(Box::new(disk), "mmio-restored");
    let restored = MmioDevice::restore(Box::new(block), mem.clone(), irq, &state).unwrap();
    assert_eq!(r(&restored, 0x70), 0xf);
    assert_eq!(read_sector_one(&mem, &restored, 2), b"restored!!");
    restored.shutdown();
    dev.shutdown();

    // Another device type, or another queue count, is refused.
    let (_, seen, _) = device();
    let irq = EventFd::new(libc::EFD_NONBLOCK).unwrap();
    let e = MmioDevice::restore(Box::new(Recorder(seen)), mem.clone(), irq, &state)
        .err()
        .unwrap();
    assert!(e.contains("device type"), "{e}");
}
