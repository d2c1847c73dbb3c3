//! `cargo xtask darwin`: clippy for `aarch64-apple-darwin` over the crates
//! that build for macOS so far (issue 18's platform split grows the list).
//!
//! There is no macOS SDK here. The one C dependency on the way, `ring`
//! (rustls' crypto), compiles with Debian's clang for the Apple target when
//! it is freestanding (`RING_CORE_NOSTDLIBINC`, ring's own switch) and given
//! the one SDK header it asks for, `TargetConditionals.h`, which this step
//! writes (three macros). The objects are never linked: this is a check,
//! not a build of a macOS binary.

use std::path::Path;

use crate::cache;
use crate::Result;

/// The Apple target checked.
pub const TARGET: &str = "aarch64-apple-darwin";

/// Workspace crates that build for macOS today. Not: `sandbox-fs`
/// (fuse-backend-rs 0.14's `virtiofs` feature does not compile for macOS,
/// and its macOS FUSE ABI is not the Linux guest's anyway; `sandbox-virtio`
/// leaves virtio-fs and vhost-user out there, and `sandbox-core` mounts),
/// `sandbox-vmm-kvm` and `sandbox-vmm-uml` (Linux's backends, which
/// `sandbox-core` links on Linux only), `sandbox-guest` (a Linux guest
/// program).
pub const CRATES: &[&str] = &[
    "sandbox-protocol",
    "sandbox-thread",
    "sandbox-rootfs",
    "sandbox-net",
    "sandbox-virtio",
    "sandbox-vmm-hvf",
    "sandbox-core",
];

/// The header ring's `base.h` includes on Apple targets.
const TARGET_CONDITIONALS: &str = "\
/* Written by cargo xtask darwin: the three macros ring reads. */
#define TARGET_OS_MAC 1
#define TARGET_OS_OSX 1
#define TARGET_OS_IPHONE 0
";

/// Runs clippy with `-D warnings` for [`TARGET`] over [`CRATES`].
pub fn clippy() -> Result<()> {
    cache::ensure_rust_target(TARGET)?;
    let include = cache::repo().join("target/darwin-sdk/include");
    std::fs::create_dir_all(&include).map_err(|e| format!("{}: {e}", include.display()))?;
    write_if_changed(&include.join("TargetConditionals.h"), TARGET_CONDITIONALS)?;
    let mut args = vec!["clippy", "--target", TARGET];
    for c in CRATES {
        args.extend(["-p", c]);
    }
    args.extend(["--", "-D", "warnings"]);
    let cflags = format!(
        "-ffreestanding -DRING_CORE_NOSTDLIBINC -isystem {}",
        include.display()
    );
    crate::flows::cargo_with(
        &args,
        &[
            ("CC_aarch64_apple_darwin", "clang".as_ref()),
            ("CFLAGS_aarch64_apple_darwin", cflags.as_ref()),
            // cc-rs asks xcrun for an SDK unless one is named; none is needed.
            ("SDKROOT", include.parent().unwrap_or(&include).as_os_str()),
        ],
    )
}

fn write_if_changed(path: &Path, text: &str) -> Result<()> {
    if std::fs::read_to_string(path).is_ok_and(|t| t == text) {
        return Ok(());
    }
    std::fs::write(path, text).map_err(|e| format!("{}: {e}", path.display()))
}
