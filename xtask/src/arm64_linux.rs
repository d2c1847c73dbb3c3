//! `cargo xtask arm64-linux`: clippy for `aarch64-unknown-linux-gnu` over
//! `sandbox-core` and its whole dependency graph, with every target (the
//! KVM backend's arm64 VMM included). This project has no arm64 KVM host:
//! the check is what keeps that code building (docs/kvm-backend.md says
//! what is missing for it to run). C dependencies (ring) build with
//! Debian's `gcc-aarch64-linux-gnu`, which the arm64 kernel needs anyway.

use crate::cache;
use crate::Result;

/// The target checked.
pub const TARGET: &str = "aarch64-unknown-linux-gnu";

/// Runs clippy with `-D warnings` for [`TARGET`].
pub fn clippy() -> Result<()> {
    cache::ensure_rust_target(TARGET)?;
    crate::deps::ensure_packages(crate::deps::ARM64_PACKAGES)?;
    let args = [
        "clippy",
        "--target",
        TARGET,
        "-p",
        "sandbox-core",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ];
    crate::flows::cargo_with(
        &args,
        &[(
            "CC_aarch64_unknown_linux_gnu",
            "aarch64-linux-gnu-gcc".as_ref(),
        )],
    )
}
