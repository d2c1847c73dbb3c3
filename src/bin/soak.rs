//! `cargo xtask soak --cycles N`: boots, execs, spawns, writes files and
//! shuts down VMs in a loop, two at a time, and fails if the host process
//! grows: open descriptors, threads, child processes, temporary files and
//! sockets must come back to their level after the warm-up, and resident
//! memory may grow by at most `RSS_BOUND_MIB`.

use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Growth of resident memory tolerated over the whole run (allocator
/// caches, lazily built tables).
const RSS_BOUND_MIB: u64 = 64;
/// Cycles run before the baseline is taken (thread pools, caches).
const WARM_UP: u32 = 2;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Level {
    fds: usize,
    threads: usize,
    children: usize,
    temp_entries: usize,
}

fn count_dir(p: impl AsRef<Path>) -> usize {
    std::fs::read_dir(p).map(|d| d.count()).unwrap_or(0)
}

/// Processes whose parent is this one.
fn children() -> usize {
    let me = std::process::id().to_string();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return 0;
    };
    dir.filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().parse::<u32>().is_ok())
        .filter(|e| {
            std::fs::read_to_string(e.path().join("stat")).is_ok_and(|s| {
                // The parent pid is the second field after the command name.
                s.rsplit_once(')')
                    .and_then(|(_, rest)| rest.split_whitespace().nth(1).map(|p| p == me))
                    .unwrap_or(false)
            })
        })
        .count()
}

/// Entries the library creates in the temporary directory (UML work
/// directories, network sockets, spill files).
fn temp_entries() -> usize {
    let Ok(dir) = std::fs::read_dir(std::env::temp_dir()) else {
        return 0;
    };
    let me = std::process::id().to_string();
    dir.filter_map(|e| e.ok())
        .filter(|e| {
            let n = e.file_name().to_string_lossy().into_owned();
            (n.starts_with("sbx-") || n.starts_with("sandbox-")) && n.contains(&me)
        })
        .count()
}

fn level() -> Level {
    Level {
        fds: count_dir("/proc/self/fd"),
        threads: count_dir("/proc/self/task"),
        children: children(),
        temp_entries: temp_entries(),
    }
}

fn rss_mib() -> u64 {
    sandbox::rss_bytes() >> 20
}

/// One VM's work: exec, a spawned `cat` fed through stdin, a file written
/// and read back, then a clean shutdown.
async fn one_vm(name: String) -> Result<(), String> {
    let vm = sandbox::boot(&name).await.map_err(|e| e.to_string())?;
    let out = vm
        .exec("sh", ["-c", "echo soak"])
        .await
        .map_err(|e| e.to_string())?;
    if out.stdout != b"soak\n" {
        return Err(format!("exec printed {:?}", out.stdout));
    }
    let mut p = vm.spawn("cat", [""; 0]).map_err(|e| e.to_string())?;
    let mut stdin = p.stdin.take().ok_or("no stdin")?;
    stdin
        .write_all(b"through stdin")
        .await
        .map_err(|e| e.to_string())?;
    stdin.shutdown().await.map_err(|e| e.to_string())?;
    let mut echoed = String::new();
    p.stdout
        .take()
        .ok_or("no stdout")?
        .read_to_string(&mut echoed)
        .await
        .map_err(|e| e.to_string())?;
    p.exit().await.map_err(|e| e.to_string())?;
    if echoed != "through stdin" {
        return Err(format!("cat echoed {echoed:?}"));
    }
    let fs = vm.fs();
    fs.write_file("/tmp/soak", b"written", Default::default())
        .await
        .map_err(|e| e.to_string())?;
    if fs.read_file("/tmp/soak").await.map_err(|e| e.to_string())? != b"written" {
        return Err("file read back differs".into());
    }
    vm.shutdown().await.map_err(|e| e.to_string())
}

async fn cycle(i: u32) -> Result<(), String> {
    let (a, b) = tokio::join!(one_vm(format!("soak{i}a")), one_vm(format!("soak{i}b")));
    a.and(b)
}

/// Waits up to 5 s for the level to come back to `base` or below (threads
/// and descriptors of a stopped VM are released asynchronously).
async fn settled(base: Level) -> Level {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let now = level();
        if now.within(&base) || Instant::now() >= deadline {
            return now;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

impl Level {
    /// True if no count is above `base`'s.
    fn within(&self, base: &Level) -> bool {
        self.fds <= base.fds
            && self.threads <= base.threads
            && self.children <= base.children
            && self.temp_entries <= base.temp_entries
    }
}

fn main() -> ExitCode {
    // Idle blocking-pool threads exit after 100 ms instead of 10 s, so the
    // thread count settles between measurements.
    match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_keep_alive(Duration::from_millis(100))
        .enable_all()
        .build()
    {
        Ok(rt) => rt.block_on(run()),
        Err(e) => {
            eprintln!("soak: cannot start a runtime: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    let cycles: u32 = match args.iter().position(|a| a == "--cycles") {
        None => 50,
        Some(i) => match args.get(i + 1).and_then(|v| v.parse().ok()) {
            Some(n) if n > 0 => n,
            _ => {
                eprintln!("usage: soak [--cycles N] (N > 0)");
                return ExitCode::from(2);
            }
        },
    };
    for i in 0..WARM_UP {
        if let Err(e) = cycle(i).await {
            eprintln!("soak: warm-up cycle {i} failed: {e}");
            return ExitCode::FAILURE;
        }
    }
    // The baseline: the lowest level seen over a quiet second.
    let mut base = level();
    for _ in 0..20 {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let l = level();
        base = Level {
            fds: base.fds.min(l.fds),
            threads: base.threads.min(l.threads),
            children: base.children.min(l.children),
            temp_entries: base.temp_entries.min(l.temp_entries),
        };
    }
    let rss_base = rss_mib();
    println!("soak: baseline {base:?}, RSS {rss_base} MiB");
    let started = Instant::now();
    for i in 0..cycles {
        if let Err(e) = cycle(WARM_UP + i).await {
            eprintln!("soak: cycle {i} failed: {e}");
            return ExitCode::FAILURE;
        }
        if (i + 1) % 50 == 0 {
            println!(
                "soak: {} cycles, {:?}, RSS {} MiB",
                i + 1,
                level(),
                rss_mib()
            );
        }
    }
    let per_cycle = started.elapsed() / cycles;
    let end = settled(base).await;
    let rss_end = rss_mib();
    println!(
        "soak: {cycles} cycles of 2 VMs in {:.1} s ({} ms per cycle); end {end:?}, RSS {rss_end} MiB (baseline {rss_base} MiB)",
        started.elapsed().as_secs_f64(),
        per_cycle.as_millis()
    );
    let mut failed = false;
    if !end.within(&base) {
        eprintln!("soak: FAILED: host resources grew: {base:?} -> {end:?}");
        failed = true;
    }
    let refused = sandbox_core::seccomp::violations();
    if !refused.is_empty() {
        eprintln!("soak: FAILED: device threads made syscalls outside their filter: {refused:?}");
        failed = true;
    }
    if rss_end > rss_base + RSS_BOUND_MIB {
        eprintln!(
            "soak: FAILED: resident memory grew by {} MiB (bound {RSS_BOUND_MIB} MiB)",
            rss_end - rss_base
        );
        failed = true;
    }
    if failed {
        ExitCode::FAILURE
    } else {
        println!("soak: ok");
        ExitCode::SUCCESS
    }
}
