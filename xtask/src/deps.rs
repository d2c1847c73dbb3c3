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
];

fn installed(pkg: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", pkg])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
        .unwrap_or(false)
}

/// Installs missing packages when running as root, else explains how.
pub fn ensure() -> Result<()> {
    let missing: Vec<&str> = PACKAGES.iter().copied().filter(|p| !installed(p)).collect();
    if missing.is_empty() {
        return Ok(());
    }
    let list = missing.join(" ");
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Err(format!(
            "missing packages: {list}\nrun: sudo apt-get update && sudo apt-get install -y {list}"
        ));
    }
    step(&format!("installing {list}"));
    run(Command::new("apt-get").arg("update").arg("-qq"))?;
    run(Command::new("apt-get")
        .args(["install", "-y", "-qq", "--no-install-recommends"])
        .args(&missing)
        .env("DEBIAN_FRONTEND", "noninteractive"))
}
