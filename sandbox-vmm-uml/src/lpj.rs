//! The `lpj=` (loops per jiffy) preset for the UML kernel's delay loop.
//!
//! Without it the kernel calibrates `udelay`'s busy loop at every boot by
//! counting loops between timer ticks (`calibrate_delay`): about 90 ms of a
//! 120 ms UML boot on this project's machines, most of the boot. The UML
//! kernel's `__delay` (arch/x86/um/delay.c) is a plain `dec`/`jnz` loop run
//! natively by the kernel process on the host CPU, so the host can time the
//! same loop itself in well under a millisecond and hand the kernel the
//! result. Timing takes the fastest of several trials: a trial slowed by
//! preemption would give a smaller count and so shorter delays than asked
//! for, while a too large count only makes delays longer. UML barely uses
//! busy delays anyway (it has no hardware to wait for).

use std::sync::OnceLock;
use std::time::Duration;
#[cfg(target_arch = "x86_64")]
use std::time::Instant;

/// The UML kernel's timer frequency (fixed by `arch/um`'s Kconfig).
const HZ: u64 = 100;

/// Loops per trial: about 0.3 ms on a 3 GHz core.
const LOOPS: u64 = 1 << 20;

const TRIALS: usize = 7;

/// The preset for this host, measured once per process; `None` where the
/// loop cannot be timed here (the kernel then calibrates as usual).
pub fn preset() -> Option<u64> {
    static LPJ: OnceLock<Option<u64>> = OnceLock::new();
    *LPJ.get_or_init(measure)
}

fn measure() -> Option<u64> {
    let fastest = (0..TRIALS).filter_map(|_| time_loop(LOOPS)).min()?;
    let jiffy = Duration::from_secs(1).as_nanos() / u128::from(HZ);
    let lpj = u128::from(LOOPS) * jiffy / fastest.as_nanos().max(1);
    u64::try_from(lpj).ok().filter(|&l| l > 0)
}

#[cfg(target_arch = "x86_64")]
fn time_loop(loops: u64) -> Option<Duration> {
    let start = Instant::now();
    // SAFETY: the asm only counts a register down to zero; it touches no
    // memory and no stack, and clobbers only the flags and that register.
    unsafe {
        std::arch::asm!(
            "2:",
            "dec {n}",
            "jnz 2b",
            n = inout(reg) loops => _,
            options(nomem, nostack),
        );
    }
    Some(start.elapsed())
}

#[cfg(not(target_arch = "x86_64"))]
fn time_loop(_loops: u64) -> Option<Duration> {
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[cfg(target_arch = "x86_64")]
    fn the_preset_is_plausible_for_a_cpu_and_stable() {
        let lpj = preset().expect("x86_64 times the loop");
        // Between 100 MHz and 10 GHz worth of single-cycle loops per 10 ms.
        assert!((1_000_000..100_000_000).contains(&lpj), "lpj {lpj}");
        // Measured again, within a factor of two (the fastest trial wins).
        let again = measure().expect("measured");
        assert!(again * 2 > lpj && again < lpj * 2, "{lpj} then {again}");
    }
}
