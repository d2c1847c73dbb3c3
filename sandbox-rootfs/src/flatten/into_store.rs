//! `flatten`: a [`Source`] written as a standalone qcow2 image into a
//! caller's [`BlockStore`], producing a [`FlatImage`].

use std::io::{self, Seek, SeekFrom, Write};
use std::sync::Arc;

use bytes::Bytes;
use sha2::{Digest, Sha256};

use super::{flatten_qcow2, Qcow2Options};
use crate::{BlockStore, RootfsError, Source, StoreContext};

/// Blocks handed to the store per `write` call, at most.
const BATCH_BYTES: usize = 8 << 20;

/// A flattened image held in a block store: block `i` holds container
/// bytes `[i * block_size, (i + 1) * block_size)`; all-zero blocks are not
/// stored (read them as zeros). Stream it with [`crate::bytes`].
#[derive(Clone)]
pub struct FlatImage {
    /// Where the blocks are.
    pub store: Arc<dyn BlockStore>,
    /// The context the blocks were written under (it names the source's
    /// base image).
    pub context: StoreContext,
    /// Length of the image container in bytes.
    pub len: u64,
    /// sha256 of the container bytes, lowercase hex.
    pub sha256: String,
}

impl std::fmt::Debug for FlatImage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FlatImage")
            .field("context", &self.context)
            .field("len", &self.len)
            .field("sha256", &self.sha256)
            .finish_non_exhaustive()
    }
}

/// Cuts a sequential byte stream into store blocks.
struct StoreWriter {
    store: Arc<dyn BlockStore>,
    ctx: StoreContext,
    rt: tokio::runtime::Handle,
    block: usize,
    current: Vec<u8>,
    index: u64,
    pending: Vec<(u64, Bytes)>,
    hash: Sha256,
    len: u64,
}

impl StoreWriter {
    fn send(&mut self) -> io::Result<()> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let batch = std::mem::take(&mut self.pending);
        self.rt
            .block_on(self.store.write(&self.ctx, batch))
            .map_err(|e| io::Error::other(format!("block store: {e}")))
    }

    fn end_block(&mut self) -> io::Result<()> {
        let full = std::mem::replace(&mut self.current, Vec::with_capacity(self.block));
        if full.iter().any(|b| *b != 0) {
            let mut full = full;
            full.resize(self.block, 0);
            self.pending.push((self.index, Bytes::from(full)));
        }
        self.index += 1;
        if self.pending.len() * self.block >= BATCH_BYTES {
            self.send()?;
        }
        Ok(())
    }

    fn finish(mut self) -> io::Result<(u64, String)> {
        if !self.current.is_empty() {
            self.end_block()?;
        }
        self.send()?;
        self.rt
            .block_on(self.store.flush(&self.ctx))
            .map_err(|e| io::Error::other(format!("block store: {e}")))?;
        Ok((self.len, hex::encode(self.hash.finalize())))
    }
}

impl Write for StoreWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = buf.len().min(self.block - self.current.len());
        self.current.extend_from_slice(&buf[..n]);
        self.hash.update(&buf[..n]);
        self.len += n as u64;
        if self.current.len() == self.block {
            self.end_block()?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Seek for StoreWriter {
    /// Only "seeks" to where the writer already is (the layout is written
    /// front to back).
    fn seek(&mut self, pos: SeekFrom) -> io::Result<u64> {
        match pos {
            SeekFrom::Start(p) if p == self.len => Ok(p),
            _ => Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "a block store image is written front to back",
            )),
        }
    }
}

/// Writes what `source` holds as a standalone qcow2 image (no backing
/// file, all-zero clusters left out) into `dest`. `qemu-img check` accepts
/// the bytes [`crate::bytes`] streams from the result. A block store in
/// `source` and `dest` run on the current tokio runtime.
pub async fn flatten(
    source: impl Into<Source>,
    opts: Qcow2Options,
    dest: Arc<dyn BlockStore>,
) -> Result<FlatImage, RootfsError> {
    let source = source.into();
    let rt = tokio::runtime::Handle::current();
    let block = dest.block_size();
    if !crate::span::valid_block_size(u64::from(block)) {
        return Err(RootfsError::InvalidOption(format!(
            "destination block size {block} must be a multiple of 512 up to 1 MiB"
        )));
    }
    let context = StoreContext {
        base_name: source.base().name.clone(),
        base_sha256: source.base().sha256.clone(),
    };
    let ctx = context.clone();
    let store = dest.clone();
    let job = tokio::task::spawn_blocking(move || {
        let mut disk = source.open_read(&rt)?;
        let mut out = StoreWriter {
            store,
            ctx,
            rt,
            block: block as usize,
            current: Vec::with_capacity(block as usize),
            index: 0,
            pending: Vec::new(),
            hash: Sha256::new(),
            len: 0,
        };
        flatten_qcow2(disk.as_mut(), opts, &mut out)?;
        out.finish().map_err(|source| RootfsError::Io {
            what: "writing the flattened image to the block store".into(),
            source,
        })
    });
    let (len, sha256) = job.await.map_err(|e| RootfsError::Io {
        what: "the flatten task failed".into(),
        source: io::Error::other(e.to_string()),
    })??;
    Ok(FlatImage {
        store: dest,
        context,
        len,
        sha256,
    })
}
