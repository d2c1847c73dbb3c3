//! System packages the build needs, from Debian.

use std::process::Command;

use crate::cache::{run, step};
use crate::Result;

/// Debian packages needed to build the kernels and images.
pub const PACKAGES: &[&str] = &[
    "linux-source-6.12",
    "build-essential",
    "flex",
    "bison",
    "bc",
    "libelf-dev",
    "libssl-dev",
    "patch",
    "xz-utils",
    "e2fsprogs",
    "busybox-static",
    "bash-static",
    "qemu-utils",
    "debootstrap",
    // qemu-system-x86_64 -M microvm: the KVM boot benchmark's peer.
    "qemu-system-x86",
    // dtc: the HVF backend's device-tree test reads its blob back.
    "device-tree-compiler",
    // clang: ring's C for the aarch64-apple-darwin clippy check.
    "clang",
    // qemu-system-aarch64: tests/arm64.rs boots the arm64 kernel under TCG.
    "qemu-system-arm",
];

/// What the arm64 guest kernel and agent add (built only when asked for):
/// the cross compiler, and the cross glibc the static agent links
/// against (only a recommendation of the compiler, which
/// `--no-install-recommends` leaves out; a fresh machine's CI failed at
/// the agent's link without it).
pub const ARM64_PACKAGES: &[&str] = &["gcc-aarch64-linux-gnu", "libc6-dev-arm64-cross"];

/// The subset the quickstart needs: the UML kernel, the agent and the
/// `minimal` image (no QEMU, no debootstrap).
pub const QUICKSTART_PACKAGES: &[&str] = &[
    "linux-source-6.12",
    "build-essential",
    "flex",
    "bison",
    "bc",
    "libelf-dev",
    "libssl-dev",
    "patch",
    "xz-utils",
    "e2fsprogs",
    "busybox-static",
    "bash-static",
];

fn installed(pkg: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", pkg])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
        .unwrap_or(false)
}

fn missing() -> Vec<&'static str> {
    PACKAGES.iter().copied().filter(|p| !installed(p)).collect()
}

/// Checks that apt may run (root; else says what to run) and updates its
/// lists, before installing `want`.
fn prepare(want: &[&str]) -> Result<()> {
    let list = want.join(" ");
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Err(format!(
            "missing packages: {list}\nrun: sudo apt-get update && sudo apt-get install -y {list}"
        ));
    }
    step(&format!("installing {list}"));
    run(Command::new("apt-get").arg("update").arg("-qq"))
}

fn apt_install(pkgs: &[&str]) -> Result<()> {
    run(Command::new("apt-get")
        .args(["install", "-y", "-qq", "--no-install-recommends"])
        .args(pkgs)
        .env("DEBIAN_FRONTEND", "noninteractive"))
}

/// Installs `packages` that are missing (as root), else says how.
pub fn ensure_packages(packages: &[&str]) -> Result<()> {
    let want: Vec<&str> = packages.iter().copied().filter(|p| !installed(p)).collect();
    if want.is_empty() {
        return Ok(());
    }
    prepare(&want)?;
    apt_install(&want)
}

/// Installs missing packages when running as root, else explains how.
///
/// A second pass installs what the first one removed: apt resolves a
/// conflict by removing the older side, and a machine with a backported
/// `qemu-utils` (10.x, which also ships `qemu-storage-daemon`) loses it
/// when Debian 12's `qemu-system-x86` comes in; the second pass then
/// installs the matching Debian 12 `qemu-utils`.
pub fn ensure() -> Result<()> {
    let first = missing();
    if first.is_empty() {
        return Ok(());
    }
    prepare(&first)?;
    let mut now = first;
    for pass in 0..2 {
        if pass > 0 {
            step(&format!(
                "installing {} (removed by apt in the first pass)",
                now.join(" ")
            ));
        }
        apt_install(&now)?;
        now = missing();
        if now.is_empty() {
            return Ok(());
        }
    }
    Err(format!(
        "apt-get could not install {} together with the rest; see its output above",
        now.join(" ")
    ))
}
