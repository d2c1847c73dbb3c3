//! The one way the library starts a thread that handles guest input: vCPUs,
//! virtio device workers, vhost-user servers, the network stack and the
//! agent link.
//!
//! [`spawn`] names the thread, installs the seccomp filter of its class
//! ([`seccomp::AllowList`], each list kept next to the code that runs under
//! it) before the thread's code runs, and catches a panic so that it
//! becomes an error value the owner turns into a device failure or a
//! stopped VM, never an abort of the embedding process. [`contain`] is the
//! panic half alone, for code that must keep state across a panic.
//!
//! Filters are inherited by threads a filtered thread starts, and stack:
//! a vCPU that starts a device worker (a register write) would pass the
//! vCPU list on, and the worker could do only what both lists allow. So
//! every thread is started by one unfiltered thread, `sandbox-spawner`
//! (itself started by the first [`spawn`], before any filter exists), and
//! each thread gets exactly the list of its own class.

pub mod seccomp;

use std::any::Any;
use std::io;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::mpsc::{self, Sender};
use std::sync::{Mutex, OnceLock};
use std::thread::JoinHandle;

/// A thread's code panicked (the panic was caught).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Panicked {
    /// The thread's name.
    pub thread: String,
    /// The panic's message.
    pub message: String,
}

impl std::fmt::Display for Panicked {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "thread {} panicked: {}", self.thread, self.message)
    }
}

impl std::error::Error for Panicked {}

fn message(payload: &(dyn Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "(a non-string panic payload)".to_string()
    }
}

/// Runs `f`, turning a panic into [`Panicked`] (logged as an error with the
/// current thread's name).
pub fn contain<T>(f: impl FnOnce() -> T) -> Result<T, Panicked> {
    catch_unwind(AssertUnwindSafe(f)).map_err(|payload| {
        let p = Panicked {
            thread: std::thread::current()
                .name()
                .unwrap_or("unnamed")
                .to_string(),
            message: message(&*payload),
        };
        log::error!("{p}");
        p
    })
}

type Job = Box<dyn FnOnce() + Send>;

/// The unfiltered thread that starts every other (module docs).
fn spawner() -> io::Result<Sender<Job>> {
    static SPAWNER: OnceLock<Mutex<Sender<Job>>> = OnceLock::new();
    if let Some(tx) = SPAWNER.get() {
        return Ok(tx.lock().unwrap_or_else(|e| e.into_inner()).clone());
    }
    let (tx, rx) = mpsc::channel::<Job>();
    std::thread::Builder::new()
        .name("sandbox-spawner".into())
        .spawn(move || {
            for job in rx {
                job();
            }
        })?;
    let stored = SPAWNER.get_or_init(|| Mutex::new(tx));
    Ok(stored.lock().unwrap_or_else(|e| e.into_inner()).clone())
}

/// Starts `f` on a thread named `name`, confined to `filter` (`None`: no
/// filter, for threads that run the application's own code), with panics
/// contained. The thread is started by the spawner thread, so it carries
/// no filter of the caller's.
pub fn spawn<T: Send + 'static>(
    name: impl Into<String>,
    filter: Option<&'static seccomp::AllowList>,
    f: impl FnOnce() -> T + Send + 'static,
) -> io::Result<JoinHandle<Result<T, Panicked>>> {
    let name = name.into();
    let (reply, result) = mpsc::channel();
    let start = move || {
        let handle = std::thread::Builder::new().name(name).spawn(move || {
            if let Some(list) = filter {
                seccomp::confine(list);
            }
            contain(f)
        });
        let _ = reply.send(handle);
    };
    spawner()?
        .send(Box::new(start))
        .map_err(|_| io::Error::other("the sandbox-spawner thread is gone"))?;
    result
        .recv()
        .map_err(|_| io::Error::other("the sandbox-spawner thread is gone"))?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_filtered_thread_starts_threads_without_its_filter() {
        static ONLY_SPAWN: seccomp::AllowList = seccomp::AllowList {
            class: "test-parent",
            syscalls: &[],
        };
        let (parent_opened, child_status) = spawn("parent", Some(&ONLY_SPAWN), || {
            let mine = std::fs::read_to_string("/proc/thread-self/status");
            let child = spawn("child", None, || {
                std::fs::read_to_string("/proc/thread-self/status").unwrap_or_default()
            })
            .unwrap()
            .join()
            .unwrap()
            .unwrap();
            (mine.is_ok(), child)
        })
        .unwrap()
        .join()
        .unwrap()
        .unwrap();
        // The parent cannot open files (quietly refused: it is filtered);
        // the child it started can, and has no filter.
        assert!(!parent_opened);
        assert!(child_status.contains("Seccomp:\t0"), "{child_status}");
    }

    #[test]
    fn a_panic_becomes_an_error_with_the_thread_name() {
        let h = spawn("panicky", None, || -> u32 { panic!("guest sent {}", 7) }).unwrap();
        let err = h.join().expect("the thread itself must not unwind");
        assert_eq!(
            err,
            Err(Panicked {
                thread: "panicky".into(),
                message: "guest sent 7".into()
            })
        );
        let ok = spawn("calm", None, || 5).unwrap().join().unwrap();
        assert_eq!(ok, Ok(5));
    }
}
