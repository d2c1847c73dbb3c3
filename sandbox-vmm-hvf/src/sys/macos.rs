//! The Hypervisor.framework half (applevisor 1.0, macOS 15 or newer for
//! the in-kernel GICv3): the VM, its RAM, the GIC at the addresses the
//! device tree names, one thread per vCPU running [`crate::exit`], the
//! virtio-mmio transports of [`crate::virtio`] on the bus with their SPIs
//! raised by an [`IrqPump`], WFI sleeping until the vCPU's timer or an
//! interrupt ([`crate::idle`]), and a host-initiated stop.
//!
//! Type-checked on Linux for `aarch64-apple-darwin` (`cargo xtask darwin`);
//! never run anywhere yet. docs/hvf-backend.md says what is unverified.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use applevisor::prelude::*;
use sandbox_virtio::{ConsoleLog, GuestMemory, VirtioDevice};
use vm_memory::mmap::{GuestRegionMmap, MmapRegion};
use vm_memory::GuestAddress;

use crate::exit::{self, Bus, Next, Regs};
use crate::idle::{self, Wake};
use crate::layout::{self, Layout};
use crate::pl011::Pl011;
use crate::virtio::{IrqPump, VirtioBus};

/// Why the machine could not start or stopped.
#[derive(Debug, thiserror::Error)]
pub enum HvfError {
    /// A Hypervisor.framework call failed.
    #[error("Hypervisor.framework: {what} failed ({code:?}); the embedding binary needs the com.apple.security.hypervisor entitlement and macOS 15 or newer")]
    Call {
        /// What was being done.
        what: &'static str,
        /// applevisor's error.
        code: HypervisorError,
    },
    /// The kernel image or the device tree.
    #[error("{0}")]
    Boot(String),
}

fn call<T>(what: &'static str, r: Result<T>) -> std::result::Result<T, HvfError> {
    r.map_err(|code| HvfError::Call { what, code })
}

/// How the guest ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// PSCI SYSTEM_OFF.
    PowerOff,
    /// PSCI SYSTEM_RESET.
    Reset,
    /// Something the VMM cannot emulate, or a failed framework call.
    Crash(String),
    /// The host stopped it ([`Machine::stop`]).
    Stopped,
}

const XREGS: [Reg; 31] = [
    Reg::X0,
    Reg::X1,
    Reg::X2,
    Reg::X3,
    Reg::X4,
    Reg::X5,
    Reg::X6,
    Reg::X7,
    Reg::X8,
    Reg::X9,
    Reg::X10,
    Reg::X11,
    Reg::X12,
    Reg::X13,
    Reg::X14,
    Reg::X15,
    Reg::X16,
    Reg::X17,
    Reg::X18,
    Reg::X19,
    Reg::X20,
    Reg::X21,
    Reg::X22,
    Reg::X23,
    Reg::X24,
    Reg::X25,
    Reg::X26,
    Reg::X27,
    Reg::X28,
    Reg::X29,
    Reg::X30,
];

fn xreg(n: u8) -> std::result::Result<Reg, String> {
    XREGS
        .get(usize::from(n))
        .copied()
        .ok_or_else(|| format!("no register x{n}"))
}

impl Regs for Vcpu {
    fn x(&self, n: u8) -> std::result::Result<u64, String> {
        self.get_reg(xreg(n)?).map_err(|e| format!("{e:?}"))
    }
    fn set_x(&mut self, n: u8, value: u64) -> std::result::Result<(), String> {
        self.set_reg(xreg(n)?, value).map_err(|e| format!("{e:?}"))
    }
    fn pc(&self) -> std::result::Result<u64, String> {
        self.get_reg(Reg::PC).map_err(|e| format!("{e:?}"))
    }
    fn set_pc(&mut self, pc: u64) -> std::result::Result<(), String> {
        self.set_reg(Reg::PC, pc).map_err(|e| format!("{e:?}"))
    }
}

/// The emulated devices of one machine, shared by its vCPU threads.
struct Devices {
    vm: VirtualMachineInstance<GicEnabled>,
    uart: Pl011,
    console: ConsoleLog,
    /// vCPUs running (PSCI CPU_ON and AFFINITY_INFO ask).
    online: Vec<u32>,
    /// Every vCPU's handle, for `hv_vcpus_exit`.
    handles: Vec<VcpuHandle>,
    /// Every vCPU thread, joined when the machine goes away.
    threads: Vec<JoinHandle<std::result::Result<(), sandbox_thread::Panicked>>>,
}

/// What every vCPU thread of one machine shares.
#[derive(Clone)]
struct Shared {
    vm: VirtualMachineInstance<GicEnabled>,
    devices: Arc<Mutex<Devices>>,
    virtio: Arc<VirtioBus>,
    wake: Arc<Wake>,
    stopping: Arc<AtomicBool>,
    layout: Layout,
    outcome: Sender<Outcome>,
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, Devices> {
        self.devices.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Devices {
    fn uart_irq(&self) {
        let _ = self
            .vm
            .gic_set_spi(layout::spi_intid(layout::UART_SPI), self.uart.irq());
    }
}

/// The bus a vCPU thread hands [`exit::handle`]: the UART under the
/// devices' lock, the virtio transports (which lock per transport)
/// without it.
struct SharedBus(Shared);

impl Bus for SharedBus {
    fn read(&mut self, addr: u64, data: &mut [u8]) -> bool {
        let Some(off) = uart_offset(addr) else {
            return self.0.virtio.read(addr, data);
        };
        let mut d = self.0.lock();
        let v = d.uart.read(off).to_le_bytes();
        let n = data.len().min(4);
        data[..n].copy_from_slice(&v[..n]);
        d.uart_irq();
        true
    }

    fn write(&mut self, addr: u64, data: &[u8]) -> bool {
        let Some(off) = uart_offset(addr) else {
            return self.0.virtio.write(addr, data);
        };
        let mut v = [0u8; 4];
        let n = data.len().min(4);
        v[..n].copy_from_slice(&data[..n]);
        let mut d = self.0.lock();
        if let Some(byte) = d.uart.write(off, u32::from_le_bytes(v)) {
            d.console.push(&[byte]);
        }
        d.uart_irq();
        true
    }
}

fn uart_offset(addr: u64) -> Option<u64> {
    addr.checked_sub(layout::UART_BASE)
        .filter(|o| *o < layout::UART_SIZE)
}

/// A running machine and how it ended.
pub struct Machine {
    outcome: Receiver<Outcome>,
    shared: Shared,
    /// Stopped before the RAM goes (it writes guest memory).
    pump: Option<IrqPump>,
    /// Guest RAM; dropped last.
    _ram: Ram,
}

/// Guest RAM, owned by the machine wherever it moves.
struct Ram(#[allow(dead_code)] Memory);

// SAFETY: `Memory` is a host allocation and its guest mapping; it is !Send
// only because it holds a raw pointer. The allocation is plain process
// memory, and unmapping it (`hv_vm_unmap`, on drop) is a VM-wide call that
// any thread may make.
unsafe impl Send for Ram {}

/// Guest RAM as `sandbox-virtio`'s devices address it: the same host pages
/// the VM maps at `RAM_BASE`.
fn guest_memory(ram: &Memory) -> std::result::Result<GuestMemory, HvfError> {
    let boot = |e: &dyn std::fmt::Display| HvfError::Boot(format!("guest memory: {e}"));
    // SAFETY: `ram` is a live, page-aligned allocation of `ram.size()`
    // bytes that outlives every device (the machine stops them before it
    // drops the allocation); the region does not own or unmap it.
    let region = unsafe {
        MmapRegion::build_raw(
            ram.host_addr(),
            ram.size(),
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_ANON | libc::MAP_PRIVATE,
        )
    }
    .map_err(|e| boot(&e))?;
    let region = GuestRegionMmap::new(region, GuestAddress(layout::RAM_BASE))
        .ok_or_else(|| boot(&"the region overflows the address space"))?;
    GuestMemory::from_regions(vec![region]).map_err(|e| boot(&e))
}

impl Machine {
    /// Boots `kernel` (an arm64 `Image`) with `bootargs` on a machine of
    /// `layout` with `devices` on its virtio-mmio transports (as many as
    /// the layout has) and the console's output in `console`, vCPU 0
    /// first; the others start through PSCI CPU_ON.
    pub fn boot(
        layout: Layout,
        kernel: &[u8],
        bootargs: &str,
        devices: Vec<Box<dyn VirtioDevice>>,
        console: ConsoleLog,
    ) -> std::result::Result<Self, HvfError> {
        let entry =
            crate::image::entry(kernel, &layout).map_err(|e| HvfError::Boot(e.to_string()))?;
        let fdt = crate::fdt::device_tree(&layout, bootargs)
            .map_err(|e| HvfError::Boot(e.to_string()))?;
        let mut gic = GicConfig::new();
        call(
            "setting the GIC distributor",
            gic.set_distributor_base(layout::GICD_BASE),
        )?;
        call(
            "setting the GIC redistributors",
            gic.set_redistributor_base(layout::GICR_BASE),
        )?;
        let vm = call(
            "creating the VM",
            VirtualMachine::with_gic(VirtualMachineConfig::new(), gic),
        )?;
        let size =
            usize::try_from(layout.ram_bytes()).map_err(|e| HvfError::Boot(e.to_string()))?;
        let mut ram = call("allocating guest RAM", vm.memory_create(size))?;
        call(
            "mapping guest RAM",
            ram.map(layout::RAM_BASE, MemPerms::ReadWriteExec),
        )?;
        call("loading the kernel", ram.write(entry.pc, kernel))?;
        call("loading the device tree", ram.write(entry.x0, &fdt))?;
        let mem = Arc::new(guest_memory(&ram)?);
        let (virtio, irqs) = VirtioBus::new(&layout, devices, mem)
            .map_err(|e| HvfError::Boot(format!("virtio devices: {e}")))?;
        let (outcome_tx, outcome) = mpsc::channel();
        let shared = Shared {
            vm: vm.clone(),
            devices: Arc::new(Mutex::new(Devices {
                vm: vm.clone(),
                uart: Pl011::new(),
                console,
                online: vec![0],
                handles: Vec::new(),
                threads: Vec::new(),
            })),
            virtio: Arc::new(virtio),
            wake: Arc::default(),
            stopping: Arc::default(),
            layout,
            outcome: outcome_tx,
        };
        let pump = {
            let vm = vm.clone();
            let wake = shared.wake.clone();
            IrqPump::start(irqs, move |intid| {
                // The transports' SPIs are edge-triggered: one rising edge
                // per interrupt.
                let _ = vm.gic_set_spi(intid, true);
                let _ = vm.gic_set_spi(intid, false);
                wake.notify();
            })
            .map_err(|e| HvfError::Boot(format!("the interrupt thread: {e}")))?
        };
        start_vcpu(&shared, 0, entry.pc, entry.x0);
        Ok(Self {
            outcome,
            shared,
            pump: Some(pump),
            _ram: Ram(ram),
        })
    }

    /// Waits for the guest to end.
    pub fn wait(&self) -> Outcome {
        self.outcome
            .recv()
            .unwrap_or_else(|_| Outcome::Crash("every vCPU thread ended without an outcome".into()))
    }

    /// Waits up to `timeout` for the guest to end.
    pub fn wait_timeout(&self, timeout: Duration) -> Option<Outcome> {
        self.outcome.recv_timeout(timeout).ok()
    }

    /// Stops every vCPU now (`hv_vcpus_exit`); they report
    /// [`Outcome::Stopped`]. The devices stop when the machine is dropped.
    pub fn stop(&self) {
        self.shared.stopping.store(true, Ordering::SeqCst);
        self.shared.wake.notify();
        // Under the lock: a vCPU leaves the list (and is destroyed) only
        // after this call, so every handle passed is live.
        let devices = self.shared.lock();
        let _ = self.shared.vm.vcpus_exit(&devices.handles);
    }
}

impl Drop for Machine {
    /// Stops the vCPUs and joins their threads, then the devices and the
    /// interrupt thread, and only then releases guest RAM.
    fn drop(&mut self) {
        self.stop();
        loop {
            let threads = std::mem::take(&mut self.shared.lock().threads);
            if threads.is_empty() {
                break;
            }
            for t in threads {
                let _ = t.join();
            }
        }
        self.shared.virtio.shutdown();
        self.pump.take();
    }
}

/// Starts vCPU `cpu` on its own thread (a Hypervisor.framework vCPU
/// belongs to the thread that created it) at `pc` with `x0`.
fn start_vcpu(shared: &Shared, cpu: u32, pc: u64, x0: u64) {
    if shared.stopping.load(Ordering::SeqCst) {
        return;
    }
    // Panics are contained by the helper; macOS has no seccomp list.
    let spawned = sandbox_thread::spawn(format!("hvf-vcpu{cpu}"), None, {
        let shared = shared.clone();
        move || {
            let end = match run_vcpu(&shared, cpu, pc, x0) {
                Ok(end) => end,
                Err(e) => Some(Outcome::Crash(e)),
            };
            if let Some(end) = end {
                let _ = shared.outcome.send(end);
            }
        }
    });
    match spawned {
        Ok(t) => shared.lock().threads.push(t),
        Err(e) => {
            let _ = shared
                .outcome
                .send(Outcome::Crash(format!("starting vCPU {cpu}: {e}")));
        }
    }
}

/// `mach_timebase_info_data_t`.
#[repr(C)]
struct Timebase {
    numer: u32,
    denom: u32,
}

extern "C" {
    fn mach_absolute_time() -> u64;
    fn mach_timebase_info(info: *mut Timebase) -> libc::c_int;
}

/// A vCPU's place in the list [`Machine::stop`] exits.
struct Listed<'a> {
    shared: &'a Shared,
    id: u64,
}

impl Drop for Listed<'_> {
    fn drop(&mut self) {
        self.shared.lock().handles.retain(|h| h.id() != self.id);
    }
}

/// The host's counter timebase: nanoseconds per tick as `numer / denom`.
fn timebase() -> (u32, u32) {
    let mut tb = Timebase { numer: 1, denom: 1 };
    // SAFETY: writes one struct we own.
    unsafe { mach_timebase_info(&mut tb) };
    (tb.numer, tb.denom)
}

/// Sleeps a vCPU that executed WFI until its virtual timer is due or an
/// interrupt was raised since `seen`.
fn idle(vcpu: &Vcpu, wake: &Wake, seen: u64, tb: (u32, u32)) -> Result<()> {
    let ctl = vcpu.get_sys_reg(SysReg::CNTV_CTL_EL0)?;
    let cval = vcpu.get_sys_reg(SysReg::CNTV_CVAL_EL0)?;
    // SAFETY: reads the host's monotonic counter.
    let host = unsafe { mach_absolute_time() };
    let now = host.wrapping_sub(vcpu.get_vtimer_offset()?);
    let limit = idle::idle_for(ctl, cval, now, tb.0, tb.1);
    if !limit.is_zero() {
        wake.sleep(seen, limit);
    }
    Ok(())
}

fn run_vcpu(
    shared: &Shared,
    cpu: u32,
    pc: u64,
    x0: u64,
) -> std::result::Result<Option<Outcome>, String> {
    let err = |e: HypervisorError| format!("vCPU {cpu}: {e:?}");
    let mut vcpu = shared.vm.vcpu_create().map_err(err)?;
    let handle = vcpu.get_handle();
    let id = handle.id();
    shared.lock().handles.push(handle);
    // Declared after `vcpu`, so dropped before it: the handle leaves the
    // list before the vCPU is destroyed.
    let _listed = Listed { shared, id };
    vcpu.set_sys_reg(SysReg::MPIDR_EL1, Layout::mpidr(cpu))
        .map_err(err)?;
    vcpu.set_reg(Reg::PC, pc).map_err(err)?;
    vcpu.set_reg(Reg::X0, x0).map_err(err)?;
    vcpu.set_reg(Reg::CPSR, crate::image::PSTATE_EL1H_MASKED)
        .map_err(err)?;
    let tb = timebase();
    let mut bus = SharedBus(shared.clone());
    loop {
        // A stop that came before this vCPU's handle was listed.
        if shared.stopping.load(Ordering::SeqCst) {
            return Ok(Some(Outcome::Stopped));
        }
        let seen = shared.wake.generation();
        vcpu.run().map_err(err)?;
        let info = vcpu.get_exit_info();
        let next = match info.reason {
            ExitReason::EXCEPTION => {
                let on = shared.lock().online.clone();
                exit::handle(
                    info.exception.syndrome,
                    info.exception.physical_address,
                    &mut vcpu,
                    &mut bus,
                    &shared.layout,
                    |c| on.contains(&c),
                )
            }
            // The in-kernel GIC takes the timer's PPI; unmask the timer
            // the framework masked when it fired.
            ExitReason::VTIMER_ACTIVATED => {
                vcpu.set_vtimer_mask(false).map_err(err)?;
                Next::Run
            }
            ExitReason::CANCELED if shared.stopping.load(Ordering::SeqCst) => {
                return Ok(Some(Outcome::Stopped));
            }
            ExitReason::CANCELED => Next::Run,
            _ => Next::Fault(format!("vCPU {cpu}: an exit of unknown reason")),
        };
        match next {
            Next::Run => {}
            Next::Wait => idle(&vcpu, &shared.wake, seen, tb).map_err(err)?,
            Next::CpuOn {
                cpu: other,
                entry,
                context,
            } => {
                shared.lock().online.push(other);
                start_vcpu(shared, other, entry, context);
            }
            // A vCPU the guest turns off ends its thread; the machine
            // runs on.
            Next::CpuOff => {
                shared.lock().online.retain(|c| *c != cpu);
                return Ok(None);
            }
            Next::PowerOff => return Ok(Some(Outcome::PowerOff)),
            Next::Reset => return Ok(Some(Outcome::Reset)),
            Next::Fault(why) => return Ok(Some(Outcome::Crash(why))),
        }
    }
}
