//! `sandbox-guest`: the agent that runs as PID 1 inside every sandbox VM.
//!
//! As init it prepares the guest (mounts, /dev links, hostname), opens the
//! control channel to the host, announces itself with a `Hello` frame and then
//! serves requests concurrently until the host asks it to shut down, when it
//! syncs, unmounts and powers off.
//!
//! Outside a VM the same binary serves one connection on an inherited file
//! descriptor (`sandbox-guest --fd N`), which is how the host-side tests drive
//! the request handling over a socketpair without booting anything.

mod etc;
mod forward;
mod fs;
mod init;
mod job;
mod mux;
mod net;
mod process;
mod protect;
mod reaper;
mod restored;
mod server;
mod spawn;
mod user;
mod vsock;
mod window;

use std::fs::File;
use std::os::fd::FromRawFd;
use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    if let Some(pos) = args.iter().position(|a| a == "--fd") {
        let Some(fd) = args.get(pos + 1).and_then(|s| s.parse::<i32>().ok()) else {
            eprintln!("sandbox-guest: --fd needs a file descriptor number");
            return ExitCode::from(2);
        };
        // SAFETY: the caller hands us this descriptor on the command line; we
        // take ownership of it and nothing else in this process uses it.
        let file = unsafe { File::from_raw_fd(fd) };
        return match server::serve(file, server::Role::Standalone) {
            Ok(_) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("sandbox-guest: {e}");
                ExitCode::FAILURE
            }
        };
    }
    // SAFETY: getpid has no preconditions.
    if unsafe { libc::getpid() } != 1 {
        eprintln!("sandbox-guest: run as PID 1 in a sandbox VM, or with --fd N for testing");
        return ExitCode::from(2);
    }
    init::run()
}
