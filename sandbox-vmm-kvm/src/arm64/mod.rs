//! The arm64 VMM on KVM: guest RAM at 0x4000_0000, the kernel's `Image`
//! placed by its header, the in-kernel GICv3, arch timer and PSCI, a
//! PL011 console and the virtio-mmio transports at the addresses of QEMU's
//! `virt` machine, all described by the device tree that
//! `sandbox_vmm_hvf::fdt` writes (the same blob the `QemuArm64` backend
//! boots under QEMU here, and the Hypervisor.framework VMM on macOS).
//!
//! Built and linted here for `aarch64-unknown-linux-gnu`; this project has
//! no arm64 KVM host, so it has never run (docs/kvm-backend.md). Snapshots
//! are x86_64 only: `snapshot` and `restore` return
//! [`SnapshotError::Unsupported`].

mod bus;
mod vcpu;

use std::path::Path;
use std::sync::{Arc, Mutex};

use kvm_bindings::{
    kvm_create_device, kvm_device_attr, kvm_device_type_KVM_DEV_TYPE_ARM_VGIC_V3,
    KVM_DEV_ARM_VGIC_CTRL_INIT, KVM_DEV_ARM_VGIC_GRP_ADDR, KVM_DEV_ARM_VGIC_GRP_CTRL,
    KVM_DEV_ARM_VGIC_GRP_NR_IRQS, KVM_VGIC_V3_ADDR_TYPE_DIST, KVM_VGIC_V3_ADDR_TYPE_REDIST,
};
use kvm_ioctls::{DeviceFd, Kvm, VmFd};
use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::eventfd::EventFd;

use crate::run::Vcpus;
use crate::snapshot::{MachineState, SnapshotError, SnapshotInfo};
use crate::{host, kvm, GuestMemory, KvmConfig, KvmError};
use bus::Bus;
use sandbox_virtio::mmio::{MmioDevice, REG_QUEUE_NOTIFY};
use sandbox_virtio::{ConsoleLog, VirtioDevice};
use sandbox_vmm_hvf::layout::{self, Layout};
use sandbox_vmm_hvf::{fdt, image};

/// Interrupt lines the GIC implements: 32 private ones and SPIs up to the
/// last virtio transport's (a multiple of 32, as KVM requires).
const GIC_IRQS: u32 = 32 + 64;

/// A running KVM guest. Dropping it stops every vCPU thread and device.
pub struct KvmVm {
    _gic: DeviceFd,
    bus: Arc<Bus>,
    vcpus: Vcpus,
    console: ConsoleLog,
    mem: Arc<GuestMemory>,
}

/// Sets one GIC attribute whose value `value` points to.
fn gic_attr<T>(gic: &DeviceFd, group: u32, attr: u32, value: Option<&T>) -> Result<(), KvmError> {
    let a = kvm_device_attr {
        flags: 0,
        group,
        attr: u64::from(attr),
        addr: value.map_or(0, |v| v as *const T as u64),
    };
    gic.set_device_attr(&a)
        .map_err(kvm("KVM_SET_DEVICE_ATTR (GICv3)"))
}

/// The in-kernel GICv3 at the layout's distributor and redistributors.
/// Created after the vCPUs (KVM sizes the redistributors by them) and
/// initialized once its addresses are set.
fn create_gic(vm: &VmFd) -> Result<DeviceFd, KvmError> {
    let mut dev = kvm_create_device {
        type_: kvm_device_type_KVM_DEV_TYPE_ARM_VGIC_V3,
        fd: 0,
        flags: 0,
    };
    let gic = vm
        .create_device(&mut dev)
        .map_err(kvm("KVM_CREATE_DEVICE (GICv3)"))?;
    gic_attr(
        &gic,
        KVM_DEV_ARM_VGIC_GRP_ADDR,
        KVM_VGIC_V3_ADDR_TYPE_DIST,
        Some(&layout::GICD_BASE),
    )?;
    gic_attr(
        &gic,
        KVM_DEV_ARM_VGIC_GRP_ADDR,
        KVM_VGIC_V3_ADDR_TYPE_REDIST,
        Some(&layout::GICR_BASE),
    )?;
    gic_attr(&gic, KVM_DEV_ARM_VGIC_GRP_NR_IRQS, 0, Some(&GIC_IRQS))?;
    gic_attr::<u64>(
        &gic,
        KVM_DEV_ARM_VGIC_GRP_CTRL,
        KVM_DEV_ARM_VGIC_CTRL_INIT,
        None,
    )?;
    Ok(gic)
}

impl KvmVm {
    /// Creates the VM, loads the kernel and the device tree and starts
    /// every vCPU.
    pub fn start(cfg: KvmConfig) -> Result<Self, KvmError> {
        let image = std::fs::read(&cfg.kernel).map_err(|e| {
            KvmError::Boot(format!(
                "arm64 kernel not found at {} ({e}): run `cargo xtask build --arch arm64`",
                cfg.kernel.display()
            ))
        })?;
        let layout = Layout::new(
            u32::from(cfg.cpus),
            u64::from(cfg.memory_mib),
            cfg.devices.len(),
        )
        .map_err(|e| KvmError::Config(e.to_string()))?;
        let entry = image::entry(&image, &layout).map_err(|e| KvmError::Boot(e.to_string()))?;
        let mem = GuestMemory::from_ranges(&[(
            GuestAddress(layout::RAM_BASE),
            layout.ram_bytes() as usize,
        )])
        .map_err(|e| KvmError::Config(format!("guest memory: {e}")))?;
        mem.write_slice(&image, GuestAddress(entry.pc))
            .map_err(|e| KvmError::Boot(format!("loading the kernel: {e}")))?;

        let vm = Kvm::new()
            .map_err(kvm("opening /dev/kvm"))?
            .create_vm()
            .map_err(kvm("KVM_CREATE_VM"))?;
        crate::run::register_memory(&vm, &mem)?;
        let template = vcpu::init_template(&vm)?;
        let mut fds = Vec::new();
        for id in 0..cfg.cpus {
            let fd = vm
                .create_vcpu(u64::from(id))
                .map_err(kvm("KVM_CREATE_VCPU"))?;
            vcpu::configure(&fd, &template, (id == 0).then_some(&entry))?;
            fds.push(fd);
        }
        let gic = create_gic(&vm)?;

        let mem = Arc::new(mem);
        let vm = Arc::new(vm);
        let mut mmio = Vec::new();
        for (n, device) in cfg.devices.into_iter().enumerate() {
            let (base, spi) = layout
                .virtio(n)
                .ok_or_else(|| KvmError::Config("too many virtio devices".into()))?;
            let irq = EventFd::new(libc::EFD_NONBLOCK).map_err(host("creating an eventfd"))?;
            vm.register_irqfd(&irq, spi).map_err(kvm("KVM_IRQFD"))?;
            let dev =
                MmioDevice::new(device, mem.clone(), irq).map_err(host("creating a device"))?;
            for (q, kick) in dev.kicks().iter().enumerate() {
                let addr = kvm_ioctls::IoEventAddress::Mmio(base + REG_QUEUE_NOTIFY);
                vm.register_ioevent(kick, &addr, q as u32)
                    .map_err(kvm("KVM_IOEVENTFD"))?;
            }
            mmio.push(dev);
        }
        let console = ConsoleLog::new(cfg.console_log_bytes);
        let cmdline = format!("console=ttyAMA0 reboot=k panic=-1 {}", cfg.cmdline.trim());
        let dtb = fdt::device_tree(&layout, &cmdline).map_err(|e| KvmError::Boot(e.to_string()))?;
        mem.write_slice(&dtb, GuestAddress(layout.fdt_addr()))
            .map_err(|e| KvmError::Boot(format!("writing the device tree: {e}")))?;

        let bus = Arc::new(Bus {
            layout,
            uart: Mutex::new(sandbox_vmm_hvf::pl011::Pl011::new()),
            console: console.clone(),
            echo: crate::console_debug(),
            vm,
            mmio,
        });
        let mut this = KvmVm {
            _gic: gic,
            bus,
            vcpus: Vcpus::new(),
            console,
            mem,
        };
        for (id, fd) in fds.into_iter().enumerate() {
            let shared = vcpu::Shared {
                bus: this.bus.clone(),
                stop: this.vcpus.stop.clone(),
                gate: this.vcpus.gate.clone(),
            };
            this.vcpus
                .spawn(id as u8, &this.console, move || vcpu::run(fd, shared))?;
        }
        Ok(this)
    }

    /// Snapshots are x86_64 only.
    pub fn restore(
        _state: &MachineState,
        _memory: std::fs::File,
        _devices: Vec<Box<dyn VirtioDevice>>,
        _console_log_bytes: usize,
    ) -> Result<Self, SnapshotError> {
        Err(SnapshotError::Unsupported(
            "restoring a snapshot on arm64 KVM".into(),
        ))
    }

    /// Snapshots are x86_64 only.
    pub fn snapshot(&self, _dir: &Path) -> Result<SnapshotInfo, SnapshotError> {
        Err(SnapshotError::Unsupported(
            "snapshots of arm64 KVM guests".into(),
        ))
    }
}

crate::run::lifecycle!(KvmVm);
