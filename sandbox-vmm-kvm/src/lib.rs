//! Linux KVM VMM built on rust-vmm crates (kvm-ioctls, kvm-bindings,
//! vm-memory, linux-loader, vm-superio, virtio-queue): one thread per vCPU,
//! PVH boot of the project's x86_64 `vmlinux`, an e820 map and an MP table,
//! a filtered CPUID, a serial console captured to a bounded log, and a
//! virtio-mmio bus hosting the same `sandbox-virtio` devices as the UML
//! backend (irqfd for interrupts, ioeventfd for queue notifications).
//!
//! On arm64 hosts the `arm64` module boots the arm64 `Image` instead, with
//! the in-kernel GICv3 and PSCI and the device tree of `sandbox-vmm-hvf`
//! (type-checked and linted here, never run: no arm64 KVM host).
//!
//! [`probe`] tells hardware KVM from an emulating host (such as the nested
//! PVM of this project's machines) by timing the same loop at guest ring 0
//! and ring 3; [`CpuProfile::NestedPvm`] and the kernel's
//! `sandbox_nested_pvm` parameter are used only on the latter.

#[cfg(target_arch = "aarch64")]
mod arm64;
#[cfg(target_arch = "x86_64")]
mod boot;
#[cfg(target_arch = "x86_64")]
mod bus;
#[cfg(target_arch = "x86_64")]
mod cpuid;
#[cfg(target_arch = "x86_64")]
mod layout;
#[cfg(target_arch = "x86_64")]
mod mptable;
mod pause;
pub mod probe;
mod run;
pub mod seccomp;
pub mod snapshot;
#[cfg(target_arch = "x86_64")]
mod vcpu;
#[cfg(target_arch = "x86_64")]
mod vm;

#[cfg(target_arch = "aarch64")]
pub use arm64::KvmVm;
#[cfg(target_arch = "x86_64")]
pub use vm::KvmVm;

/// What to boot.
pub struct KvmConfig {
    /// The kernel: on x86_64 the uncompressed `vmlinux` with a PVH entry
    /// point, on arm64 the `Image`.
    pub kernel: std::path::PathBuf,
    /// Guest memory in MiB.
    pub memory_mib: u32,
    /// vCPUs (1 to 32).
    pub cpus: u8,
    /// Kernel command line, after what the VMM adds itself (console,
    /// virtio-mmio devices, and `sandbox_nested_pvm` for that profile).
    pub cmdline: String,
    /// Which CPUID the guest sees (x86_64; unused on arm64).
    pub profile: CpuProfile,
    /// Bytes of console output kept.
    pub console_log_bytes: usize,
    /// Virtio devices, in order (`/dev/vda` is the first block device).
    pub devices: Vec<Box<dyn sandbox_virtio::VirtioDevice>>,
}

/// Which CPUID the guest gets (x86_64; arm64 guests always get the host's
/// CPU).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CpuProfile {
    /// Everything KVM supports (hardware virtualization).
    Full,
    /// Without the features an emulating nested-PVM host rejects.
    NestedPvm,
}

/// Kernel parameters for emulating (nested PVM) hosts: our kernel's
/// work-arounds, plus what the CPUID profile alone did not keep from the
/// kernel there (measured: XSAVE stayed enabled and the first `xsave`
/// failed). The same holds for the fast-string flags: with the profile
/// hiding them the kernel still listed `erms` and `fsrm`, so
/// `clearcpuid` also clears ERMS, FSRM, FZRM (394), FSRS (395) and FSRC
/// (396). The kernel then copies to and from user space with `rep movsq`
/// and runs memcpy/memset as unrolled loops instead of byte-wise `rep
/// movsb`/`stosb`, whose every byte is one emulated iteration here.
/// Measured: reading 4 MiB of `/dev/zero` and the agent binary with `dd`
/// took 3.5 to 3.8 s before, 1.6 to 1.8 s after; a process start did not
/// change (0.6 s).
///
/// And glibc tunables that keep guest programs off AVX: guest user code runs
/// natively there, where `cpuid` and `xgetbv` report the host's AVX and
/// AVX-512 as usable, but the guest kernel (without XSAVE, which cannot be
/// emulated) switches only the legacy x87/SSE state between processes. So
/// one process's upper vector registers and AVX-512 state leaked into
/// another: glibc's AVX `memcpy` then copied zeros (measured: half the
/// processes after the first few died in startup reading a zeroed
/// thread-local; none with these tunables). The agent gets them from the
/// kernel command line and passes them to every process it starts.
/// `GODEBUG=cpu.all=off` does the same for Go programs (dockerd,
/// containerd and runc crashed in their init with it unset: a corrupted
/// regexp compile). Programs that pick vector code on their own (JITs) are
/// not covered.
///
/// And `clocksource=kvm-clock`: the guest reads the host's TSC directly
/// there (no offset applies to it), so on its own the kernel switched to
/// the `tsc` clocksource 6 s into boot, and a restored snapshot's clock
/// then jumped by the time since the snapshot. Measured, six restores 3 s
/// apart: uptime jumped 4.7 s each time, and restore to first exec grew
/// from 0.72 to 0.84 s; with kvm-clock (set back to its saved value on
/// restore) uptime stays at the snapshot's and it took 0.54 to 0.60 s.
pub const NESTED_PVM_CMDLINE: &str =
    "sandbox_nested_pvm clocksource=kvm-clock noxsave clearcpuid=popcnt,smap,erms,fsrm,394,395,396 \
     GLIBC_TUNABLES=glibc.cpu.hwcaps=-AVX,-AVX2,-AVX512F,-AVX512CD,-AVX512BW,-AVX512DQ,\
     -AVX512ER,-AVX512PF,-AVX512VL,-XSAVEC,-FMA,-FMA4,-AVX_Fast_Unaligned_Load \
     GODEBUG=cpu.all=off";

/// Whether a guest's console is being debugged (`SANDBOX_KVM_CONSOLE`
/// set): the VMM echoes every console byte to stderr, and sandboxes boot
/// the kernel without `quiet`.
pub fn console_debug() -> bool {
    std::env::var_os("SANDBOX_KVM_CONSOLE").is_some()
}

/// Guest memory as the VMM and its devices see it.
pub type GuestMemory = sandbox_virtio::GuestMemory;

/// How a guest stopped.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum GuestExit {
    /// The guest powered off (our power-off port).
    PowerOff,
    /// The guest asked for a reboot (i8042 reset, `reboot=k`).
    Reboot,
    /// The guest kernel panicked (it then resets, `panic=-1`): the panic
    /// line from the console.
    Panic(String),
    /// A vCPU halted with nothing to wake it.
    Halted,
    /// Triple fault, emulation failure or a failed VM entry.
    Crashed(String),
    /// The host stopped the VM.
    Stopped,
}

/// A failed KVM ioctl `what`, as a [`KvmError`].
pub(crate) fn kvm(what: &'static str) -> impl Fn(kvm_ioctls::Error) -> KvmError {
    move |e| KvmError::Kvm { what, source: e }
}

/// A host resource that could not be set up (`what`), as a [`KvmError`].
pub(crate) fn host(what: &str) -> impl FnOnce(std::io::Error) -> KvmError + '_ {
    move |source| KvmError::Host {
        what: what.into(),
        source,
    }
}

/// Errors creating or running a KVM guest.
#[derive(Debug, thiserror::Error)]
pub enum KvmError {
    /// A KVM ioctl failed.
    #[error("{what} failed")]
    Kvm {
        /// The ioctl.
        what: &'static str,
        /// The error.
        #[source]
        source: kvm_ioctls::Error,
    },
    /// Loading the kernel or writing boot information failed.
    #[error("boot: {0}")]
    Boot(String),
    /// A host resource could not be set up.
    #[error("{what}")]
    Host {
        /// What was being set up.
        what: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The configuration is out of range.
    #[error("{0}")]
    Config(String),
}
