//! Backends start a guest and hand back its control channel. The rest of the
//! library talks to the guest agent and never to a backend directly.

mod arm64;
#[cfg(target_os = "macos")]
mod hvf;
#[cfg(target_os = "linux")]
mod kvm;
#[cfg(target_os = "linux")]
mod qemu_arm64;
#[cfg(target_os = "linux")]
mod uml;

use std::os::unix::net::UnixStream;
use std::time::Duration;

use sandbox_protocol::cmdline;

use crate::{Error, Rootfs};

/// Which backend boots the VM.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum BackendKind {
    /// KVM when the probe finds hardware virtualization, else User-Mode
    /// Linux.
    #[default]
    Auto,
    /// The rust-vmm KVM VMM (`sandbox-vmm-kvm`).
    Kvm,
    /// User-Mode Linux: runs anywhere Linux runs, weaker isolation.
    Uml,
    /// arm64 guests under QEMU's arm64 emulator (`qemu-system-aarch64`,
    /// TCG) with the machine and device tree of the macOS backend: for
    /// verifying arm64 kernels, agents and images on x86_64 hosts. Boots
    /// `aarch64` images only, in seconds; no network, no snapshots.
    QemuArm64,
    /// Apple's Hypervisor.framework (`sandbox-vmm-hvf`, macOS 15 on Apple
    /// Silicon), booting `aarch64` images: what `Auto` picks on macOS.
    /// Written and type-checked, never run (docs/hvf-backend.md); no
    /// network, mounts or snapshots yet.
    Hvf,
}

impl BackendKind {
    /// The backend's name in errors and logs.
    pub fn name(self) -> &'static str {
        match self {
            Self::Auto => "auto",
            Self::Kvm => "kvm",
            Self::Uml => "uml",
            Self::QemuArm64 => "qemu-arm64",
            Self::Hvf => "hvf",
        }
    }
}

/// What the KVM probe found.
#[derive(Clone, Debug, PartialEq)]
pub enum KvmProbe {
    /// `/dev/kvm` cannot be used; the message says why.
    Missing(String),
    /// `/dev/kvm` works but guest ring 0 is emulated (nested PVM here):
    /// the KVM backend runs, slowly, with the nested-PVM profile.
    Emulated {
        /// Nanoseconds per probe-loop iteration at guest ring 0.
        cpl0_ns: f64,
        /// The same at guest ring 3.
        cpl3_ns: f64,
    },
    /// Hardware virtualization.
    Hardware {
        /// Nanoseconds per probe-loop iteration at guest ring 0.
        cpl0_ns: f64,
        /// The same at guest ring 3.
        cpl3_ns: f64,
    },
}

/// Probes `/dev/kvm` by timing the same loop at guest ring 0 and ring 3 in
/// a scratch VM (once per process, a few tens of milliseconds).
#[cfg(target_os = "linux")]
pub fn probe_kvm() -> KvmProbe {
    use sandbox_vmm_kvm::probe::{probe, Probe};
    match probe() {
        Probe::Unavailable(why) => KvmProbe::Missing(why),
        Probe::Emulated { cpl0_ns, cpl3_ns } => KvmProbe::Emulated { cpl0_ns, cpl3_ns },
        Probe::Hardware { cpl0_ns, cpl3_ns } => KvmProbe::Hardware { cpl0_ns, cpl3_ns },
    }
}

/// KVM is Linux's: elsewhere the probe finds nothing.
#[cfg(not(target_os = "linux"))]
pub fn probe_kvm() -> KvmProbe {
    KvmProbe::Missing("KVM is a Linux interface".into())
}

/// What a backend needs to start a guest.
pub(crate) struct MachineSpec {
    pub rootfs: Rootfs,
    pub disks: Vec<crate::DataDisk>,
    pub events: sandbox_rootfs::EventHook,
    pub memory_mib: u32,
    pub cpus: u32,
    pub hostname: String,
    pub network: Option<sandbox_net::NetworkOptions>,
    /// Host file systems, opened and validated.
    #[cfg(target_os = "linux")]
    pub mounts: Vec<crate::mount::Prepared>,
    /// The UML kernel process's confinement.
    #[cfg(target_os = "linux")]
    pub uml_jail: crate::UmlJail,
}

/// The agent's kernel parameters for `network`: the link's addresses and
/// the interception CA (the base64 body of its PEM, on one line).
pub(crate) fn network_args(network: &sandbox_net::Network) -> Vec<String> {
    vec![
        cmdline::param(cmdline::NET, network.config().guest_param()),
        cmdline::param(cmdline::CA, ca_body(network)),
    ]
}

/// The interception CA as the agent takes it: the base64 body of its PEM,
/// on one line.
pub(crate) fn ca_body(network: &sandbox_net::Network) -> String {
    let pem = network.ca_cert_pem();
    pem.lines().filter(|l| !l.starts_with("-----")).collect()
}

/// The MTU of Linux guests' links (UML's `bess` socket, KVM's virtio-net):
/// the link is a local socket, not a wire, and 64 KB frames carry bulk
/// transfers with far less per-frame work than 1500-byte ones (a 16 MiB
/// transfer is 260 frames instead of 11,500). macOS's link stays at 1500
/// (`hvf.rs`).
#[cfg_attr(not(target_os = "linux"), allow(dead_code))]
pub(crate) const LINK_MTU: u16 = 65000;

/// A virtio-net device and the host stack on its other end.
pub(crate) fn net_device(
    opts: sandbox_net::NetworkOptions,
) -> Result<(Box<dyn sandbox_virtio::VirtioDevice>, sandbox_net::Network), Error> {
    let (net, host_end) = sandbox_virtio::net::Net::new(opts.config.guest_mac, opts.config.mtu)
        .map_err(|e| Error::Net(format!("creating the virtio-net device: {e}")))?;
    let network = sandbox_net::Network::start_seqpacket(host_end, opts)
        .map_err(|e| Error::Net(e.to_string()))?;
    Ok((Box::new(net), network))
}

/// The data disks as virtio-blk devices served in this process, named
/// `data0`, `data1`, ... (external vhost-user disks are UML's alone).
#[cfg_attr(not(any(target_os = "linux", target_os = "macos")), allow(dead_code))]
pub(crate) fn data_disks(
    spec: &MachineSpec,
) -> Result<Vec<(String, sandbox_virtio::block::Block)>, Error> {
    let mut out = Vec::new();
    for (i, disk) in spec.disks.iter().enumerate() {
        let crate::DataDisk::Rootfs(r) = disk else {
            return Err(Error::InvalidConfig(
                "external vhost-user disks are served by the UML backend only".into(),
            ));
        };
        let d = r.open(Some(spec.events.clone()))?;
        let block = sandbox_virtio::block::Block::new(d, &format!("sandbox-data{i}"));
        out.push((format!("data{i}"), block));
    }
    Ok(out)
}

/// A started guest as the library sees it.
pub(crate) trait Machine: Send {
    /// A host-unique id of this guest (also in the backend's process title).
    fn id(&self) -> String;
    /// Connects to the guest agent, waiting up to `timeout` for it to listen.
    fn connect_control(&mut self, timeout: Duration) -> std::io::Result<UnixStream>;
    /// The last console lines, for error reports.
    fn console_tail(&self, lines: usize) -> String;
    /// How long a clean power-off (the agent's sync, read-only remount and
    /// halt) may take before `shutdown` kills the guest.
    fn power_off_timeout(&self) -> Duration {
        Duration::from_secs(10)
    }
    /// Waits up to `timeout` for the guest to stop by itself.
    fn wait_exit(&mut self, timeout: Duration) -> bool;
    /// Stops the guest now and releases every host resource.
    fn kill(&mut self);
    /// Counters of the guest's network, if it has one.
    fn network_stats(&self) -> Option<sandbox_net::Stats> {
        None
    }
    #[cfg_attr(not(target_os = "linux"), allow(dead_code))] // restores: Linux only
    /// The guest network's interception CA for the agent ([`ca_body`]),
    /// if the guest has a network.
    fn network_ca(&self) -> Option<String> {
        None
    }
    /// The memory mounts a restore loaded from the snapshot, by guest
    /// path (booted machines: none here, `Vm` keeps the application's).
    #[cfg(target_os = "linux")]
    fn memory_mounts(&self) -> Vec<(String, sandbox_fs::MemoryFs)> {
        Vec::new()
    }
    /// How the guest stopped, if it has (never blocks). Called before
    /// `kill`.
    fn stop_reason(&mut self) -> Option<crate::StopReason>;
    /// Counters of the virtio devices, by name.
    fn device_counters(&self) -> Vec<(String, sandbox_virtio::DeviceCounters)>;
    /// Console bytes dropped from the bounded console log.
    fn console_dropped_bytes(&self) -> u64;
    /// Stops every vCPU until [`Machine::resume`].
    fn pause(&mut self) -> Result<(), Error>;
    /// Lets a paused guest run again.
    fn resume(&mut self) -> Result<(), Error>;
    /// Whether the guest is paused.
    fn is_paused(&self) -> bool {
        false
    }
    /// Writes a snapshot into `dir` (KVM only).
    #[cfg(target_os = "linux")]
    fn snapshot(
        &mut self,
        _dir: &std::path::Path,
    ) -> Result<crate::snapshot::MachineSnapshot, Error> {
        Err(Error::Unsupported {
            what: "snapshot",
            backend: "uml",
            why: "a UML guest's memory and processes live in host processes that cannot be saved; \
                  snapshots need the KVM backend (BackendKind::Kvm)"
                .into(),
        })
    }
}

/// Resolves `Auto` and checks the choice can run; returns a description of
/// why this backend was chosen.
#[cfg(target_os = "linux")]
pub(crate) fn select(kind: BackendKind) -> Result<(BackendKind, String), Error> {
    match kind {
        BackendKind::Uml => Ok((BackendKind::Uml, "requested explicitly".into())),
        BackendKind::Hvf => Err(Error::BackendUnavailable {
            requested: BackendKind::Hvf.name(),
            reason: "Hypervisor.framework exists on macOS only".into(),
        }),
        BackendKind::QemuArm64 => match qemu_arm64::probe() {
            Ok(()) => Ok((
                BackendKind::QemuArm64,
                "requested explicitly; arm64 is emulated (TCG), so guests are slow".into(),
            )),
            Err(reason) => Err(Error::BackendUnavailable {
                requested: BackendKind::QemuArm64.name(),
                reason,
            }),
        },
        BackendKind::Kvm => match probe_kvm() {
            KvmProbe::Missing(why) => Err(Error::BackendUnavailable {
                requested: BackendKind::Kvm.name(),
                reason: format!("/dev/kvm is not usable ({why})"),
            }),
            KvmProbe::Emulated { cpl0_ns, .. } => Ok((
                BackendKind::Kvm,
                format!(
                    "requested explicitly; guest ring 0 is emulated here ({cpl0_ns:.0} ns per probe iteration), \
                     so the nested-PVM CPU profile and kernel parameter are used and boots are slow"
                ),
            )),
            KvmProbe::Hardware { .. } => {
                Ok((BackendKind::Kvm, "requested explicitly; hardware KVM".into()))
            }
        },
        BackendKind::Auto => Ok(match probe_kvm() {
            KvmProbe::Hardware { cpl0_ns, .. } => (
                BackendKind::Kvm,
                format!("auto: hardware KVM ({cpl0_ns:.1} ns per ring-0 probe iteration)"),
            ),
            KvmProbe::Emulated { cpl0_ns, cpl3_ns } => (
                BackendKind::Uml,
                format!(
                    "auto: /dev/kvm emulates guest ring 0 ({cpl0_ns:.0} ns vs {cpl3_ns:.1} ns at ring 3 per \
                     probe iteration), far too slow: using UML"
                ),
            ),
            KvmProbe::Missing(why) => (BackendKind::Uml, format!("auto: /dev/kvm unavailable ({why})")),
        }),
    }
}

/// Resolves `Auto` (Hypervisor.framework) where Linux's backends do not
/// exist.
#[cfg(not(target_os = "linux"))]
pub(crate) fn select(kind: BackendKind) -> Result<(BackendKind, String), Error> {
    match kind {
        BackendKind::Hvf | BackendKind::Auto if cfg!(target_os = "macos") => Ok((
            BackendKind::Hvf,
            if kind == BackendKind::Auto {
                "auto: Hypervisor.framework (macOS)".into()
            } else {
                "requested explicitly".into()
            },
        )),
        BackendKind::Hvf | BackendKind::Auto => Err(Error::BackendUnavailable {
            requested: BackendKind::Hvf.name(),
            reason: "no backend exists for this operating system (Linux: KVM or UML; macOS: \
                     Hypervisor.framework)"
                .into(),
        }),
        other => Err(Error::BackendUnavailable {
            requested: other.name(),
            reason: "KVM, UML and the QEMU arm64 backend run on Linux hosts only".into(),
        }),
    }
}

/// The KVM CPU profile this host gets, by name.
#[cfg(target_os = "linux")]
pub(crate) fn kvm_profile() -> sandbox_vmm_kvm::CpuProfile {
    match probe_kvm() {
        KvmProbe::Hardware { .. } => sandbox_vmm_kvm::CpuProfile::Full,
        _ => sandbox_vmm_kvm::CpuProfile::NestedPvm,
    }
}

/// The name of [`kvm_profile`] recorded in snapshots.
#[cfg(target_os = "linux")]
pub(crate) fn kvm_profile_name() -> String {
    match kvm_profile() {
        sandbox_vmm_kvm::CpuProfile::Full => "full".into(),
        _ => "nested-pvm".into(),
    }
}

/// Starts a KVM guest from a snapshot.
#[cfg(target_os = "linux")]
pub(crate) fn restore_kvm(
    snapshot: &crate::Snapshot,
    opts: crate::RestoreOptions,
) -> Result<Box<dyn Machine>, Error> {
    if let KvmProbe::Missing(why) = probe_kvm() {
        return Err(Error::BackendUnavailable {
            requested: BackendKind::Kvm.name(),
            reason: format!("/dev/kvm is not usable ({why}): snapshots restore on KVM only"),
        });
    }
    kvm::restore(snapshot, opts)
}

/// Starts a guest on the chosen backend.
#[cfg(target_os = "macos")]
pub(crate) fn start(kind: BackendKind, spec: MachineSpec) -> Result<Box<dyn Machine>, Error> {
    debug_assert_eq!(kind, BackendKind::Hvf);
    hvf::start(spec)
}

/// Starts a guest on the chosen backend.
#[cfg(not(any(target_os = "linux", target_os = "macos")))]
pub(crate) fn start(_kind: BackendKind, _spec: MachineSpec) -> Result<Box<dyn Machine>, Error> {
    Err(Error::BackendUnavailable {
        requested: BackendKind::Auto.name(),
        reason: "no backend exists for this operating system".into(),
    })
}

/// Starts a guest on the chosen backend.
#[cfg(target_os = "linux")]
pub(crate) fn start(kind: BackendKind, spec: MachineSpec) -> Result<Box<dyn Machine>, Error> {
    let image = spec.rootfs.image();
    // (An image that does not say its architecture is tried as it is.)
    if kind != BackendKind::QemuArm64 && !image.arch.is_empty() && image.arch != kvm::ARCH {
        return Err(Error::InvalidConfig(format!(
            "image {:?} is an {} image; this host's backends boot {} images \
             (BackendKind::QemuArm64 emulates arm64)",
            image.name,
            image.arch,
            kvm::ARCH
        )));
    }
    match kind {
        BackendKind::Uml => uml::start(spec),
        BackendKind::QemuArm64 => qemu_arm64::start(spec),
        _ => kvm::start(spec, kvm_profile()),
    }
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;

    #[test]
    fn hvf_is_refused_on_linux_with_the_reason() {
        match select(BackendKind::Hvf) {
            Err(Error::BackendUnavailable { requested, reason }) => {
                assert_eq!(requested, "hvf");
                assert!(reason.contains("macOS"), "{reason}");
            }
            other => panic!("expected BackendUnavailable, got {other:?}"),
        }
    }

    #[test]
    fn auto_never_picks_hvf_on_linux() {
        let (kind, why) = select(BackendKind::Auto).unwrap();
        assert!(
            matches!(kind, BackendKind::Kvm | BackendKind::Uml),
            "{kind:?}: {why}"
        );
    }

    #[test]
    fn every_backend_has_a_distinct_name() {
        let all = [
            BackendKind::Auto,
            BackendKind::Kvm,
            BackendKind::Uml,
            BackendKind::QemuArm64,
            BackendKind::Hvf,
        ];
        let mut names: Vec<_> = all.iter().map(|k| k.name()).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), all.len());
    }
}
