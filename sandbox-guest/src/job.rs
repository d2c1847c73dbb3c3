//! One requested process from start to exit report: its stdin writer, its
//! output pumps (each gated by the host's credit window) and its waiter.

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::sync::mpsc::{self, Sender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sandbox_protocol::{GuestMsg, Spawn, Stream, INITIAL_WINDOW, MAX_CHUNK};

use crate::process;
use crate::reaper::{self, Status};
use crate::server::{lock, stream_index, Entry, Out, Table};
use crate::window::Window;

/// How long output is still collected after a process exits, for descendants
/// that keep its pipes open (`sandbox.output_grace_ms=` on the kernel
/// command line overrides it: guests on emulating hosts need far longer).
const DEFAULT_OUTPUT_GRACE: Duration = Duration::from_secs(2);

static OUTPUT_GRACE: std::sync::OnceLock<Duration> = std::sync::OnceLock::new();

/// Sets the output grace from the kernel command line, once at start.
pub fn set_output_grace(ms: Option<u64>) {
    let _ = OUTPUT_GRACE.set(ms.map_or(DEFAULT_OUTPUT_GRACE, Duration::from_millis));
}

/// How long an aborted process's output is still drained after it died:
/// enough for what it wrote before the kill, not for descendants.
const ABORT_DRAIN: Duration = Duration::from_millis(50);

/// What the waiter of a process hears about after the exit.
pub enum Wake {
    /// One output pump reached end of file.
    PumpDone,
    /// The host aborted the request: report without the grace.
    Aborted,
}

fn output_grace() -> Duration {
    *OUTPUT_GRACE.get().unwrap_or(&DEFAULT_OUTPUT_GRACE)
}

/// Starts request `id` and reports `Started` or `SpawnFailed`.
pub fn start(id: u32, spawn: Spawn, out: &Out, table: &Table) {
    let mut started = match reaper::get().spawn(|| {
        let s = process::start(&spawn)?;
        let pid = s.pid;
        Ok::<_, io::Error>((s, pid))
    }) {
        Ok(s) => s,
        Err(e) => {
            let (errno, message) = spawn_error(&spawn, &e);
            let _ = out.send(GuestMsg::SpawnFailed { id, errno, message });
            return;
        }
    };
    let pid = started.pid;
    let windows = [
        Arc::new(Window::new(INITIAL_WINDOW)),
        Arc::new(Window::new(INITIAL_WINDOW)),
    ];
    // Output pipes (or the pty master) and the stdin writer.
    let mut outputs: Vec<(Stream, Box<dyn Read + Send>)> = Vec::new();
    let mut stdin: Option<Box<dyn Write + Send>> = None;
    let mut pty = None;
    if let Some(master) = started.pty.take() {
        let (reader, writer, resizer) = (dup(&master), dup(&master), master);
        if let (Some(r), Some(w)) = (reader, writer) {
            outputs.push((Stream::Stdout, Box::new(r)));
            stdin = Some(Box::new(w));
        }
        pty = Some(resizer);
    } else {
        if let Some(s) = started.child.stdout.take() {
            grow_pipe(&s);
            outputs.push((Stream::Stdout, Box::new(s)));
        }
        if let Some(s) = started.child.stderr.take() {
            grow_pipe(&s);
            outputs.push((Stream::Stderr, Box::new(s)));
        }
        stdin = started
            .child
            .stdin
            .take()
            .map(|s| Box::new(s) as Box<dyn Write + Send>);
    }
    let stdin = stdin.map(|w| stdin_thread(id, w, out.clone()));
    let (done_tx, done_rx) = mpsc::channel::<Wake>();
    lock(table).insert(
        id,
        Entry {
            pid: Some(pid),
            stdin,
            windows: windows.clone(),
            pty,
            abort: Some(done_tx.clone()),
            socket: None,
        },
    );
    let _ = out.send(GuestMsg::Started {
        id,
        pid: pid as u32,
    });
    // Output is forwarded while `open` is true; the exit report closes it.
    let open = Arc::new(Mutex::new(true));
    let pumps = outputs.len();
    for (stream, reader) in outputs {
        let window = windows[stream_index(stream)].clone();
        pump(id, stream, reader, window, out, &open, done_tx.clone());
    }
    drop(done_tx);
    let out = out.clone();
    let table = table.clone();
    let _ = std::thread::Builder::new()
        .name(format!("wait-{id}"))
        .spawn(move || {
            let status = reaper::get().wait(pid);
            let mut deadline = Instant::now() + output_grace();
            let mut open_pumps = pumps;
            while open_pumps > 0 {
                let left = deadline.saturating_duration_since(Instant::now());
                match done_rx.recv_timeout(left) {
                    Ok(Wake::PumpDone) => open_pumps -= 1,
                    Ok(Wake::Aborted) => {
                        deadline = deadline.min(Instant::now() + ABORT_DRAIN);
                    }
                    Err(_) => break,
                }
            }
            let mut open = lock(&open);
            *open = false;
            if let Some(e) = lock(&table).remove(&id) {
                for w in &e.windows {
                    w.close();
                }
            }
            let (code, signal) = match status {
                Status::Code(c) => (Some(c), None),
                Status::Signal(s) => (None, Some(s)),
            };
            let _ = out.send(GuestMsg::Exited { id, code, signal });
        });
}

/// The errno and message of a failed spawn. A missing working directory
/// fails with the same ENOENT as a missing program: the directory is
/// checked only then (off the hot path) and named when it is the cause.
fn spawn_error(spawn: &Spawn, e: &io::Error) -> (i32, String) {
    let errno = e.raw_os_error().unwrap_or(libc::EINVAL);
    if let Some(cwd) = spawn.cwd.as_deref() {
        let dir = std::path::Path::new(std::ffi::OsStr::from_bytes(cwd));
        let problem = match std::fs::metadata(dir) {
            Ok(m) if m.is_dir() => None,
            Ok(_) => Some(io::Error::from_raw_os_error(libc::ENOTDIR)),
            Err(e) => Some(e),
        };
        if let Some(p) = problem {
            let errno = p.raw_os_error().unwrap_or(errno);
            return (errno, format!("working directory {}: {p}", dir.display()));
        }
    }
    (errno, e.to_string())
}

/// Bytes an output pipe holds: large enough that one read takes a whole
/// protocol chunk, so bulk output costs few guest syscalls.
const PIPE_SIZE: libc::c_int = MAX_CHUNK as libc::c_int;

fn grow_pipe(pipe: &impl std::os::fd::AsRawFd) {
    // SAFETY: F_SETPIPE_SZ takes an integer; failure leaves the default size.
    unsafe { libc::fcntl(pipe.as_raw_fd(), libc::F_SETPIPE_SZ, PIPE_SIZE) };
}

fn dup(f: &File) -> Option<File> {
    f.try_clone().ok()
}

/// Forwards one output stream, never more than the host's credit allows:
/// past that the pump stops reading and the process blocks on a full pipe.
fn pump(
    id: u32,
    stream: Stream,
    mut reader: Box<dyn Read + Send>,
    window: Arc<Window>,
    out: &Out,
    open: &Arc<Mutex<bool>>,
    done: Sender<Wake>,
) {
    let out = out.clone();
    let open = open.clone();
    let _ = std::thread::Builder::new()
        .name(format!("out-{id}"))
        .spawn(move || {
            let mut buf = vec![0u8; MAX_CHUNK];
            while let Some(credit) = window.wait() {
                let max = (credit as usize).min(MAX_CHUNK);
                let n = match reader.read(&mut buf[..max]) {
                    Ok(0) => break,
                    Ok(n) => n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    // A pty master reads EIO once the terminal's last user is gone.
                    Err(_) => break,
                };
                let open = lock(&open);
                if !*open {
                    break;
                }
                window.consume(n);
                let _ = out.send(GuestMsg::Output {
                    id,
                    stream,
                    data: buf[..n].to_vec(),
                });
            }
            let _ = done.send(Wake::PumpDone);
        });
}

/// Writes host stdin chunks into the process and returns credit for each.
fn stdin_thread(id: u32, mut stdin: Box<dyn Write + Send>, out: Out) -> Sender<Vec<u8>> {
    let (tx, rx) = mpsc::channel::<Vec<u8>>();
    let _ = std::thread::Builder::new()
        .name(format!("in-{id}"))
        .spawn(move || {
            for chunk in rx {
                if stdin.write_all(&chunk).is_err() {
                    break;
                }
                let _ = out.send(GuestMsg::StdinCredit {
                    id,
                    bytes: chunk.len() as u32,
                });
            }
        });
    tx
}
