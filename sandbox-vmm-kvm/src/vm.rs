//! Creating a KVM guest, running its vCPU threads and stopping it.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kvm_bindings::{kvm_pit_config, KVM_MAX_CPUID_ENTRIES, KVM_PIT_SPEAKER_DUMMY};
use kvm_ioctls::{Kvm, VcpuFd, VmFd};
use vm_superio::serial::NoEvents;
use vm_superio::Serial;
use vmm_sys_util::eventfd::EventFd;

use crate::bus::{Bus, ConsoleWriter, IrqTrigger};
use crate::layout::*;
use crate::run::Vcpus;
use crate::snapshot::{
    memory, CpuFeatures, MachineState, SavedDisk, SerialSnapshot, SnapshotError, SnapshotInfo,
    VmKvmState, MEMORY_FILE, STATE_FILE,
};
use crate::{boot, cpuid, host, kvm, mptable, vcpu, CpuProfile, GuestMemory, KvmConfig, KvmError};
use sandbox_virtio::mmio::{MmioDevice, MmioState, REG_QUEUE_NOTIFY};
use sandbox_virtio::{ConsoleLog, VirtioDevice};

/// A running KVM guest. Dropping it stops every vCPU thread and device.
pub struct KvmVm {
    _vm: VmFd,
    bus: Arc<Bus>,
    vcpus: Vcpus,
    /// Each vCPU's state, saved when it last parked.
    saved: vcpu::SavedStates,
    console: ConsoleLog,
    mem: Arc<GuestMemory>,
    /// The CPU features the guest was started with (recorded in snapshots).
    features: CpuFeatures,
}

/// Creates a snapshot file that must not exist yet, for reading and writing.
fn create_new(path: &Path) -> Result<std::fs::File, SnapshotError> {
    std::fs::File::options()
        .read(true)
        .write(true)
        .create_new(true)
        .open(path)
        .map_err(|source| SnapshotError::Io {
            what: format!("creating {}", path.display()),
            source,
        })
}

/// How long the vCPUs get to park for a snapshot.
const PAUSE_FOR_SNAPSHOT: Duration = Duration::from_secs(5);

/// A VM with RAM, interrupt controllers and PIT, before devices and vCPUs.
struct Base {
    kvm: Kvm,
    vm: VmFd,
    mem: Arc<GuestMemory>,
}

impl Base {
    fn new(mem: GuestMemory) -> Result<Self, KvmError> {
        let kvm_sys = Kvm::new().map_err(kvm("opening /dev/kvm"))?;
        let vm = kvm_sys.create_vm().map_err(kvm("KVM_CREATE_VM"))?;
        crate::run::register_memory(&vm, &mem)?;
        let _ = vm.set_tss_address(0xfffb_d000);
        vm.create_irq_chip().map_err(kvm("KVM_CREATE_IRQCHIP"))?;
        let pit = kvm_pit_config {
            flags: KVM_PIT_SPEAKER_DUMMY,
            ..Default::default()
        };
        vm.create_pit2(pit).map_err(kvm("KVM_CREATE_PIT2"))?;
        Ok(Self {
            kvm: kvm_sys,
            vm,
            mem: Arc::new(mem),
        })
    }

    /// The serial port and the virtio-mmio devices (each restored from its
    /// saved state when one is given), wired to irqfds and ioeventfds.
    /// Returns the bus and the kernel parameters naming the devices.
    fn bus(
        &self,
        devices: Vec<(Box<dyn VirtioDevice>, Option<&MmioState>)>,
        serial: Option<&SerialSnapshot>,
        console: &ConsoleLog,
    ) -> Result<(Bus, String), KvmError> {
        let (vm, mem) = (&self.vm, &self.mem);
        let serial_irq = EventFd::new(libc::EFD_NONBLOCK).map_err(host("creating an eventfd"))?;
        vm.register_irqfd(&serial_irq, SERIAL_GSI)
            .map_err(kvm("KVM_IRQFD"))?;
        let writer = ConsoleWriter {
            log: console.clone(),
            echo: crate::console_debug(),
        };
        let trigger = IrqTrigger(serial_irq);
        let serial = match serial {
            Some(saved) => Serial::from_state(&saved.to_state(), trigger, NoEvents, writer)
                .map_err(|e| KvmError::Config(format!("the snapshot's serial port: {e:?}")))?,
            None => Serial::new(trigger, writer),
        };
        let mut mmio = Vec::new();
        let mut params = String::new();
        for (i, (device, saved)) in devices.into_iter().enumerate() {
            let gsi = MMIO_GSI_START + i as u32;
            if gsi >= IOAPIC_PINS {
                return Err(KvmError::Config("too many virtio devices".into()));
            }
            let irq = EventFd::new(libc::EFD_NONBLOCK).map_err(host("creating an eventfd"))?;
            vm.register_irqfd(&irq, gsi).map_err(kvm("KVM_IRQFD"))?;
            let dev = match saved {
                Some(state) => MmioDevice::restore(device, mem.clone(), irq, state)
                    .map_err(|e| KvmError::Config(format!("restoring virtio device {i}: {e}")))?,
                None => {
                    MmioDevice::new(device, mem.clone(), irq).map_err(host("creating a device"))?
                }
            };
            let base = MMIO_START + i as u64 * MMIO_SIZE;
            for (q, kick) in dev.kicks().iter().enumerate() {
                let addr = kvm_ioctls::IoEventAddress::Mmio(base + REG_QUEUE_NOTIFY);
                vm.register_ioevent(kick, &addr, q as u32)
                    .map_err(kvm("KVM_IOEVENTFD"))?;
            }
            params.push_str(&format!(" virtio_mmio.device=4K@{base:#x}:{gsi}"));
            mmio.push(dev);
        }
        Ok((
            Bus {
                serial: Mutex::new(serial),
                mmio,
            },
            params,
        ))
    }

    /// Starts one thread per vCPU.
    fn launch(
        self,
        bus: Bus,
        vcpus: Vec<VcpuFd>,
        console: ConsoleLog,
        features: CpuFeatures,
    ) -> Result<KvmVm, KvmError> {
        let msr_index: Arc<[u32]> = self
            .kvm
            .get_msr_index_list()
            .map(|l| l.as_slice().into())
            .unwrap_or_else(|_| Arc::from(Vec::new()));
        let mut this = KvmVm {
            _vm: self.vm,
            bus: Arc::new(bus),
            vcpus: Vcpus::new(),
            saved: Arc::new(Mutex::new(vec![None; vcpus.len()])),
            console,
            mem: self.mem,
            features,
        };
        for (id, fd) in vcpus.into_iter().enumerate() {
            let shared = vcpu::Shared {
                bus: this.bus.clone(),
                stop: this.vcpus.stop.clone(),
                gate: this.vcpus.gate.clone(),
                saved: this.saved.clone(),
                msr_index: msr_index.clone(),
            };
            let id = id as u8;
            // On failure `this` is dropped, and its Drop stops and joins the
            // vCPU threads already started and the devices.
            this.vcpus
                .spawn(id, &this.console, move || vcpu::run(id, fd, shared))?;
        }
        Ok(this)
    }
}

impl KvmVm {
    /// Creates the VM, loads the kernel and starts every vCPU.
    pub fn start(cfg: KvmConfig) -> Result<Self, KvmError> {
        if !cfg.kernel.is_file() {
            return Err(KvmError::Boot(format!(
                "x86_64 kernel not found at {}: run `cargo xtask build`",
                cfg.kernel.display()
            )));
        }
        let mem_bytes = u64::from(cfg.memory_mib) << 20;
        let mem = GuestMemory::from_ranges(&ram_regions(mem_bytes))
            .map_err(|e| KvmError::Config(format!("guest memory: {e}")))?;
        let base = Base::new(mem)?;
        let entry = boot::load_kernel(&base.mem, &cfg.kernel)?;
        mptable::write(&base.mem, cfg.cpus)?;
        let console = ConsoleLog::new(cfg.console_log_bytes);
        let devices = cfg.devices.into_iter().map(|d| (d, None)).collect();
        let (bus, device_params) = base.bus(devices, None, &console)?;
        // The agent powers off through our port (the guest has no ACPI).
        let mut cmdline = format!(
            "console=ttyS0 reboot=k panic=-1 i8042.noaux i8042.nomux {}",
            sandbox_protocol::cmdline::param(
                sandbox_protocol::cmdline::POWEROFF,
                sandbox_protocol::cmdline::poweroff_port(POWER_OFF_PORT)
            )
        );
        if cfg.profile == CpuProfile::NestedPvm {
            cmdline.push(' ');
            cmdline.push_str(crate::NESTED_PVM_CMDLINE);
        }
        cmdline.push_str(&device_params);
        if !cfg.cmdline.is_empty() {
            cmdline.push(' ');
            cmdline.push_str(&cfg.cmdline);
        }
        boot::write_boot_info(&base.mem, &cmdline)?;

        let supported = base
            .kvm
            .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
            .map_err(kvm("KVM_GET_SUPPORTED_CPUID"))?;
        let mut vcpus = Vec::new();
        let mut features = None;
        for id in 0..cfg.cpus {
            let fd = base
                .vm
                .create_vcpu(u64::from(id))
                .map_err(kvm("KVM_CREATE_VCPU"))?;
            let mut cpuid = supported.clone();
            cpuid::filter(&mut cpuid, id, cfg.cpus, cfg.profile);
            features.get_or_insert_with(|| CpuFeatures::of(cpuid.as_slice(), cfg.profile));
            vcpu::configure(&fd, &cpuid, (id == 0).then_some(entry.0))?;
            vcpus.push(fd);
        }
        let features = features.ok_or_else(|| KvmError::Config("a VM needs a vCPU".into()))?;
        base.launch(bus, vcpus, console, features)
    }

    /// Starts a VM from a snapshot: `state` and its memory file (mapped
    /// copy-on-write, so several VMs restored from one file share its
    /// unchanged pages), with `devices` in the order they had when the
    /// snapshot was taken, each continuing from its saved queue state.
    pub fn restore(
        state: &MachineState,
        memory: std::fs::File,
        devices: Vec<Box<dyn VirtioDevice>>,
        console_log_bytes: usize,
    ) -> Result<Self, SnapshotError> {
        if devices.len() != state.devices.len() {
            return Err(SnapshotError::Corrupt(format!(
                "the snapshot has {} devices, the machine to restore {}",
                state.devices.len(),
                devices.len()
            )));
        }
        let mem =
            memory::map_private(memory, &state.regions).map_err(|source| SnapshotError::Io {
                what: "mapping the snapshot's memory file".into(),
                source,
            })?;
        let base = Base::new(mem)?;
        let host = CpuFeatures::host(&base.kvm, state.features.profile())?;
        state
            .features
            .check(&host)
            .map_err(SnapshotError::Incompatible)?;
        state.vm.restore(&base.vm)?;
        let mut vcpus = Vec::new();
        for saved in &state.vcpus {
            let fd = base
                .vm
                .create_vcpu(u64::from(saved.id))
                .map_err(kvm("KVM_CREATE_VCPU"))?;
            saved.restore(&fd)?;
            vcpus.push(fd);
        }
        let console = ConsoleLog::new(console_log_bytes);
        let devices = devices
            .into_iter()
            .zip(state.devices.iter().map(Some))
            .collect();
        let (bus, _) = base.bus(devices, Some(&state.serial), &console)?;
        Ok(base.launch(bus, vcpus, console, state.features.clone())?)
    }

    /// Writes a snapshot of the guest into `dir` (created; it must not
    /// hold one already): the state file and the memory file. The guest is
    /// paused for the time it takes (if it was running, it runs again
    /// after), its devices stop serving meanwhile and then go on with
    /// their host-side state intact.
    pub fn snapshot(&self, dir: &Path) -> Result<SnapshotInfo, SnapshotError> {
        let was_paused = self.is_paused();
        self.pause(PAUSE_FOR_SNAPSHOT)?;
        let result = self.snapshot_paused(dir);
        for dev in &self.bus.mmio {
            if let Err(e) = dev.unquiesce() {
                log::warn!("a device did not restart after a snapshot: {e}");
            }
        }
        if !was_paused {
            self.resume();
        }
        result
    }

    fn snapshot_paused(&self, dir: &Path) -> Result<SnapshotInfo, SnapshotError> {
        let io = |what: String| move |source| SnapshotError::Io { what, source };
        std::fs::create_dir_all(dir).map_err(io(format!("creating {}", dir.display())))?;
        let (started, running) = self.vcpus.counts();
        if running != started {
            return Err(SnapshotError::Corrupt(
                "the guest has stopped: there is nothing to snapshot".into(),
            ));
        }
        let vcpus = {
            let slots = self.saved.lock().unwrap_or_else(|e| e.into_inner());
            slots
                .iter()
                .enumerate()
                .map(|(i, s)| match s {
                    Some(Ok(state)) => Ok(state.clone()),
                    Some(Err(e)) => Err(SnapshotError::Corrupt(format!(
                        "vCPU {i}'s state could not be saved: {e}"
                    ))),
                    None => Err(SnapshotError::Corrupt(format!("vCPU {i} did not park"))),
                })
                .collect::<Result<Vec<_>, _>>()?
        };
        let devices: Vec<MmioState> = self.bus.mmio.iter().map(MmioDevice::quiesce).collect();
        let mut disks = Vec::new();
        for (i, (dev, state)) in self.bus.mmio.iter().zip(&devices).enumerate() {
            // Block devices copy their disk; a virtio-fs device serving a
            // memory file system its image (others have nothing to copy).
            let (file, required) = match state.device_type {
                sandbox_virtio::device_id::BLOCK => (format!("disk{i}.raw"), true),
                sandbox_virtio::device_id::FS => (format!("fs{i}.img"), false),
                _ => continue,
            };
            let path = dir.join(&file);
            let out = create_new(&path)?;
            let stored = match dev.save_disk(&out) {
                Some(r) => r.map_err(io(format!(
                    "copying device {i}'s data to {}",
                    path.display()
                )))?,
                None if required => {
                    return Err(SnapshotError::Corrupt(format!(
                        "block device {i} has no disk"
                    )))
                }
                None => {
                    drop(out);
                    std::fs::remove_file(&path)
                        .map_err(io(format!("removing {}", path.display())))?;
                    continue;
                }
            };
            let size = out
                .metadata()
                .map_err(io(format!("reading {}", path.display())))?
                .len();
            disks.push(SavedDisk {
                device: i,
                file,
                size,
                stored,
            });
        }
        let serial = SerialSnapshot::of(
            &self
                .bus
                .serial
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .state(),
        );
        let state = MachineState {
            regions: memory::regions(&self.mem),
            features: self.features.clone(),
            vcpus,
            vm: VmKvmState::save(&self._vm)?,
            devices,
            serial,
            disks,
        };
        let memory_path = dir.join(MEMORY_FILE);
        let file = create_new(&memory_path)?;
        let memory_bytes = memory::save(&self.mem, &file)
            .map_err(io(format!("writing {}", memory_path.display())))?;
        state.write(&dir.join(STATE_FILE))?;
        Ok(SnapshotInfo {
            disks: state.disks.clone(),
            memory_bytes,
            ram_bytes: state.regions.iter().map(|r| r.1 as u64).sum(),
        })
    }
}

crate::run::lifecycle!(KvmVm);
