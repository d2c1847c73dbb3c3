//! PSCI 1.0 over HVC (Arm DEN 0022): what a guest call asks the VMM to do.
//! The vCPU loop applies the [`Call`]; this module only decides.

use crate::layout::Layout;

/// PSCI_VERSION.
pub const VERSION: u32 = 0x8400_0000;
/// CPU_SUSPEND (SMC64).
pub const CPU_SUSPEND: u32 = 0xc400_0001;
/// CPU_OFF.
pub const CPU_OFF: u32 = 0x8400_0002;
/// CPU_ON (SMC32).
pub const CPU_ON_32: u32 = 0x8400_0003;
/// CPU_ON (SMC64).
pub const CPU_ON: u32 = 0xc400_0003;
/// AFFINITY_INFO (SMC64).
pub const AFFINITY_INFO: u32 = 0xc400_0004;
/// MIGRATE_INFO_TYPE.
pub const MIGRATE_INFO_TYPE: u32 = 0x8400_0006;
/// SYSTEM_OFF.
pub const SYSTEM_OFF: u32 = 0x8400_0008;
/// SYSTEM_RESET.
pub const SYSTEM_RESET: u32 = 0x8400_0009;
/// PSCI_FEATURES.
pub const FEATURES: u32 = 0x8400_000a;

/// PSCI 1.0 as `VERSION` reports it (major 1, minor 0).
const V1_0: u64 = 1 << 16;
/// Return codes (as 64-bit register values).
const SUCCESS: u64 = 0;
const NOT_SUPPORTED: u64 = -1i64 as u64;
const INVALID_PARAMETERS: u64 = -2i64 as u64;
const ALREADY_ON: u64 = -4i64 as u64;
/// MIGRATE_INFO_TYPE: no trusted OS to migrate.
const NO_TRUSTED_OS: u64 = 2;

/// What a PSCI call asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Call {
    /// Put this value in x0 and go on.
    Return(u64),
    /// Start vCPU `cpu` at `entry` with `context` in x0; on success x0 of
    /// the caller is 0, and if it already runs, ALREADY_ON.
    CpuOn {
        /// The vCPU index.
        cpu: u32,
        /// Its first instruction.
        entry: u64,
        /// x0 for it.
        context: u64,
    },
    /// Stop this vCPU until another CPU_ON.
    CpuOff,
    /// Power the machine off.
    SystemOff,
    /// Reboot the machine.
    SystemReset,
    /// Wait for an interrupt (CPU_SUSPEND's standby state), then return 0.
    Suspend,
}

/// The x0 value for a CPU_ON whose target already runs.
pub const fn already_on() -> u64 {
    ALREADY_ON
}

/// Decides the call in x0..x3 of an HVC. `online` says whether a vCPU
/// runs (for AFFINITY_INFO). Unknown functions, including SMCCC's own
/// (`SMCCC_VERSION` and the like), answer NOT_SUPPORTED, which guests
/// expect.
pub fn call(x: [u64; 4], layout: &Layout, online: impl Fn(u32) -> bool) -> Call {
    let Ok(function) = u32::try_from(x[0]) else {
        return Call::Return(NOT_SUPPORTED);
    };
    match function {
        VERSION => Call::Return(V1_0),
        MIGRATE_INFO_TYPE => Call::Return(NO_TRUSTED_OS),
        SYSTEM_OFF => Call::SystemOff,
        SYSTEM_RESET => Call::SystemReset,
        CPU_OFF => Call::CpuOff,
        CPU_SUSPEND => Call::Suspend,
        CPU_ON | CPU_ON_32 => {
            let (target, entry, context) = if function == CPU_ON_32 {
                (x[1] & 0xffff_ffff, x[2] & 0xffff_ffff, x[3] & 0xffff_ffff)
            } else {
                (x[1], x[2], x[3])
            };
            match layout.cpu_of_mpidr(target) {
                Some(cpu) if online(cpu) => Call::Return(ALREADY_ON),
                Some(cpu) => Call::CpuOn {
                    cpu,
                    entry,
                    context,
                },
                None => Call::Return(INVALID_PARAMETERS),
            }
        }
        AFFINITY_INFO => match (layout.cpu_of_mpidr(x[1]), x[2]) {
            // Level 0 only: 0 = on, 1 = off.
            (Some(cpu), 0) => Call::Return(u64::from(!online(cpu))),
            _ => Call::Return(INVALID_PARAMETERS),
        },
        FEATURES => match u32::try_from(x[1]) {
            Ok(
                VERSION | CPU_SUSPEND | CPU_OFF | CPU_ON | CPU_ON_32 | AFFINITY_INFO
                | MIGRATE_INFO_TYPE | SYSTEM_OFF | SYSTEM_RESET | FEATURES,
            ) => Call::Return(SUCCESS),
            _ => Call::Return(NOT_SUPPORTED),
        },
        _ => Call::Return(NOT_SUPPORTED),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn l() -> Layout {
        Layout::new(4, 256, 1).unwrap()
    }

    #[test]
    fn version_power_and_features() {
        let off = |_| false;
        assert_eq!(
            call([VERSION.into(), 0, 0, 0], &l(), off),
            Call::Return(0x1_0000)
        );
        assert_eq!(
            call([SYSTEM_OFF.into(), 0, 0, 0], &l(), off),
            Call::SystemOff
        );
        assert_eq!(
            call([SYSTEM_RESET.into(), 0, 0, 0], &l(), off),
            Call::SystemReset
        );
        assert_eq!(call([CPU_OFF.into(), 0, 0, 0], &l(), off), Call::CpuOff);
        assert_eq!(
            call([FEATURES.into(), CPU_ON.into(), 0, 0], &l(), off),
            Call::Return(0)
        );
        assert_eq!(
            call([FEATURES.into(), 0x8400_0012, 0, 0], &l(), off),
            Call::Return(NOT_SUPPORTED)
        );
        // SMCCC_VERSION, and garbage in x0.
        assert_eq!(
            call([0x8000_0000, 0, 0, 0], &l(), off),
            Call::Return(NOT_SUPPORTED)
        );
        assert_eq!(
            call([u64::MAX, 0, 0, 0], &l(), off),
            Call::Return(NOT_SUPPORTED)
        );
    }

    #[test]
    fn cpu_on_names_a_vcpu_of_this_machine() {
        let x = [CPU_ON.into(), 2, 0x4008_0000, 0x1234];
        assert_eq!(
            call(x, &l(), |_| false),
            Call::CpuOn {
                cpu: 2,
                entry: 0x4008_0000,
                context: 0x1234
            }
        );
        assert_eq!(call(x, &l(), |c| c == 2), Call::Return(ALREADY_ON));
        let x = [CPU_ON.into(), 4, 0x4008_0000, 0];
        assert_eq!(call(x, &l(), |_| false), Call::Return(INVALID_PARAMETERS));
        // The 32-bit call ignores the upper halves.
        let x = [CPU_ON_32.into(), (7 << 32) | 1, (1 << 40) | 0x4000_0000, 0];
        assert_eq!(
            call(x, &l(), |_| false),
            Call::CpuOn {
                cpu: 1,
                entry: 0x4000_0000,
                context: 0
            }
        );
    }

    #[test]
    fn affinity_info_reports_level_zero_only() {
        let online = |c| c == 0;
        assert_eq!(
            call([AFFINITY_INFO.into(), 0, 0, 0], &l(), online),
            Call::Return(0)
        );
        assert_eq!(
            call([AFFINITY_INFO.into(), 3, 0, 0], &l(), online),
            Call::Return(1)
        );
        assert_eq!(
            call([AFFINITY_INFO.into(), 3, 1, 0], &l(), online),
            Call::Return(INVALID_PARAMETERS)
        );
    }
}
