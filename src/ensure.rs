//! Building on demand what `cargo xtask quickstart` leaves out.
//!
//! The quickstart builds only the UML kernel, the agent and `minimal`. An
//! example, bench or test that needs the x86_64 kernel or a Debian image
//! calls [`ensure_artifacts`] first: when one of them is missing it runs
//! `cargo xtask build` (cached, with its usual progress output) and goes on.
//! `cargo xtask ci` builds everything before the tests, so there this is a
//! look at a few manifest files.

use std::path::PathBuf;
use std::process::Command;
use std::sync::Mutex;

/// The manifests `cargo xtask build` writes beyond the quickstart's.
pub const FULL_BUILD: &[&str] = &[
    "kernel-uml",
    "kernel-x86_64",
    "agent",
    "image-minimal",
    "image-debian-12",
    "image-debian-12-docker",
];

/// The manifests in `names` that the cache does not hold.
pub fn missing(names: &[&str]) -> Vec<String> {
    let dir = sandbox_core::artifacts::cache_dir().join("manifest");
    names
        .iter()
        .filter(|n| !dir.join(format!("{n}.json")).is_file())
        .map(|n| (*n).to_string())
        .collect()
}

/// Runs `cargo xtask build` if any artifact of the full build is missing.
/// One build at a time per host (a lock file in the cache), and per process.
pub fn ensure_artifacts() -> Result<(), String> {
    static ONE: Mutex<()> = Mutex::new(());
    if missing(FULL_BUILD).is_empty() {
        return Ok(());
    }
    let _one = ONE.lock().unwrap_or_else(|e| e.into_inner());
    let cache = sandbox_core::artifacts::cache_dir();
    std::fs::create_dir_all(&cache).map_err(|e| format!("{}: {e}", cache.display()))?;
    let lock = std::fs::File::create(cache.join("on-demand.lock"))
        .and_then(|f| f.lock().map(|()| f))
        .map_err(|e| format!("locking {}: {e}", cache.display()))?;
    let want = missing(FULL_BUILD);
    if want.is_empty() {
        return Ok(());
    }
    eprintln!(
        "sandbox: {} not built yet; running `cargo xtask build` (cached; the x86_64 kernel and \
         the Debian images take several minutes the first time)",
        want.join(", ")
    );
    let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    // Its own target directory: the calling `cargo test`/`cargo bench` may
    // hold the lock of the usual one.
    let status = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
        .args(["run", "--quiet", "--package", "xtask", "--", "build"])
        .env("CARGO_TARGET_DIR", repo.join("target/on-demand"))
        .current_dir(&repo)
        .status()
        .map_err(|e| format!("cannot run cargo: {e}"))?;
    drop(lock);
    if !status.success() {
        return Err(format!(
            "`cargo xtask build` failed ({status}); see its output above"
        ));
    }
    match missing(FULL_BUILD) {
        left if left.is_empty() => Ok(()),
        left => Err(format!(
            "`cargo xtask build` did not produce {}",
            left.join(", ")
        )),
    }
}

/// A built-in image for a test or bench, built on demand first; panics
/// with the reason when it cannot be had.
pub fn builtin(name: &str) -> sandbox_core::Image {
    if name != "minimal" {
        if let Err(e) = ensure_artifacts() {
            panic!("building {name:?} on demand: {e}");
        }
    }
    sandbox_core::images::builtin(name).unwrap_or_else(|e| panic!("{name:?}: {e}"))
}
