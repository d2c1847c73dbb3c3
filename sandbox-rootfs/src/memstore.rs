//! A [`BlockStore`] kept in memory: scratch state, tests, and a simple
//! destination for [`crate::flatten`].

use std::collections::HashMap;
use std::io;
use std::sync::Mutex;

use bytes::Bytes;
use futures::future::BoxFuture;

use crate::{BlockStore, StoreContext};

/// Blocks in a map, shared by every context (one store per base).
pub struct MemStore {
    block_size: u32,
    blocks: Mutex<HashMap<u64, Bytes>>,
}

impl MemStore {
    /// An empty store of `block_size`-byte blocks.
    pub fn new(block_size: u32) -> Self {
        Self {
            block_size,
            blocks: Mutex::new(HashMap::new()),
        }
    }

    /// Number of blocks held.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether the store holds no block.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Bytes>> {
        self.blocks.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl BlockStore for MemStore {
    fn block_size(&self) -> u32 {
        self.block_size
    }

    fn list<'a>(&'a self, _ctx: &'a StoreContext) -> BoxFuture<'a, io::Result<Vec<u64>>> {
        let keys = self.lock().keys().copied().collect();
        Box::pin(async move { Ok(keys) })
    }

    fn read<'a>(&'a self, _ctx: &'a StoreContext, index: u64) -> BoxFuture<'a, io::Result<Bytes>> {
        let block = self.lock().get(&index).cloned();
        Box::pin(async move {
            block
                .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, format!("no block {index}")))
        })
    }

    fn write<'a>(
        &'a self,
        _ctx: &'a StoreContext,
        blocks: Vec<(u64, Bytes)>,
    ) -> BoxFuture<'a, io::Result<()>> {
        self.lock().extend(blocks);
        Box::pin(async { Ok(()) })
    }

    fn flush<'a>(&'a self, _ctx: &'a StoreContext) -> BoxFuture<'a, io::Result<()>> {
        Box::pin(async { Ok(()) })
    }
}
