//! The request loop: reads host frames, starts processes, streams their output
//! back and reports their exits. Each process has its own threads, so one
//! process's output never waits behind another's.

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, Read, Write};
use std::process::{ChildStderr, ChildStdin, ChildStdout};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sandbox_protocol::{
    encode, FrameDecoder, GuestMsg, Hello, HostMsg, Spawn, Stream, GUEST_MAGIC, MAX_CHUNK,
    PROTOCOL_VERSION,
};

use crate::reaper::{self, Status};
use crate::{init, process};

/// How long output is still collected after a process exits, for descendants
/// that keep its pipes open.
const OUTPUT_GRACE: Duration = Duration::from_secs(2);

/// Whether the agent is the guest's init or a test instance on the host.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Init,
    Standalone,
}

/// How a connection ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ended {
    /// The host asked for a shutdown.
    Shutdown,
    /// The host closed the connection.
    Disconnected,
}

type Out = Sender<GuestMsg>;

struct Entry {
    pid: i32,
    stdin: Option<Sender<Vec<u8>>>,
}

type Table = Arc<Mutex<HashMap<u32, Entry>>>;

/// Serves one connection until the host sends `Shutdown` or disconnects.
pub fn serve(channel: File, role: Role) -> io::Result<Ended> {
    let writer = channel.try_clone()?;
    let (out, rx) = mpsc::channel::<GuestMsg>();
    let writer_thread = std::thread::Builder::new()
        .name("writer".into())
        .spawn(move || write_loop(writer, rx))?;
    out.send(GuestMsg::Hello(Hello {
        version: PROTOCOL_VERSION,
        agent_version: env!("CARGO_PKG_VERSION").to_string(),
        uptime_ms: uptime_ms(),
    }))
    .map_err(|_| io::Error::other("writer stopped"))?;
    let table: Table = Arc::default();
    let result = read_loop(channel, &out, &table, role);
    drop(out);
    let _ = writer_thread.join();
    result
}

fn write_loop(mut writer: File, rx: Receiver<GuestMsg>) -> io::Result<()> {
    writer.write_all(&GUEST_MAGIC)?;
    for msg in rx {
        let frame = encode(&msg).map_err(io::Error::other)?;
        writer.write_all(&frame)?;
        if msg == GuestMsg::ShuttingDown {
            break;
        }
    }
    writer.flush()
}

fn read_loop(mut channel: File, out: &Out, table: &Table, role: Role) -> io::Result<Ended> {
    let mut decoder = FrameDecoder::new();
    let mut buf = vec![0u8; 64 << 10];
    loop {
        let n = match channel.read(&mut buf) {
            Ok(0) => {
                kill_all(table);
                return Ok(Ended::Disconnected);
            }
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        decoder.push(&buf[..n]);
        loop {
            let msg = match decoder.decode_next::<HostMsg>() {
                Ok(Some(msg)) => msg,
                Ok(None) => break,
                Err(e) => {
                    // The stream is out of sync; nothing after this can be trusted.
                    let _ = out.send(GuestMsg::Rejected {
                        id: None,
                        message: format!("malformed frame: {e}"),
                    });
                    return Err(io::Error::new(io::ErrorKind::InvalidData, e));
                }
            };
            if let HostMsg::Shutdown = msg {
                if role == Role::Init {
                    init::log("shutdown requested");
                }
                kill_all(table);
                let _ = out.send(GuestMsg::ShuttingDown);
                return Ok(Ended::Shutdown);
            }
            handle(msg, out, table);
        }
    }
}

fn handle(msg: HostMsg, out: &Out, table: &Table) {
    let reject = |id, message: String| {
        let _ = out.send(GuestMsg::Rejected { id, message });
    };
    match msg {
        HostMsg::Spawn { id, spawn } => {
            if lock(table).contains_key(&id) {
                return reject(Some(id), format!("request id {id} is already running"));
            }
            start(id, spawn, out, table);
        }
        HostMsg::Stdin { id, data } => match lock(table).get(&id).and_then(|e| e.stdin.as_ref()) {
            Some(tx) => {
                let _ = tx.send(data);
            }
            None => reject(Some(id), format!("request {id} has no open stdin")),
        },
        HostMsg::CloseStdin { id } => {
            if let Some(e) = lock(table).get_mut(&id) {
                e.stdin = None;
            }
        }
        HostMsg::Signal { id, signal } => match lock(table).get(&id) {
            // SAFETY: kill has no memory arguments; the negative pid targets
            // the process group the child leads (it called setsid).
            Some(e) => unsafe {
                libc::kill(-e.pid, signal);
            },
            None => reject(Some(id), format!("request {id} is not running")),
        },
        HostMsg::Shutdown => {}
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn kill_all(table: &Table) {
    for e in lock(table).values() {
        // SAFETY: kill has no memory arguments.
        unsafe { libc::kill(-e.pid, libc::SIGKILL) };
    }
}

fn start(id: u32, spawn: Spawn, out: &Out, table: &Table) {
    let started = reaper::get().spawn(|| process::start(&spawn));
    let mut child = match started {
        Ok(child) => child,
        Err(e) => {
            let _ = out.send(GuestMsg::SpawnFailed {
                id,
                errno: e.raw_os_error().unwrap_or(libc::EINVAL),
                message: e.to_string(),
            });
            return;
        }
    };
    let pid = child.id() as i32;
    let stdin = child.stdin.take().map(stdin_thread);
    lock(table).insert(id, Entry { pid, stdin });
    let _ = out.send(GuestMsg::Started {
        id,
        pid: pid as u32,
    });
    // Output is forwarded while `open` is true; the exit report closes it.
    let open = Arc::new(Mutex::new(true));
    let (done_tx, done_rx) = mpsc::channel::<()>();
    if let Some(s) = child.stdout.take() {
        pump(id, Stream::Stdout, s, out, &open, done_tx.clone());
    }
    if let Some(s) = child.stderr.take() {
        pump(id, Stream::Stderr, s, out, &open, done_tx.clone());
    }
    drop(done_tx);
    let out = out.clone();
    let table = table.clone();
    let _ = std::thread::Builder::new()
        .name(format!("wait-{id}"))
        .spawn(move || {
            let status = reaper::get().wait(pid);
            let deadline = std::time::Instant::now() + OUTPUT_GRACE;
            for _ in 0..2 {
                let left = deadline.saturating_duration_since(std::time::Instant::now());
                if done_rx.recv_timeout(left).is_err() {
                    break;
                }
            }
            let mut open = lock(&open);
            *open = false;
            lock(&table).remove(&id);
            let (code, signal) = match status {
                Status::Code(c) => (Some(c), None),
                Status::Signal(s) => (None, Some(s)),
            };
            let _ = out.send(GuestMsg::Exited { id, code, signal });
        });
}

trait OutputPipe: Read + Send + 'static {}
impl OutputPipe for ChildStdout {}
impl OutputPipe for ChildStderr {}

fn pump(
    id: u32,
    stream: Stream,
    mut pipe: impl OutputPipe,
    out: &Out,
    open: &Arc<Mutex<bool>>,
    done: Sender<()>,
) {
    let out = out.clone();
    let open = open.clone();
    let _ = std::thread::Builder::new()
        .name(format!("out-{id}"))
        .spawn(move || {
            let mut buf = vec![0u8; MAX_CHUNK];
            loop {
                let n = match pipe.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(_) => break,
                };
                let open = lock(&open);
                if !*open {
                    break;
                }
                let _ = out.send(GuestMsg::Output {
                    id,
                    stream,
                    data: buf[..n].to_vec(),
                });
            }
            let _ = done.send(());
        });
}

fn stdin_thread(mut stdin: ChildStdin) -> Sender<Vec<u8>> {
    let (tx, rx) = mpsc::channel::<Vec<u8>>();
    let _ = std::thread::Builder::new()
        .name("stdin".into())
        .spawn(move || {
            for chunk in rx {
                if stdin.write_all(&chunk).is_err() {
                    break;
                }
            }
        });
    tx
}

fn uptime_ms() -> u64 {
    std::fs::read_to_string("/proc/uptime")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<f64>().ok())
        .map(|secs| (secs * 1000.0) as u64)
        .unwrap_or(0)
}
