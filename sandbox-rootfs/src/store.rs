//! Caller-owned overlays: the guest's writes go to a [`BlockStore`] the
//! host application implements (a database, object storage, a file...).

use std::collections::{HashMap, HashSet};
use std::io;
use std::sync::Arc;

use bytes::Bytes;
use futures::future::BoxFuture;

use crate::span::{check, pieces, Piece};
use crate::{Disk, EventHook, RootfsEvent};

/// Names the base image a store's blocks belong to: blocks only make sense
/// on top of the base they were written over.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoreContext {
    /// The base image's name.
    pub base_name: String,
    /// The base image's sha256.
    pub base_sha256: String,
}

/// Storage for the blocks a guest wrote, addressed by block index. Bytes
/// handed to [`BlockStore::write`] are never mutated afterwards (they are
/// `Bytes`), so a store may keep them without copying.
pub trait BlockStore: Send + Sync + 'static {
    /// Block size in bytes: a multiple of 512, at most 1 MiB.
    fn block_size(&self) -> u32;
    /// Indices of the blocks the store holds.
    fn list<'a>(&'a self, ctx: &'a StoreContext) -> BoxFuture<'a, io::Result<Vec<u64>>>;
    /// One block's bytes.
    fn read<'a>(&'a self, ctx: &'a StoreContext, index: u64) -> BoxFuture<'a, io::Result<Bytes>>;
    /// Stores whole blocks.
    fn write<'a>(
        &'a self,
        ctx: &'a StoreContext,
        blocks: Vec<(u64, Bytes)>,
    ) -> BoxFuture<'a, io::Result<()>>;
    /// Makes everything written so far durable.
    fn flush<'a>(&'a self, ctx: &'a StoreContext) -> BoxFuture<'a, io::Result<()>>;
}

/// A copy-on-write disk over a base, writing through to a [`BlockStore`].
/// Dirty blocks are batched in memory up to `max_dirty_bytes` and written
/// when the batch is full, on guest FLUSH, and when the disk is dropped. A
/// store error fails the guest's request (EIO) and is reported as an event;
/// nothing is silently lost.
pub struct CowDisk {
    base: Box<dyn Disk>,
    store: Arc<dyn BlockStore>,
    ctx: StoreContext,
    rt: tokio::runtime::Handle,
    block: u64,
    stored: HashSet<u64>,
    dirty: HashMap<u64, Vec<u8>>,
    max_dirty_bytes: u64,
    events: Option<EventHook>,
    /// Written since the last successful flush (a read-only use never
    /// calls the store's flush).
    unflushed: bool,
}

fn store_error(e: io::Error) -> io::Error {
    io::Error::other(format!("block store: {e}"))
}

impl CowDisk {
    /// Opens the overlay; lists the store's blocks on `rt`.
    pub fn open(
        base: Box<dyn Disk>,
        store: Arc<dyn BlockStore>,
        ctx: StoreContext,
        rt: tokio::runtime::Handle,
        max_dirty_bytes: u64,
        events: Option<EventHook>,
    ) -> io::Result<Self> {
        let block = u64::from(store.block_size());
        if !crate::span::valid_block_size(block) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("block store block size {block} must be a multiple of 512 up to 1 MiB"),
            ));
        }
        let stored = rt
            .block_on(store.list(&ctx))
            .map_err(store_error)?
            .into_iter()
            .collect();
        Ok(Self {
            base,
            store,
            ctx,
            rt,
            block,
            stored,
            dirty: HashMap::new(),
            max_dirty_bytes: max_dirty_bytes.max(block),
            events,
            unflushed: false,
        })
    }

    fn report(&self, e: &io::Error) {
        if let Some(hook) = &self.events {
            hook(RootfsEvent::StoreFailed {
                message: e.to_string(),
            });
        }
    }

    /// The current content of block `index`.
    fn load(&mut self, index: u64) -> io::Result<Vec<u8>> {
        if let Some(d) = self.dirty.get(&index) {
            return Ok(d.clone());
        }
        let mut data = vec![0u8; self.block as usize];
        if self.stored.contains(&index) {
            let got = self
                .rt
                .block_on(self.store.read(&self.ctx, index))
                .map_err(store_error)?;
            let n = got.len().min(data.len());
            data[..n].copy_from_slice(&got[..n]);
        } else {
            let start = index * self.block;
            let n = self.block.min(self.base.size().saturating_sub(start)) as usize;
            self.base.read_at(start, &mut data[..n])?;
        }
        Ok(data)
    }

    fn write_back(&mut self) -> io::Result<()> {
        if self.dirty.is_empty() {
            return Ok(());
        }
        let batch: Vec<(u64, Bytes)> = self
            .dirty
            .iter()
            .map(|(i, d)| (*i, Bytes::copy_from_slice(d)))
            .collect();
        let result = self
            .rt
            .block_on(self.store.write(&self.ctx, batch))
            .map_err(store_error);
        match result {
            Ok(()) => {
                self.stored.extend(self.dirty.drain().map(|(i, _)| i));
                Ok(())
            }
            Err(e) => {
                // Keep the blocks: a later flush retries, nothing is lost.
                self.report(&e);
                Err(e)
            }
        }
    }
}

impl Disk for CowDisk {
    fn runs_caller_code(&self) -> bool {
        true
    }

    fn size(&self) -> u64 {
        self.base.size()
    }

    fn read_only(&self) -> bool {
        false
    }

    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        check(self.size(), offset, buf.len())?;
        for Piece {
            index,
            within,
            range,
        } in pieces(offset, buf.len(), self.block)
        {
            if self.dirty.contains_key(&index) || self.stored.contains(&index) {
                let data = self.load(index)?;
                buf[range.clone()].copy_from_slice(&data[within..within + range.len()]);
            } else {
                self.base
                    .read_at(offset + range.start as u64, &mut buf[range])?;
            }
        }
        Ok(())
    }

    fn write_at(&mut self, offset: u64, data: &[u8]) -> io::Result<()> {
        check(self.size(), offset, data.len())?;
        self.unflushed = true;
        for Piece {
            index,
            within,
            range,
        } in pieces(offset, data.len(), self.block)
        {
            let fresh = !self.dirty.contains_key(&index);
            if fresh && (self.dirty.len() as u64 + 1) * self.block > self.max_dirty_bytes {
                self.write_back()?;
            }
            let mut block = self.load(index)?;
            block[within..within + range.len()].copy_from_slice(&data[range]);
            self.dirty.insert(index, block);
        }
        Ok(())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.write_back()?;
        let result = self
            .rt
            .block_on(self.store.flush(&self.ctx))
            .map_err(store_error);
        match &result {
            Ok(()) => self.unflushed = false,
            Err(e) => self.report(e),
        }
        result
    }
}

impl Drop for CowDisk {
    fn drop(&mut self) {
        if !self.unflushed {
            return;
        }
        // Shutdown: write what is left; a failure is reported, not hidden.
        // If the runtime is already gone, block_on panics: contain that to
        // a report instead of taking the device thread down.
        let flushed = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| Disk::flush(self)));
        if flushed.is_err() {
            self.report(&io::Error::other(
                "the tokio runtime was gone before the block store was flushed",
            ));
        }
    }
}
