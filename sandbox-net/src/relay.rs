//! The byte relay of raw flows (and TLS pass-through): each direction
//! reads into a buffer and writes what it read to the other side, until
//! both directions have ended.
//!
//! The buffers are 256 KiB (64 KiB lost about 40% of bulk throughput at
//! MTU 65000) and reused. `tokio::io::copy_bidirectional_with_sizes`
//! allocated and zeroed two of them per flow: half a megabyte of `memset`
//! for every guest connection, 6% of all CPU time when connections are
//! short (the net bench's `connect` profile). Here they come from a small
//! process-wide pool, and a relay only reads into them, so an earlier
//! flow's bytes are never written anywhere: `write_all` takes exactly the
//! `n` bytes the last read returned.

use std::io;
use std::sync::LazyLock;

use crossbeam_queue::ArrayQueue;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Bytes each direction reads at once.
const BUFFER: usize = 256 << 10;
/// Idle buffers kept at most (4 MiB).
const KEEP: usize = 16;

static POOL: LazyLock<ArrayQueue<Box<[u8]>>> = LazyLock::new(|| ArrayQueue::new(KEEP));

/// A relay buffer, back in the pool when dropped.
struct Buffer(Box<[u8]>);

impl Buffer {
    fn take() -> Self {
        Self(
            POOL.pop()
                .unwrap_or_else(|| vec![0u8; BUFFER].into_boxed_slice()),
        )
    }
}

impl Drop for Buffer {
    fn drop(&mut self) {
        // An empty boxed slice takes its place (no allocation); a full
        // pool drops the buffer.
        let _ = POOL.push(std::mem::take(&mut self.0));
    }
}

/// Copies bytes both ways between `a` and `b`. A direction that reads
/// end-of-file shuts the other side's write half (a half-close is passed
/// on) and the other direction goes on; the first error ends both.
pub(crate) async fn splice<A, B>(a: A, b: B) -> io::Result<()>
where
    A: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    let (ar, aw) = tokio::io::split(a);
    let (br, bw) = tokio::io::split(b);
    tokio::try_join!(pump(ar, bw), pump(br, aw)).map(|_| ())
}

/// One direction: `from` to `to` until end-of-file, then `to`'s shutdown.
async fn pump<R, W>(mut from: R, mut to: W) -> io::Result<()>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut buf = Buffer::take();
    let buf = &mut buf.0[..];
    loop {
        let n = from.read(buf).await?;
        if n == 0 {
            break;
        }
        to.write_all(&buf[..n]).await?;
        to.flush().await?;
    }
    to.shutdown().await
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::duplex;

    #[tokio::test]
    async fn relays_both_ways_and_passes_half_closes_on() {
        // guest <-> (a | b) <-> upstream
        let (mut guest, a) = duplex(1 << 16);
        let (b, mut upstream) = duplex(1 << 16);
        let relay = tokio::spawn(splice(a, b));
        // More than one buffer's worth up, with a distinct pattern.
        let up: Vec<u8> = (0..(BUFFER * 2 + 7)).map(|i| (i % 251) as u8).collect();
        let writer = {
            let up = up.clone();
            tokio::spawn(async move {
                guest.write_all(&up).await.unwrap();
                guest.shutdown().await.unwrap();
                guest
            })
        };
        let mut got = Vec::new();
        upstream.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, up, "upload, then the guest's FIN");
        // The other direction still works after the half-close.
        upstream.write_all(b"reply").await.unwrap();
        upstream.shutdown().await.unwrap();
        let mut guest = writer.await.unwrap();
        let mut reply = Vec::new();
        guest.read_to_end(&mut reply).await.unwrap();
        assert_eq!(reply, b"reply");
        relay.await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn a_reused_buffer_carries_only_the_new_flows_bytes() {
        // A flow leaves its bytes in a buffer that goes back to the pool;
        // the next flows write exactly what they read, never the rest.
        for fill in [0xAAu8, 0x55] {
            let (mut guest, a) = duplex(1 << 16);
            let (b, mut upstream) = duplex(1 << 16);
            let relay = tokio::spawn(splice(a, b));
            guest.write_all(&vec![fill; 100_000]).await.unwrap();
            guest.shutdown().await.unwrap();
            let mut got = Vec::new();
            upstream.read_to_end(&mut got).await.unwrap();
            assert_eq!(got, vec![fill; 100_000]);
            drop(upstream);
            drop(guest);
            let _ = relay.await.unwrap();
        }
        let (mut guest, a) = duplex(1 << 16);
        let (b, mut upstream) = duplex(1 << 16);
        let relay = tokio::spawn(splice(a, b));
        guest.write_all(b"short").await.unwrap();
        guest.shutdown().await.unwrap();
        let mut got = Vec::new();
        upstream.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"short");
        drop((guest, upstream));
        let _ = relay.await.unwrap();
    }

    #[tokio::test]
    async fn an_error_on_one_side_ends_the_relay() {
        let (guest, a) = duplex(1 << 16);
        let (b, upstream) = duplex(1 << 16);
        let relay = tokio::spawn(splice(a, b));
        // The upstream vanishes while the guest stays connected and
        // silent: writing towards it fails, and the relay must not wait
        // for the guest forever.
        drop(upstream);
        let mut guest = guest;
        guest.write_all(b"into the void").await.unwrap();
        let r = tokio::time::timeout(std::time::Duration::from_secs(5), relay)
            .await
            .expect("the relay ended")
            .unwrap();
        assert!(r.is_err(), "{r:?}");
    }
}
