//! Creating a KVM guest, running its vCPU threads and stopping it.

use std::os::unix::thread::JoinHandleExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, Once};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use kvm_bindings::{
    kvm_pit_config, kvm_userspace_memory_region, KVM_MAX_CPUID_ENTRIES, KVM_PIT_SPEAKER_DUMMY,
};
use kvm_ioctls::{Kvm, VmFd};
use vm_memory::{GuestMemoryBackend, GuestMemoryRegion};
use vm_superio::Serial;
use vmm_sys_util::eventfd::EventFd;

use crate::bus::{Bus, ConsoleWriter, IrqTrigger};
use crate::layout::*;
use crate::{boot, cpuid, mptable, seccomp, vcpu, CpuProfile, GuestExit, GuestMemory, KvmError};
use sandbox_virtio::mmio::{MmioDevice, REG_QUEUE_NOTIFY};
use sandbox_virtio::{ConsoleLog, VirtioDevice};

/// What to boot.
pub struct KvmConfig {
    /// The uncompressed `vmlinux` with a PVH entry point.
    pub kernel: PathBuf,
    /// Guest memory in MiB.
    pub memory_mib: u32,
    /// vCPUs (1 to 32).
    pub cpus: u8,
    /// Kernel command line, after what the VMM adds itself (console,
    /// virtio-mmio devices, and `sandbox_nested_pvm` for that profile).
    pub cmdline: String,
    /// Which CPUID the guest sees.
    pub profile: CpuProfile,
    /// Bytes of console output kept.
    pub console_log_bytes: usize,
    /// Virtio devices, in order (`/dev/vda` is the first block device).
    pub devices: Vec<Box<dyn VirtioDevice>>,
}

#[derive(Default)]
struct ExitState {
    exit: Mutex<Option<GuestExit>>,
    changed: Condvar,
}

/// A running KVM guest. Dropping it stops every vCPU thread and device.
pub struct KvmVm {
    _vm: VmFd,
    bus: Arc<Bus>,
    stop: Arc<AtomicBool>,
    state: Arc<ExitState>,
    threads: Vec<JoinHandle<Result<(), sandbox_thread::Panicked>>>,
    console: ConsoleLog,
    mem: Arc<GuestMemory>,
}

fn kvm(what: &'static str) -> impl Fn(kvm_ioctls::Error) -> KvmError {
    move |e| KvmError::Kvm { what, source: e }
}

fn host(what: &str) -> impl FnOnce(std::io::Error) -> KvmError + '_ {
    move |source| KvmError::Host {
        what: what.to_string(),
        source,
    }
}

/// The signal that kicks a vCPU thread out of `KVM_RUN`.
fn kick_signal() -> i32 {
    libc::SIGRTMIN() + 1
}

fn install_kick_handler() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        extern "C" fn noop(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {}
        let _ = vmm_sys_util::signal::register_signal_handler(kick_signal(), noop);
    });
}

/// Guest RAM is not inherited by children forked by any thread of this
/// process (as QEMU does): no copy-on-write of the whole guest while a
/// child runs until its exec, and no guest memory in a child at all.
fn advise_guest_ram(addr: *mut u8, len: usize) {
    // SAFETY: advice on a mapping this VM owns; it changes no contents.
    unsafe { libc::madvise(addr.cast(), len, libc::MADV_DONTFORK) };
}

/// Console lines searched for a panic when the guest resets.
const PANIC_SEARCH_LINES: usize = 80;

/// A reset right after the kernel's panic line is the panic (`panic=-1`
/// resets through the same i8042 port as a reboot).
fn classify_reset(exit: GuestExit, console: &ConsoleLog) -> GuestExit {
    if exit != GuestExit::Reboot {
        return exit;
    }
    let tail = console.tail(PANIC_SEARCH_LINES);
    match tail
        .lines()
        .rev()
        .find_map(|l| l.split_once("Kernel panic - not syncing: "))
    {
        Some((_, why)) => GuestExit::Panic(why.trim().to_string()),
        None => exit,
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
        let kvm_sys = Kvm::new().map_err(kvm("opening /dev/kvm"))?;
        let vm = kvm_sys.create_vm().map_err(kvm("KVM_CREATE_VM"))?;
        let mem_bytes = u64::from(cfg.memory_mib) << 20;
        let mem = GuestMemory::from_ranges(&ram_regions(mem_bytes))
            .map_err(|e| KvmError::Config(format!("guest memory: {e}")))?;
        for (slot, region) in mem.iter().enumerate() {
            let host_addr = mem
                .get_host_address(region.start_addr())
                .map_err(|e| KvmError::Config(format!("guest memory: {e}")))?;
            let r = kvm_userspace_memory_region {
                slot: slot as u32,
                flags: 0,
                guest_phys_addr: region.start_addr().0,
                memory_size: region.len(),
                userspace_addr: host_addr as u64,
            };
            advise_guest_ram(host_addr, region.len() as usize);
            // SAFETY: the region is mapped for as long as `mem` lives, and
            // `mem` is kept by the VM (and its devices) until they stop.
            unsafe { vm.set_user_memory_region(r) }.map_err(kvm("KVM_SET_USER_MEMORY_REGION"))?;
        }
        let mem = Arc::new(mem);
        let _ = vm.set_tss_address(0xfffb_d000);
        vm.create_irq_chip().map_err(kvm("KVM_CREATE_IRQCHIP"))?;
        let pit = kvm_pit_config {
            flags: KVM_PIT_SPEAKER_DUMMY,
            ..Default::default()
        };
        vm.create_pit2(pit).map_err(kvm("KVM_CREATE_PIT2"))?;

        let entry = boot::load_kernel(&mem, &cfg.kernel)?;
        mptable::write(&mem, cfg.cpus)?;
        let console = ConsoleLog::new(cfg.console_log_bytes);
        let serial_irq = EventFd::new(libc::EFD_NONBLOCK).map_err(host("creating an eventfd"))?;
        vm.register_irqfd(&serial_irq, SERIAL_GSI)
            .map_err(kvm("KVM_IRQFD"))?;
        let writer = ConsoleWriter {
            log: console.clone(),
            echo: std::env::var_os("SANDBOX_KVM_CONSOLE").is_some(),
        };
        let mut mmio = Vec::new();
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
        for (i, device) in cfg.devices.into_iter().enumerate() {
            let gsi = MMIO_GSI_START + i as u32;
            if gsi >= IOAPIC_PINS {
                return Err(KvmError::Config("too many virtio devices".into()));
            }
            let irq = EventFd::new(libc::EFD_NONBLOCK).map_err(host("creating an eventfd"))?;
            vm.register_irqfd(&irq, gsi).map_err(kvm("KVM_IRQFD"))?;
            let dev =
                MmioDevice::new(device, mem.clone(), irq).map_err(host("creating a device"))?;
            let base = MMIO_START + i as u64 * MMIO_SIZE;
            for (q, kick) in dev.kicks().iter().enumerate() {
                let addr = kvm_ioctls::IoEventAddress::Mmio(base + REG_QUEUE_NOTIFY);
                vm.register_ioevent(kick, &addr, q as u32)
                    .map_err(kvm("KVM_IOEVENTFD"))?;
            }
            cmdline.push_str(&format!(" virtio_mmio.device=4K@{base:#x}:{gsi}"));
            mmio.push(dev);
        }
        if !cfg.cmdline.is_empty() {
            cmdline.push(' ');
            cmdline.push_str(&cfg.cmdline);
        }
        boot::write_boot_info(&mem, &cmdline)?;
        let bus = Arc::new(Bus {
            serial: Mutex::new(Serial::new(IrqTrigger(serial_irq), writer)),
            mmio,
        });

        let supported = kvm_sys
            .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
            .map_err(kvm("KVM_GET_SUPPORTED_CPUID"))?;
        install_kick_handler();
        let stop = Arc::new(AtomicBool::new(false));
        let state = Arc::new(ExitState::default());
        let mut vcpus = Vec::new();
        for id in 0..cfg.cpus {
            let fd = vm
                .create_vcpu(u64::from(id))
                .map_err(kvm("KVM_CREATE_VCPU"))?;
            let mut cpuid = supported.clone();
            cpuid::filter(&mut cpuid, id, cfg.cpus, cfg.profile);
            vcpu::configure(&fd, &cpuid, (id == 0).then_some(entry.0))?;
            vcpus.push(fd);
        }
        let mut this = Self {
            _vm: vm,
            bus,
            stop,
            state,
            threads: Vec::new(),
            console,
            mem,
        };
        for (id, fd) in vcpus.into_iter().enumerate() {
            let (bus, stop, state) = (this.bus.clone(), this.stop.clone(), this.state.clone());
            let console = this.console.clone();
            let vcpu =
                sandbox_thread::spawn(format!("vcpu{id}"), Some(&seccomp::VCPU), move || {
                    // A panic in exit handling (device code reached by a guest
                    // register access) stops this VM as a crash, not the host.
                    let exit = match sandbox_thread::contain(|| vcpu::run(fd, bus, stop.clone())) {
                        Ok(exit) => classify_reset(exit, &console),
                        Err(p) => GuestExit::Crashed(format!("the VMM failed: {p}")),
                    };
                    let mut slot = state.exit.lock().unwrap_or_else(|e| e.into_inner());
                    if slot.is_none() && exit != GuestExit::Stopped {
                        *slot = Some(exit);
                    }
                    stop.store(true, Ordering::Release);
                    state.changed.notify_all();
                });
            // On failure `this` is dropped, and its Drop stops and joins the
            // vCPU threads already started and the devices.
            let thread = vcpu.map_err(host("starting a vCPU thread"))?;
            this.threads.push(thread);
        }
        Ok(this)
    }

    /// Host address ranges of guest RAM (to tell guest memory from the
    /// VMM's own in `/proc/self/smaps`).
    pub fn guest_memory_ranges(&self) -> Vec<(usize, usize)> {
        self.mem
            .iter()
            .filter_map(|r| {
                let host = self.mem.get_host_address(r.start_addr()).ok()?;
                Some((host as usize, r.len() as usize))
            })
            .collect()
    }

    /// The console log.
    pub fn console(&self) -> &ConsoleLog {
        &self.console
    }

    /// How the guest stopped, waiting up to `timeout` for it to stop.
    pub fn wait_exit(&self, timeout: Duration) -> Option<GuestExit> {
        let deadline = Instant::now() + timeout;
        let mut slot = self.state.exit.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            if let Some(exit) = slot.clone() {
                return Some(exit);
            }
            let left = deadline.checked_duration_since(Instant::now())?;
            slot = self
                .state
                .changed
                .wait_timeout(slot, left)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    /// Whether a vCPU stopped (the guest ended or crashed).
    pub fn exited(&self) -> Option<GuestExit> {
        self.state
            .exit
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Stops every vCPU and device and joins their threads.
    pub fn stop(&mut self) {
        self.stop.store(true, Ordering::Release);
        for t in self.threads.drain(..) {
            while !t.is_finished() {
                // SAFETY: the thread is alive (not finished) and owned by
                // us; the signal's handler does nothing but interrupt
                // KVM_RUN.
                unsafe { libc::pthread_kill(t.as_pthread_t(), kick_signal()) };
                std::thread::sleep(Duration::from_millis(1));
            }
            let _ = t.join();
        }
        for dev in &self.bus.mmio {
            dev.shutdown();
        }
    }
}

impl Drop for KvmVm {
    fn drop(&mut self) {
        self.stop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reset_after_a_panic_line_is_a_panic() {
        let console = ConsoleLog::new(4096);
        console.push(b"[    1.0] booting\n");
        assert_eq!(
            classify_reset(GuestExit::Reboot, &console),
            GuestExit::Reboot
        );
        console.push(
            b"[    9.1] Kernel panic - not syncing: Attempted to kill init! exitcode=0x0000000b\n",
        );
        console.push(b"[    9.2] Rebooting in 1 seconds..\n");
        assert_eq!(
            classify_reset(GuestExit::Reboot, &console),
            GuestExit::Panic("Attempted to kill init! exitcode=0x0000000b".into())
        );
        assert_eq!(
            classify_reset(GuestExit::PowerOff, &console),
            GuestExit::PowerOff
        );
    }
}
