//! Boots the built-in `minimal` image and runs two commands in it.
//!
//! Build the artifacts first (`cargo xtask quickstart` does both).

use std::time::Instant;

use sandbox_core::{images, BootOptions, Sandbox};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let sandbox = Sandbox::builder()
        .image(images::builtin("minimal")?)
        .build()?;
    let vm = sandbox.boot(BootOptions::default()).await?;
    println!(
        "booted on {:?} ({}) in {} ms",
        vm.backend(),
        vm.backend_reason(),
        vm.boot_time().as_millis()
    );
    for (cmd, args) in [
        ("uname", vec!["-a"]),
        ("echo", vec!["hello from the sandbox"]),
    ] {
        let start = Instant::now();
        let out = vm.exec(cmd, &args).await?;
        print!("{}", String::from_utf8_lossy(&out.stdout));
        eprint!("{}", String::from_utf8_lossy(&out.stderr));
        println!(
            "  ({cmd}: exit {:?}, {} ms)",
            out.status.code,
            start.elapsed().as_millis()
        );
    }
    vm.shutdown().await?;
    Ok(())
}
