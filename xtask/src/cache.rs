//! The artifact cache (`$SANDBOX_CACHE`, default `~/.cache/sandbox`), input
//! hashing, manifests, and running commands with progress output.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use sha2::{Digest, Sha256};

use crate::Result;

/// Root of the cache; the library reads the same location.
pub fn root() -> PathBuf {
    if let Some(dir) = std::env::var_os("SANDBOX_CACHE") {
        return PathBuf::from(dir);
    }
    let home = std::env::var_os("HOME").unwrap_or_else(|| "/root".into());
    PathBuf::from(home).join(".cache/sandbox")
}

/// Creates the cache root if needed and makes it private (0700): images,
/// kernels and manifests are the owner's alone whatever the umask.
pub fn make_private() -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let dir = root();
    std::fs::create_dir_all(&dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))
        .map_err(|e| format!("making {} private: {e}", dir.display()))
}

/// The repository root (the workspace this xtask belongs to).
pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default()
}

/// Accumulates the inputs of an artifact into a short hex key.
#[derive(Default)]
pub struct Key(Sha256);

impl Key {
    pub fn text(mut self, label: &str, value: &str) -> Self {
        self.0.update(label.as_bytes());
        self.0.update((value.len() as u64).to_le_bytes());
        self.0.update(value.as_bytes());
        self
    }

    /// Adds a file's name and content. Only the name, not the full path,
    /// goes into the key: clones at different paths share cache entries.
    pub fn file(self, path: &Path) -> Result<Self> {
        let bytes = std::fs::read(path).map_err(|e| format!("reading {}: {e}", path.display()))?;
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned());
        Ok(self.text(
            &name.unwrap_or_default(),
            &hex::encode(Sha256::digest(bytes)),
        ))
    }

    pub fn finish(self) -> String {
        hex::encode(self.0.finalize())[..16].to_string()
    }
}

/// sha256 of a file, streaming.
pub fn sha256_file(path: &Path) -> Result<String> {
    let mut f =
        std::fs::File::open(path).map_err(|e| format!("opening {}: {e}", path.display()))?;
    let mut h = Sha256::new();
    std::io::copy(&mut f, &mut h).map_err(|e| format!("reading {}: {e}", path.display()))?;
    Ok(hex::encode(h.finalize()))
}

/// Writes `manifest/<name>.json` atomically.
pub fn write_manifest(name: &str, value: &serde_json::Value) -> Result<PathBuf> {
    let dir = root().join("manifest");
    std::fs::create_dir_all(&dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    let path = dir.join(format!("{name}.json"));
    let tmp = dir.join(format!(".{name}.json.tmp"));
    let text = serde_json::to_string_pretty(value).map_err(|e| e.to_string())?;
    std::fs::write(&tmp, text).map_err(|e| format!("writing {}: {e}", tmp.display()))?;
    std::fs::rename(&tmp, &path).map_err(|e| format!("writing {}: {e}", path.display()))?;
    Ok(path)
}

/// Prints a step heading.
pub fn step(what: &str) {
    println!("==> {what}");
    let _ = std::io::stdout().flush();
}

/// Runs a command, failing with its output if it fails.
pub fn run(cmd: &mut Command) -> Result<()> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run {cmd:?}: {e}"))?;
    if out.status.success() {
        return Ok(());
    }
    Err(format!(
        "{cmd:?} failed ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    ))
}

/// Runs a long command, logging all output to `log` and printing a progress
/// line every `every` output lines; on failure prints the log's tail.
pub fn run_logged(cmd: &mut Command, log: &Path, label: &str, every: usize) -> Result<()> {
    let start = Instant::now();
    let mut file =
        std::fs::File::create(log).map_err(|e| format!("creating {}: {e}", log.display()))?;
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::from(
            file.try_clone().map_err(|e| format!("log file: {e}"))?,
        ))
        .spawn()
        .map_err(|e| format!("cannot run {cmd:?}: {e}"))?;
    let mut lines = 0usize;
    if let Some(out) = child.stdout.take() {
        for line in BufReader::new(out)
            .lines()
            .map_while(std::result::Result::ok)
        {
            let _ = writeln!(file, "{line}");
            lines += 1;
            if lines.is_multiple_of(every) {
                println!(
                    "    {label}: {lines} steps, {}s, last: {}",
                    start.elapsed().as_secs(),
                    line.trim()
                );
            }
        }
    }
    let status = child.wait().map_err(|e| e.to_string())?;
    if status.success() {
        println!("    {label}: done in {}s", start.elapsed().as_secs());
        return Ok(());
    }
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let tail: Vec<&str> = text.lines().rev().take(40).collect();
    let tail: Vec<&str> = tail.into_iter().rev().collect();
    Err(format!(
        "{label} failed ({status}); last lines of {}:\n{}",
        log.display(),
        tail.join("\n")
    ))
}

/// Older builds of an artifact kept besides the current one, so another
/// checkout using the same cache at the same time keeps its files.
const KEEP_OLDER: usize = 2;

/// Whether `name` is `<prefix><hex key>[.ext]`: `debian-12-` must not
/// claim `debian-12-docker-<key>.ext4`.
fn is_build_of(name: &str, prefix: &str) -> bool {
    name.strip_prefix(prefix)
        .and_then(|rest| rest.split('.').next())
        .is_some_and(|key| !key.is_empty() && key.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// Prunes older builds of an artifact: files in `dir` named `<prefix><key>`
/// other than `keep`, beyond the [`KEEP_OLDER`] most recent.
pub fn remove_others(dir: &Path, prefix: &str, keep: &Path) {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    let mut older: Vec<(std::time::SystemTime, PathBuf)> = rd
        .flatten()
        .filter(|e| is_build_of(&e.file_name().to_string_lossy(), prefix) && e.path() != keep)
        .filter_map(|e| Some((e.metadata().ok()?.modified().ok()?, e.path())))
        .collect();
    older.sort_by_key(|(modified, _)| std::cmp::Reverse(*modified));
    for (_, path) in older.into_iter().skip(KEEP_OLDER) {
        let _ = std::fs::remove_file(path);
    }
}

/// Installs `cargo-<subcommand>` from crates.io unless `cargo <subcommand>`
/// already runs. (`CARGO_PKG_NAME`, which `cargo run` sets for xtask, is
/// removed: cargo-machete takes it as a sign it was not run as a cargo
/// subcommand.)
pub fn ensure_cargo_tool(subcommand: &str) -> Result<()> {
    let present = Command::new(env!("CARGO"))
        .args([subcommand, "--version"])
        .env_remove("CARGO_PKG_NAME")
        .output()
        .is_ok_and(|o| o.status.success());
    if present {
        return Ok(());
    }
    let krate = format!("cargo-{subcommand}");
    step(&format!("installing {krate} from crates.io"));
    let ok = Command::new(env!("CARGO"))
        .args(["install", "--locked", &krate])
        .status()
        .is_ok_and(|s| s.success());
    if ok {
        Ok(())
    } else {
        Err(format!("`cargo install {krate}` failed"))
    }
}

/// Adds the Rust `target` with rustup when it is not installed.
pub fn ensure_rust_target(target: &str) -> Result<()> {
    let installed = Command::new("rustup")
        .args(["target", "list", "--installed"])
        .output()
        .map_err(|e| format!("rustup is needed to add the {target} target: {e}"))?;
    if String::from_utf8_lossy(&installed.stdout)
        .lines()
        .any(|l| l.trim() == target)
    {
        return Ok(());
    }
    step(&format!("rustup target add {target}"));
    run(Command::new("rustup").args(["target", "add", target])).map_err(|e| {
        format!("cannot add the {target} target ({e}); run `rustup target add {target}`")
    })
}
