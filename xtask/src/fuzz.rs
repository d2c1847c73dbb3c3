//! Builds the cargo-fuzz targets and runs each briefly.

use std::process::Command;

use crate::cache::{self, step};
use crate::Result;

/// Seconds each fuzz target runs in CI.
const SECONDS: u32 = 20;

fn have_cargo_fuzz() -> bool {
    Command::new(env!("CARGO"))
        .args(["fuzz", "--version"])
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Installs cargo-fuzz if missing, builds every target, runs each for a
/// short while. The stable toolchain is the only one here, so the nightly
/// flags cargo-fuzz passes are enabled with `RUSTC_BOOTSTRAP=1`.
pub fn build_and_run() -> Result<()> {
    if !have_cargo_fuzz() {
        step("installing cargo-fuzz from crates.io");
        let status = Command::new(env!("CARGO"))
            .args(["install", "--locked", "cargo-fuzz"])
            .status()
            .map_err(|e| e.to_string())?;
        if !status.success() {
            return Err("`cargo install cargo-fuzz` failed".into());
        }
    }
    let fuzz_dir = cache::repo().join("fuzz");
    let list = Command::new(env!("CARGO"))
        .args(["fuzz", "list"])
        .current_dir(&fuzz_dir)
        .output()
        .map_err(|e| e.to_string())?;
    let targets: Vec<String> = String::from_utf8_lossy(&list.stdout)
        .lines()
        .map(str::to_string)
        .collect();
    for t in &targets {
        step(&format!("fuzz {t}: build and run {SECONDS}s"));
        let status = Command::new(env!("CARGO"))
            .args([
                "fuzz",
                "run",
                t,
                "--",
                &format!("-max_total_time={SECONDS}"),
            ])
            .env("RUSTC_BOOTSTRAP", "1")
            .current_dir(&fuzz_dir)
            .status()
            .map_err(|e| e.to_string())?;
        if !status.success() {
            return Err(format!("fuzz target {t} failed"));
        }
    }
    Ok(())
}
