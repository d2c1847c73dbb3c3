//! Child reaping. As PID 1 the agent inherits every orphan, so one thread
//! calls `waitpid(-1)` for everything and hands the statuses of the processes
//! the agent started to the output multiplexer (`mux`), which it wakes;
//! other statuses are dropped.

use std::collections::HashMap;
use std::sync::{Condvar, Mutex, OnceLock};
use std::time::Duration;

/// How a process ended.
#[derive(Clone, Copy, Debug)]
pub enum Status {
    Code(i32),
    Signal(i32),
}

#[derive(Default)]
struct Table {
    /// Pids started by the agent; `Some` once they exited.
    tracked: HashMap<i32, Option<Status>>,
    /// Bumped by every spawn, so an idle reaper never misses one.
    spawns: u64,
}

pub struct Reaper {
    table: Mutex<Table>,
    /// Wakes the idle reaper when a spawn happens.
    changed: Condvar,
    /// Called after a tracked process's status is recorded.
    on_exit: OnceLock<fn()>,
}

pub fn get() -> &'static Reaper {
    static REAPER: OnceLock<&'static Reaper> = OnceLock::new();
    REAPER.get_or_init(|| {
        let reaper: &'static Reaper = Box::leak(Box::new(Reaper {
            table: Mutex::new(Table::default()),
            changed: Condvar::new(),
            on_exit: OnceLock::new(),
        }));
        std::thread::Builder::new()
            .name("reaper".into())
            .spawn(move || reaper.run())
            .expect("spawning the reaper thread");
        reaper
    })
}

impl Reaper {
    /// Runs `start` (which forks) with the table locked and tracks the pid
    /// it returns, so the exit cannot be reaped before it is tracked.
    pub fn spawn<T, E>(&self, start: impl FnOnce() -> Result<(T, i32), E>) -> Result<T, E> {
        let mut table = self.table.lock().unwrap_or_else(|e| e.into_inner());
        let (value, pid) = start()?;
        table.tracked.insert(pid, None);
        table.spawns += 1;
        self.changed.notify_all();
        Ok(value)
    }

    /// Sets what is called after each tracked exit (once; later calls are
    /// ignored).
    pub fn on_exit(&self, hook: fn()) {
        let _ = self.on_exit.set(hook);
    }

    /// The status of the tracked `pid` if it exited (and forgets it).
    pub fn try_take(&self, pid: i32) -> Option<Status> {
        let mut table = self.table.lock().unwrap_or_else(|e| e.into_inner());
        let status = (*table.tracked.get(&pid)?)?;
        table.tracked.remove(&pid);
        Some(status)
    }

    fn run(&self) {
        loop {
            let spawns = self.table.lock().unwrap_or_else(|e| e.into_inner()).spawns;
            // Wait for any exited child without reaping it: a spawn in
            // progress may own that child (std reaps a child whose exec
            // failed and panics if someone else reaped it first), so reaping
            // happens only with the table locked, which spawns hold.
            // SAFETY: siginfo_t is plain data; zeroed is a valid value.
            let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
            // SAFETY: `info` is a valid out pointer for the call.
            let rc =
                unsafe { libc::waitid(libc::P_ALL, 0, &mut info, libc::WEXITED | libc::WNOWAIT) };
            if rc < 0 {
                if std::io::Error::last_os_error().raw_os_error() == Some(libc::EINTR) {
                    continue;
                }
                // ECHILD: nothing to reap until the next spawn (counted, so
                // one that happened since `spawns` was read is not missed).
                let table = self.table.lock().unwrap_or_else(|e| e.into_inner());
                let _ = self
                    .changed
                    .wait_timeout_while(table, Duration::from_millis(500), |t| t.spawns == spawns);
                continue;
            }
            // SAFETY: waitid filled `info` for a child state change.
            let pid = unsafe { info.si_pid() };
            let mut table = self.table.lock().unwrap_or_else(|e| e.into_inner());
            let mut raw = 0;
            // SAFETY: `raw` is a valid out pointer.
            if unsafe { libc::waitpid(pid, &mut raw, libc::WNOHANG) } != pid {
                continue; // already reaped by a failed spawn
            }
            let status = if libc::WIFSIGNALED(raw) {
                Status::Signal(libc::WTERMSIG(raw))
            } else {
                Status::Code(libc::WEXITSTATUS(raw))
            };
            if let Some(slot) = table.tracked.get_mut(&pid) {
                *slot = Some(status);
                drop(table);
                if let Some(hook) = self.on_exit.get() {
                    hook();
                }
            }
        }
    }
}
