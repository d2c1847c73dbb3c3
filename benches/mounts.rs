//! Mounts: our virtio-fs against the Rust `virtiofsd` (the reference
//! implementation) serving the same host directory to the same UML guest in
//! the same run, next to the host doing the same work natively (the limit).
//!
//! Workloads: untar a tree of small files, `find | sort | xargs sha256sum`
//! it, delete it; write a 1 GiB file sequentially (`dd`, then `sync`); read
//! it back after dropping the guest's page cache.
//!
//! `cargo xtask build && cargo xtask peers && cargo bench --bench mounts`
//! (`peers` installs virtiofsd 1.14 into the artifact cache).

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion};
use sandbox_core::{images, BootOptions, Mount, Resources, Rootfs, Sandbox, Vm};

/// Small files in the tree (the tests use 5,000; fewer keep ten samples of
/// each side within minutes here).
const FILES: usize = 1000;
/// The sequential file's size in MiB.
const BIG_MIB: usize = 1024;

fn virtiofsd() -> PathBuf {
    let cache = std::env::var_os("SANDBOX_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(std::env::var("HOME").unwrap()).join(".cache/sandbox"));
    let bin = cache.join("tools/bin/virtiofsd");
    assert!(
        bin.exists(),
        "{} is missing: run `cargo xtask peers` first",
        bin.display()
    );
    bin
}

/// The shared directory, with the tree's tarball in it.
fn shared_dir() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("sandbox-bench-mounts-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let t = dir.join("src/t");
    for i in 0..FILES {
        let sub = t.join(format!("d{:02}", i % 50));
        std::fs::create_dir_all(&sub).unwrap();
        let body = format!("file {i}\n{}\n", "x".repeat(i % 300));
        std::fs::write(sub.join(format!("f{i:05}.txt")), body).unwrap();
    }
    let ok = Command::new("tar")
        .args(["cf", "../tree.tar", "t"])
        .current_dir(dir.join("src"))
        .status()
        .unwrap()
        .success();
    assert!(ok);
    std::fs::remove_dir_all(dir.join("src")).unwrap();
    for side in ["ours", "peer", "host"] {
        std::fs::create_dir_all(dir.join(side)).unwrap();
    }
    dir
}

struct Daemon(Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_virtiofsd(shared: &Path, socket: &Path) -> Daemon {
    let child = Command::new(virtiofsd())
        .arg("--shared-dir")
        .arg(shared)
        .arg("--socket-path")
        .arg(socket)
        .args(["--tag", "peer", "--sandbox", "none", "--cache", "auto"])
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !socket.exists() {
        assert!(Instant::now() < deadline, "virtiofsd did not listen");
        std::thread::sleep(Duration::from_millis(20));
    }
    // Connectable by the UML jail's unprivileged uid.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(socket, std::fs::Permissions::from_mode(0o666)).unwrap();
    Daemon(child)
}

fn untar_script(dir: &str, tar: &str, _in_guest: bool) -> String {
    format!(
        "set -e; cd {dir}; tar xf {tar}; find t -type f | LC_ALL=C sort | xargs sha256sum > sums; \
         rm -rf t"
    )
}

fn write_script(dir: &str) -> String {
    format!("dd if=/dev/zero of={dir}/big bs=1M count={BIG_MIB} 2>/dev/null && sync")
}

/// In the guest, the guest's page cache is dropped first so the reads
/// reach the file system; on the host the file is read as it is (the
/// guest's reads reach the same host page cache).
fn read_script(dir: &str, in_guest: bool) -> String {
    let drop = if in_guest {
        "sync; echo 3 > /proc/sys/vm/drop_caches; "
    } else {
        ""
    };
    format!("{drop}dd if={dir}/big of=/dev/null bs=1M 2>/dev/null")
}

async fn guest(vm: &Vm, script: &str) -> Duration {
    let t = Instant::now();
    let out = vm.exec("sh", ["-c", script]).await.unwrap();
    assert!(
        out.status.success(),
        "{script}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    t.elapsed()
}

fn host(script: &str) -> Duration {
    let t = Instant::now();
    let ok = Command::new("sh")
        .args(["-c", script])
        .status()
        .unwrap()
        .success();
    assert!(ok, "{script}");
    t.elapsed()
}

/// Runs `f` `iters` times and returns the total, keeping each time.
fn timed(iters: u64, times: &mut Vec<Duration>, mut f: impl FnMut() -> Duration) -> Duration {
    (0..iters)
        .map(|_| {
            let d = f();
            times.push(d);
            d
        })
        .sum()
}

fn median(v: &mut [Duration]) -> Duration {
    v.sort();
    v.get(v.len() / 2).copied().unwrap_or_default()
}

fn mounts(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let shared = shared_dir();
    let socket = shared.with_extension("sock");
    let _daemon = start_virtiofsd(&shared, &socket);
    let vm = rt
        .block_on(async {
            Sandbox::builder()
                .rootfs(Rootfs::ephemeral(images::builtin("minimal")?))
                .resources(Resources {
                    cpus: 1,
                    memory_mib: 512,
                })
                .build()?
                .boot(
                    BootOptions::default()
                        .mount("/ours", Mount::bind(&shared).writable())
                        .mount("/peer", Mount::vhost_user_fs(&socket, "peer")),
                )
                .await
        })
        .unwrap();
    let sides = [
        ("ours", Some("/ours/ours")),
        ("virtiofsd", Some("/peer/peer")),
        ("host", None),
    ];
    let host_dir = shared.join("host");
    let mut medians = Vec::new();
    for (workload, make) in [
        (
            "untar_sha256_delete",
            untar_script as fn(&str, &str, bool) -> String,
        ),
        ("write_1gib", |d: &str, _: &str, _: bool| write_script(d)),
        ("read_1gib", |d: &str, _: &str, g: bool| read_script(d, g)),
    ] {
        let mut group = c.benchmark_group(format!("mounts/{workload}"));
        group.sample_size(10);
        group.measurement_time(Duration::from_secs(1));
        group.warm_up_time(Duration::from_millis(1));
        for (side, guest_dir) in sides {
            let mut times = Vec::new();
            group.bench_function(side, |b| {
                b.iter_custom(|iters| {
                    timed(iters, &mut times, || match guest_dir {
                        Some(dir) => {
                            let tar = format!("{}/../tree.tar", dir);
                            rt.block_on(guest(&vm, &make(dir, &tar, true)))
                        }
                        None => {
                            let dir = host_dir.to_str().unwrap();
                            host(&make(dir, &format!("{dir}/../tree.tar"), false))
                        }
                    })
                })
            });
            medians.push((workload, side, median(&mut times)));
        }
        group.finish();
    }
    println!("\nmedians (and ours vs virtiofsd; >= 1.0x means ours is at least as fast):");
    for workload in ["untar_sha256_delete", "write_1gib", "read_1gib"] {
        let get = |side: &str| {
            medians
                .iter()
                .find(|(w, s, _)| *w == workload && *s == side)
                .map(|m| m.2)
                .unwrap_or_default()
        };
        let (ours, peer, native) = (get("ours"), get("virtiofsd"), get("host"));
        println!(
            "  {workload}: ours {ours:.2?}, virtiofsd {peer:.2?}, host {native:.2?}; \
             ours/virtiofsd speed {:.2}x, ours/host {:.2}x",
            peer.as_secs_f64() / ours.as_secs_f64().max(1e-9),
            native.as_secs_f64() / ours.as_secs_f64().max(1e-9),
        );
    }
    rt.block_on(vm.shutdown()).unwrap();
    let _ = std::fs::remove_dir_all(&shared);
    let _ = std::fs::remove_file(&socket);
}

criterion_group!(benches, mounts);
criterion_main!(benches);
