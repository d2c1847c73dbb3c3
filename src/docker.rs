//! A tiny container image made on the host, for Docker tests, the example
//! and the bench (no registry is reachable): busybox-static as the root
//! file system's only program, a page under `/www`, and `lib`/`lib64`
//! links into `/usr` so a container that bind-mounts the guest's `/usr`
//! can run the guest's own dynamically linked tools (curl).

use std::io;
use std::os::unix::fs::symlink;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};

use sandbox_core::{BootOptions, Resources, Rootfs, Sandbox, Vm};

/// Where Debian's busybox-static puts the binary (`cargo xtask deps`
/// installs it).
const BUSYBOX: &str = "/bin/busybox";
/// The page `/www/index.html` of the image.
pub const PAGE: &str = "hello from a container\n";
/// Applets linked in `/bin`.
const APPLETS: &[&str] = &[
    "sh", "httpd", "wget", "cat", "echo", "ls", "true", "sleep", "head", "dd",
];

/// A Dockerfile building on the imported image (`local/busybox`) with a
/// `RUN` and a `COPY` step; its context needs `extra.txt`.
pub const DOCKERFILE: &str = "FROM local/busybox\n\
RUN echo built > /www/built.txt\n\
COPY extra.txt /www/extra.txt\n\
CMD [\"httpd\", \"-f\", \"-p\", \"80\", \"-h\", \"/www\"]\n";

/// Boots an ephemeral `debian:12-docker` guest on the harness's backend:
/// one CPU and 1 GiB (dockerd wants more than the default 256 MiB).
pub async fn boot_ephemeral(options: BootOptions) -> Vm {
    Sandbox::builder()
        .rootfs(Rootfs::ephemeral(crate::builtin("debian:12-docker")))
        .resources(Resources {
            cpus: 1,
            memory_mib: 1024,
        })
        .backend(crate::backend())
        .build()
        .unwrap()
        .boot(options)
        .await
        .unwrap()
}

/// The root file system tarball (`docker import` input).
pub fn busybox_rootfs_tar() -> io::Result<Vec<u8>> {
    // One directory per call: the tests of one process build the tarball
    // concurrently, and a shared directory was removed under another
    // test's `tar`.
    static CALLS: AtomicU64 = AtomicU64::new(0);
    let call = CALLS.fetch_add(1, Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!(
        "sandbox-busybox-root-{}-{call}",
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    let result = build(&dir);
    let _ = std::fs::remove_dir_all(&dir);
    result
}

fn build(root: &Path) -> io::Result<Vec<u8>> {
    for d in ["bin", "www", "tmp", "usr", "etc/ssl", "proc", "sys", "dev"] {
        std::fs::create_dir_all(root.join(d))?;
    }
    std::fs::copy(BUSYBOX, root.join("bin/busybox")).map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("{BUSYBOX}: {e} (install busybox-static: `cargo xtask deps`)"),
        )
    })?;
    for applet in APPLETS {
        symlink("busybox", root.join("bin").join(applet))?;
    }
    symlink("usr/lib", root.join("lib"))?;
    symlink("usr/lib64", root.join("lib64"))?;
    std::fs::write(root.join("www/index.html"), PAGE)?;
    let out = Command::new("tar")
        .args(["--owner=0", "--group=0", "-C"])
        .arg(root)
        .args(["-cf", "-", "."])
        .output()?;
    if !out.status.success() {
        return Err(io::Error::other(format!(
            "tar failed: {}",
            String::from_utf8_lossy(&out.stderr)
        )));
    }
    Ok(out.stdout)
}
