//! The request loop: reads host frames, starts processes (whose output and
//! exits the multiplexer in `mux` forwards), serves file requests and port
//! forwards on threads of their own.

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, Read, Write};
use std::sync::mpsc::Sender;
use std::sync::{Arc, Mutex};

use sandbox_protocol::{
    encode, FrameDecoder, GuestMsg, Hello, HostMsg, Stream, GUEST_MAGIC, PROTOCOL_VERSION,
};

use crate::window::Window;
use crate::{forward, fs, init, job, mux, process};

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

/// A running process of this connection.
pub(crate) struct Entry {
    /// The process, for signals; `None` for file system requests.
    pub pid: Option<i32>,
    /// Where stdin chunks go; `None` once closed.
    pub stdin: Option<Input>,
    /// Output credit, indexed by [`stream_index`].
    pub windows: [Arc<Window>; 2],
    /// The pty master, for resizing.
    pub pty: Option<File>,
    /// Tells the output multiplexer that the host aborted the process.
    pub abort: Option<mux::Abort>,
    /// A port forward's connection, shut down on abort.
    pub socket: Option<std::net::TcpStream>,
}

impl Entry {
    /// A file system request: a credit window for reads or a chunk sender
    /// for writes, no process.
    pub fn io(read: Option<Arc<Window>>, write: Option<Sender<Vec<u8>>>) -> Self {
        let read = read.unwrap_or_else(|| Arc::new(Window::new(0)));
        Self {
            pid: None,
            stdin: write.map(Input::Thread),
            windows: [read, Arc::new(Window::new(0))],
            pty: None,
            abort: None,
            socket: None,
        }
    }
}

/// The destination of a request's stdin chunks.
pub(crate) enum Input {
    /// A writer thread's queue.
    Thread(Sender<Vec<u8>>),
    /// A process's stdin whose writer thread starts with the first chunk
    /// (most processes never get one: no thread for them).
    Idle {
        id: u32,
        pipe: Box<dyn Write + Send>,
        out: Out,
    },
}

impl Input {
    fn send(self, chunk: Vec<u8>) -> Self {
        let tx = match self {
            Input::Thread(tx) => tx,
            Input::Idle { id, pipe, out } => job::stdin_thread(id, pipe, out),
        };
        let _ = tx.send(chunk);
        Input::Thread(tx)
    }
}

pub(crate) type Table = Arc<Mutex<HashMap<u32, Entry>>>;
/// The sending half of a connection, shared by every thread that reports
/// something. Each message is encoded and written in place under a lock (no
/// hand-off to a writer thread: under UML every thread switch is costly).
#[derive(Clone)]
pub(crate) struct Out(Arc<Mutex<File>>);

impl Out {
    pub fn send(&self, msg: GuestMsg) -> io::Result<()> {
        let frame = encode(&msg).map_err(io::Error::other)?;
        lock(&self.0).write_all(&frame)
    }
}

/// Serves one connection until the host sends `Shutdown` or disconnects.
pub fn serve(channel: File, role: Role) -> io::Result<Ended> {
    let mut writer = channel.try_clone()?;
    writer.write_all(&GUEST_MAGIC)?;
    let out = Out(Arc::new(Mutex::new(writer)));
    out.send(GuestMsg::Hello(Hello {
        version: PROTOCOL_VERSION,
        agent_version: env!("CARGO_PKG_VERSION").to_string(),
        uptime_ms: uptime_ms(),
    }))?;
    let table: Table = Arc::default();
    read_loop(channel, &out, &table, role)
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
    let mut t = lock(table);
    match msg {
        HostMsg::Spawn { id, spawn } => {
            if t.contains_key(&id) {
                return reject(Some(id), format!("request id {id} is already running"));
            }
            drop(t);
            job::start(id, spawn, out, table);
        }
        HostMsg::Stdin { id, data } => match t.get_mut(&id).map(|e| (e.stdin.take(), e)) {
            Some((Some(input), e)) => e.stdin = Some(input.send(data)),
            _ => reject(Some(id), format!("request {id} has no open stdin")),
        },
        HostMsg::CloseStdin { id } => {
            if let Some(e) = t.get_mut(&id) {
                e.stdin = None;
            }
        }
        HostMsg::Signal { id, signal } => match t.get(&id).map(|e| e.pid) {
            // SAFETY: kill has no memory arguments; the negative pid targets
            // the process group the child leads.
            Some(Some(pid)) => unsafe {
                libc::kill(-pid, signal);
            },
            Some(None) => {
                // Cancelling a file request: wake its reader for good.
                for w in &t[&id].windows {
                    w.close();
                }
            }
            None => reject(Some(id), format!("request {id} is not running")),
        },
        // An id already reported has nothing left to cancel.
        HostMsg::Abort { id } => {
            if let Some(e) = t.get_mut(&id) {
                if let Some(socket) = &e.socket {
                    let _ = socket.shutdown(std::net::Shutdown::Both);
                    e.stdin = None;
                }
                if let Some(pid) = e.pid {
                    // SAFETY: kill has no memory arguments; the negative pid
                    // targets the process group the child leads.
                    unsafe { libc::kill(-pid, libc::SIGKILL) };
                }
                if let Some(abort) = &e.abort {
                    abort.abort();
                } else {
                    for w in &e.windows {
                        w.close();
                    }
                }
            }
        }
        HostMsg::Restored {
            entropy,
            unix_time_ns,
            ca,
            hostname,
            machine_id,
        } => crate::restored::apply(
            &entropy,
            unix_time_ns,
            ca.as_deref(),
            crate::restored::Identity {
                hostname: hostname.as_deref(),
                machine_id: machine_id.as_deref(),
            },
        ),
        HostMsg::Notice { text } => {
            let line: String = text.chars().filter(|c| !c.is_control()).take(512).collect();
            init::log_as("sandbox", &line);
        }
        HostMsg::Fs { id, op } => {
            if t.contains_key(&id) {
                return reject(Some(id), format!("request id {id} is already running"));
            }
            drop(t);
            fs::start(id, op, out, table);
        }
        HostMsg::Connect { id, port } => {
            if t.contains_key(&id) {
                return reject(Some(id), format!("request id {id} is already running"));
            }
            drop(t);
            forward::start(id, port, out, table);
        }
        HostMsg::Resize { id, size } => {
            let done = t
                .get(&id)
                .and_then(|e| e.pty.as_ref())
                .map(|p| process::resize(p, size));
            match done {
                Some(Ok(())) => {}
                Some(Err(e)) => reject(Some(id), format!("resize failed: {e}")),
                None => reject(Some(id), format!("request {id} has no terminal")),
            }
        }
        HostMsg::Credit { id, stream, bytes } => {
            if let Some(e) = t.get(&id) {
                e.windows[stream_index(stream)].grant(bytes);
            }
        }
        HostMsg::Shutdown => {}
    }
}

pub(crate) fn stream_index(stream: Stream) -> usize {
    match stream {
        Stream::Stdout => 0,
        Stream::Stderr => 1,
    }
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn kill_all(table: &Table) {
    for e in lock(table).values_mut() {
        if let Some(socket) = &e.socket {
            // Reset the forward, and end its writer (it waits for chunks).
            let _ = socket.shutdown(std::net::Shutdown::Both);
            e.stdin = None;
        }
        if let Some(pid) = e.pid {
            // SAFETY: kill has no memory arguments.
            unsafe { libc::kill(-pid, libc::SIGKILL) };
        }
        for w in &e.windows {
            w.close();
        }
    }
}

fn uptime_ms() -> u64 {
    std::fs::read_to_string("/proc/uptime")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<f64>().ok())
        .map(|secs| (secs * 1000.0) as u64)
        .unwrap_or(0)
}
