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
    paired(&rt, &vm, _daemon.0.id());
    rt.block_on(vm.shutdown()).unwrap();
    let _ = std::fs::remove_dir_all(&shared);
    let _ = std::fs::remove_file(&socket);
}

criterion_group!(benches, mounts);
criterion_main!(benches);

/// Rounds of the paired comparison (`SANDBOX_BENCH_ROUNDS`, default 12).
fn rounds() -> usize {
    std::env::var("SANDBOX_BENCH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(12)
}

/// CPU time (user + system) from a `/proc/.../stat` line: `fields` are
/// indices after the command name (utime is 11, stime 12, cutime 13,
/// cstime 14).
fn stat_cpu(path: &str, fields: &[usize]) -> Duration {
    let Ok(stat) = std::fs::read_to_string(path) else {
        return Duration::ZERO;
    };
    let Some((_, rest)) = stat.rsplit_once(')') else {
        return Duration::ZERO;
    };
    let f: Vec<&str> = rest.split_whitespace().collect();
    // SAFETY: sysconf with a constant.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    let ticks: u64 = fields
        .iter()
        .filter_map(|i| f.get(*i)?.parse::<u64>().ok())
        .sum();
    Duration::from_secs_f64(ticks as f64 / hz)
}

/// CPU time of this process's threads whose name `matches`.
fn own_threads_cpu(matches: impl Fn(&str) -> bool) -> Duration {
    let Ok(dir) = std::fs::read_dir("/proc/self/task") else {
        return Duration::ZERO;
    };
    dir.filter_map(|e| e.ok())
        .filter(|e| {
            let comm = std::fs::read_to_string(e.path().join("comm")).unwrap_or_default();
            matches(comm.trim())
        })
        .map(|e| stat_cpu(&format!("{}/stat", e.path().display()), &[11, 12]))
        .sum()
}

/// CPU time of the guest: its live host processes, plus what its kernel
/// reaped.
fn guest_cpu(id: &str) -> Duration {
    let live: Duration = sandbox::guest_processes(id)
        .into_iter()
        .map(|p| stat_cpu(&format!("/proc/{p}/stat"), &[11, 12]))
        .sum();
    let reaped = sandbox::uml_kernel_process(id)
        .map(|p| stat_cpu(&format!("/proc/{p}/stat"), &[13, 14]))
        .unwrap_or_default();
    live + reaped
}

/// One side's run of a workload: wall time, the server's CPU time and the
/// guest's.
struct Run {
    wall: Duration,
    server: Duration,
    guest: Duration,
}

/// Ours and virtiofsd alternately, in turn first, so that drift on this
/// machine (page cache, other load) falls on both: the ratio of each round
/// is peer time over ours, and the report gives their median and spread,
/// and where each side's time goes (server CPU, guest CPU).
fn paired(rt: &tokio::runtime::Runtime, vm: &Vm, peer_pid: u32) {
    let id = vm.id();
    let server_cpu = |side: &str| match side {
        "ours" => own_threads_cpu(|name| name.contains("fs")),
        _ => stat_cpu(&format!("/proc/{peer_pid}/stat"), &[11, 12]),
    };
    let run = |side: &str, script: &str| {
        let (s0, g0) = (server_cpu(side), guest_cpu(&id));
        let wall = rt.block_on(guest(vm, script));
        Run {
            wall,
            server: server_cpu(side).saturating_sub(s0),
            guest: guest_cpu(&id).saturating_sub(g0),
        }
    };
    let n = rounds();
    println!("\npaired rounds ({n} per workload; ratio = virtiofsd time / ours, >= 1.0 means ours is at least as fast):");
    for workload in ["untar_sha256_delete", "write_1gib", "read_1gib"] {
        let script = |dir: &str| match workload {
            "untar_sha256_delete" => untar_script(dir, &format!("{dir}/../tree.tar"), true),
            "write_1gib" => write_script(dir),
            _ => read_script(dir, true),
        };
        let (ours_dir, peer_dir) = ("/ours/ours", "/peer/peer");
        let mut ratios = Vec::new();
        let (mut ours_runs, mut peer_runs) = (Vec::new(), Vec::new());
        for i in 0..n {
            let (o, p) = if i % 2 == 0 {
                let o = run("ours", &script(ours_dir));
                (o, run("peer", &script(peer_dir)))
            } else {
                let p = run("peer", &script(peer_dir));
                (run("ours", &script(ours_dir)), p)
            };
            ratios.push(p.wall.as_secs_f64() / o.wall.as_secs_f64().max(1e-9));
            ours_runs.push(o);
            peer_runs.push(p);
        }
        ratios.sort_by(f64::total_cmp);
        let q = |f: f64| ratios[((ratios.len() - 1) as f64 * f).round() as usize];
        let wins = ratios.iter().filter(|r| **r >= 1.0).count();
        println!(
            "  {workload}: median {:.3}x, quartiles {:.3}..{:.3}x, range {:.3}..{:.3}x; ours at least as fast in {wins}/{n}",
            q(0.5),
            q(0.25),
            q(0.75),
            q(0.0),
            q(1.0)
        );
        for (side, runs) in [("ours", &ours_runs), ("virtiofsd", &peer_runs)] {
            let sum = |f: fn(&Run) -> Duration| runs.iter().map(f).sum::<Duration>();
            let wall = sum(|r| r.wall).as_secs_f64().max(1e-9);
            println!(
                "    {side}: mean wall {:.3} s; server CPU {:.0}% of wall, guest CPU {:.0}% of wall",
                wall / n as f64,
                100.0 * sum(|r| r.server).as_secs_f64() / wall,
                100.0 * sum(|r| r.guest).as_secs_f64() / wall,
            );
        }
    }
}
