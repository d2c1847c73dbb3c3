//! The `minimal` image for arm64 guests: Debian's arm64 `busybox-static`
//! and `bash-static` (fetched with `apt-get download` through dpkg's
//! multiarch support, unpacked with `dpkg-deb -x`, never installed) and
//! the arm64 agent, in the same tree as the x86_64 `minimal`.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::cache::{self, run, step, Key};
use crate::image::{self, Tools};
use crate::Result;

/// Bump when the recipe below changes.
const RECIPE: &str = "minimal-arm64-recipe-1";
/// The Debian packages the image takes its tools from.
const PACKAGES: [&str; 2] = ["busybox-static", "bash-static"];
/// Size of the ext4 image (as the x86_64 `minimal`).
const IMAGE_MIB: u64 = 64;

/// Builds (or finds) `minimal` for arm64 and writes the
/// `image-minimal-aarch64` manifest.
pub fn build(agent: &Path, rebuild: bool) -> Result<PathBuf> {
    ensure_arm64_lists()?;
    let mut key = Key::default().text("recipe", RECIPE).file(agent)?;
    for pkg in PACKAGES {
        key = key.text(pkg, &candidate(pkg)?);
    }
    let key = key.finish();
    let image = cache::root()
        .join("images")
        .join(format!("minimal-arm64-{key}.ext4"));
    if image.is_file() && !rebuild {
        step(&format!(
            "image minimal (arm64): cached at {}",
            image.display()
        ));
    } else {
        let staging = cache::root()
            .join("build")
            .join(format!("minimal-arm64-{key}"));
        let _ = std::fs::remove_dir_all(&staging);
        let debs = staging.join("debs");
        let unpacked = staging.join("unpacked");
        let tree = staging.join("tree");
        for dir in [&debs, &unpacked, &tree] {
            std::fs::create_dir_all(dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
        }
        step("image minimal (arm64): apt-get download busybox-static:arm64 bash-static:arm64");
        run(Command::new("apt-get")
            .arg("download")
            .args(PACKAGES.map(|p| format!("{p}:arm64")))
            .current_dir(&debs))?;
        for deb in
            std::fs::read_dir(&debs).map_err(|e| format!("reading {}: {e}", debs.display()))?
        {
            let deb = deb.map_err(|e| e.to_string())?.path();
            run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&unpacked))?;
        }
        let applets = image::busybox_applets()?;
        step("image minimal (arm64): assembling the root tree");
        image::populate(
            &tree,
            Tools {
                busybox: &unpacked.join("bin/busybox"),
                bash: &unpacked.join("bin/bash-static"),
                agent,
                applets: &applets,
            },
        )?;
        image::mkfs(&tree, &image, IMAGE_MIB, "minimal-arm64-")?;
        let _ = std::fs::remove_dir_all(&staging);
    }
    image::record(
        "image-minimal-aarch64",
        "minimal",
        &image,
        "aarch64",
        serde_json::json!({
            "distro": "busybox",
            "shell": "/bin/bash",
            "package_manager": "none",
        }),
    )?;
    Ok(image)
}

/// The version `apt-get download` would fetch for `pkg:arm64`.
fn candidate(pkg: &str) -> Result<String> {
    let out = Command::new("apt-cache")
        .args(["policy", &format!("{pkg}:arm64")])
        .output()
        .map_err(|e| format!("running apt-cache: {e}"))?;
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| l.trim().strip_prefix("Candidate: "))
        .filter(|v| *v != "(none)")
        .map(str::to_string)
        .ok_or_else(|| {
            format!(
                "apt has no {pkg}:arm64 candidate; run `dpkg --add-architecture arm64 && apt-get update`"
            )
        })
}

/// Makes dpkg accept arm64 packages and apt know their lists (root only;
/// otherwise says what to run).
fn ensure_arm64_lists() -> Result<()> {
    let foreign = Command::new("dpkg")
        .arg("--print-foreign-architectures")
        .output()
        .map_err(|e| format!("running dpkg: {e}"))?;
    let has_arch = String::from_utf8_lossy(&foreign.stdout)
        .lines()
        .any(|l| l.trim() == "arm64");
    if has_arch && candidate(PACKAGES[0]).is_ok() {
        return Ok(());
    }
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Err("the arm64 image needs Debian's arm64 package lists: run \
             `sudo dpkg --add-architecture arm64 && sudo apt-get update`"
            .into());
    }
    if !has_arch {
        step("dpkg --add-architecture arm64");
        run(Command::new("dpkg").args(["--add-architecture", "arm64"]))?;
    }
    step("apt-get update (arm64 package lists)");
    run(Command::new("apt-get").args(["update", "-qq"]))
}
