//! The static guest agent and the built-in `minimal` image: busybox-static
//! and bash-static from Debian plus the agent as `/sbin/sandbox-guest`, as an
//! ext4 image made by `mkfs.ext4 -d` (no root, no loop mounts).

use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::cache::{self, run, run_logged, sha256_file, step, Key};
use crate::Result;

/// Bump when the image layout below changes.
const RECIPE: &str = "minimal-recipe-1";
/// Rust target of the agent: the only one installed here, linked statically.
pub const GUEST_TARGET: &str = "x86_64-unknown-linux-gnu";
const BUSYBOX: &str = "/bin/busybox";
const BASH_STATIC: &str = "/bin/bash-static";
/// Size of the ext4 image; guest writes go to an overlay, not the image.
const IMAGE_MIB: u32 = 64;

/// Rust target of the arm64 agent (glibc, linked statically with Debian's
/// cross toolchain).
pub const GUEST_TARGET_ARM64: &str = "aarch64-unknown-linux-gnu";

/// Builds the agent as a fully static, non-PIE executable.
pub fn build_agent() -> Result<PathBuf> {
    step("guest agent: cargo build --release (static)");
    let bin = cargo_agent(GUEST_TARGET, &[])?;
    cache::write_manifest("agent", &serde_json::json!({ "path": bin }))?;
    let unpack = bin.with_file_name("sandbox-unpack");
    cache::write_manifest("unpack", &serde_json::json!({ "path": unpack }))?;
    Ok(bin)
}

/// Builds the agent for arm64 guests with Debian's `aarch64-linux-gnu-gcc`
/// as linker (the Rust target is added with rustup when missing).
pub fn build_agent_arm64() -> Result<PathBuf> {
    crate::deps::ensure_packages(crate::deps::ARM64_PACKAGES)?;
    crate::cache::ensure_rust_target(GUEST_TARGET_ARM64)?;
    step("guest agent (arm64): cargo build --release (static)");
    let bin = cargo_agent(
        GUEST_TARGET_ARM64,
        &[(
            "CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER",
            "aarch64-linux-gnu-gcc",
        )],
    )?;
    cache::write_manifest("agent-arm64", &serde_json::json!({ "path": bin }))?;
    Ok(bin)
}

/// `cargo build` of the agent for `target`, static and non-PIE; returns
/// the agent's path.
fn cargo_agent(target: &str, env: &[(&str, &str)]) -> Result<PathBuf> {
    let repo = cache::repo();
    let target_dir = repo.join("target/guest");
    let mut cmd = Command::new(env!("CARGO"));
    cmd.args([
        "build",
        "--release",
        "-p",
        "sandbox-guest",
        "--target",
        target,
    ])
    .arg("--target-dir")
    .arg(&target_dir)
    .env(
        "RUSTFLAGS",
        "-C target-feature=+crt-static -C relocation-model=static -C strip=debuginfo",
    )
    .envs(env.iter().copied())
    .current_dir(&repo);
    run_logged(
        &mut cmd,
        &repo.join(format!("target/guest-build-{target}.log")),
        "guest agent",
        50,
    )?;
    Ok(target_dir.join(target).join("release/sandbox-guest"))
}

fn tool_version(pkg: &str) -> String {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Version}", pkg])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default()
}

/// Builds (or finds) the `minimal` image and writes its `Image` manifest.
pub fn build_minimal(agent: &Path, rebuild: bool) -> Result<PathBuf> {
    for tool in [BUSYBOX, BASH_STATIC] {
        if !Path::new(tool).is_file() {
            return Err(format!("{tool} is missing: run `cargo xtask deps`"));
        }
    }
    let key = Key::default()
        .text("recipe", RECIPE)
        .text("busybox", &tool_version("busybox-static"))
        .text("bash", &tool_version("bash-static"))
        .file(agent)?
        .finish();
    let image = cache::root()
        .join("images")
        .join(format!("minimal-{key}.ext4"));
    if image.is_file() && !rebuild {
        step(&format!("image minimal: cached at {}", image.display()));
    } else {
        step("image minimal: assembling the root tree");
        let staging = cache::root().join("build").join(format!("minimal-{key}"));
        let _ = std::fs::remove_dir_all(&staging);
        let applets = busybox_applets()?;
        populate(
            &staging,
            Tools {
                busybox: Path::new(BUSYBOX),
                bash: Path::new(BASH_STATIC),
                agent,
                applets: &applets,
            },
        )?;
        mkfs(&staging, &image, u64::from(IMAGE_MIB), "minimal-")?;
        let _ = std::fs::remove_dir_all(&staging);
    }
    record(
        "image-minimal",
        "minimal",
        &image,
        "x86_64",
        serde_json::json!({
            "distro": "busybox",
            "shell": "/bin/bash",
            "package_manager": "none",
        }),
    )?;
    Ok(image)
}

/// Writes `tree` into a new ext4 image at `image` with `mkfs.ext4 -d` (no
/// root, no loop device), atomically, and prunes older `prefix*` builds. A
/// fixed hash seed and time keep rebuilds reproducible.
pub fn mkfs(tree: &Path, image: &Path, mib: u64, prefix: &str) -> Result<()> {
    let dir = image.parent().ok_or("image path has no directory")?;
    std::fs::create_dir_all(dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    let tmp = image.with_extension("ext4.tmp");
    let _ = std::fs::remove_file(&tmp);
    let label = prefix.trim_end_matches('-');
    step(&format!("image {label}: mkfs.ext4 -d ({mib} MiB)"));
    run(Command::new("mkfs.ext4")
        .args(["-q", "-F", "-L", "sandbox-root", "-U", "clear"])
        .args([
            "-E",
            "root_owner=0:0,hash_seed=5b9a6a8e-25e5-4b0f-8cfb-2f0a3f0a9d5e",
        ])
        .arg("-d")
        .arg(tree)
        .arg(&tmp)
        .arg(format!("{mib}M"))
        .env("E2FSPROGS_FAKE_TIME", "1700000000"))?;
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600))
            .map_err(|e| format!("making {} private: {e}", tmp.display()))?;
    }
    std::fs::rename(&tmp, image).map_err(|e| format!("renaming image: {e}"))?;
    cache::remove_others(dir, prefix, image);
    Ok(())
}

/// Writes the `Image` manifest the library reads: path, format, digest,
/// size and facts.
pub fn record(
    manifest: &str,
    name: &str,
    image: &Path,
    arch: &str,
    facts: serde_json::Value,
) -> Result<()> {
    let size = std::fs::metadata(image).map_err(|e| e.to_string())?.len();
    cache::write_manifest(
        manifest,
        &serde_json::json!({
            "name": name,
            "path": image,
            "format": "raw",
            "arch": arch,
            "sha256": sha256_file(image)?,
            "size": size,
            "facts": facts,
        }),
    )?;
    Ok(())
}

/// The host's busybox applets with their install paths (`--list-full`).
/// The arm64 image uses the same list: both come from the same Debian
/// source package and configuration.
pub fn busybox_applets() -> Result<String> {
    let list = Command::new(BUSYBOX)
        .arg("--list-full")
        .output()
        .map_err(|e| format!("running busybox --list-full: {e}"))?;
    if !list.status.success() {
        return Err(format!("busybox --list-full failed ({})", list.status));
    }
    Ok(String::from_utf8_lossy(&list.stdout).into_owned())
}

/// What goes into a `minimal` tree.
pub struct Tools<'a> {
    /// A static busybox for the guest's architecture.
    pub busybox: &'a Path,
    /// A static bash for the guest's architecture.
    pub bash: &'a Path,
    /// The static agent for the guest's architecture.
    pub agent: &'a Path,
    /// `busybox --list-full` output: one applet path a line.
    pub applets: &'a str,
}

/// Writes the `minimal` tree into `root`.
pub fn populate(root: &Path, tools: Tools) -> Result<()> {
    let mk =
        |p: &str| std::fs::create_dir_all(root.join(p)).map_err(|e| format!("creating {p}: {e}"));
    for d in [
        "bin", "sbin", "usr/bin", "usr/sbin", "etc", "proc", "sys", "dev", "tmp", "run", "root",
        "home", "var/tmp", "mnt",
    ] {
        mk(d)?;
    }
    let copy = |from: &Path, to: &str| {
        std::fs::copy(from, root.join(to))
            .map(|_| ())
            .map_err(|e| format!("copying {} to {to}: {e}", from.display()))
    };
    copy(tools.busybox, "bin/busybox")?;
    copy(tools.bash, "bin/bash")?;
    copy(tools.agent, "sbin/sandbox-guest")?;
    for applet in tools.applets.lines() {
        let path = root.join(applet);
        if applet.is_empty() || path.exists() || applet.ends_with("/init") {
            continue;
        }
        let depth = applet.matches('/').count();
        let target = format!("{}bin/busybox", "../".repeat(depth));
        symlink(&target, &path).map_err(|e| format!("linking {applet}: {e}"))?;
    }
    let files = [
        ("etc/passwd", "root:x:0:0:root:/root:/bin/bash\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n"),
        ("etc/group", "root:x:0:\ntty:x:5:\nnogroup:x:65534:\n"),
        ("etc/hostname", "sandbox\n"),
        ("etc/hosts", "127.0.0.1 localhost\n"),
        (
            "etc/os-release",
            "NAME=\"sandbox minimal\"\nID=sandbox-minimal\nPRETTY_NAME=\"sandbox minimal (busybox)\"\n",
        ),
    ];
    for (path, text) in files {
        std::fs::write(root.join(path), text).map_err(|e| format!("writing {path}: {e}"))?;
    }
    // The agent writes the resolver address there (the root is read-only).
    symlink("/run/sandbox/resolv.conf", root.join("etc/resolv.conf"))
        .map_err(|e| format!("linking etc/resolv.conf: {e}"))?;
    Ok(())
}
