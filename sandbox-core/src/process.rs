//! Spawned processes and ptys: handles returned at once, streams with credit
//! flow control, readiness and exit.
//!
//! One dispatcher task per process routes the guest's events: output chunks
//! to the stdout/stderr streams, stdin credit to the writer, readiness and
//! exit to watch channels. Output flows only as fast as the reader consumes
//! it: each stream has [`INITIAL_WINDOW`] bytes of credit, returned as the
//! reader reads, so a slow reader blocks the guest process instead of
//! growing host memory.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};

use sandbox_protocol::{HostMsg, PtySize, Stream, INITIAL_WINDOW, MAX_CHUNK};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::{mpsc, watch};

use crate::client::{Event, Link, Request};
use crate::{Error, ExitStatus, Signal};

/// Exit status reported for a process that could not start, as a shell does.
pub const NOT_STARTED: ExitStatus = ExitStatus {
    code: Some(127),
    signal: None,
};

/// Produces the guest console's tail for error reports.
pub(crate) type Console = Arc<dyn Fn() -> String + Send + Sync>;

#[derive(Clone, Debug)]
enum Ready {
    Pending,
    Running(u32),
    Failed { errno: i32, message: String },
    Stopped(String),
}

/// Why a request ended without a status.
#[derive(Clone, Debug)]
enum Failure {
    /// The guest or the connection went away.
    Stopped(String),
    /// A file system request failed.
    Fs(sandbox_protocol::FsError),
}

#[derive(Clone)]
struct Core {
    id: u32,
    /// The program, or the path of a file request.
    program: String,
    /// The operation of a file request (for its errors).
    fs_op: &'static str,
    link: Link,
    ready: watch::Receiver<Ready>,
    exit: watch::Receiver<Option<Result<ExitStatus, Failure>>>,
    console: Console,
    /// With `kill_on_drop`: cancels the request when the last handle is
    /// dropped before the process exited.
    kill_guard: Option<Arc<KillOnDrop>>,
}

/// Aborts a request on drop unless its process already exited.
struct KillOnDrop {
    guard: crate::client::AbortOnDrop,
    exit: watch::Receiver<Option<Result<ExitStatus, Failure>>>,
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if self.exit.borrow().is_some() {
            self.guard.disarm();
        }
        // The guard, dropped next, aborts if still armed.
    }
}

impl Core {
    fn kill_on_drop(&mut self) {
        self.kill_guard = Some(Arc::new(KillOnDrop {
            guard: crate::client::AbortOnDrop::new(self.link.clone(), self.id),
            exit: self.exit.clone(),
        }));
    }

    fn stopped(&self, reason: String) -> Error {
        Error::GuestStopped {
            reason,
            console: (self.console)(),
        }
    }

    async fn ready(&self) -> Result<u32, Error> {
        let mut rx = self.ready.clone();
        let state = rx
            .wait_for(|r| !matches!(r, Ready::Pending))
            .await
            .map(|r| r.clone())
            .unwrap_or(Ready::Stopped("the process handle closed".into()));
        match state {
            Ready::Running(pid) => Ok(pid),
            Ready::Failed { errno, message } => Err(Error::Spawn {
                program: self.program.clone(),
                errno,
                message,
            }),
            Ready::Stopped(reason) => Err(self.stopped(reason)),
            Ready::Pending => unreachable!("wait_for skips Pending"),
        }
    }

    async fn exit(&self) -> Result<ExitStatus, Error> {
        let mut rx = self.exit.clone();
        let state = rx
            .wait_for(Option::is_some)
            .await
            .map(|r| r.clone())
            .ok()
            .flatten();
        match state {
            Some(Ok(status)) => Ok(status),
            Some(Err(Failure::Stopped(reason))) => Err(self.stopped(reason)),
            Some(Err(Failure::Fs(e))) => Err(Error::Fs {
                op: self.fs_op,
                path: self.program.clone(),
                errno: e.errno,
                message: e.message,
            }),
            None => Err(self.stopped("the process handle closed".into())),
        }
    }

    fn kill(&self, signal: Signal) -> Result<(), Error> {
        if self.exit.borrow().is_some() {
            return Ok(()); // already gone: nothing to signal
        }
        self.link
            .send(HostMsg::Signal {
                id: self.id,
                signal: signal.0,
            })
            .map_err(|r| self.stopped(r))
    }
}

/// A process started with [`crate::Command::spawn`].
pub struct Process {
    core: Core,
    /// Its standard input; dropping or shutting it down closes the pipe.
    pub stdin: Option<ProcessStdin>,
    /// Its standard output.
    pub stdout: Option<OutputStream>,
    /// Its standard error.
    pub stderr: Option<OutputStream>,
}

impl Process {
    pub(crate) fn kill_on_drop(&mut self) {
        self.core.kill_on_drop();
    }

    /// The guest pid once the process runs; fails with [`Error::Spawn`]
    /// (carrying the errno) when it could not start.
    pub async fn ready(&self) -> Result<u32, Error> {
        self.core.ready().await
    }

    /// How it ended. Resolves even when it never started ([`NOT_STARTED`]).
    pub async fn exit(&self) -> Result<ExitStatus, Error> {
        self.core.exit().await
    }

    /// Sends `signal` to its whole process group.
    pub fn kill(&self, signal: Signal) -> Result<(), Error> {
        self.core.kill(signal)
    }
}

/// A process on a guest pseudo-terminal, from [`crate::Command::pty`].
pub struct Pty {
    core: Core,
    /// Keyboard input to the terminal.
    pub input: ProcessStdin,
    /// Everything the terminal displays (stdout and stderr together).
    pub output: OutputStream,
}

impl Pty {
    pub(crate) fn kill_on_drop(&mut self) {
        self.core.kill_on_drop();
    }

    /// The guest pid once the process runs.
    pub async fn ready(&self) -> Result<u32, Error> {
        self.core.ready().await
    }

    /// How it ended.
    pub async fn exit(&self) -> Result<ExitStatus, Error> {
        self.core.exit().await
    }

    /// Sends `signal` to its whole process group.
    pub fn kill(&self, signal: Signal) -> Result<(), Error> {
        self.core.kill(signal)
    }

    /// Changes the terminal size (the guest program gets SIGWINCH).
    pub fn resize(&self, size: PtySize) -> Result<(), Error> {
        self.core
            .link
            .send(HostMsg::Resize {
                id: self.core.id,
                size,
            })
            .map_err(|r| self.core.stopped(r))
    }
}

/// Shared between an output stream and the dispatcher.
#[derive(Default)]
struct Flow {
    /// Bytes received and not yet credited back.
    in_flight: AtomicU64,
    /// The reader is gone: the dispatcher discards and credits at once.
    dropped: AtomicBool,
}

type Chunks = mpsc::UnboundedReceiver<Result<Vec<u8>, String>>;
type ChunkSender = mpsc::UnboundedSender<Result<Vec<u8>, String>>;

/// A process's output as an [`AsyncRead`]. Reading returns credit to the
/// guest; dropping the stream discards the rest without stalling it.
pub struct OutputStream {
    rx: Chunks,
    chunk: Vec<u8>,
    pos: usize,
    uncredited: u32,
    link: Link,
    id: u32,
    stream: Stream,
    flow: Arc<Flow>,
}

impl OutputStream {
    /// A guard that cancels this stream's request if dropped armed.
    pub(crate) fn abort_guard(&self) -> crate::client::AbortOnDrop {
        crate::client::AbortOnDrop::new(self.link.clone(), self.id)
    }

    fn credit(&mut self, force: bool) {
        if self.uncredited > 0 && (force || self.uncredited >= INITIAL_WINDOW / 4) {
            let bytes = std::mem::take(&mut self.uncredited);
            self.flow
                .in_flight
                .fetch_sub(u64::from(bytes), Ordering::Relaxed);
            let _ = self.link.send(HostMsg::Credit {
                id: self.id,
                stream: self.stream,
                bytes,
            });
        }
    }
}

impl AsyncRead for OutputStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        loop {
            if this.pos < this.chunk.len() {
                let n = buf.remaining().min(this.chunk.len() - this.pos);
                buf.put_slice(&this.chunk[this.pos..this.pos + n]);
                this.pos += n;
                this.uncredited += n as u32;
                // Hand credit back once the reader caught up or a quarter
                // window was consumed, not on every small read.
                let caught_up = this.pos == this.chunk.len() && this.rx.is_empty();
                this.credit(caught_up);
                return Poll::Ready(Ok(()));
            }
            match this.rx.poll_recv(cx) {
                Poll::Ready(Some(Ok(data))) => {
                    this.chunk = data;
                    this.pos = 0;
                }
                Poll::Ready(Some(Err(reason))) => {
                    return Poll::Ready(Err(io::Error::new(io::ErrorKind::BrokenPipe, reason)))
                }
                Poll::Ready(None) => return Poll::Ready(Ok(())),
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}

impl Drop for OutputStream {
    fn drop(&mut self) {
        self.flow.dropped.store(true, Ordering::Relaxed);
        let unread = (self.chunk.len() - self.pos) as u32;
        self.uncredited += unread;
        while let Ok(Ok(data)) = self.rx.try_recv() {
            self.uncredited += data.len() as u32;
        }
        self.credit(true);
    }
}

#[derive(Default)]
struct StdinState {
    credit: u64,
    closed: bool,
    waker: Option<Waker>,
}

/// A process's stdin (or a pty's input) as an [`AsyncWrite`]. Writes wait
/// for the guest's credit; after shutdown, or once the process exited,
/// writes fail with `BrokenPipe`.
pub struct ProcessStdin {
    link: Link,
    id: u32,
    state: Arc<Mutex<StdinState>>,
}

fn lock(s: &Mutex<StdinState>) -> std::sync::MutexGuard<'_, StdinState> {
    s.lock().unwrap_or_else(|e| e.into_inner())
}

impl AsyncWrite for ProcessStdin {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let mut s = lock(&self.state);
        if s.closed {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "stdin is closed",
            )));
        }
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        if s.credit == 0 {
            s.waker = Some(cx.waker().clone());
            return Poll::Pending;
        }
        let n = buf.len().min(s.credit as usize).min(MAX_CHUNK);
        s.credit -= n as u64;
        drop(s);
        match self.link.send(HostMsg::Stdin {
            id: self.id,
            data: buf[..n].to_vec(),
        }) {
            Ok(()) => Poll::Ready(Ok(n)),
            Err(reason) => Poll::Ready(Err(io::Error::new(io::ErrorKind::BrokenPipe, reason))),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.close();
        Poll::Ready(Ok(()))
    }
}

impl ProcessStdin {
    fn close(&self) {
        let mut s = lock(&self.state);
        if !s.closed {
            s.closed = true;
            let _ = self.link.send(HostMsg::CloseStdin { id: self.id });
        }
    }
}

impl Drop for ProcessStdin {
    fn drop(&mut self) {
        self.close();
    }
}

/// The senders the dispatcher feeds.
struct Sinks {
    ready: watch::Sender<Ready>,
    exit: watch::Sender<Option<Result<ExitStatus, Failure>>>,
    /// Output senders; a stream's sender is dropped at its `OutputEnd`.
    streams: [(Option<ChunkSender>, Arc<Flow>); 2],
    stdin: Arc<Mutex<StdinState>>,
}

fn index(stream: Stream) -> usize {
    match stream {
        Stream::Stdout => 0,
        Stream::Stderr => 1,
    }
}

/// Handles for a process started as request `req`, dispatcher running.
pub(crate) fn process(req: Request, program: String, link: Link, console: Console) -> Process {
    let (core, stdin, stdout, stderr) = parts(req, program, "", link, console);
    Process {
        core,
        stdin: Some(stdin),
        stdout: Some(stdout),
        stderr: Some(stderr),
    }
}

/// Handles for a pty process started as request `req`.
pub(crate) fn pty(req: Request, program: String, link: Link, console: Console) -> Pty {
    let (core, input, output, _stderr) = parts(req, program, "", link, console);
    Pty {
        core,
        input,
        output,
    }
}

/// Handles for a streamed file request: a reader of its data, a writer of
/// its input, and `finish` to await its result.
pub(crate) fn file_request(
    req: Request,
    op: &'static str,
    path: String,
    link: Link,
    console: Console,
) -> (FileDone, ProcessStdin, OutputStream) {
    let (core, stdin, stdout, _stderr) = parts(req, path, op, link, console);
    (FileDone(core), stdin, stdout)
}

/// Handles for a port-forward connection opened as request `req`: its
/// state, a writer into the guest socket and a reader of it.
pub(crate) fn connection(
    req: Request,
    label: String,
    link: Link,
    console: Console,
) -> (Connection, ProcessStdin, OutputStream) {
    let (core, to_guest, from_guest, _stderr) = parts(req, label, "", link, console);
    (Connection(core), to_guest, from_guest)
}

/// The state of a port-forward connection.
pub(crate) struct Connection(Core);

impl Connection {
    /// Waits until the guest connected (or could not).
    pub async fn opened(&self) -> Result<(), Error> {
        self.0.ready().await.map(|_| ())
    }

    /// Waits until the guest finished the connection in both directions.
    pub async fn closed(&self) -> Result<(), Error> {
        self.0.exit().await.map(|_| ())
    }
}

/// The outcome of a streamed file request.
pub(crate) struct FileDone(Core);

impl FileDone {
    /// Waits for the guest's final answer.
    pub async fn finish(&self) -> Result<(), Error> {
        self.0.exit().await.map(|_| ())
    }
}

fn parts(
    req: Request,
    program: String,
    fs_op: &'static str,
    link: Link,
    console: Console,
) -> (Core, ProcessStdin, OutputStream, OutputStream) {
    let id = req.id;
    let (ready_tx, ready) = watch::channel(Ready::Pending);
    let (exit_tx, exit) = watch::channel(None);
    let state = Arc::new(Mutex::new(StdinState {
        credit: u64::from(INITIAL_WINDOW),
        ..StdinState::default()
    }));
    let stream = |stream: Stream| {
        let (tx, rx) = mpsc::unbounded_channel();
        let flow = Arc::new(Flow::default());
        let reader = OutputStream {
            rx,
            chunk: Vec::new(),
            pos: 0,
            uncredited: 0,
            link: link.clone(),
            id,
            stream,
            flow: flow.clone(),
        };
        ((Some(tx), flow), reader)
    };
    let (out_sink, stdout) = stream(Stream::Stdout);
    let (err_sink, stderr) = stream(Stream::Stderr);
    let sinks = Sinks {
        ready: ready_tx,
        exit: exit_tx,
        streams: [out_sink, err_sink],
        stdin: state.clone(),
    };
    tokio::spawn(dispatch(req, sinks, link.clone()));
    let core = Core {
        id,
        program,
        fs_op,
        link: link.clone(),
        ready,
        exit,
        console,
        kill_guard: None,
    };
    (core, ProcessStdin { link, id, state }, stdout, stderr)
}

async fn dispatch(mut req: Request, mut sinks: Sinks, link: Link) {
    let id = req.id;
    let finish_stdin = |sinks: &Sinks| {
        let mut s = lock(&sinks.stdin);
        s.closed = true;
        if let Some(w) = s.waker.take() {
            w.wake();
        }
    };
    while let Some(event) = req.events.recv().await {
        match event {
            Event::Started { pid } => {
                let _ = sinks.ready.send(Ready::Running(pid));
            }
            Event::Output { stream, data } => {
                let (tx, flow) = &sinks.streams[index(stream)];
                let Some(tx) = tx else {
                    // Output after its end: the guest broke the protocol.
                    let _ = link.send(HostMsg::Abort { id });
                    continue;
                };
                let len = data.len() as u64;
                if flow.dropped.load(Ordering::Relaxed) {
                    let _ = link.send(HostMsg::Credit {
                        id,
                        stream,
                        bytes: len as u32,
                    });
                    continue;
                }
                let in_flight = flow.in_flight.fetch_add(len, Ordering::Relaxed) + len;
                if in_flight > u64::from(INITIAL_WINDOW) {
                    // The guest ignored flow control: stop this process.
                    let _ = tx.send(Err("the guest exceeded its output credit".into()));
                    let _ = link.send(HostMsg::Signal {
                        id,
                        signal: Signal::KILL.0,
                    });
                    continue;
                }
                let _ = tx.send(Ok(data));
            }
            Event::StdinCredit(bytes) => {
                let mut s = lock(&sinks.stdin);
                s.credit += u64::from(bytes);
                if let Some(w) = s.waker.take() {
                    w.wake();
                }
            }
            Event::Exited { code, signal } => {
                finish_stdin(&sinks);
                let _ = sinks
                    .exit
                    .send(Some(Ok(ExitStatus::from_wire(code, signal))));
                return;
            }
            Event::SpawnFailed { errno, message } => {
                finish_stdin(&sinks);
                let _ = sinks.ready.send(Ready::Failed { errno, message });
                let _ = sinks.exit.send(Some(Ok(NOT_STARTED)));
                return;
            }
            Event::FsDone(result) => {
                finish_stdin(&sinks);
                let _ = sinks.ready.send(Ready::Running(0));
                let exit = match result {
                    Ok(_) => Ok(ExitStatus::from_wire(Some(0), None)),
                    Err(e) => {
                        for tx in sinks.streams.iter().filter_map(|(t, _)| t.as_ref()) {
                            let _ = tx.send(Err(e.message.clone()));
                        }
                        Err(Failure::Fs(e))
                    }
                };
                let _ = sinks.exit.send(Some(exit));
                return;
            }
            Event::OutputEnd(stream) => sinks.streams[index(stream)].0 = None,
            Event::FsEntries(_) => {}
            Event::Rejected(message) => {
                finish_stdin(&sinks);
                let _ = sinks
                    .ready
                    .send(Ready::Stopped(format!("rejected: {message}")));
                let _ = sinks
                    .exit
                    .send(Some(Err(Failure::Stopped(format!("rejected: {message}")))));
                return;
            }
        }
    }
    // The connection ended under the process.
    let reason = link
        .closed()
        .unwrap_or_else(|| "the control channel closed".into());
    finish_stdin(&sinks);
    for tx in sinks.streams.iter().filter_map(|(t, _)| t.as_ref()) {
        let _ = tx.send(Err(reason.clone()));
    }
    sinks.ready.send_if_modified(|r| {
        let pending = matches!(r, Ready::Pending);
        if pending {
            *r = Ready::Stopped(reason.clone());
        }
        pending
    });
    let _ = sinks.exit.send(Some(Err(Failure::Stopped(reason))));
}
