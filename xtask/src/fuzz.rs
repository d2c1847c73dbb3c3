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
    seed_qcow2(&fuzz_dir)?;
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

/// Seeds the qcow2 target with real images (plain and compressed, small
/// clusters), so the fuzzer starts past the magic and header checks.
fn seed_qcow2(fuzz_dir: &std::path::Path) -> Result<()> {
    let dir = fuzz_dir.join("corpus/qcow2_image");
    std::fs::create_dir_all(&dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    let raw = dir.join("seed.raw");
    let pattern: Vec<u8> = (0..64u32 << 10).map(|i| (i % 251) as u8).collect();
    std::fs::write(&raw, pattern).map_err(|e| e.to_string())?;
    for (name, args) in [
        ("seed-plain.qcow2", vec!["-o", "cluster_size=512"]),
        (
            "seed-compressed.qcow2",
            vec!["-c", "-o", "cluster_size=512"],
        ),
    ] {
        cache::run(
            Command::new("qemu-img")
                .args(["convert", "-q", "-f", "raw", "-O", "qcow2"])
                .args(args)
                .arg(&raw)
                .arg(dir.join(name)),
        )?;
    }
    std::fs::remove_file(&raw).map_err(|e| e.to_string())
}
