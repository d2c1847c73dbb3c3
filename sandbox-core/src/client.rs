//! The host side of the guest protocol: a reader thread
//! ([`crate::link_reader`]) routes guest frames to the request they belong
//! to, one writer task sends host frames.

use std::collections::HashMap;
use std::os::unix::net::UnixStream as StdUnixStream;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use sandbox_protocol::{
    encode, DirEntry, FsError, FsReply, GuestMsg, Hello, HostMsg, Stream, PROTOCOL_VERSION,
};
use tokio::io::AsyncWriteExt;
use tokio::net::unix::OwnedWriteHalf;
use tokio::net::UnixStream;
use tokio::sync::mpsc;

use crate::link_reader::{self, LinkReader};
use crate::Error;

/// What happened to one request, in order.
#[derive(Debug)]
pub(crate) enum Event {
    Started {
        pid: u32,
    },
    StdinCredit(u32),
    SpawnFailed {
        errno: i32,
        message: String,
    },
    Output {
        stream: Stream,
        data: Vec<u8>,
    },
    Exited {
        code: Option<i32>,
        signal: Option<i32>,
    },
    Rejected(String),
    /// No more output of this stream (a port forward's guest side closed).
    OutputEnd(Stream),
    FsEntries(Vec<DirEntry>),
    FsDone(Result<FsReply, FsError>),
}

#[derive(Default)]
struct Routes {
    map: HashMap<u32, mpsc::UnboundedSender<Event>>,
    /// Why the connection ended, once it has.
    closed: Option<String>,
    /// Requests whose process started and has not exited.
    running: std::collections::HashSet<u32>,
}

/// Set to true once the guest's side of the control channel has closed.
pub(crate) type Ended = tokio::sync::watch::Receiver<bool>;

/// A connected guest agent.
pub(crate) struct Client {
    link: Link,
    pub hello: Hello,
    ended: Ended,
    /// Stops and joins the reader thread when the client goes.
    _reader: LinkReader,
}

/// A cheap handle for sending to the guest, held by process handles.
#[derive(Clone)]
pub(crate) struct Link {
    out: mpsc::UnboundedSender<HostMsg>,
    routes: Arc<Mutex<Routes>>,
    next_id: Arc<AtomicU32>,
}

impl Link {
    /// Queues a message for the guest.
    pub fn send(&self, msg: HostMsg) -> Result<(), String> {
        self.out.send(msg).map_err(|_| closed_reason(&self.routes))
    }

    /// Why the connection ended, if it has.
    pub fn closed(&self) -> Option<String> {
        lock(&self.routes).closed.clone()
    }

    /// Allocates a request id with its event channel.
    pub fn register(&self) -> Result<Request, String> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = mpsc::unbounded_channel();
        let mut routes = lock(&self.routes);
        if let Some(reason) = &routes.closed {
            return Err(reason.clone());
        }
        routes.map.insert(id, tx);
        Ok(Request {
            id,
            events: rx,
            routes: self.routes.clone(),
        })
    }
}

/// Cancels a guest request when dropped while still armed: the future
/// that owned it was dropped (`tokio::time::timeout`, `select!`), so the
/// guest process group is killed and everything it held is released.
pub(crate) struct AbortOnDrop {
    link: Link,
    id: u32,
    armed: bool,
}

impl AbortOnDrop {
    pub fn new(link: Link, id: u32) -> Self {
        Self {
            link,
            id,
            armed: true,
        }
    }

    /// Cancels the request now (the guard stays armed: a second abort of
    /// a request the guest already ended is ignored).
    pub fn abort(&self) {
        let _ = self.link.send(HostMsg::Abort { id: self.id });
    }

    /// The request finished: nothing to cancel.
    pub fn disarm(&mut self) {
        self.armed = false;
    }
}

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        if self.armed {
            self.abort();
        }
    }
}

/// A registered request; dropping it forgets the route.
pub(crate) struct Request {
    pub id: u32,
    pub events: mpsc::UnboundedReceiver<Event>,
    routes: Arc<Mutex<Routes>>,
}

impl Drop for Request {
    fn drop(&mut self) {
        lock(&self.routes).map.remove(&self.id);
    }
}

fn lock(m: &Mutex<Routes>) -> std::sync::MutexGuard<'_, Routes> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn closed_reason(routes: &Mutex<Routes>) -> String {
    lock(routes)
        .closed
        .clone()
        .unwrap_or_else(|| "the control channel closed".into())
}

impl Client {
    /// Waits for the agent's magic and `Hello`, then starts the writer.
    pub async fn connect(stream: StdUnixStream) -> Result<Self, Error> {
        let guest_side = stream
            .try_clone()
            .map_err(Error::io("reading the control channel"))?;
        stream
            .set_nonblocking(true)
            .map_err(Error::io("configuring the control channel"))?;
        let stream =
            UnixStream::from_std(stream).map_err(Error::io("registering the control channel"))?;
        let (_, wr) = stream.into_split();
        let routes: Arc<Mutex<Routes>> = Arc::default();
        let (ended_tx, ended) = tokio::sync::watch::channel(false);
        let (hello_tx, hello_rx) = tokio::sync::oneshot::channel();
        let (r1, r2) = (routes.clone(), routes.clone());
        let reader = link_reader::spawn(
            guest_side,
            hello_tx,
            move |msg| route(msg, &r1),
            move |reason| {
                let mut r = lock(&r2);
                r.closed.get_or_insert(reason);
                r.map.clear();
                drop(r);
                let _ = ended_tx.send(true);
            },
        )
        .map_err(Error::io("starting the control channel's reader"))?;
        let hello = hello_rx
            .await
            .map_err(|_| Error::Protocol("the control channel's reader ended".into()))??;
        if hello.version != PROTOCOL_VERSION {
            return Err(Error::VersionMismatch {
                guest: hello.version,
                host: PROTOCOL_VERSION,
            });
        }
        let (out, out_rx) = mpsc::unbounded_channel();
        tokio::spawn(write_loop(wr, out_rx, routes.clone()));
        Ok(Self {
            link: Link {
                out,
                routes,
                next_id: Arc::new(AtomicU32::new(1)),
            },
            hello,
            ended,
            _reader: reader,
        })
    }

    /// Guest processes started and not yet exited (0 once the channel
    /// closed).
    pub fn live_processes(&self) -> usize {
        let r = lock(&self.link.routes);
        if r.closed.is_some() {
            0
        } else {
            r.running.len()
        }
    }

    /// Becomes true when the guest's side of the channel closes.
    pub fn ended(&self) -> Ended {
        self.ended.clone()
    }

    /// Allocates a request id with its event channel.
    pub fn register(&self) -> Result<Request, String> {
        self.link.register()
    }

    /// The sending half, for process handles.
    pub fn link(&self) -> &Link {
        &self.link
    }
}

fn route(msg: GuestMsg, routes: &Mutex<Routes>) {
    match &msg {
        GuestMsg::Started { id, .. } => {
            lock(routes).running.insert(*id);
        }
        GuestMsg::Exited { id, .. } => {
            lock(routes).running.remove(id);
        }
        _ => {}
    }
    let (id, event) = match msg {
        GuestMsg::Started { id, pid } => (id, Event::Started { pid }),
        GuestMsg::StdinCredit { id, bytes } => (id, Event::StdinCredit(bytes)),
        GuestMsg::SpawnFailed { id, errno, message } => (id, Event::SpawnFailed { errno, message }),
        GuestMsg::Output { id, stream, data } => (id, Event::Output { stream, data }),
        GuestMsg::Exited { id, code, signal } => (id, Event::Exited { code, signal }),
        GuestMsg::Rejected {
            id: Some(id),
            message,
        } => (id, Event::Rejected(message)),
        GuestMsg::Rejected { id: None, message } => {
            log::warn!("guest agent rejected a frame: {message}");
            return;
        }
        GuestMsg::ShuttingDown => {
            lock(routes).closed = Some("the guest is shutting down".into());
            return;
        }
        GuestMsg::FsEntries { id, entries } => (id, Event::FsEntries(entries)),
        GuestMsg::FsDone { id, result } => (id, Event::FsDone(result)),
        GuestMsg::Connected { id } => (id, Event::Started { pid: 0 }),
        GuestMsg::ConnectFailed { id, errno, message } => {
            (id, Event::SpawnFailed { errno, message })
        }
        GuestMsg::OutputEnd { id, stream } => (id, Event::OutputEnd(stream)),
        GuestMsg::Closed { id } => (
            id,
            Event::Exited {
                code: Some(0),
                signal: None,
            },
        ),
        GuestMsg::Hello(_) => return,
    };
    if let Some(tx) = lock(routes).map.get(&id) {
        let _ = tx.send(event);
    }
}

/// The request a message belongs to, if any.
fn request_id(msg: &HostMsg) -> Option<u32> {
    match msg {
        HostMsg::Spawn { id, .. }
        | HostMsg::Stdin { id, .. }
        | HostMsg::CloseStdin { id }
        | HostMsg::Signal { id, .. }
        | HostMsg::Resize { id, .. }
        | HostMsg::Credit { id, .. }
        | HostMsg::Fs { id, .. }
        | HostMsg::Connect { id, .. }
        | HostMsg::Abort { id } => Some(*id),
        _ => None,
    }
}

async fn write_loop(
    mut wr: OwnedWriteHalf,
    mut rx: mpsc::UnboundedReceiver<HostMsg>,
    routes: Arc<Mutex<Routes>>,
) {
    while let Some(msg) = rx.recv().await {
        let frame = match encode(&msg) {
            Ok(f) => f,
            Err(e) => {
                // Too large for one frame (or otherwise unencodable): the
                // request fails at once instead of waiting for an answer
                // that cannot come.
                let why = format!(
                    "the request cannot be sent to the guest: {e} (one frame holds at most {} bytes)",
                    sandbox_protocol::MAX_FRAME
                );
                match request_id(&msg).and_then(|id| lock(&routes).map.get(&id).cloned()) {
                    Some(tx) => {
                        let _ = tx.send(Event::Rejected(why));
                    }
                    None => log::error!("{why}"),
                }
                continue;
            }
        };
        if let Err(e) = wr.write_all(&frame).await {
            lock(&routes)
                .closed
                .get_or_insert(format!("writing to the guest failed: {e}"));
            return;
        }
    }
}
