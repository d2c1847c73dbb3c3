//! The top-level flows: build everything, quickstart, CI.

use std::path::PathBuf;
use std::process::Command;

use crate::cache::{self, step};
use crate::kernel::{self, Flavor};
use crate::{deps, image, Result};

/// Builds every artifact (cached).
pub fn build(rebuild: bool) -> Result<()> {
    deps::ensure()?;
    kernel::build(Flavor::Uml, rebuild)?;
    kernel::build(Flavor::X86_64, rebuild)?;
    build_image(rebuild)?;
    step(&format!("artifacts ready in {}", cache::root().display()));
    Ok(())
}

/// Builds the agent and the `minimal` image.
pub fn build_image(rebuild: bool) -> Result<PathBuf> {
    let agent = image::build_agent()?;
    image::build_minimal(&agent, rebuild)
}

fn cargo(args: &[&str]) -> Result<()> {
    step(&format!("cargo {}", args.join(" ")));
    let status = Command::new(env!("CARGO"))
        .args(args)
        .current_dir(cache::repo())
        .status()
        .map_err(|e| format!("cannot run cargo: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("`cargo {}` failed ({status})", args.join(" ")))
    }
}

/// Installs, builds, runs the quickstart example.
pub fn quickstart(rebuild: bool) -> Result<()> {
    build(rebuild)?;
    cargo(&["run", "--release", "--example", "quickstart"])
}

/// The CI flow: set-up, formatting, lints, fuzz build, then every test.
pub fn ci(rebuild: bool) -> Result<()> {
    build(rebuild)?;
    cargo(&["fmt", "--all", "--", "--check"])?;
    cargo(&[
        "clippy",
        "--workspace",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ])?;
    crate::fuzz::build_and_run()?;
    cargo(&["test", "--workspace"])
}
