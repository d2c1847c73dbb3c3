//! Output forwarding and exit reports of every process the agent started,
//! on one thread: epoll over the output pipes (or pty masters) and an
//! eventfd that credit grants, aborts, new processes and the reaper ring.
//! Under UML every thread a process needed (clone, stack mapping, exit)
//! costs ptrace-intercepted guest syscalls; three per process were a large
//! part of an `exec`'s guest-side time.

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, Read};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use sandbox_protocol::{GuestMsg, Stream, MAX_CHUNK};

use crate::reaper::{self, Status};
use crate::server::{lock, Out, Table};
use crate::window::Window;

/// How long an aborted process's output is still drained after it died:
/// enough for what it wrote before the kill, not for descendants.
const ABORT_DRAIN: Duration = Duration::from_millis(50);

/// Set by the reaper's hook: some tracked process exited since the last look.
static EXITED: AtomicBool = AtomicBool::new(false);

fn exited() {
    EXITED.store(true, Ordering::Relaxed);
    wake();
}

/// Chunks read from one pipe in a row before other pipes get a turn.
const BURST: usize = 8;

/// The epoll token of the wake-up eventfd (job tokens are `key << 1 | pipe`).
const WAKE: u64 = u64::MAX;

/// One output stream of a process.
pub struct Output {
    pub stream: Stream,
    pub file: File,
    pub window: Arc<Window>,
    /// Whether the open file is the agent's alone (a pipe's read end), so
    /// it may be made non-blocking; a pty master is shared with the stdin
    /// writer, which must block.
    pub own: bool,
}

/// A started process handed over for forwarding and reporting.
pub struct Job {
    pub id: u32,
    pub pid: i32,
    pub outputs: Vec<Output>,
    pub out: Out,
    pub table: Table,
    pub abort: Abort,
    /// How long output is still collected after the exit.
    pub grace: Duration,
}

/// Tells the multiplexer that the host aborted a request: its exit is then
/// reported after a short drain instead of the whole grace.
#[derive(Clone, Default)]
pub struct Abort(Arc<AtomicBool>);

impl Abort {
    pub fn abort(&self) {
        self.0.store(true, Ordering::Relaxed);
        wake();
    }
}

/// Wakes the multiplexer thread (a window grant, an abort, an exit).
pub fn wake() {
    if let Some(mux) = MUX.get() {
        mux.wake();
    }
}

/// Starts the multiplexer thread unless it runs.
pub fn start() -> io::Result<()> {
    static RUNNING: Mutex<bool> = Mutex::new(false);
    let mut running = lock(&RUNNING);
    if *running {
        return Ok(());
    }
    if MUX.get().is_none() {
        let _ = MUX.set(Mux::new()?);
    }
    let Some(mux) = MUX.get() else {
        return Err(io::Error::other("the output multiplexer is not set up"));
    };
    reaper::get().on_exit(exited);
    std::thread::Builder::new()
        .name("output".into())
        .spawn(move || mux.run())?;
    *running = true;
    Ok(())
}

/// Hands a started process to the multiplexer thread (see [`start`]).
pub fn add(job: Job) {
    if let Some(mux) = MUX.get() {
        lock(&mux.incoming).push(job);
        mux.wake();
    }
}

static MUX: OnceLock<Mux> = OnceLock::new();

struct Mux {
    epoll: OwnedFd,
    wake: OwnedFd,
    incoming: Mutex<Vec<Job>>,
}

/// The time, read at most once per loop turn and only when an exited
/// process needs it (a clock read is a trapped syscall under UML).
#[derive(Default)]
struct Now(Option<Instant>);

impl Now {
    fn get(&mut self) -> Instant {
        *self.0.get_or_insert_with(Instant::now)
    }
}

/// Where a process stands after `settle`.
enum Next {
    Running,
    /// Exited; reported at this time at the latest.
    Due(Instant),
    Reported,
}

struct Pipe {
    stream: Stream,
    /// Non-blocking: read in bursts (see `forward`).
    burst: bool,
    file: Option<File>,
    window: Arc<Window>,
    /// Whether the file is in the epoll set (only while it has credit).
    armed: bool,
}

struct Live {
    id: u32,
    pid: i32,
    pipes: Vec<Pipe>,
    out: Out,
    table: Table,
    abort: Abort,
    grace: Duration,
    /// Set once the process exited, with the time its report is due.
    exit: Option<(Status, Instant)>,
}

/// Puts the agent's own end of a pipe in non-blocking mode.
fn nonblocking(file: &File) -> bool {
    // SAFETY: F_GETFL/F_SETFL take and return integer flags.
    unsafe {
        let flags = libc::fcntl(file.as_raw_fd(), libc::F_GETFL);
        flags >= 0 && libc::fcntl(file.as_raw_fd(), libc::F_SETFL, flags | libc::O_NONBLOCK) >= 0
    }
}

fn check(rc: libc::c_int) -> io::Result<libc::c_int> {
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

impl Mux {
    fn new() -> io::Result<Self> {
        // SAFETY: no memory arguments; the results are new descriptors.
        let (epoll, wake) = unsafe {
            let epoll = OwnedFd::from_raw_fd(check(libc::epoll_create1(libc::EPOLL_CLOEXEC))?);
            let wake = OwnedFd::from_raw_fd(check(libc::eventfd(
                0,
                libc::EFD_CLOEXEC | libc::EFD_NONBLOCK,
            ))?);
            (epoll, wake)
        };
        let mux = Self {
            epoll,
            wake,
            incoming: Mutex::new(Vec::new()),
        };
        mux.ctl(libc::EPOLL_CTL_ADD, mux.wake.as_raw_fd(), WAKE)?;
        Ok(mux)
    }

    fn ctl(&self, op: libc::c_int, fd: RawFd, token: u64) -> io::Result<()> {
        let mut ev = libc::epoll_event {
            events: libc::EPOLLIN as u32,
            u64: token,
        };
        // SAFETY: `ev` is a valid epoll_event for the call.
        check(unsafe { libc::epoll_ctl(self.epoll.as_raw_fd(), op, fd, &mut ev) }).map(|_| ())
    }

    fn wake(&self) {
        let one: u64 = 1;
        // SAFETY: writes 8 bytes from a valid u64. A full counter (EAGAIN)
        // already means a pending wake-up.
        unsafe { libc::write(self.wake.as_raw_fd(), (&one as *const u64).cast(), 8) };
    }

    fn run(&self) {
        let mut jobs: HashMap<u64, Live> = HashMap::new();
        let mut next_key = 0u64;
        let mut buf = vec![0u8; MAX_CHUNK];
        let mut events = [libc::epoll_event { events: 0, u64: 0 }; 64];
        loop {
            let exited = EXITED.swap(false, Ordering::Relaxed);
            for job in lock(&self.incoming).drain(..) {
                // Its exit may have been heard before it got here.
                let mut live = Live::new(job);
                live.poll_exit(&mut Now::default());
                jobs.insert(next_key, live);
                next_key += 1;
            }
            let mut now = Now::default();
            let mut due: Option<Instant> = None;
            jobs.retain(|key, live| {
                if exited {
                    live.poll_exit(&mut now);
                }
                match self.settle(*key, live, &mut now) {
                    Next::Running => true,
                    Next::Due(at) => {
                        due = Some(due.map_or(at, |d| d.min(at)));
                        true
                    }
                    Next::Reported => false,
                }
            });
            let timeout = due.map_or(-1, |at| {
                // Rounded up, so the loop does not spin short of the deadline.
                let ms = at
                    .saturating_duration_since(now.get())
                    .as_micros()
                    .div_ceil(1000);
                ms.min(i32::MAX as u128) as i32
            });
            // SAFETY: `events` is valid for its length.
            let n = unsafe {
                libc::epoll_wait(
                    self.epoll.as_raw_fd(),
                    events.as_mut_ptr(),
                    events.len() as i32,
                    timeout,
                )
            };
            let Ok(n) = usize::try_from(n) else {
                continue; // EINTR
            };
            for ev in &events[..n] {
                let token = ev.u64;
                if token == WAKE {
                    let mut count = 0u64;
                    // SAFETY: reads 8 bytes into a valid u64.
                    unsafe {
                        libc::read(self.wake.as_raw_fd(), (&mut count as *mut u64).cast(), 8)
                    };
                    continue;
                }
                if let Some(live) = jobs.get_mut(&(token >> 1)) {
                    self.forward(live, (token & 1) as usize, &mut buf);
                }
            }
        }
    }

    /// Brings one process's state up to date: each pipe's place in the
    /// epoll set, and its report once due.
    fn settle(&self, key: u64, live: &mut Live, now: &mut Now) -> Next {
        if let Some((_, due)) = &mut live.exit {
            if live.abort.0.load(Ordering::Relaxed) {
                *due = (*due).min(now.get() + ABORT_DRAIN);
            }
        }
        for (i, pipe) in live.pipes.iter_mut().enumerate() {
            let token = key << 1 | i as u64;
            match (pipe.file.as_ref(), pipe.window.credit()) {
                (None, _) => {}
                (Some(_), None) => self.close(pipe),
                (Some(f), Some(0)) if pipe.armed => {
                    pipe.armed = self.ctl(libc::EPOLL_CTL_DEL, f.as_raw_fd(), token).is_err();
                }
                (Some(f), Some(c)) if c > 0 && !pipe.armed => {
                    if self.ctl(libc::EPOLL_CTL_ADD, f.as_raw_fd(), token).is_ok() {
                        pipe.armed = true;
                    } else {
                        self.close(pipe);
                    }
                }
                _ => {}
            }
        }
        let Some((status, due)) = live.exit else {
            return Next::Running;
        };
        let drained = live.pipes.iter().all(|p| p.file.is_none());
        if drained || now.get() >= due {
            self.report(live, status);
            return Next::Reported;
        }
        Next::Due(due)
    }

    /// Reads pipe `i` within its credit and sends what it read: chunk after
    /// chunk while each read fills its buffer (a busy producer costs no
    /// epoll_wait per chunk), up to [`BURST`] chunks so that other
    /// processes' output is not kept waiting.
    fn forward(&self, live: &mut Live, i: usize, buf: &mut [u8]) {
        let Some(pipe) = live.pipes.get_mut(i) else {
            return;
        };
        for _ in 0..BURST {
            let Some(file) = pipe.file.as_mut() else {
                return;
            };
            let credit = match pipe.window.credit() {
                Some(c) if c > 0 => c,
                // Out of credit or closed: `settle` takes it out of the set.
                _ => return,
            };
            let max = (credit as usize).min(buf.len());
            match file.read(&mut buf[..max]) {
                Ok(0) => return self.close(pipe),
                Ok(n) => {
                    pipe.window.consume(n);
                    let _ = live.out.send(GuestMsg::Output {
                        id: live.id,
                        stream: pipe.stream,
                        data: buf[..n].to_vec(),
                    });
                    if n < max || !pipe.burst {
                        return; // drained for now, or reads may block
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                // A pty master reads EIO once the terminal's last user is gone.
                Err(_) => return self.close(pipe),
            }
        }
    }

    fn close(&self, pipe: &mut Pipe) {
        if let Some(f) = pipe.file.take() {
            if pipe.armed {
                let _ = self.ctl(libc::EPOLL_CTL_DEL, f.as_raw_fd(), 0);
            }
        }
        pipe.armed = false;
    }

    /// Ends forwarding, forgets the request and sends its exit report.
    fn report(&self, live: &mut Live, status: Status) {
        for pipe in &mut live.pipes {
            self.close(pipe);
        }
        if let Some(e) = lock(&live.table).remove(&live.id) {
            for w in &e.windows {
                w.close();
            }
        }
        let (code, signal) = match status {
            Status::Code(c) => (Some(c), None),
            Status::Signal(s) => (None, Some(s)),
        };
        let _ = live.out.send(GuestMsg::Exited {
            id: live.id,
            code,
            signal,
        });
    }
}

impl Live {
    fn new(job: Job) -> Self {
        Self {
            id: job.id,
            pid: job.pid,
            pipes: job
                .outputs
                .into_iter()
                .map(|o| Pipe {
                    burst: o.own && nonblocking(&o.file),
                    stream: o.stream,
                    file: Some(o.file),
                    window: o.window,
                    armed: false,
                })
                .collect(),
            out: job.out,
            table: job.table,
            abort: job.abort,
            grace: job.grace,
            exit: None,
        }
    }

    /// Records the exit if the reaper has it.
    fn poll_exit(&mut self, now: &mut Now) {
        if self.exit.is_none() {
            if let Some(status) = reaper::get().try_take(self.pid) {
                self.exit = Some((status, now.get() + self.grace));
            }
        }
    }
}
