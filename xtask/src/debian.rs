//! The built-in Debian images: debootstrap (minbase) of bookworm with the
//! packages listed under `images/`, plus the agent, as ext4. `debian:12`
//! takes `images/debian-12/packages.txt`; `debian:12-docker` adds
//! `images/debian-12-docker/packages.txt` (Docker, containerd, runc).

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::cache::{self, run_logged, step, Key};
use crate::image;
use crate::Result;

/// Bump when the steps below change the output.
const RECIPE: &str = "debian-12-recipe-1";
const SUITE: &str = "bookworm";

/// One built-in Debian image.
pub struct Variant {
    /// The name `images::builtin` takes.
    pub name: &'static str,
    /// Directories under `images/` whose `packages.txt` lists are installed.
    lists: &'static [&'static str],
    /// Free space left in the file system for guest writes (they land in
    /// an overlay, but need free blocks in the guest's view of the disk).
    free_mib: u64,
    /// Files written into the tree after debootstrap.
    files: &'static [(&'static str, &'static str)],
}

/// `debian:12`: the general-purpose image.
pub const DEBIAN_12: Variant = Variant {
    name: "debian:12",
    lists: &["debian-12"],
    free_mib: 1024,
    files: &[],
};

/// `debian:12-docker`: `debian:12` plus Docker, with room for
/// `/var/lib/docker` (overlay2 on the ext4 root).
pub const DEBIAN_12_DOCKER: Variant = Variant {
    name: "debian:12-docker",
    lists: &["debian-12", "debian-12-docker"],
    free_mib: 3072,
    files: &[(
        "etc/docker/daemon.json",
        "{\n  \"storage-driver\": \"overlay2\",\n  \"log-driver\": \"json-file\"\n}\n",
    )],
};

impl Variant {
    /// File-name form of the name: `debian-12-docker`.
    fn slug(&self) -> String {
        self.name.replace(':', "-")
    }
}

/// The Debian archive the build machine's apt uses (from its sources).
fn mirror() -> Result<String> {
    let mut texts = Vec::new();
    for dir in ["/etc/apt/sources.list.d"] {
        if let Ok(rd) = std::fs::read_dir(dir) {
            for e in rd.flatten() {
                texts.push(std::fs::read_to_string(e.path()).unwrap_or_default());
            }
        }
    }
    texts.push(std::fs::read_to_string("/etc/apt/sources.list").unwrap_or_default());
    for text in &texts {
        for line in text.lines() {
            let words: Vec<&str> = line.split_whitespace().collect();
            let uri = match words.as_slice() {
                ["URIs:", uri, ..] => *uri,
                ["deb", uri, ..] if !uri.starts_with('[') => *uri,
                _ => continue,
            };
            if uri.trim_end_matches('/').ends_with("/debian") {
                return Ok(uri.to_string());
            }
        }
    }
    Err("no Debian archive found in the apt sources (/etc/apt/sources.list*)".into())
}

/// The package lists of `variant`: their paths and the packages named.
fn packages(variant: &Variant) -> Result<(Vec<PathBuf>, Vec<String>)> {
    let mut paths = Vec::new();
    let mut list = Vec::new();
    for dir in variant.lists {
        let path = cache::repo().join("images").join(dir).join("packages.txt");
        let text = std::fs::read_to_string(&path)
            .map_err(|e| format!("reading {}: {e}", path.display()))?;
        list.extend(
            text.lines()
                .map(str::trim)
                .filter(|l| !l.is_empty() && !l.starts_with('#'))
                .map(str::to_string),
        );
        paths.push(path);
    }
    Ok((paths, list))
}

fn tree_bytes(dir: &Path) -> u64 {
    let mut total = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            match e.metadata() {
                Ok(m) if m.is_dir() => stack.push(e.path()),
                Ok(m) => total += m.len(),
                Err(_) => {}
            }
        }
    }
    total
}

/// The debootstrapped tree, cached by recipe (without the agent, so agent
/// changes only redo the quick `mkfs` step).
fn base_tree(variant: &Variant, rebuild: bool) -> Result<PathBuf> {
    let (list_paths, list) = packages(variant)?;
    let mut key = Key::default().text("recipe", RECIPE);
    for p in &list_paths {
        key = key.file(p)?;
    }
    for (path, text) in variant.files {
        key = key.text(path, text);
    }
    let key = key.finish();
    let name = variant.name;
    let tree = cache::root()
        .join("rootfs")
        .join(format!("{}-{key}", variant.slug()));
    let complete = tree.with_extension("complete");
    if complete.is_file() && !rebuild {
        step(&format!(
            "image {name}: base tree cached at {}",
            tree.display()
        ));
        return Ok(tree);
    }
    let _ = std::fs::remove_file(&complete);
    let _ = std::fs::remove_dir_all(&tree);
    std::fs::create_dir_all(&tree).map_err(|e| e.to_string())?;
    let log = tree.with_extension("log");
    step(&format!(
        "image {name}: debootstrap {SUITE} with {} packages (a minute or two; log in {})",
        list.len(),
        log.display()
    ));
    run_logged(
        Command::new("debootstrap")
            .arg("--variant=minbase")
            .arg(format!("--include={}", list.join(",")))
            .arg(SUITE)
            .arg(&tree)
            .arg(mirror()?),
        &log,
        "debootstrap",
        40,
    )?;
    let _ = std::fs::remove_dir_all(tree.join("var/cache/apt/archives"));
    let _ = std::fs::create_dir_all(tree.join("var/cache/apt/archives/partial"));
    for (path, text) in variant.files {
        let file = tree.join(path);
        if let Some(dir) = file.parent() {
            std::fs::create_dir_all(dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
        }
        std::fs::write(&file, text).map_err(|e| format!("writing {}: {e}", file.display()))?;
    }
    std::fs::write(&complete, b"").map_err(|e| e.to_string())?;
    Ok(tree)
}

/// The version of package `pkg` installed in `tree`, from its dpkg status.
fn installed_version(tree: &Path, pkg: &str) -> Option<String> {
    let status = std::fs::read_to_string(tree.join("var/lib/dpkg/status")).ok()?;
    status.split("\n\n").find_map(|stanza| {
        let mut lines = stanza.lines();
        if lines.next()? != format!("Package: {pkg}") {
            return None;
        }
        lines.find_map(|l| l.strip_prefix("Version: ").map(str::to_string))
    })
}

/// Builds (or finds) the image and writes its manifest.
pub fn build(variant: &Variant, agent: &Path, rebuild: bool) -> Result<PathBuf> {
    let tree = base_tree(variant, rebuild)?;
    let name = variant.name;
    let slug = variant.slug();
    let key = Key::default()
        .text("recipe", RECIPE)
        .text("tree", &tree.display().to_string())
        .file(agent)?
        .finish();
    let image = cache::root()
        .join("images")
        .join(format!("{slug}-{key}.ext4"));
    if image.is_file() && !rebuild {
        step(&format!("image {name}: cached at {}", image.display()));
    } else {
        let staging = &tree;
        std::fs::copy(agent, staging.join("sbin/sandbox-guest"))
            .map_err(|e| format!("installing the agent: {e}"))?;
        let mib = tree_bytes(staging) / (1 << 20) * 5 / 4 + variant.free_mib;
        image::mkfs(staging, &image, mib, &format!("{slug}-"))?;
    }
    let mut facts = serde_json::json!({
        "distro": "Debian GNU/Linux 12 (bookworm)",
        "shell": "/bin/bash",
        "package_manager": "apt",
    });
    if let Some(version) = installed_version(&tree, "docker.io") {
        facts["docker"] = version.into();
        check_config(&tree)?;
    }
    image::record(&format!("image-{slug}"), name, &image, "x86_64", facts)?;
    Ok(image)
}

/// Keeps Docker's own kernel config checker (from the image's `docker.io`
/// package) where `tests/artifacts.rs` finds it.
fn check_config(tree: &Path) -> Result<()> {
    let from = tree.join("usr/share/docker.io/contrib/check-config.sh");
    let to = cache::root().join("tools/docker-check-config.sh");
    if let Some(dir) = to.parent() {
        std::fs::create_dir_all(dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    }
    std::fs::copy(&from, &to).map_err(|e| format!("copying {}: {e}", from.display()))?;
    cache::write_manifest("docker-check-config", &serde_json::json!({ "path": to }))?;
    Ok(())
}
