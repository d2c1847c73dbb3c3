//! Backends start a guest and hand back its control channel. The rest of the
//! library talks to the guest agent and never to a backend directly.

mod uml;

use std::os::unix::net::UnixStream;
use std::time::Duration;

use crate::{Error, Rootfs};

/// Which backend boots the VM.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum BackendKind {
    /// Hardware KVM when the probe finds it and the KVM backend exists, else
    /// User-Mode Linux.
    #[default]
    Auto,
    /// The rust-vmm KVM VMM (not implemented yet).
    Kvm,
    /// User-Mode Linux: runs anywhere Linux runs, weaker isolation.
    Uml,
}

/// What the KVM probe found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KvmProbe {
    /// `/dev/kvm` cannot be opened.
    Missing(String),
    /// `/dev/kvm` opens but the CPU offers no VT-x/AMD-V: an emulating or
    /// paravirtual host (such as nested PVM), far too slow for general use.
    Emulated,
    /// Hardware virtualization is available.
    Hardware,
}

/// Probes `/dev/kvm`. Today the hardware test is the CPU's `vmx`/`svm` flag;
/// the KVM backend will replace it with a timed guest-ring-0 loop.
pub fn probe_kvm() -> KvmProbe {
    if let Err(e) = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
    {
        return KvmProbe::Missing(e.to_string());
    }
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let hw = cpuinfo
        .lines()
        .filter(|l| l.starts_with("flags"))
        .any(|l| l.split_whitespace().any(|f| f == "vmx" || f == "svm"));
    if hw {
        KvmProbe::Hardware
    } else {
        KvmProbe::Emulated
    }
}

/// What a backend needs to start a guest.
pub(crate) struct MachineSpec {
    pub rootfs: Rootfs,
    pub disks: Vec<crate::DataDisk>,
    pub events: sandbox_rootfs::EventHook,
    pub memory_mib: u32,
    pub hostname: String,
}

/// A started guest as the library sees it.
pub(crate) trait Machine: Send {
    /// A host-unique id of this guest (also in the backend's process title).
    fn id(&self) -> String;
    /// Connects to the guest agent, waiting up to `timeout` for it to listen.
    fn connect_control(&mut self, timeout: Duration) -> std::io::Result<UnixStream>;
    /// The last console lines, for error reports.
    fn console_tail(&self, lines: usize) -> String;
    /// Waits up to `timeout` for the guest to stop by itself.
    fn wait_exit(&mut self, timeout: Duration) -> bool;
    /// Stops the guest now and releases every host resource.
    fn kill(&mut self);
}

/// Resolves `Auto` and checks the choice can run; returns a description of
/// why this backend was chosen.
pub(crate) fn select(kind: BackendKind) -> Result<(BackendKind, String), Error> {
    match kind {
        BackendKind::Uml => Ok((BackendKind::Uml, "requested explicitly".into())),
        BackendKind::Kvm => Err(Error::BackendUnavailable {
            requested: "kvm",
            reason: "the KVM backend is not implemented yet; use BackendKind::Uml".into(),
        }),
        BackendKind::Auto => {
            let why = match probe_kvm() {
                KvmProbe::Missing(e) => format!("/dev/kvm unavailable ({e})"),
                KvmProbe::Emulated => "/dev/kvm is emulated (no VT-x/AMD-V)".into(),
                KvmProbe::Hardware => {
                    "hardware KVM found, but the KVM backend is not built yet".into()
                }
            };
            Ok((BackendKind::Uml, format!("auto: {why}")))
        }
    }
}

/// Starts a guest on the chosen backend.
pub(crate) fn start(kind: BackendKind, spec: MachineSpec) -> Result<Box<dyn Machine>, Error> {
    match kind {
        BackendKind::Uml => uml::start(spec),
        other => Err(Error::BackendUnavailable {
            requested: if other == BackendKind::Kvm {
                "kvm"
            } else {
                "auto"
            },
            reason: "not implemented".into(),
        }),
    }
}
