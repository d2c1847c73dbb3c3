//! Request-smuggling guard for HTTP/1.1 guests.
//!
//! hyper follows RFC 9112 and lets Transfer-Encoding override a
//! Content-Length in the same request; we refuse such requests outright
//! (400, connection closed), as the RFC allows. hyper drops the evidence
//! before our service sees the request, so this wrapper follows the same
//! bytes hyper reads - request heads, then bodies by their framing - and
//! marks the connection poisoned when a head carries both headers (or two
//! different Content-Lengths).
//!
//! A head ends exactly where hyper's parser (httparse) ends it: at the
//! first empty line, whatever the mix of CRLF and bare LF line endings
//! (`\r\n\r\n`, `\n\n`, `\r\n\n`, `\n\r\n`), so no head can hide inside
//! what the guard took for the previous one. Framing the guard cannot
//! follow (a head or chunk line httparse rejects, a Content-Length it
//! cannot read, a non-chunked Transfer-Encoding, an oversized head) is
//! input hyper rejects too; the guard fails closed on it: the connection is
//! poisoned, so no later request on it goes upstream unchecked.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Largest head followed; longer ones stop the tracking (hyper refuses
/// heads past its own, smaller limit).
const MAX_HEAD: usize = 128 << 10;

#[derive(Debug)]
enum State {
    Head(Vec<u8>),
    Body(u64),
    ChunkSize(Vec<u8>),
    ChunkData(u64),
    ChunkEnd(u8),
    Trailers(Vec<u8>),
    /// Framing not followed: the connection is poisoned.
    Stopped,
}

/// Follows HTTP/1.1 request framing.
#[derive(Debug)]
pub(crate) struct Tracker {
    state: State,
    poisoned: Arc<AtomicBool>,
}

impl Tracker {
    pub(crate) fn new(poisoned: Arc<AtomicBool>) -> Self {
        Self {
            state: State::Head(Vec::new()),
            poisoned,
        }
    }

    pub(crate) fn feed(&mut self, mut data: &[u8]) {
        while !data.is_empty() {
            match &mut self.state {
                State::Stopped => return,
                State::Body(n) => {
                    let k = (*n).min(data.len() as u64);
                    *n -= k;
                    data = &data[k as usize..];
                    if *n == 0 {
                        self.state = State::Head(Vec::new());
                    }
                }
                State::ChunkData(n) => {
                    let k = (*n).min(data.len() as u64);
                    *n -= k;
                    data = &data[k as usize..];
                    if *n == 0 {
                        self.state = State::ChunkEnd(2);
                    }
                }
                State::ChunkEnd(n) => {
                    *n -= 1;
                    data = &data[1..];
                    if *n == 0 {
                        self.state = State::ChunkSize(Vec::new());
                    }
                }
                State::Head(_) | State::ChunkSize(_) | State::Trailers(_) => {
                    let b = data[0];
                    data = &data[1..];
                    let is_head = matches!(self.state, State::Head(_));
                    let (State::Head(buf) | State::ChunkSize(buf) | State::Trailers(buf)) =
                        &mut self.state
                    else {
                        return;
                    };
                    // Blank lines between requests are allowed.
                    if is_head && buf.is_empty() && (b == b'\r' || b == b'\n') {
                        continue;
                    }
                    buf.push(b);
                    if buf.len() > MAX_HEAD {
                        self.stop();
                        return;
                    }
                    if b != b'\n' {
                        continue;
                    }
                    self.state = match std::mem::replace(&mut self.state, State::Stopped) {
                        // An empty line (CRLF or bare LF) after any line
                        // ending: where httparse ends a head.
                        State::Head(buf) if buf.ends_with(b"\n\n") || buf.ends_with(b"\n\r\n") => {
                            self.head(&buf)
                        }
                        State::ChunkSize(buf) => chunk_size(&buf),
                        State::Trailers(buf) if buf == b"\r\n" || buf == b"\n" => {
                            State::Head(Vec::new())
                        }
                        State::Trailers(_) => State::Trailers(Vec::new()),
                        other => other,
                    };
                    if matches!(self.state, State::Stopped) {
                        self.stop();
                    }
                }
            }
        }
    }

    /// Stops following and poisons the connection (fail closed).
    fn stop(&mut self) {
        self.poisoned.store(true, Ordering::Relaxed);
        self.state = State::Stopped;
    }

    fn head(&self, buf: &[u8]) -> State {
        let mut headers = [httparse::EMPTY_HEADER; 128];
        let mut req = httparse::Request::new(&mut headers);
        match req.parse(buf) {
            // httparse ends the head where the guard did.
            Ok(httparse::Status::Complete(n)) if n == buf.len() => {}
            _ => return State::Stopped,
        }
        let mut lengths = Vec::new();
        let mut te: Option<&[u8]> = None;
        for h in req.headers.iter() {
            if h.name.eq_ignore_ascii_case("content-length") {
                lengths.push(h.value);
            } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
                te = Some(h.value);
            }
        }
        let differing = lengths
            .windows(2)
            .any(|w| w[0].trim_ascii() != w[1].trim_ascii());
        if (te.is_some() && !lengths.is_empty()) || differing {
            self.poisoned.store(true, Ordering::Relaxed);
            return State::Stopped;
        }
        if let Some(te) = te {
            let last = te.rsplit(|b| *b == b',').next().unwrap_or(b"").trim_ascii();
            return if last.eq_ignore_ascii_case(b"chunked") {
                State::ChunkSize(Vec::new())
            } else {
                State::Stopped
            };
        }
        match lengths.first() {
            None => State::Head(Vec::new()),
            Some(v) => match content_length(v) {
                Some(0) => State::Head(Vec::new()),
                Some(n) => State::Body(n),
                None => State::Stopped,
            },
        }
    }
}

/// A Content-Length value as hyper reads it: digits, or a comma-separated
/// list of equal values.
fn content_length(v: &[u8]) -> Option<u64> {
    let mut out = None;
    for part in v.split(|b| *b == b',') {
        let part = part.trim_ascii();
        if part.is_empty() || !part.iter().all(u8::is_ascii_digit) {
            return None;
        }
        let n = std::str::from_utf8(part).ok()?.parse::<u64>().ok()?;
        if out.is_some_and(|o| o != n) {
            return None;
        }
        out = Some(n);
    }
    out
}

fn chunk_size(line: &[u8]) -> State {
    let line = line
        .split(|b| *b == b';')
        .next()
        .unwrap_or(b"")
        .trim_ascii();
    match std::str::from_utf8(line)
        .ok()
        .and_then(|s| u64::from_str_radix(s, 16).ok())
    {
        Some(0) => State::Trailers(Vec::new()),
        Some(n) => State::ChunkData(n),
        None => State::Stopped,
    }
}

/// The guest's stream with a [`Tracker`] on its read side.
pub(crate) struct H1Guard<S> {
    inner: S,
    tracker: Tracker,
}

impl<S> H1Guard<S> {
    pub(crate) fn new(inner: S, poisoned: Arc<AtomicBool>) -> Self {
        Self {
            inner,
            tracker: Tracker::new(poisoned),
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for H1Guard<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = r {
            let new = buf.filled()[before..].to_vec();
            self.tracker.feed(&new);
        }
        r
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for H1Guard<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, data)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn poisoned_by(chunks: &[&[u8]]) -> bool {
        let flag = Arc::new(AtomicBool::new(false));
        let mut t = Tracker::new(flag.clone());
        for c in chunks {
            t.feed(c);
        }
        flag.load(Ordering::Relaxed)
    }

    #[test]
    fn cl_and_te_together_poison_in_any_order_and_split() {
        let a: &[u8] = b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n";
        assert!(poisoned_by(&[a]));
        let b: &[u8] = b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nHost: x\r\ncontent-length: 4\r\n\r\n";
        assert!(poisoned_by(&[b]));
        let (x, y) = a.split_at(30);
        assert!(poisoned_by(&[x, y]));
        assert!(poisoned_by(&[
            b"GET / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n"
        ]));
    }

    #[test]
    fn heads_end_where_httparse_ends_them_with_any_line_endings() {
        // A clean request whose head ends in a mixed terminator, with a
        // body; then a CL+TE request. The guard must see the second head.
        for end in [&b"\r\n\n"[..], b"\n\r\n", b"\n\n", b"\r\n\r\n"] {
            let mut req = b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5".to_vec();
            req.extend_from_slice(end);
            req.extend_from_slice(b"hello");
            assert!(!poisoned_by(&[&req]), "{end:?}");
            req.extend_from_slice(b"POST / HTTP/1.1\nHost: x\nContent-Length: 4\nTransfer-Encoding: chunked\n\n0\r\n\r\n");
            assert!(poisoned_by(&[&req]), "{end:?}");
            // Byte by byte too.
            let bytes: Vec<&[u8]> = req.chunks(1).collect();
            assert!(poisoned_by(&bytes), "{end:?}");
        }
    }

    #[test]
    fn unfollowable_framing_fails_closed() {
        assert!(poisoned_by(&[
            b"POST / HTTP/1.1\r\nContent-Length: 5x\r\n\r\n"
        ]));
        assert!(poisoned_by(&[
            b"POST / HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n"
        ]));
        assert!(poisoned_by(&[b"\x00\x01 not http\r\n\r\n"]));
        assert!(poisoned_by(&[
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n"
        ]));
        // hyper's equal-value lists are followed.
        assert!(!poisoned_by(&[
            b"POST / HTTP/1.1\r\nContent-Length: 2, 2\r\n\r\nabGET / HTTP/1.1\r\n\r\n"
        ]));
        assert!(poisoned_by(&[
            b"POST / HTTP/1.1\r\nContent-Length: 2, 3\r\n\r\nab"
        ]));
    }

    #[test]
    fn bodies_are_skipped_by_their_framing() {
        // A body that looks like a smuggled head is not a head.
        let body = b"GET /x HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n";
        let mut req = format!(
            "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n",
            body.len()
        )
        .into_bytes();
        req.extend_from_slice(body);
        assert!(!poisoned_by(&[&req]));
        let chunked = b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5;ext=1\r\nhello\r\n0\r\nX-T: 1\r\n\r\n";
        let next = b"GET / HTTP/1.1\r\nContent-Length: 0\r\nTransfer-Encoding: chunked\r\n\r\n";
        assert!(!poisoned_by(&[chunked]));
        assert!(poisoned_by(&[chunked, next]));
        // Pipelined clean requests stay clean.
        assert!(!poisoned_by(&[b"GET / HTTP/1.1\r\n\r\nGET /2 HTTP/1.1\r\nContent-Length: 2\r\n\r\nab\r\nGET /3 HTTP/1.1\r\n\r\n"]));
    }
}
