//! Dependency and toolchain hygiene for CI: no unused dependencies
//! (cargo-machete), and the workspace builds with the `rust-version` it
//! declares (checked with that toolchain, installed by rustup if missing).

use std::process::Command;

use crate::cache::{self, step};
use crate::Result;

/// Runs both checks.
pub fn check() -> Result<()> {
    unused_dependencies()?;
    minimum_rust_version()
}

fn unused_dependencies() -> Result<()> {
    cache::ensure_cargo_tool("machete")?;
    step("cargo machete (unused dependencies)");
    // cargo-machete takes `CARGO_PKG_NAME` (set for xtask by `cargo run`)
    // as a sign it was not run as a cargo subcommand.
    let ok = Command::new(env!("CARGO"))
        .arg("machete")
        .env_remove("CARGO_PKG_NAME")
        .current_dir(cache::repo())
        .status()
        .is_ok_and(|s| s.success());
    if ok {
        Ok(())
    } else {
        Err(
            "cargo machete found unused dependencies (listed above): remove them, or list \
             one that is used in a way machete cannot see under \
             [package.metadata.cargo-machete] ignored"
                .into(),
        )
    }
}

/// The `rust-version` of `[workspace.package]` in the root manifest.
fn declared_rust_version() -> Result<String> {
    let manifest = cache::repo().join("Cargo.toml");
    let text = std::fs::read_to_string(&manifest)
        .map_err(|e| format!("reading {}: {e}", manifest.display()))?;
    text.lines()
        .find_map(|l| {
            let v = l.trim().strip_prefix("rust-version")?.trim();
            let v = v.strip_prefix('=')?.trim().trim_matches('"');
            (!v.is_empty() && v.chars().all(|c| c.is_ascii_digit() || c == '.'))
                .then(|| v.to_string())
        })
        .ok_or_else(|| format!("no rust-version = \"X.Y\" in {}", manifest.display()))
}

/// `rustup run <toolchain> cargo ...` without the variables of the cargo
/// that runs xtask, so the requested toolchain is the one used.
fn rustup_cargo(toolchain: &str) -> Command {
    let mut c = Command::new("rustup");
    c.args(["run", toolchain, "cargo"])
        .env_remove("RUSTUP_TOOLCHAIN")
        .env_remove("RUSTC")
        .env_remove("RUSTDOC")
        .env_remove("CARGO")
        .current_dir(cache::repo());
    c
}

fn minimum_rust_version() -> Result<()> {
    let v = declared_rust_version()?;
    let present = rustup_cargo(&v)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !present {
        step(&format!(
            "installing Rust {v} (the declared rust-version) with rustup"
        ));
        let ok = Command::new("rustup")
            .args(["toolchain", "install", &v, "--profile", "minimal"])
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            return Err(format!("`rustup toolchain install {v}` failed"));
        }
    }
    step(&format!(
        "cargo check with Rust {v} (the declared rust-version)"
    ));
    let target = cache::repo().join("target").join("msrv");
    let ok = rustup_cargo(&v)
        .args(["check", "--workspace", "--all-targets", "--quiet"])
        .env("CARGO_TARGET_DIR", &target)
        .status()
        .is_ok_and(|s| s.success());
    if ok {
        Ok(())
    } else {
        Err(format!(
            "the workspace does not build with Rust {v}, its declared rust-version: \
             raise rust-version in Cargo.toml or avoid the newer feature"
        ))
    }
}
