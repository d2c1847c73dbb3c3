//! Message types of the guest protocol.

use serde::{Deserialize, Serialize};

use crate::{DirEntry, FsError, FsOp, FsReply};

/// First frame from the guest: the agent is up and listening.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    /// Must equal [`crate::PROTOCOL_VERSION`].
    pub version: u32,
    /// The agent's crate version.
    pub agent_version: String,
    /// Milliseconds since the guest kernel started (from /proc/uptime).
    pub uptime_ms: u64,
}

/// A request to start a process in the guest.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Spawn {
    /// Program to run: a path, or a name looked up in `PATH`.
    pub program: Vec<u8>,
    /// Arguments after the program name.
    pub args: Vec<Vec<u8>>,
    /// Variables set on top of the agent's default environment.
    pub env: Vec<(Vec<u8>, Vec<u8>)>,
    /// Working directory; `None` means `/`.
    pub cwd: Option<Vec<u8>>,
    /// Whether the host will send stdin; otherwise stdin is `/dev/null`.
    pub stdin: bool,
    /// Run on a new pseudo-terminal of this size instead of pipes: stdin,
    /// stdout and stderr are the terminal, and all output comes as
    /// [`Stream::Stdout`].
    pub pty: Option<PtySize>,
    /// Run as this user instead of root: `user`, `uid`, `user:group` or
    /// `uid:gid`, names looked up in the guest's `/etc/passwd` and
    /// `/etc/group` (an OCI image's `User`). `HOME` follows the user.
    pub user: Option<Vec<u8>>,
}

/// A terminal size.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PtySize {
    /// Rows.
    pub rows: u16,
    /// Columns.
    pub cols: u16,
}

/// Which output stream a chunk belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Stream {
    /// Standard output.
    Stdout,
    /// Standard error.
    Stderr,
}

/// Messages from the host to the guest.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum HostMsg {
    /// Start a process; `id` is chosen by the host and unique per connection.
    Spawn {
        /// Request id.
        id: u32,
        /// What to run.
        spawn: Spawn,
    },
    /// Bytes for a process's stdin.
    Stdin {
        /// Request id.
        id: u32,
        /// The bytes, at most [`crate::MAX_CHUNK`].
        #[serde(with = "serde_bytes")]
        data: Vec<u8>,
    },
    /// Close a process's stdin.
    CloseStdin {
        /// Request id.
        id: u32,
    },
    /// Send a signal to a process's whole process group.
    Signal {
        /// Request id.
        id: u32,
        /// Linux signal number.
        signal: i32,
    },
    /// Change the terminal size of a pty process.
    Resize {
        /// Request id.
        id: u32,
        /// The new size.
        size: PtySize,
    },
    /// The host consumed `bytes` of a stream's output: the guest may send
    /// that much more (see [`crate::INITIAL_WINDOW`]).
    Credit {
        /// Request id.
        id: u32,
        /// Which stream.
        stream: Stream,
        /// Bytes consumed.
        bytes: u32,
    },
    /// A file system operation; its data and credit use the process
    /// messages (`Output`, `Credit`, `Stdin`, `CloseStdin`, `StdinCredit`).
    Fs {
        /// Request id.
        id: u32,
        /// The operation.
        op: FsOp,
    },
    /// Sync, unmount and power off.
    Shutdown,
    /// Cancel request `id`: a process's group is killed with SIGKILL and
    /// its exit is reported at once, without the output grace a normal exit
    /// gets (descendants that left the group and keep its pipes open no
    /// longer hold up the report); a file request is woken and fails.
    Abort {
        /// Request id.
        id: u32,
    },
    /// A line for the guest's kernel log, about something the host did to
    /// the guest (for example its root disk's write budget ran out). The
    /// agent writes `sandbox: <text>` to `/dev/kmsg`.
    Notice {
        /// One line of text (control characters are dropped).
        text: String,
    },
    /// Open a TCP connection to `127.0.0.1:port` in the guest, or to
    /// `[::1]:port` if that is refused (a port forward). Answered by [`GuestMsg::Connected`] or
    /// [`GuestMsg::ConnectFailed`]. Its bytes use the process messages:
    /// host to guest as `Stdin` (with `StdinCredit`), `CloseStdin` shuts
    /// the guest socket's writing half; guest to host as `Output` on
    /// [`Stream::Stdout`] under `Credit`, then [`GuestMsg::OutputEnd`].
    /// [`GuestMsg::Closed`] ends it; `Abort` resets it.
    Connect {
        /// Request id.
        id: u32,
        /// Guest TCP port.
        port: u16,
    },
    /// The guest continues from a snapshot: mix `entropy` into the kernel's
    /// random pool and reseed its generator at once (two VMs restored from
    /// one snapshot must not share random bytes), and set the wall clock
    /// to `unix_time_ns` (it stood still while the snapshot was stored).
    /// Handled before the next message is read.
    Restored {
        /// Host randomness (at most 512 bytes are used).
        entropy: Vec<u8>,
        /// The host's time, nanoseconds since the Unix epoch.
        unix_time_ns: u64,
        /// For a guest with a network: the new host stack's interception
        /// CA (base64 DER, as in the `sandbox.ca` kernel parameter), which
        /// replaces the snapshot's in the trust store.
        ca: Option<String>,
        /// A new hostname (kernel, `/etc/hostname`, `/etc/hosts`).
        hostname: Option<String>,
        /// A new `/etc/machine-id` (32 lowercase hex digits).
        machine_id: Option<String>,
    },
}

/// Messages from the guest to the host.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum GuestMsg {
    /// The agent is ready.
    Hello(Hello),
    /// The process of request `id` started.
    Started {
        /// Request id.
        id: u32,
        /// Its guest pid.
        pid: u32,
    },
    /// The process of request `id` could not start.
    SpawnFailed {
        /// Request id.
        id: u32,
        /// The guest errno.
        errno: i32,
        /// Human-readable reason.
        message: String,
    },
    /// Output of the process of request `id`.
    Output {
        /// Request id.
        id: u32,
        /// Which stream.
        stream: Stream,
        /// The bytes, at most [`crate::MAX_CHUNK`].
        #[serde(with = "serde_bytes")]
        data: Vec<u8>,
    },
    /// The process consumed `bytes` of stdin: the host may send that much
    /// more (see [`crate::INITIAL_WINDOW`]).
    StdinCredit {
        /// Request id.
        id: u32,
        /// Bytes written into the process's stdin.
        bytes: u32,
    },
    /// The process of request `id` exited and both its output streams
    /// reached end of file. Exactly one of `code` and `signal` is set.
    Exited {
        /// Request id.
        id: u32,
        /// Exit code, if it exited normally.
        code: Option<i32>,
        /// Signal number, if a signal killed it.
        signal: Option<i32>,
    },
    /// A batch of directory entries for a `ReadDir`.
    FsEntries {
        /// Request id.
        id: u32,
        /// The entries.
        entries: Vec<DirEntry>,
    },
    /// The final answer of a file system request.
    FsDone {
        /// Request id.
        id: u32,
        /// Its result.
        result: Result<FsReply, FsError>,
    },
    /// A request was refused (unknown id, duplicate id, bad argument).
    Rejected {
        /// Request id, if the request had one.
        id: Option<u32>,
        /// Why.
        message: String,
    },
    /// The guest is about to power off.
    ShuttingDown,
    /// The connection of a [`HostMsg::Connect`] is open.
    Connected {
        /// Request id.
        id: u32,
    },
    /// The connection of a [`HostMsg::Connect`] could not be opened (no
    /// listener: `ECONNREFUSED`).
    ConnectFailed {
        /// Request id.
        id: u32,
        /// The guest errno.
        errno: i32,
        /// Human-readable reason.
        message: String,
    },
    /// No more `Output` of this stream follows: the guest socket's reading
    /// half reached end of file (its peer shut down writing) or failed.
    OutputEnd {
        /// Request id.
        id: u32,
        /// Which stream ended.
        stream: Stream,
    },
    /// A connection finished in both directions (or was reset); its id is
    /// free again.
    Closed {
        /// Request id.
        id: u32,
    },
}
