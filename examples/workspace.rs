//! Mounts a host project read-only with `.git` masked, plus a writable
//! memory scratch, runs a build-like command in the guest, and prints what
//! it produced as read from the host.
//!
//! `cargo run --example workspace [PROJECT_DIR]` (without a directory, a
//! small sample project is made in a temporary directory).

use std::path::PathBuf;

use sandbox_core::vfs::MemoryFs;
use sandbox_core::{images, BootOptions, Mount, Rootfs, Sandbox};

fn sample_project() -> std::io::Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("sandbox-workspace-{}", std::process::id()));
    std::fs::create_dir_all(dir.join("src"))?;
    std::fs::create_dir_all(dir.join(".git/objects"))?;
    std::fs::write(dir.join(".git/HEAD"), "ref: refs/heads/main\n")?;
    std::fs::write(dir.join("src/main.c"), "int main(void) { return 0; }\n")?;
    std::fs::write(
        dir.join("src/util.c"),
        "int add(int a, int b) { return a + b; }\n",
    )?;
    std::fs::write(dir.join("README"), "a sample project\n")?;
    Ok(dir)
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let (project, made) = match std::env::args().nth(1) {
        Some(dir) => (std::fs::canonicalize(dir)?, false),
        None => (sample_project()?, true),
    };
    let scratch = MemoryFs::new().size_limit(64 << 20);
    let sandbox = Sandbox::builder()
        .rootfs(Rootfs::ephemeral(images::builtin("minimal")?))
        .build()?;
    let vm = sandbox
        .boot(
            BootOptions::default()
                .mount(
                    "/project",
                    Mount::bind(&project).read_only().mask(["/.git"]),
                )
                .mount("/scratch", Mount::memory(&scratch))
                .cwd("/project"),
        )
        .await?;
    // A build-like step: read every source, write artifacts to the scratch.
    let build = "set -e; mkdir -p /scratch/out; \
                 find . -type f | sort > /scratch/out/manifest.txt; \
                 cat $(find . -name '*.c' | sort) | wc -l > /scratch/out/lines.txt; \
                 tar cf /scratch/out/project.tar .; \
                 ls -a > /scratch/out/top-level.txt; \
                 (touch /project/x 2>&1 || true) > /scratch/out/write-attempt.txt";
    let out = vm.exec("sh", ["-c", build]).await?;
    if !out.status.success() {
        eprintln!("{}", String::from_utf8_lossy(&out.stderr));
        return Err("the build step failed".into());
    }
    vm.shutdown().await?;

    println!("project {} (read-only, .git masked)", project.display());
    for entry in scratch.read_dir("/out")? {
        let path = format!("/out/{}", entry.name.to_string_lossy());
        let bytes = scratch.read_file(&path)?;
        if path.ends_with(".tar") {
            println!("--- {path}: {} bytes", bytes.len());
        } else {
            println!(
                "--- {path}:\n{}",
                String::from_utf8_lossy(&bytes).trim_end()
            );
        }
    }
    if made {
        std::fs::remove_dir_all(&project)?;
    }
    Ok(())
}
