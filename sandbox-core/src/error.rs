//! The public error type. Every variant says what the caller can do.

use std::path::PathBuf;

/// Errors of the public API.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The call was cancelled; its process group was killed. The VM is
    /// unaffected.
    #[error("the call was cancelled")]
    Aborted,
    /// A build artifact (kernel, image) is missing.
    #[error("{what} not found at {path}: run `cargo xtask build` to build it")]
    ArtifactMissing {
        /// Which artifact.
        what: String,
        /// Where it was expected.
        path: PathBuf,
    },
    /// The requested backend cannot run here.
    #[error("backend {requested} is unavailable: {reason}")]
    BackendUnavailable {
        /// The backend asked for.
        requested: &'static str,
        /// Why, and what to do.
        reason: String,
    },
    /// The guest agent did not report ready in time.
    #[error("the guest did not become ready within {seconds}s; last console lines:\n{console}")]
    BootTimeout {
        /// The timeout.
        seconds: u64,
        /// The guest console's last lines.
        console: String,
    },
    /// The guest stopped (powered off, panicked or was killed).
    #[error("the guest stopped: {reason}; last console lines:\n{console}")]
    GuestStopped {
        /// What was observed.
        reason: String,
        /// The guest console's last lines.
        console: String,
    },
    /// A guest file system operation failed.
    #[error("{op} {path}: {message} (errno {errno})")]
    Fs {
        /// The operation, e.g. `stat`.
        op: &'static str,
        /// The guest path.
        path: String,
        /// The guest errno (2 is ENOENT).
        errno: i32,
        /// The guest's description.
        message: String,
    },
    /// The definition or an argument is invalid.
    #[error("invalid configuration: {0}")]
    InvalidConfig(String),
    /// A mount cannot be made: a bad guest path, or a host source that
    /// cannot be served.
    #[cfg(target_os = "linux")]
    #[error(transparent)]
    Mount(#[from] crate::MountError),
    /// Host-side I/O failed.
    #[error("{what}")]
    Io {
        /// What was being done.
        what: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A guest service (such as `dockerd`) did not start or stop as asked.
    #[error("{service}: {message}")]
    Service {
        /// The service, e.g. `dockerd`.
        service: &'static str,
        /// What happened, with the service's last log lines.
        message: String,
    },
    /// The guest sent something that is not valid protocol.
    #[error("protocol error: {0}")]
    Protocol(String),
    /// The guest agent refused a request.
    #[error("the guest agent rejected the request: {0}")]
    Rejected(String),
    /// The program could not be started in the guest.
    #[error("cannot start {program:?} in the guest: {message} (errno {errno})")]
    Spawn {
        /// The program.
        program: String,
        /// The guest errno (for example 2, ENOENT, for a missing command).
        errno: i32,
        /// The guest's description.
        message: String,
    },
    /// The root file system could not be prepared (its message says why).
    #[error(transparent)]
    Rootfs(#[from] sandbox_rootfs::RootfsError),
    /// The guest network could not be set up.
    #[error("the sandbox network failed: {0}")]
    Net(String),
    /// The backend running this VM cannot do what was asked.
    #[error("{what} is not supported by the {backend} backend: {why}")]
    Unsupported {
        /// The operation, e.g. `pause`.
        what: &'static str,
        /// The backend of the VM.
        backend: &'static str,
        /// Why, and what to use instead.
        why: String,
    },
    /// A snapshot cannot be taken, read or restored (says why).
    #[error("snapshot: {0}")]
    Snapshot(String),
    /// The KVM backend failed to start the guest.
    #[error("the KVM backend failed: {0}")]
    Kvm(String),
    /// The UML backend failed to start the guest.
    #[cfg(target_os = "linux")]
    #[error("the UML backend failed")]
    Uml(#[from] sandbox_vmm_uml::UmlError),
    /// An image source is malformed, does not verify, or lacks the image
    /// asked for.
    #[error("image import: {0}")]
    Oci(#[from] sandbox_rootfs::oci::OciError),
    /// Unpacking an imported image failed.
    #[error("image import failed: {0}")]
    Import(String),
    /// Guest agent and library speak different protocol versions.
    #[error("guest agent speaks protocol v{guest}, this library v{host}: rebuild the image with `cargo xtask build`")]
    VersionMismatch {
        /// Guest version.
        guest: u32,
        /// Host version.
        host: u32,
    },
}

impl Error {
    pub(crate) fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> Self {
        let what = what.into();
        move |source| Self::Io { what, source }
    }
}
