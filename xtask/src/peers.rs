//! Peers the benches compare against, installed on demand (not part of
//! `ci` or `build`): the Rust `virtiofsd` for `benches/mounts.rs`.

use std::path::PathBuf;
use std::process::Command;

use crate::cache::{root, run, step};
use crate::Result;

/// The virtiofsd release the mounts bench runs.
const VIRTIOFSD_VERSION: &str = "1.14.0";
/// Debian packages virtiofsd links against.
const VIRTIOFSD_PACKAGES: &[&str] = &["libseccomp-dev", "libcap-ng-dev"];

/// Where `cargo xtask peers` installs virtiofsd (the bench looks there).
pub fn virtiofsd_path() -> PathBuf {
    root().join("tools/bin/virtiofsd")
}

/// Installs virtiofsd (and the Debian packages it builds against) if
/// missing.
pub fn ensure() -> Result<()> {
    let bin = virtiofsd_path();
    if bin.exists() {
        step(&format!("virtiofsd present at {}", bin.display()));
        return Ok(());
    }
    crate::deps::ensure_packages(VIRTIOFSD_PACKAGES)?;
    step(&format!(
        "installing virtiofsd {VIRTIOFSD_VERSION} from crates.io (about 2 minutes)"
    ));
    run(Command::new(env!("CARGO"))
        .args([
            "install",
            "--locked",
            "virtiofsd",
            "--version",
            VIRTIOFSD_VERSION,
        ])
        .arg("--root")
        .arg(root().join("tools")))?;
    step(&format!("virtiofsd installed at {}", bin.display()));
    Ok(())
}
