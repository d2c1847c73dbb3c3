//! Guest kernels from Debian's `linux-source-6.12`: the UML flavor
//! (`ARCH=um`, an executable), the x86_64 KVM flavor (uncompressed
//! `vmlinux` with a PVH entry point) and the arm64 flavor (an uncompressed
//! `Image`, cross-compiled, built only when asked for:
//! `cargo xtask kernel arm64`). Configs and patches live in `kernel/`.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::cache::{self, run, run_logged, step, Key};
use crate::Result;

/// Where Debian's package puts the source tarball.
const SOURCE: &str = "/usr/src/linux-source-6.12.tar.xz";
/// Bump when the build steps below change in a way that changes the output.
const RECIPE: &str = "kernel-recipe-1";

#[derive(Clone, Copy, Debug)]
pub enum Flavor {
    Uml,
    X86_64,
    Arm64,
}

impl Flavor {
    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "uml" => Ok(Self::Uml),
            "x86_64" => Ok(Self::X86_64),
            "arm64" => Ok(Self::Arm64),
            _ => Err(format!(
                "unknown kernel flavor {s:?}: use uml, x86_64 or arm64"
            )),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Uml => "uml",
            Self::X86_64 => "x86_64",
            Self::Arm64 => "arm64",
        }
    }

    fn arch(self) -> &'static str {
        match self {
            Self::Uml => "um",
            Self::X86_64 => "x86_64",
            Self::Arm64 => "arm64",
        }
    }

    fn base_config(self) -> &'static str {
        match self {
            Self::Uml => "defconfig",
            Self::X86_64 | Self::Arm64 => "tinyconfig",
        }
    }

    /// The make target.
    fn target(self) -> &'static str {
        match self {
            Self::Uml => "linux",
            Self::X86_64 => "vmlinux",
            Self::Arm64 => "Image",
        }
    }

    /// The file the make target produces, in the build tree.
    fn output(self) -> &'static str {
        match self {
            Self::Arm64 => "arch/arm64/boot/Image",
            other => other.target(),
        }
    }

    /// `CROSS_COMPILE` for a kernel of another architecture than the host's.
    fn cross_compile(self) -> Option<&'static str> {
        match self {
            Self::Arm64 => Some("aarch64-linux-gnu-"),
            _ => None,
        }
    }
}

fn source_version() -> String {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Version}", "linux-source-6.12"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default()
}

fn patches(flavor: Flavor) -> Result<Vec<PathBuf>> {
    let dir = cache::repo().join("kernel/patches").join(flavor.name());
    let mut list: Vec<PathBuf> = match std::fs::read_dir(&dir) {
        Ok(rd) => rd
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "patch"))
            .collect(),
        Err(_) => Vec::new(),
    };
    list.sort();
    Ok(list)
}

fn fragments(flavor: Flavor) -> Vec<PathBuf> {
    let k = cache::repo().join("kernel");
    vec![
        k.join("common.config"),
        k.join(format!("{}.config", flavor.name())),
    ]
}

/// Builds (or finds in the cache) the kernel and returns its path.
pub fn build(flavor: Flavor, rebuild: bool) -> Result<PathBuf> {
    if matches!(flavor, Flavor::Arm64) {
        crate::deps::ensure_packages(crate::deps::ARM64_PACKAGES)?;
    }
    if !Path::new(SOURCE).is_file() {
        return Err(format!("{SOURCE} is missing: run `cargo xtask deps`"));
    }
    let mut key = Key::default()
        .text("recipe", RECIPE)
        .text("flavor", flavor.name())
        .text("source", &source_version());
    for f in fragments(flavor).iter().chain(patches(flavor)?.iter()) {
        key = key.file(f)?;
    }
    let key = key.finish();
    let out_dir = cache::root()
        .join("kernel")
        .join(format!("{}-{key}", flavor.name()));
    let artifact = out_dir.join(flavor.target());
    if artifact.is_file() && !rebuild {
        step(&format!(
            "kernel {}: cached at {}",
            flavor.name(),
            artifact.display()
        ));
    } else {
        compile(flavor, &key, &out_dir)?;
    }
    cache::write_manifest(
        &format!("kernel-{}", flavor.name()),
        &serde_json::json!({
            "flavor": flavor.name(),
            "path": artifact,
            "config": out_dir.join("config"),
            "key": key,
        }),
    )?;
    Ok(artifact)
}

fn compile(flavor: Flavor, key: &str, out_dir: &Path) -> Result<()> {
    let build = cache::root()
        .join("build")
        .join(format!("{}-{key}", flavor.name()));
    let _ = std::fs::remove_dir_all(&build);
    std::fs::create_dir_all(&build).map_err(|e| format!("creating {}: {e}", build.display()))?;
    step(&format!("kernel {}: extracting {SOURCE}", flavor.name()));
    run(Command::new("tar")
        .args(["xf", SOURCE, "--strip-components=1", "-C"])
        .arg(&build))?;
    for p in patches(flavor)? {
        step(&format!(
            "kernel {}: applying {}",
            flavor.name(),
            p.display()
        ));
        run(Command::new("patch")
            .args(["-p1", "--forward", "-i"])
            .arg(&p)
            .current_dir(&build))?;
    }
    let arch = format!("ARCH={}", flavor.arch());
    let cross = format!("CROSS_COMPILE={}", flavor.cross_compile().unwrap_or(""));
    step(&format!(
        "kernel {}: configuring ({} + kernel/common.config + kernel/{}.config)",
        flavor.name(),
        flavor.base_config(),
        flavor.name()
    ));
    run(Command::new("make")
        .args([&arch, &cross, flavor.base_config()])
        .current_dir(&build))?;
    run(Command::new("scripts/kconfig/merge_config.sh")
        .args(["-m", "-O", ".", ".config"])
        .args(fragments(flavor))
        .env("ARCH", flavor.arch())
        .env("CROSS_COMPILE", flavor.cross_compile().unwrap_or(""))
        .current_dir(&build))?;
    run(Command::new("make")
        .args([&arch, &cross, "olddefconfig"])
        .current_dir(&build))?;
    report_dropped(flavor, &build)?;
    let jobs = std::thread::available_parallelism().map_or(2, |n| n.get());
    step(&format!(
        "kernel {}: compiling with {jobs} jobs (a few minutes; full log in {}/build.log)",
        flavor.name(),
        build.display()
    ));
    run_logged(
        Command::new("make")
            .args([&arch, &cross, &format!("-j{jobs}"), flavor.target()])
            .current_dir(&build),
        &build.join("build.log"),
        &format!("kernel {}", flavor.name()),
        300,
    )?;
    std::fs::create_dir_all(out_dir).map_err(|e| format!("creating {}: {e}", out_dir.display()))?;
    for (from, to) in [(flavor.output(), flavor.target()), (".config", "config")] {
        std::fs::copy(build.join(from), out_dir.join(to))
            .map_err(|e| format!("copying {from}: {e}"))?;
    }
    let _ = std::fs::remove_dir_all(&build);
    Ok(())
}

/// Says which `=y` options of the fragments the final `.config` lacks
/// (Kconfig drops an option whose dependencies are unmet, and
/// merge_config.sh does not fail on it).
fn report_dropped(flavor: Flavor, build: &Path) -> Result<()> {
    let config = std::fs::read_to_string(build.join(".config"))
        .map_err(|e| format!("reading .config: {e}"))?;
    let mut dropped = Vec::new();
    for fragment in fragments(flavor) {
        let text = std::fs::read_to_string(&fragment)
            .map_err(|e| format!("{}: {e}", fragment.display()))?;
        for line in text.lines().map(str::trim) {
            if line.starts_with("CONFIG_")
                && line.ends_with("=y")
                && !config.lines().any(|l| l == line)
            {
                dropped.push(line.trim_end_matches("=y").to_string());
            }
        }
    }
    if !dropped.is_empty() {
        step(&format!(
            "kernel {}: not in the final config (dependencies unmet): {}",
            flavor.name(),
            dropped.join(" ")
        ));
    }
    Ok(())
}
