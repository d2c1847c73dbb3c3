//! The Hypervisor.framework half (applevisor 1.0, macOS 15 or newer for
//! the in-kernel GICv3): the VM, its RAM, the GIC at the addresses the
//! device tree names, and one thread per vCPU running [`crate::exit`].
//!
//! Type-checked on Linux for `aarch64-apple-darwin` (`cargo xtask darwin`);
//! never run anywhere yet. docs/hvf-backend.md says what is unverified.

use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Mutex};

use applevisor::prelude::*;

use crate::exit::{self, Bus, Next, Regs};
use crate::layout::{self, Layout};
use crate::pl011::Pl011;

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
    console: Sender<u8>,
    /// vCPUs running (PSCI CPU_ON and AFFINITY_INFO ask).
    online: Vec<u32>,
}

impl Devices {
    fn uart_irq(&self) {
        // SPIs start at INTID 32.
        let _ = self.vm.gic_set_spi(32 + layout::UART_SPI, self.uart.irq());
    }
}

/// The bus a vCPU thread hands [`exit::handle`].
struct SharedBus(Arc<Mutex<Devices>>);

impl Bus for SharedBus {
    fn read(&mut self, addr: u64, data: &mut [u8]) -> bool {
        let Some(off) = uart_offset(addr) else {
            return false;
        };
        let mut d = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let v = d.uart.read(off).to_le_bytes();
        let n = data.len().min(4);
        data[..n].copy_from_slice(&v[..n]);
        d.uart_irq();
        true
    }

    fn write(&mut self, addr: u64, data: &[u8]) -> bool {
        let Some(off) = uart_offset(addr) else {
            return false;
        };
        let mut v = [0u8; 4];
        let n = data.len().min(4);
        v[..n].copy_from_slice(&data[..n]);
        let mut d = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(byte) = d.uart.write(off, u32::from_le_bytes(v)) {
            let _ = d.console.send(byte);
        }
        d.uart_irq();
        true
    }
}

fn uart_offset(addr: u64) -> Option<u64> {
    addr.checked_sub(layout::UART_BASE)
        .filter(|o| *o < layout::UART_SIZE)
}

/// A running machine: its console output and how it ended.
pub struct Machine {
    /// Console bytes as the guest writes them.
    pub console: Receiver<u8>,
    outcome: Receiver<Outcome>,
    _ram: Memory,
}

impl Machine {
    /// Boots `kernel` (an arm64 `Image`) with `bootargs` on a machine of
    /// `layout`, vCPU 0 first; the others start through PSCI CPU_ON.
    pub fn boot(
        layout: Layout,
        kernel: &[u8],
        bootargs: &str,
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
        let (console_tx, console) = mpsc::channel();
        let (outcome_tx, outcome) = mpsc::channel();
        let devices = Arc::new(Mutex::new(Devices {
            vm: vm.clone(),
            uart: Pl011::new(),
            console: console_tx,
            online: vec![0],
        }));
        start_vcpu(vm, devices, layout, 0, entry.pc, entry.x0, outcome_tx);
        Ok(Self {
            console,
            outcome,
            _ram: ram,
        })
    }

    /// Waits for the guest to end.
    pub fn wait(&self) -> Outcome {
        self.outcome
            .recv()
            .unwrap_or_else(|_| Outcome::Crash("every vCPU thread ended without an outcome".into()))
    }
}

/// Starts vCPU `cpu` on its own thread (a Hypervisor.framework vCPU
/// belongs to the thread that created it) at `pc` with `x0`.
fn start_vcpu(
    vm: VirtualMachineInstance<GicEnabled>,
    devices: Arc<Mutex<Devices>>,
    layout: Layout,
    cpu: u32,
    pc: u64,
    x0: u64,
    outcome: Sender<Outcome>,
) {
    // Panics are contained by the helper; macOS has no seccomp list.
    let spawned = sandbox_thread::spawn(format!("hvf-vcpu{cpu}"), None, {
        let outcome = outcome.clone();
        move || {
            let end = match run_vcpu(&vm, &devices, layout, cpu, pc, x0, &outcome) {
                Ok(end) => end,
                Err(e) => Some(Outcome::Crash(e)),
            };
            if let Some(end) = end {
                let _ = outcome.send(end);
            }
        }
    });
    if let Err(e) = spawned {
        let _ = outcome.send(Outcome::Crash(format!("starting vCPU {cpu}: {e}")));
    }
}

fn run_vcpu(
    vm: &VirtualMachineInstance<GicEnabled>,
    devices: &Arc<Mutex<Devices>>,
    layout: Layout,
    cpu: u32,
    pc: u64,
    x0: u64,
    outcome: &Sender<Outcome>,
) -> std::result::Result<Option<Outcome>, String> {
    let err = |e: HypervisorError| format!("vCPU {cpu}: {e:?}");
    let mut vcpu = vm.vcpu_create().map_err(err)?;
    vcpu.set_sys_reg(SysReg::MPIDR_EL1, Layout::mpidr(cpu))
        .map_err(err)?;
    vcpu.set_reg(Reg::PC, pc).map_err(err)?;
    vcpu.set_reg(Reg::X0, x0).map_err(err)?;
    vcpu.set_reg(Reg::CPSR, crate::image::PSTATE_EL1H_MASKED)
        .map_err(err)?;
    let mut bus = SharedBus(devices.clone());
    let lock = || devices.lock().unwrap_or_else(|e| e.into_inner());
    loop {
        vcpu.run().map_err(err)?;
        let info = vcpu.get_exit_info();
        let next = match info.reason {
            ExitReason::EXCEPTION => {
                let on = lock().online.clone();
                exit::handle(
                    info.exception.syndrome,
                    info.exception.physical_address,
                    &mut vcpu,
                    &mut bus,
                    &layout,
                    |c| on.contains(&c),
                )
            }
            // The in-kernel GIC takes the timer's PPI; unmask the timer
            // the framework masked when it fired.
            ExitReason::VTIMER_ACTIVATED => {
                vcpu.set_vtimer_mask(false).map_err(err)?;
                Next::Run
            }
            ExitReason::CANCELED => Next::Run,
            _ => Next::Fault(format!("vCPU {cpu}: an exit of unknown reason")),
        };
        match next {
            Next::Run | Next::Wait => {}
            Next::CpuOn {
                cpu: other,
                entry,
                context,
            } => {
                lock().online.push(other);
                start_vcpu(
                    vm.clone(),
                    devices.clone(),
                    layout,
                    other,
                    entry,
                    context,
                    outcome.clone(),
                );
            }
            // A vCPU the guest turns off ends its thread; the machine
            // runs on.
            Next::CpuOff => {
                lock().online.retain(|c| *c != cpu);
                return Ok(None);
            }
            Next::PowerOff => return Ok(Some(Outcome::PowerOff)),
            Next::Reset => return Ok(Some(Outcome::Reset)),
            Next::Fault(why) => return Ok(Some(Outcome::Crash(why))),
        }
    }
}
