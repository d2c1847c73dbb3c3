//! What a vCPU does with one exit, written once for every platform: the
//! Hypervisor.framework loop (and any other arm64 VMM) reads the syndrome
//! and the faulting address, and this module emulates the access through
//! a [`Bus`], answers PSCI, moves the PC and says what happens next.

use crate::esr::{self, Exit};
use crate::layout::Layout;
use crate::psci::{self, Call};

/// A vCPU's general registers and PC, as the platform exposes them.
pub trait Regs {
    /// x0..x30 (`n` below 31).
    fn x(&self, n: u8) -> Result<u64, String>;
    /// Sets x0..x30.
    fn set_x(&mut self, n: u8, value: u64) -> Result<(), String>;
    /// The PC.
    fn pc(&self) -> Result<u64, String>;
    /// Sets the PC.
    fn set_pc(&mut self, pc: u64) -> Result<(), String>;
}

/// Emulated device windows (the UART, virtio-mmio transports).
pub trait Bus {
    /// A load of `data.len()` bytes at guest address `addr`; false if no
    /// device is there.
    fn read(&mut self, addr: u64, data: &mut [u8]) -> bool;
    /// A store of `data` at `addr`; false if no device is there.
    fn write(&mut self, addr: u64, data: &[u8]) -> bool;
}

/// What the vCPU loop does after an exit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Next {
    /// Run the vCPU again.
    Run,
    /// Wait for an interrupt before running again (WFI, CPU_SUSPEND).
    Wait,
    /// Start another vCPU (PSCI CPU_ON, already answered to the caller).
    CpuOn {
        /// The vCPU index.
        cpu: u32,
        /// Its first instruction.
        entry: u64,
        /// x0 for it.
        context: u64,
    },
    /// Stop this vCPU (PSCI CPU_OFF).
    CpuOff,
    /// The guest powered the machine off.
    PowerOff,
    /// The guest asked for a reboot.
    Reset,
    /// The guest did something the VMM cannot emulate: the VM stops
    /// with this reason (and the console's tail, added by the caller).
    Fault(String),
}

/// The register number of xzr/wzr in a data abort's syndrome.
const ZR: u8 = 31;

/// Handles one exception exit: `syndrome` is ESR_EL2, `ipa` the faulting
/// guest physical address. `online` says which vCPUs run (for CPU_ON). A
/// failed register access is a [`Next::Fault`] like any other.
pub fn handle(
    syndrome: u64,
    ipa: u64,
    regs: &mut impl Regs,
    bus: &mut impl Bus,
    layout: &Layout,
    online: impl Fn(u32) -> bool,
) -> Next {
    let exit = || -> Result<Next, String> {
        match esr::decode(syndrome) {
            Exit::DataAbort(a) => {
                let mut data = [0u8; 8];
                let bytes = &mut data[..a.size];
                let hit = if a.write {
                    let value = if a.reg == ZR { 0 } else { regs.x(a.reg)? };
                    bytes.copy_from_slice(&value.to_le_bytes()[..a.size]);
                    bus.write(ipa, bytes)
                } else {
                    let hit = bus.read(ipa, bytes);
                    if a.reg != ZR {
                        regs.set_x(a.reg, a.load_value(bytes))?;
                    }
                    hit
                };
                if !hit {
                    return Err(format!(
                        "the guest accessed {ipa:#x}, where there is neither RAM nor a device \
                     ({} bytes, {})",
                        a.size,
                        if a.write { "store" } else { "load" }
                    ));
                }
                // A data abort returns to the faulting instruction.
                regs.set_pc(regs.pc()?.wrapping_add(4))?;
                Ok(Next::Run)
            }
            Exit::DataAbortUndecodable => Err(format!(
                "the guest accessed device memory at {ipa:#x} with an instruction the syndrome \
             does not describe (load/store pair, writeback or SIMD); not emulated"
            )),
            // HVC returns past itself: the PC needs no change.
            Exit::Hvc(_) => {
                let x = [regs.x(0)?, regs.x(1)?, regs.x(2)?, regs.x(3)?];
                Ok(match psci::call(x, layout, online) {
                    Call::Return(v) => {
                        regs.set_x(0, v)?;
                        Next::Run
                    }
                    Call::CpuOn {
                        cpu,
                        entry,
                        context,
                    } => {
                        regs.set_x(0, 0)?;
                        Next::CpuOn {
                            cpu,
                            entry,
                            context,
                        }
                    }
                    Call::Suspend => {
                        regs.set_x(0, 0)?;
                        Next::Wait
                    }
                    Call::CpuOff => Next::CpuOff,
                    Call::SystemOff => Next::PowerOff,
                    Call::SystemReset => Next::Reset,
                })
            }
            // SMC traps at the instruction: there is no secure firmware, so
            // every call is NOT_SUPPORTED, and the PC moves past it.
            Exit::Smc(_) => {
                regs.set_x(0, -1i64 as u64)?;
                regs.set_pc(regs.pc()?.wrapping_add(4))?;
                Ok(Next::Run)
            }
            Exit::WaitForInterrupt => {
                regs.set_pc(regs.pc()?.wrapping_add(4))?;
                Ok(Next::Wait)
            }
            Exit::SysReg(r) => Err(format!(
                "the guest {} system register {:#06x}, which is not emulated",
                if r.read { "read" } else { "wrote" },
                r.encoding
            )),
            Exit::Other(ec) => Err(format!("an exit of exception class {ec:#04x}, not handled")),
        }
    };
    exit().unwrap_or_else(Next::Fault)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layout::UART_BASE;
    use crate::pl011::Pl011;

    #[derive(Default)]
    struct Cpu {
        x: [u64; 31],
        pc: u64,
    }

    impl Regs for Cpu {
        fn x(&self, n: u8) -> Result<u64, String> {
            self.x
                .get(usize::from(n))
                .copied()
                .ok_or("no such register".into())
        }
        fn set_x(&mut self, n: u8, value: u64) -> Result<(), String> {
            *self.x.get_mut(usize::from(n)).ok_or("no such register")? = value;
            Ok(())
        }
        fn pc(&self) -> Result<u64, String> {
            Ok(self.pc)
        }
        fn set_pc(&mut self, pc: u64) -> Result<(), String> {
            self.pc = pc;
            Ok(())
        }
    }

    /// A bus with the UART only, collecting its output.
    #[derive(Default)]
    struct Uart {
        pl011: Pl011,
        out: Vec<u8>,
    }

    impl Bus for Uart {
        fn read(&mut self, addr: u64, data: &mut [u8]) -> bool {
            let Some(off) = addr.checked_sub(UART_BASE).filter(|o| *o < 0x1000) else {
                return false;
            };
            let v = self.pl011.read(off).to_le_bytes();
            let n = data.len().min(4);
            data[..n].copy_from_slice(&v[..n]);
            true
        }
        fn write(&mut self, addr: u64, data: &[u8]) -> bool {
            let Some(off) = addr.checked_sub(UART_BASE).filter(|o| *o < 0x1000) else {
                return false;
            };
            let mut v = [0u8; 4];
            let n = data.len().min(4);
            v[..n].copy_from_slice(&data[..n]);
            self.out
                .extend(self.pl011.write(off, u32::from_le_bytes(v)));
            true
        }
    }

    /// ESR of a data abort with a valid syndrome.
    fn dabt(size_log2: u64, reg: u64, write: bool) -> u64 {
        (0x24 << 26)
            | (1 << 25)
            | (1 << 24)
            | (size_log2 << 22)
            | (reg << 16)
            | (u64::from(write) << 6)
    }

    fn layout() -> Layout {
        Layout::new(2, 256, 1).unwrap()
    }

    #[test]
    fn a_store_to_the_uart_prints_and_moves_the_pc() {
        let (mut cpu, mut bus) = (Cpu::default(), Uart::default());
        cpu.pc = 0x4000_1000;
        cpu.x[1] = u64::from(b'k');
        let next = handle(
            dabt(2, 1, true),
            UART_BASE,
            &mut cpu,
            &mut bus,
            &layout(),
            |_| false,
        );
        assert_eq!(next, Next::Run);
        assert_eq!(bus.out, b"k");
        assert_eq!(cpu.pc, 0x4000_1004);
        // A load of the flag register (TXFE set, RXFE set), and one into
        // wzr that changes no register.
        handle(
            dabt(2, 5, false),
            UART_BASE + 0x18,
            &mut cpu,
            &mut bus,
            &layout(),
            |_| false,
        );
        assert_eq!(cpu.x[5], 0x90);
        let before = cpu.x;
        handle(
            dabt(2, 31, false),
            UART_BASE + 0x18,
            &mut cpu,
            &mut bus,
            &layout(),
            |_| false,
        );
        assert_eq!(cpu.x, before);
        // A store of wzr writes 0.
        handle(
            dabt(0, 31, true),
            UART_BASE,
            &mut cpu,
            &mut bus,
            &layout(),
            |_| false,
        );
        assert_eq!(bus.out, b"k\0");
    }

    #[test]
    fn accesses_nothing_answers_stop_the_vm_with_the_address() {
        let (mut cpu, mut bus) = (Cpu::default(), Uart::default());
        let Next::Fault(why) = handle(
            dabt(3, 0, false),
            0x1234_0000,
            &mut cpu,
            &mut bus,
            &layout(),
            |_| false,
        ) else {
            panic!("not a fault")
        };
        assert!(why.contains("0x12340000"), "{why}");
        let undecodable = (0x24 << 26) | (1 << 25);
        assert!(matches!(
            handle(
                undecodable,
                UART_BASE,
                &mut cpu,
                &mut bus,
                &layout(),
                |_| false
            ),
            Next::Fault(_)
        ));
        assert!(matches!(
            handle(0x18 << 26, 0, &mut cpu, &mut bus, &layout(), |_| false),
            Next::Fault(_)
        ));
    }

    #[test]
    fn psci_calls_answer_in_x0_and_power_off_ends_the_vm() {
        let (mut cpu, mut bus) = (Cpu::default(), Uart::default());
        let hvc = 0x16 << 26;
        cpu.pc = 0x4000_0008;
        cpu.x[0] = u64::from(psci::VERSION);
        assert_eq!(
            handle(hvc, 0, &mut cpu, &mut bus, &layout(), |_| false),
            Next::Run
        );
        assert_eq!((cpu.x[0], cpu.pc), (0x1_0000, 0x4000_0008));
        cpu.x[..4].copy_from_slice(&[u64::from(psci::CPU_ON), 1, 0x4000_2000, 9]);
        assert_eq!(
            handle(hvc, 0, &mut cpu, &mut bus, &layout(), |c| c == 0),
            Next::CpuOn {
                cpu: 1,
                entry: 0x4000_2000,
                context: 9
            }
        );
        assert_eq!(cpu.x[0], 0);
        cpu.x[0] = u64::from(psci::SYSTEM_OFF);
        assert_eq!(
            handle(hvc, 0, &mut cpu, &mut bus, &layout(), |_| false),
            Next::PowerOff
        );
        cpu.x[0] = u64::from(psci::SYSTEM_RESET);
        assert_eq!(
            handle(hvc, 0, &mut cpu, &mut bus, &layout(), |_| false),
            Next::Reset
        );
        // SMC: no secure firmware; the PC moves past it.
        assert_eq!(
            handle(0x17 << 26, 0, &mut cpu, &mut bus, &layout(), |_| false),
            Next::Run
        );
        assert_eq!((cpu.x[0], cpu.pc), (u64::MAX, 0x4000_000c));
        assert_eq!(
            handle(0x01 << 26, 0, &mut cpu, &mut bus, &layout(), |_| false),
            Next::Wait
        );
    }
}
