//! Starting a requested process: its entry in the request table, its
//! stdin writer (a thread started by the first chunk), and the hand-over of
//! its output and exit to the multiplexer (`mux`).

use std::io::{self, Write};
use std::os::unix::ffi::OsStrExt;
use std::sync::mpsc::{self, Sender};
use std::sync::Arc;
use std::time::Duration;

use sandbox_protocol::{GuestMsg, Spawn, Stream, INITIAL_WINDOW, MAX_CHUNK};

use crate::server::{lock, stream_index, Entry, Input, Out, Table};
use crate::window::Window;
use crate::{mux, process, reaper};

/// How long output is still collected after a process exits, for descendants
/// that keep its pipes open (`sandbox.output_grace_ms=` on the kernel
/// command line overrides it: guests on emulating hosts need far longer).
const DEFAULT_OUTPUT_GRACE: Duration = Duration::from_secs(2);

static OUTPUT_GRACE: std::sync::OnceLock<Duration> = std::sync::OnceLock::new();

/// Sets the output grace from the kernel command line, once at start.
pub fn set_output_grace(ms: Option<u64>) {
    let _ = OUTPUT_GRACE.set(ms.map_or(DEFAULT_OUTPUT_GRACE, Duration::from_millis));
}

fn output_grace() -> Duration {
    *OUTPUT_GRACE.get().unwrap_or(&DEFAULT_OUTPUT_GRACE)
}

/// Starts request `id` and reports `Started` or `SpawnFailed`; the output
/// multiplexer forwards its output and reports its exit.
pub fn start(id: u32, spawn: Spawn, out: &Out, table: &Table) {
    let started = mux::start().and_then(|()| {
        reaper::get().spawn(|| {
            let s = process::start(&spawn)?;
            let pid = s.pid;
            Ok::<_, io::Error>((s, pid))
        })
    });
    let mut started = match started {
        Ok(s) => s,
        Err(e) => {
            let (errno, message) = spawn_error(&spawn, &e);
            let _ = out.send(GuestMsg::SpawnFailed { id, errno, message });
            return;
        }
    };
    let pid = started.pid;
    let windows = [
        Arc::new(Window::waking(INITIAL_WINDOW, mux::wake)),
        Arc::new(Window::waking(INITIAL_WINDOW, mux::wake)),
    ];
    let output = |stream, file, own| mux::Output {
        stream,
        file,
        window: windows[stream_index(stream)].clone(),
        own,
    };
    // Output pipes (or the pty master) and the stdin writer.
    let mut outputs = Vec::new();
    let mut stdin: Option<Box<dyn Write + Send>> = None;
    let mut pty = None;
    if let Some(master) = started.pty.take() {
        if let (Ok(r), Ok(w)) = (master.try_clone(), master.try_clone()) {
            outputs.push(output(Stream::Stdout, r, false));
            stdin = Some(Box::new(w));
        }
        pty = Some(master);
    } else {
        if let Some(s) = started.stdout.take() {
            grow_pipe(&s);
            outputs.push(output(Stream::Stdout, s, true));
        }
        if let Some(s) = started.stderr.take() {
            grow_pipe(&s);
            outputs.push(output(Stream::Stderr, s, true));
        }
        stdin = started
            .stdin
            .take()
            .map(|s| Box::new(s) as Box<dyn Write + Send>);
    }
    let abort = mux::Abort::default();
    lock(table).insert(
        id,
        Entry {
            pid: Some(pid),
            stdin: stdin.map(|pipe| Input::Idle {
                id,
                pipe,
                out: out.clone(),
            }),
            windows: windows.clone(),
            pty,
            abort: Some(abort.clone()),
            socket: None,
        },
    );
    let _ = out.send(GuestMsg::Started {
        id,
        pid: pid as u32,
    });
    mux::add(mux::Job {
        id,
        pid,
        outputs,
        out: out.clone(),
        table: table.clone(),
        abort,
        grace: output_grace(),
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

/// Writes host stdin chunks into the process and returns credit for each.
pub(crate) fn stdin_thread(id: u32, mut stdin: Box<dyn Write + Send>, out: Out) -> Sender<Vec<u8>> {
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
