//! The top-level flows: build everything, quickstart, CI.

use std::path::PathBuf;
use std::process::Command;

use crate::cache::{self, step};
use crate::kernel::{self, Flavor};
use crate::{deps, image, Result};

/// Builds every artifact (cached).
pub fn build(rebuild: bool) -> Result<()> {
    deps::ensure()?;
    cache::make_private()?;
    kernel::build(Flavor::Uml, rebuild)?;
    kernel::build(Flavor::X86_64, rebuild)?;
    build_image(rebuild)?;
    step(&format!("artifacts ready in {}", cache::root().display()));
    Ok(())
}

/// Builds the arm64 guest artifacts (cached): the kernel `Image`, the
/// static agent and the `minimal` image. Only on request (`cargo xtask build --arch arm64`) and in
/// CI, so the x86_64 path stays as fast as before.
pub fn build_arm64(rebuild: bool) -> Result<()> {
    kernel::build(Flavor::Arm64, rebuild)?;
    let agent = image::build_agent_arm64()?;
    crate::arm64_image::build(&agent, rebuild)?;
    step("arm64 artifacts ready");
    Ok(())
}

/// Builds the agent and the built-in images.
pub fn build_image(rebuild: bool) -> Result<PathBuf> {
    let agent = image::build_agent()?;
    let minimal = image::build_minimal(&agent, rebuild)?;
    crate::debian::build(&crate::debian::DEBIAN_12, &agent, rebuild)?;
    crate::debian::build(&crate::debian::DEBIAN_12_DOCKER, &agent, rebuild)?;
    Ok(minimal)
}

fn cargo(args: &[&str]) -> Result<()> {
    cargo_with(args, &[])
}

/// Runs cargo with `args` in the repository, with `env` set.
pub fn cargo_with(args: &[&str], env: &[(&str, &std::ffi::OsStr)]) -> Result<()> {
    step(&format!("cargo {}", args.join(" ")));
    let status = Command::new(env!("CARGO"))
        .args(args)
        .envs(env.iter().copied())
        .current_dir(cache::repo())
        .status()
        .map_err(|e| format!("cannot run cargo: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("`cargo {}` failed ({status})", args.join(" ")))
    }
}

/// Builds only what the quickstart example boots: the UML kernel, the
/// agent and `minimal` (cached). The x86_64 kernel and the Debian images
/// come with `cargo xtask build`, which the examples, benches and tests that
/// need them run on demand (`sandbox::ensure_artifacts`).
pub fn build_quickstart(rebuild: bool) -> Result<()> {
    deps::ensure_packages(deps::QUICKSTART_PACKAGES)?;
    cache::make_private()?;
    kernel::build(Flavor::Uml, rebuild)?;
    let agent = image::build_agent()?;
    image::build_minimal(&agent, rebuild)?;
    step(&format!(
        "quickstart artifacts ready in {} (`cargo xtask build` adds the x86_64 kernel and the \
         Debian images)",
        cache::root().display()
    ));
    Ok(())
}

/// Installs and builds what the quickstart needs, runs the example.
pub fn quickstart(rebuild: bool) -> Result<()> {
    build_quickstart(rebuild)?;
    cargo(&["run", "--release", "--example", "quickstart"])
}

/// The CI flow: set-up, formatting, lints, fuzz build, then every test.
pub fn ci(rebuild: bool) -> Result<()> {
    build(rebuild)?;
    build_arm64(rebuild)?;
    cargo(&["fmt", "--all", "--", "--check"])?;
    cargo(&[
        "clippy",
        "--workspace",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ])?;
    crate::hygiene::check()?;
    crate::darwin::clippy()?;
    crate::arm64_linux::clippy()?;
    crate::fuzz::build_and_run(crate::fuzz::CI_SECONDS)?;
    test_workspace()?;
    soak(CI_SOAK_CYCLES)
}

/// Soak cycles CI runs.
pub const CI_SOAK_CYCLES: u32 = 50;

/// Runs the soak binary (`src/bin/soak.rs`, debug build: the tests already
/// built its dependencies) for `cycles` cycles of two UML VMs.
pub fn soak(cycles: u32) -> Result<()> {
    step(&format!("soak: {cycles} cycles of two VMs"));
    let n = cycles.to_string();
    cargo(&["run", "--quiet", "--bin", "soak", "--", "--cycles", &n])
}

/// Runs `cargo test --workspace`, echoing its output, and ends with one
/// plain `tests: N passed, N failed, N skipped` line summed over every test
/// binary. A test that cannot run here records itself through
/// `sandbox::skip` in the file `SANDBOX_SKIP_LOG` names; it counts as
/// skipped, not passed, and its reason is printed.
fn test_workspace() -> Result<()> {
    step("cargo test --workspace");
    let skip_log = std::env::temp_dir().join(format!("sandbox-skips-{}.log", std::process::id()));
    let _ = std::fs::remove_file(&skip_log);
    let mut child = Command::new(env!("CARGO"))
        .args(["test", "--workspace"])
        .env("SANDBOX_SKIP_LOG", &skip_log)
        .current_dir(cache::repo())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run cargo: {e}"))?;
    let (mut passed, mut failed) = (0u64, 0u64);
    if let Some(out) = child.stdout.take() {
        use std::io::BufRead;
        for line in std::io::BufReader::new(out)
            .lines()
            .map_while(std::result::Result::ok)
        {
            println!("{line}");
            if let Some(rest) = line.strip_prefix("test result: ") {
                passed += count(rest, " passed");
                failed += count(rest, " failed");
            }
        }
    }
    let status = child.wait().map_err(|e| e.to_string())?;
    let skips = std::fs::read_to_string(&skip_log).unwrap_or_default();
    let _ = std::fs::remove_file(&skip_log);
    let skipped = skips.lines().filter(|l| !l.trim().is_empty()).count() as u64;
    for line in skips.lines().filter(|l| !l.trim().is_empty()) {
        let (test, why) = line.split_once('\t').unwrap_or((line, ""));
        println!("skipped: {test}: {why}");
    }
    println!(
        "tests: {} passed, {failed} failed, {skipped} skipped",
        passed.saturating_sub(skipped)
    );
    if status.success() {
        Ok(())
    } else {
        Err(format!("`cargo test --workspace` failed ({status})"))
    }
}

/// The number before `label` in a `test result:` line.
fn count(line: &str, label: &str) -> u64 {
    line.split(';')
        .find_map(|part| {
            part.trim()
                .trim_start_matches("ok. ")
                .trim_start_matches("FAILED. ")
                .strip_suffix(label.trim_start())
        })
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::count;

    #[test]
    fn counts_come_from_cargo_summary_lines() {
        let ok = "ok. 7 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out; finished in 2.61s";
        assert_eq!((count(ok, " passed"), count(ok, " failed")), (7, 0));
        let bad = "FAILED. 6 passed; 1 failed; 0 ignored; 0 measured; 0 filtered out";
        assert_eq!((count(bad, " passed"), count(bad, " failed")), (6, 1));
    }
}
