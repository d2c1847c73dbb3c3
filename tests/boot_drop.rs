//! Dropping a `boot()` future half-way (the Rust cancellation idiom) leaves
//! no host process or work directory behind. Alone in its test binary:
//! it counts every UML guest of this process.

use std::time::Duration;

use sandbox_core::BootOptions;

/// Host processes and work directories of this test process's UML guests.
fn leftovers() -> Vec<String> {
    let tag = format!("sbx-{}-", std::process::id());
    let umid = format!("umid={tag}");
    let mut found: Vec<String> = sandbox::processes_with_arg(|a| a.starts_with(umid.as_bytes()))
        .into_iter()
        .map(|pid| format!("process {pid}"))
        .collect();
    for e in std::fs::read_dir(std::env::temp_dir())
        .into_iter()
        .flatten()
        .flatten()
    {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with(&tag) || name.starts_with(&format!("sbx-net-{}-", std::process::id())) {
            found.push(format!("directory {name}"));
        }
    }
    found
}

#[tokio::test]
async fn dropping_boot_half_way_leaves_nothing_behind() {
    let sandbox = sandbox::minimal().unwrap();
    for ms in [5u64, 40, 80, 120, 200] {
        // Dropped at different points of the boot: starting the machine,
        // connecting, or greeting the agent.
        let r = tokio::time::timeout(
            Duration::from_millis(ms),
            sandbox.boot(BootOptions::default().hostname("dropped")),
        )
        .await;
        drop(r);
        // A boot dropped early may still be starting the machine on a
        // blocking thread, which makes its work directory a moment later
        // and cleans up when it finishes: wait until nothing is left for a
        // whole second (one empty look raced with that thread in CI).
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        let mut empty_since: Option<std::time::Instant> = None;
        while std::time::Instant::now() < deadline {
            if leftovers().is_empty() {
                let since = *empty_since.get_or_insert_with(std::time::Instant::now);
                if since.elapsed() >= Duration::from_secs(1) {
                    break;
                }
            } else {
                empty_since = None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(
            leftovers(),
            Vec::<String>::new(),
            "after dropping boot at {ms} ms"
        );
    }
}
