//! A boot that times out reports it and leaves nothing behind. Alone in its
//! test binary, so no other VM of this process is running meanwhile.

use std::time::Duration;

use sandbox_core::{BootOptions, Error};

#[tokio::test]
async fn a_boot_that_times_out_says_so_and_cleans_up() {
    let sandbox = sandbox::minimal().unwrap();
    let before: Vec<_> = std::fs::read_dir(std::env::temp_dir())
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name())
        .collect();
    let err = sandbox
        .boot(BootOptions::default().timeout(Duration::from_millis(1)))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::BootTimeout { .. }), "{err:?}");
    assert!(err.to_string().contains("did not become ready"));
    // The timed-out guest's work directory is gone.
    let leftovers: Vec<_> = std::fs::read_dir(std::env::temp_dir())
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name())
        .filter(|n| {
            n.to_string_lossy()
                .starts_with(&format!("sbx-{}-", std::process::id()))
        })
        .filter(|n| !before.contains(n))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}
