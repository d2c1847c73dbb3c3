//! The agent link's reader: every byte the guest agent sends is read and
//! decoded on a thread of its own (`sandbox-agent-link`), confined by the
//! [`AGENT_LINK`] filter, and handed to the request it belongs to through
//! in-memory channels. The writer stays a task on the application's
//! runtime: it encodes host messages and parses nothing from the guest.

use std::io::{self, Read};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::thread::JoinHandle;

use sandbox_protocol::{FrameDecoder, GuestMsg, Hello, GUEST_MAGIC};
use sandbox_thread::seccomp::AllowList;

use crate::Error;

/// Bytes of console noise tolerated before the agent's magic.
const MAX_NOISE: usize = 1 << 20;

/// The agent link's reader: reading the channel (and a stop socket) and
/// waking the application's tasks. Decoding needs only memory.
#[cfg(target_os = "linux")]
pub static AGENT_LINK: AllowList = AllowList {
    class: "agent-link",
    syscalls: &[
        libc::SYS_read,
        libc::SYS_recvfrom,
        #[cfg(target_arch = "x86_64")]
        libc::SYS_poll,
        libc::SYS_ppoll,
    ],
};

/// [`AGENT_LINK`] where there is no seccomp (macOS).
#[cfg(not(target_os = "linux"))]
pub static AGENT_LINK: AllowList = AllowList {
    class: "agent-link",
    syscalls: &[],
};

/// The guest's side of the channel, read until it closes or the host
/// stops.
struct Reader {
    sock: UnixStream,
    /// Closed (hung up) when the host stops reading.
    stop: UnixStream,
    decoder: FrameDecoder,
    buf: Vec<u8>,
}

impl Reader {
    /// Reads what is there; `Ok(0)` when the guest closed the channel or
    /// the host stopped.
    fn fill(&mut self) -> io::Result<usize> {
        loop {
            let mut fds = [
                libc::pollfd {
                    fd: self.sock.as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                },
                libc::pollfd {
                    fd: self.stop.as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                },
            ];
            // SAFETY: `fds` is a valid array of two pollfds for the call.
            let r = unsafe { libc::poll(fds.as_mut_ptr(), 2, -1) };
            if r < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            if fds[1].revents != 0 {
                return Ok(0);
            }
            if fds[0].revents == 0 {
                continue;
            }
            match self.sock.read(&mut self.buf) {
                Ok(n) => return Ok(n),
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
                    ) => {}
                Err(e) => return Err(e),
            }
        }
    }

    /// Skips console noise up to the agent's magic.
    fn find_magic(&mut self) -> Result<(), Error> {
        let mut window: Vec<u8> = Vec::new();
        let mut noise = 0usize;
        loop {
            let n = self
                .fill()
                .map_err(Error::io("reading the control channel"))?;
            if n == 0 {
                return Err(Error::Protocol(
                    "channel closed before the agent started".into(),
                ));
            }
            window.extend_from_slice(&self.buf[..n]);
            if let Some(pos) = window
                .windows(GUEST_MAGIC.len())
                .position(|w| w == GUEST_MAGIC)
            {
                self.decoder.push(&window[pos + GUEST_MAGIC.len()..]);
                return Ok(());
            }
            noise += n;
            if noise > MAX_NOISE {
                return Err(Error::Protocol(
                    "no agent greeting on the control channel".into(),
                ));
            }
            // Keep only a tail that could hold the start of the magic.
            let keep_from = window.len().saturating_sub(GUEST_MAGIC.len() - 1);
            window.drain(..keep_from);
        }
    }

    /// The next message; `None` once the channel closed.
    fn next(&mut self) -> Result<Option<GuestMsg>, Error> {
        loop {
            if let Some(msg) = self
                .decoder
                .decode_next::<GuestMsg>()
                .map_err(|e| Error::Protocol(e.to_string()))?
            {
                return Ok(Some(msg));
            }
            let n = self
                .fill()
                .map_err(Error::io("reading the control channel"))?;
            if n == 0 {
                return Ok(None);
            }
            self.decoder.push(&self.buf[..n]);
        }
    }

    /// The agent's greeting, after its magic.
    fn hello(&mut self) -> Result<Hello, Error> {
        self.find_magic()?;
        match self.next()? {
            Some(GuestMsg::Hello(h)) => Ok(h),
            Some(other) => Err(Error::Protocol(format!("expected Hello, got {other:?}"))),
            None => Err(Error::Protocol("channel closed before Hello".into())),
        }
    }
}

/// The running reader; dropping it stops the thread and joins it.
pub(crate) struct LinkReader {
    stop: Option<UnixStream>,
    thread: Option<JoinHandle<Result<(), sandbox_thread::Panicked>>>,
}

impl Drop for LinkReader {
    fn drop(&mut self) {
        // Hanging up the stop socket wakes the thread's poll.
        drop(self.stop.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Starts reading `sock` (the guest's side of a connected channel, in any
/// blocking mode): the agent's greeting goes to `hello`, then every message
/// to `on_msg`; `on_end` gets why the channel ended. A panic while
/// decoding ends the channel like a protocol error.
pub(crate) fn spawn(
    sock: UnixStream,
    hello: tokio::sync::oneshot::Sender<Result<Hello, Error>>,
    mut on_msg: impl FnMut(GuestMsg) + Send + 'static,
    on_end: impl FnOnce(String) + Send + 'static,
) -> io::Result<LinkReader> {
    let (stop, stopped) = UnixStream::pair()?;
    let thread = sandbox_thread::spawn("sandbox-agent-link", Some(&AGENT_LINK), move || {
        let mut r = Reader {
            sock,
            stop: stopped,
            decoder: FrameDecoder::new(),
            buf: vec![0u8; 64 << 10],
        };
        let greeting = r.hello();
        let ok = greeting.is_ok();
        if hello.send(greeting).is_err() || !ok {
            return;
        }
        let reason = match sandbox_thread::contain(|| loop {
            match r.next() {
                Ok(Some(msg)) => on_msg(msg),
                Ok(None) => break "the control channel closed".to_string(),
                Err(e) => break e.to_string(),
            }
        }) {
            Ok(reason) => reason,
            Err(p) => format!("the host failed reading the control channel: {p}"),
        };
        on_end(reason);
    })?;
    Ok(LinkReader {
        stop: Some(stop),
        thread: Some(thread),
    })
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::sync::mpsc;

    use sandbox_protocol::{encode, PROTOCOL_VERSION};

    use super::*;

    #[test]
    fn the_agent_link_list_is_small() {
        sandbox_thread::seccomp::report(&AGENT_LINK, 30);
    }

    #[tokio::test]
    async fn the_reader_skips_noise_routes_messages_and_reports_the_end() {
        let (host, mut guest) = UnixStream::pair().unwrap();
        host.set_nonblocking(true).unwrap();
        let (msgs_tx, msgs) = mpsc::channel();
        let (end_tx, end) = mpsc::channel();
        let (hello_tx, hello_rx) = tokio::sync::oneshot::channel();
        let reader = spawn(
            host,
            hello_tx,
            move |m| msgs_tx.send(m).unwrap(),
            move |why| end_tx.send(why).unwrap(),
        )
        .unwrap();
        let hello = Hello {
            version: PROTOCOL_VERSION,
            agent_version: "test".into(),
            uptime_ms: 1,
        };
        let mut bytes = b"[    0.1] console noise\n".to_vec();
        bytes.extend_from_slice(&GUEST_MAGIC);
        bytes.extend(encode(&GuestMsg::Hello(hello.clone())).unwrap());
        bytes.extend(encode(&GuestMsg::Started { id: 7, pid: 42 }).unwrap());
        // Split mid-frame: the decoder joins the pieces.
        let (a, b) = bytes.split_at(bytes.len() - 3);
        guest.write_all(a).unwrap();
        assert_eq!(hello_rx.await.unwrap().unwrap(), hello);
        guest.write_all(b).unwrap();
        let got = msgs
            .recv_timeout(std::time::Duration::from_secs(5))
            .unwrap();
        assert!(
            matches!(got, GuestMsg::Started { id: 7, pid: 42 }),
            "{got:?}"
        );
        // Garbage after the greeting ends the channel with a protocol error.
        guest.write_all(&[0xff; 16]).unwrap();
        let why = end.recv_timeout(std::time::Duration::from_secs(5)).unwrap();
        assert!(why.contains("protocol") || why.contains("frame"), "{why}");
        drop(reader);
        assert_eq!(sandbox_thread::seccomp::violations(), vec![]);
    }

    #[test]
    fn dropping_the_reader_stops_its_thread_while_the_guest_is_silent() {
        let (host, _guest) = UnixStream::pair().unwrap();
        let (hello_tx, _hello_rx) = tokio::sync::oneshot::channel();
        let reader = spawn(host, hello_tx, |_| {}, |_| {}).unwrap();
        // Joins the thread: returns only if the stop socket woke it.
        drop(reader);
    }
}
