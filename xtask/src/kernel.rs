//! Guest kernels from Debian's `linux-source-6.12`: the UML flavor
//! (`ARCH=um`, an executable) and the x86_64 KVM flavor (uncompressed
//! `vmlinux` with a PVH entry point). Configs and patches live in `kernel/`.

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
}

impl Flavor {
    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "uml" => Ok(Self::Uml),
            "x86_64" => Ok(Self::X86_64),
            _ => Err(format!("unknown kernel flavor {s:?}: use uml or x86_64")),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Uml => "uml",
            Self::X86_64 => "x86_64",
        }
    }

    fn arch(self) -> &'static str {
        match self {
            Self::Uml => "um",
            Self::X86_64 => "x86_64",
        }
    }

    fn base_config(self) -> &'static str {
        match self {
            Self::Uml => "defconfig",
            Self::X86_64 => "tinyconfig",
        }
    }

    /// The make target and the file it produces.
    fn target(self) -> &'static str {
        match self {
            Self::Uml => "linux",
            Self::X86_64 => "vmlinux",
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
    step(&format!(
        "kernel {}: configuring ({} + kernel/common.config + kernel/{}.config)",
        flavor.name(),
        flavor.base_config(),
        flavor.name()
    ));
    run(Command::new("make")
        .args([&arch, flavor.base_config()])
        .current_dir(&build))?;
    run(Command::new("scripts/kconfig/merge_config.sh")
        .args(["-m", "-O", ".", ".config"])
        .args(fragments(flavor))
        .env("ARCH", flavor.arch())
        .current_dir(&build))?;
    run(Command::new("make")
        .args([&arch, "olddefconfig"])
        .current_dir(&build))?;
    let jobs = std::thread::available_parallelism().map_or(2, |n| n.get());
    step(&format!(
        "kernel {}: compiling with {jobs} jobs (a few minutes; full log in {}/build.log)",
        flavor.name(),
        build.display()
    ));
    run_logged(
        Command::new("make")
            .args([&arch, &format!("-j{jobs}"), flavor.target()])
            .current_dir(&build),
        &build.join("build.log"),
        &format!("kernel {}", flavor.name()),
        300,
    )?;
    std::fs::create_dir_all(out_dir).map_err(|e| format!("creating {}: {e}", out_dir.display()))?;
    for (from, to) in [(flavor.target(), flavor.target()), (".config", "config")] {
        std::fs::copy(build.join(from), out_dir.join(to))
            .map_err(|e| format!("copying {from}: {e}"))?;
    }
    let _ = std::fs::remove_dir_all(&build);
    Ok(())
}
