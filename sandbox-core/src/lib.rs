//! `sandbox-core`: run untrusted commands in Linux microVMs while the host
//! keeps control of disk state, network egress and credentials.
//!
//! ```no_run
//! # async fn demo() -> Result<(), sandbox_core::Error> {
//! use sandbox_core::{images, BootOptions, Sandbox};
//! let sandbox = Sandbox::builder().image(images::builtin("minimal")?).build()?;
//! let vm = sandbox.boot(BootOptions::default()).await?;
//! let out = vm.exec("uname", ["-a"]).await?;
//! println!("{}", String::from_utf8_lossy(&out.stdout));
//! vm.shutdown().await?;
//! # Ok(()) }
//! ```
//!
//! A [`Sandbox`] is a validated definition; [`Sandbox::boot`] starts an
//! independent VM from it as often as you like. Every call on a [`Vm`] is a
//! request to the guest agent over the control channel.

pub mod artifacts;
mod backend;
mod client;
mod command;
pub mod docker;
mod error;
mod facts;
mod forward;
pub mod fs;
pub mod images;
mod link_reader;
pub mod metrics;
#[cfg(target_os = "linux")]
mod mount;
#[cfg(target_os = "linux")]
mod mount_device;
/// Syscall filters of the threads that handle guest input: `set_enabled`,
/// `violations`, the allow-lists of every thread class
/// (docs/security.md).
pub mod seccomp {
    pub use crate::link_reader::AGENT_LINK;
    pub use sandbox_net::NET_STACK;
    pub use sandbox_virtio::seccomp::*;
    #[cfg(target_os = "linux")]
    pub use sandbox_vmm_kvm::seccomp::VCPU;
    #[cfg(target_os = "linux")]
    pub use sandbox_vmm_uml::seccomp::CONSOLE;
}
mod process;
mod sandbox;
#[cfg(target_os = "linux")]
mod snapshot;
mod status;
mod stop;
mod vm;

pub use backend::{probe_kvm, BackendKind, KvmProbe};
pub use command::{Command, TIMEOUT_EXIT_CODE};
pub use error::Error;
pub use facts::{Fact, FactSource, PROBED_COMMANDS};
pub use forward::{Forward, ForwardOptions};
pub use images::{Image, ImageFormat};
#[cfg(target_os = "linux")]
pub use mount::{Bind, Mount, MountError};
/// File systems served to the guest from the application's code
/// (`Mount::virtual_fs`), and the in-memory one (`Mount::memory`).
/// Linux only, like every mount: virtio-fs is not built for macOS yet.
#[cfg(target_os = "linux")]
pub mod vfs {
    pub use sandbox_fs::vfs::*;
    pub use sandbox_fs::{MemoryFs, DEFAULT_DEADLINE, DEFAULT_LIMIT};
}
pub use process::{OutputStream, Process, ProcessStdin, Pty, NOT_STARTED};
pub use sandbox::{BootOptions, DataDisk, Resources, Sandbox, SandboxBuilder, MAX_DATA_DISKS};
pub use sandbox_protocol::PtySize;
pub use sandbox_rootfs::Rootfs;
pub use sandbox_rootfs::RootfsEvent;
#[cfg(target_os = "linux")]
pub use snapshot::{RestoreOptions, Snapshot};

/// Root file systems: write modes, block stores, flattening and streaming
/// (the `sandbox-rootfs` crate).
pub mod rootfs {
    pub use sandbox_rootfs::{
        bytes, flatten, BlockStore, Composed, FlatImage, ImageBytes, MemStore, Qcow2Options,
        Rootfs, RootfsError, Source, StoreContext, WriteMode, DEFAULT_EPHEMERAL_SPILL_BYTES,
        DEFAULT_MAX_DIRTY_BYTES,
    };
}
/// Network egress: policy, DNS, HTTP(S) interception (the `sandbox-net`
/// crate). Pass [`net::NetworkOptions`] to [`SandboxBuilder::network`].
pub mod net {
    pub use sandbox_net::{
        canonical_name, deny_all, host_resolvers, BoxError, CertificateDer, Conn, Connector,
        DenyReason, DirectConnector, DnsGrant, DnsQuery, DstClass, EndpointMatcher, HostMatcher,
        HttpGrant, HttpRequest, HttpScheme, Limits, Middleware, NetConfig, NetworkOptions, Policy,
        Proto, RawGrant, RoutedConnector, Stats, Verdict,
    };
}
#[cfg(target_os = "linux")]
pub use sandbox_vmm_uml::{UmlJail, JAIL_ID_BASE as UML_JAIL_ID_BASE};
pub use status::{ExitStatus, Output, Signal};
pub use stop::StopReason;
pub use tokio_util::sync::CancellationToken;
pub use vm::{Vm, VmEvent};
