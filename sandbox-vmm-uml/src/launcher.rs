//! Starts kernel processes from one long-lived thread.
//!
//! The child asks for `PR_SET_PDEATHSIG` so it dies with the host process.
//! Linux sends that signal when the *thread* that forked the child exits,
//! so forking from a short-lived thread (a tokio blocking-pool worker, say)
//! would kill the guest seconds later. Every spawn therefore goes through
//! this thread, which lives as long as the process.

use std::io;
use std::process::{Child, Command};
use std::sync::mpsc::{self, Sender};
use std::sync::{Mutex, OnceLock};

type Job = (Command, Sender<io::Result<Child>>);

fn launcher() -> io::Result<Sender<Job>> {
    static LAUNCHER: OnceLock<Mutex<Sender<Job>>> = OnceLock::new();
    if let Some(tx) = LAUNCHER.get() {
        return Ok(tx.lock().unwrap_or_else(|e| e.into_inner()).clone());
    }
    let (tx, rx) = mpsc::channel::<Job>();
    std::thread::Builder::new()
        .name("uml-launcher".into())
        .spawn(move || {
            for (mut cmd, reply) in rx {
                let _ = reply.send(cmd.spawn());
            }
        })?;
    let stored = LAUNCHER.get_or_init(|| Mutex::new(tx));
    Ok(stored.lock().unwrap_or_else(|e| e.into_inner()).clone())
}

/// Spawns `cmd` from the launcher thread.
pub(crate) fn spawn(cmd: Command) -> io::Result<Child> {
    let (reply, result) = mpsc::channel();
    launcher()?
        .send((cmd, reply))
        .map_err(|_| io::Error::other("the launcher thread is gone"))?;
    result
        .recv()
        .map_err(|_| io::Error::other("the launcher thread is gone"))?
}
