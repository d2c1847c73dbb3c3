//! `cargo xtask`: builds the project's artifacts (guest kernels, the static
//! guest agent, built-in images) into a cache outside the work tree, keyed by
//! a hash of their inputs, and runs the project's set-up and CI flows.
//!
//! ```text
//! cargo xtask quickstart        install and build what the example needs, run it
//! cargo xtask ci                the same set-up, then fmt, clippy, hygiene, fuzz, tests
//! cargo xtask hygiene           unused dependencies, build with the declared rust-version
//! cargo xtask fuzz [--minutes N] every fuzz target for 20 s (or N minutes) each
//! cargo xtask soak [--cycles N]  VM cycles (default 50), failing on host resource growth
//! cargo xtask build [--rebuild] build every artifact
//! cargo xtask build --arch arm64 the arm64 kernel and agent (only when asked for, and in ci)
//! cargo xtask build-quickstart  build only the UML kernel, the agent and `minimal`
//! cargo xtask deps              install (or print) the system packages needed
//! cargo xtask darwin            clippy for aarch64-apple-darwin over the crates that build there
//! cargo xtask arm64-linux       clippy for aarch64-unknown-linux-gnu over sandbox-core (the arm64 KVM VMM)
//! ```

mod arm64_image;
mod arm64_linux;
mod cache;
mod darwin;
mod debian;
mod deps;
mod flows;
mod fuzz;
mod fuzz_seeds;
mod hygiene;
mod image;
mod kernel;
mod peers;

use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let rebuild = args.iter().any(|a| a == "--rebuild");
    let result = match args.first().map(String::as_str) {
        Some("build") => match args
            .iter()
            .position(|a| a == "--arch")
            .map(|i| args.get(i + 1))
        {
            None => flows::build(rebuild),
            Some(Some(a)) if a == "arm64" => flows::build_arm64(rebuild),
            Some(Some(a)) if a == "x86_64" => flows::build(rebuild),
            Some(_) => Err("usage: cargo xtask build [--arch x86_64|arm64] [--rebuild]".into()),
        },
        Some("build-quickstart") => flows::build_quickstart(rebuild),
        Some("deps") => deps::ensure(),
        Some("darwin") => darwin::clippy(),
        Some("arm64-linux") => arm64_linux::clippy(),
        Some("kernel") => match args.get(1).map(String::as_str) {
            Some(name) => {
                kernel::Flavor::parse(name).and_then(|f| kernel::build(f, rebuild).map(|_| ()))
            }
            None => Err("usage: cargo xtask kernel <uml|x86_64|arm64> [--rebuild]".into()),
        },
        Some("image") => flows::build_image(rebuild).map(|_| ()),
        Some("quickstart") => flows::quickstart(rebuild),
        Some("ci") => flows::ci(rebuild),
        Some("fuzz") => count_flag(&args, "--minutes", "cargo xtask fuzz [--minutes N]")
            .and_then(|m| fuzz::build_and_run(m.map_or(fuzz::CI_SECONDS, |m| m * 60))),
        Some("hygiene") => hygiene::check(),
        Some("peers") => peers::ensure(),
        Some("soak") => count_flag(&args, "--cycles", "cargo xtask soak [--cycles N]")
            .and_then(|n| flows::soak(n.unwrap_or(flows::CI_SOAK_CYCLES))),
        _ => {
            eprintln!(
                "usage: cargo xtask <quickstart|ci|build|build-quickstart|deps|darwin|arm64-linux|kernel <uml|x86_64|arm64>|image|fuzz [--minutes N]|hygiene|soak [--cycles N]|peers> [--rebuild]"
            );
            return ExitCode::from(2);
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The value of `flag N` (N > 0), if the flag is given; `usage` otherwise.
fn count_flag(args: &[String], flag: &str, usage: &str) -> Result<Option<u32>> {
    match args.iter().position(|a| a == flag) {
        None => Ok(None),
        Some(i) => args
            .get(i + 1)
            .and_then(|v| v.parse().ok())
            .filter(|n| *n > 0)
            .map(Some)
            .ok_or_else(|| format!("usage: {usage} (N > 0)")),
    }
}

/// Errors are reported as text: every step says what failed and what to do.
pub type Result<T> = std::result::Result<T, String>;
