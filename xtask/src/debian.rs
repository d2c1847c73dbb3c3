//! The built-in `debian:12` image: debootstrap (minbase) of bookworm with
//! the packages in `images/debian-12/packages.txt`, plus the agent, as ext4.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::cache::{self, run_logged, step, Key};
use crate::image;
use crate::Result;

/// Bump when the steps below change the output.
const RECIPE: &str = "debian-12-recipe-1";
const SUITE: &str = "bookworm";
/// Free space left in the file system for guest writes (they land in an
/// overlay, but need free blocks in the guest's view of the disk).
const FREE_MIB: u64 = 1024;

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

fn packages() -> Result<(PathBuf, Vec<String>)> {
    let path = cache::repo().join("images/debian-12/packages.txt");
    let text =
        std::fs::read_to_string(&path).map_err(|e| format!("reading {}: {e}", path.display()))?;
    let list = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(str::to_string)
        .collect();
    Ok((path, list))
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
fn base_tree(rebuild: bool) -> Result<PathBuf> {
    let (list_path, list) = packages()?;
    let key = Key::default()
        .text("recipe", RECIPE)
        .file(&list_path)?
        .finish();
    let tree = cache::root()
        .join("rootfs")
        .join(format!("debian-12-{key}"));
    let complete = tree.with_extension("complete");
    if complete.is_file() && !rebuild {
        step(&format!(
            "image debian:12: base tree cached at {}",
            tree.display()
        ));
        return Ok(tree);
    }
    let _ = std::fs::remove_file(&complete);
    let _ = std::fs::remove_dir_all(&tree);
    std::fs::create_dir_all(&tree).map_err(|e| e.to_string())?;
    let log = tree.with_extension("log");
    step(&format!(
        "image debian:12: debootstrap {SUITE} with {} packages (about a minute; log in {})",
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
    std::fs::write(&complete, b"").map_err(|e| e.to_string())?;
    Ok(tree)
}

/// Builds (or finds) the image and writes its manifest.
pub fn build(agent: &Path, rebuild: bool) -> Result<PathBuf> {
    let tree = base_tree(rebuild)?;
    let key = Key::default()
        .text("recipe", RECIPE)
        .text("tree", &tree.display().to_string())
        .file(agent)?
        .finish();
    let image = cache::root()
        .join("images")
        .join(format!("debian-12-{key}.ext4"));
    if image.is_file() && !rebuild {
        step(&format!("image debian:12: cached at {}", image.display()));
    } else {
        let staging = tree;
        std::fs::copy(agent, staging.join("sbin/sandbox-guest"))
            .map_err(|e| format!("installing the agent: {e}"))?;
        let mib = tree_bytes(&staging) / (1 << 20) * 5 / 4 + FREE_MIB;
        image::mkfs(&staging, &image, mib, "debian-12-")?;
    }
    image::record(
        "image-debian-12",
        "debian:12",
        &image,
        serde_json::json!({
            "distro": "Debian GNU/Linux 12 (bookworm)",
            "shell": "/bin/bash",
            "package_manager": "apt",
        }),
    )?;
    Ok(image)
}
