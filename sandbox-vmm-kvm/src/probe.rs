//! Telling hardware KVM from an emulating host by measurement: the same
//! tight loop runs in a scratch VM at guest ring 0 and at guest ring 3.
//! With hardware virtualization both run natively; on an emulating host
//! such as nested PVM, ring 0 is interpreted instruction by instruction
//! (about 1000x slower here), while ring 3 stays native.

use std::sync::OnceLock;

#[cfg(target_arch = "x86_64")]
#[path = "probe_x86.rs"]
mod x86;
#[cfg(target_arch = "x86_64")]
use x86::measure;

/// What the probe found.
#[derive(Clone, Debug, PartialEq)]
pub enum Probe {
    /// `/dev/kvm` is missing or unusable; the message says why.
    Unavailable(String),
    /// Guest ring 0 runs natively: hardware virtualization.
    Hardware {
        /// Nanoseconds per loop iteration at ring 0 and ring 3.
        cpl0_ns: f64,
        /// See `cpl0_ns`.
        cpl3_ns: f64,
    },
    /// Guest ring 0 is emulated (nested PVM or similar): usable, slowly,
    /// with the nested-PVM CPU profile and kernel parameter.
    Emulated {
        /// Nanoseconds per loop iteration at ring 0 and ring 3.
        cpl0_ns: f64,
        /// See `cpl0_ns`.
        cpl3_ns: f64,
    },
}

/// The probe's result, measured once per process.
pub fn probe() -> Probe {
    static RESULT: OnceLock<Probe> = OnceLock::new();
    RESULT
        .get_or_init(|| measure().unwrap_or_else(Probe::Unavailable))
        .clone()
}

/// On arm64 the probe only checks that a VM can be created: the emulated
/// ring 0 it times on x86_64 is a property of this project's nested-PVM
/// hosts, and an arm64 KVM host is taken as hardware (times reported 0).
#[cfg(target_arch = "aarch64")]
fn measure() -> Result<Probe, String> {
    let kvm = kvm_ioctls::Kvm::new().map_err(|e| format!("/dev/kvm: {e}"))?;
    kvm.create_vm().map_err(|e| format!("KVM_CREATE_VM: {e}"))?;
    Ok(Probe::Hardware {
        cpl0_ns: 0.0,
        cpl3_ns: 0.0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn the_loop_encodes_as_intended() {
        let p = x86::program(5);
        assert_eq!(&p[..5], &[0xb9, 5, 0, 0, 0]);
        // jnz jumps back to the dec: -4 from the end of the jnz.
        assert_eq!(p[7], 0x75);
        assert_eq!(p[8] as i8, -4);
    }

    #[test]
    fn the_probe_runs_where_kvm_exists() {
        match probe() {
            Probe::Unavailable(why) => {
                assert!(
                    std::fs::metadata("/dev/kvm").is_err(),
                    "KVM exists but: {why}"
                );
                eprintln!("no KVM here ({why}); nothing to measure");
            }
            found => eprintln!("probe: {found:?}"),
        }
    }
}
