//! Disk state kept by the host: a persistent overlay that survives a
//! reboot, then the same machine state flattened into a standalone qcow2
//! file. `cargo run --example rootfs` (after `cargo xtask build`).

use std::sync::Arc;

use futures::StreamExt;
use sandbox_core::rootfs::{bytes, flatten, MemStore, Qcow2Options};
use sandbox_core::{images, BootOptions, Rootfs, Sandbox};
use tokio::io::AsyncWriteExt;

async fn run(rootfs: Rootfs, script: &str) -> Result<String, Box<dyn std::error::Error>> {
    let vm = Sandbox::builder()
        .rootfs(rootfs)
        .build()?
        .boot(BootOptions::default())
        .await?;
    let out = vm.exec("sh", ["-c", script]).await?;
    vm.shutdown().await?;
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let image = images::builtin("minimal")?;
    let dir = std::env::temp_dir().join(format!("sandbox-rootfs-example-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;

    // Persistent: the second boot sees the first boot's file.
    let overlay = dir.join("machine.qcow2");
    let durable = Rootfs::persistent(image.clone(), &overlay);
    run(durable.clone(), "date > /root/first-boot && sync").await?;
    print!(
        "second boot reads: {}",
        run(durable, "cat /root/first-boot").await?
    );

    // Cow into a store, then flatten base + store into a standalone image.
    let state = Arc::new(MemStore::new(4096));
    run(
        Rootfs::cow(image.clone(), state.clone()),
        "echo kept > /root/kept && sync",
    )
    .await?;
    let flat = flatten(
        Rootfs::compose(image, state),
        Qcow2Options::default(),
        Arc::new(MemStore::new(1 << 20)),
    )
    .await?;
    let path = dir.join("flattened.qcow2");
    let mut file = tokio::fs::File::create(&path).await?;
    let mut stream = Box::pin(bytes(&flat, 1 << 20));
    while let Some(chunk) = stream.next().await {
        file.write_all(&chunk?).await?;
    }
    file.flush().await?;
    println!(
        "flattened image: {} ({} bytes, sha256 {}); try `qemu-img check` on it",
        path.display(),
        flat.len,
        flat.sha256
    );
    Ok(())
}
