//! Streaming an image's container bytes (the file as stored: raw or
//! qcow2, or a flattened image's blocks) in fixed-size chunks.

use std::collections::HashSet;
use std::io;
use std::path::PathBuf;

use bytes::Bytes;
use futures::stream::{self, BoxStream, Stream, StreamExt};
use tokio::io::AsyncReadExt;

use crate::span::{pieces, Piece};
use crate::{FlatImage, Image};

/// Where an image's container bytes are: a file, or a block store.
pub enum ImageBytes {
    /// An image file.
    File(PathBuf),
    /// A flattened image in a block store.
    Stored(FlatImage),
}

impl From<&Image> for ImageBytes {
    fn from(image: &Image) -> Self {
        ImageBytes::File(image.path.clone())
    }
}

impl From<&FlatImage> for ImageBytes {
    fn from(image: &FlatImage) -> Self {
        ImageBytes::Stored(image.clone())
    }
}

impl From<FlatImage> for ImageBytes {
    fn from(image: FlatImage) -> Self {
        ImageBytes::Stored(image)
    }
}

/// The container bytes of `image` (an [`Image`] file or a [`FlatImage`])
/// as a stream of chunks of `chunk_size` bytes (the last may be shorter).
/// Memory use is about one chunk (plus one store block) at a time.
pub fn bytes(
    image: impl Into<ImageBytes>,
    chunk_size: usize,
) -> impl Stream<Item = io::Result<Bytes>> + Send {
    let chunk_size = chunk_size.max(1);
    let s: BoxStream<'static, io::Result<Bytes>> = match image.into() {
        ImageBytes::File(path) => file_bytes(path, chunk_size).boxed(),
        ImageBytes::Stored(flat) => stored_bytes(flat, chunk_size).boxed(),
    };
    s
}

fn file_bytes(path: PathBuf, chunk_size: usize) -> impl Stream<Item = io::Result<Bytes>> {
    stream::unfold(None, move |file: Option<tokio::fs::File>| {
        let path = path.clone();
        async move {
            let mut file = match file {
                Some(f) => f,
                None => match tokio::fs::File::open(&path).await {
                    Ok(f) => f,
                    Err(e) => return Some((Err(e), None)),
                },
            };
            let mut buf = vec![0u8; chunk_size];
            let mut filled = 0;
            while filled < chunk_size {
                match file.read(&mut buf[filled..]).await {
                    Ok(0) => break,
                    Ok(n) => filled += n,
                    Err(e) => return Some((Err(e), None)),
                }
            }
            if filled == 0 {
                return None;
            }
            buf.truncate(filled);
            Some((Ok(Bytes::from(buf)), Some(file)))
        }
    })
}

struct Cursor {
    flat: FlatImage,
    held: Option<HashSet<u64>>,
    pos: u64,
    last: Option<(u64, Bytes)>,
}

impl Cursor {
    async fn block(&mut self, index: u64) -> io::Result<Option<Bytes>> {
        if let Some((i, b)) = &self.last {
            if *i == index {
                return Ok(Some(b.clone()));
            }
        }
        let held = match &self.held {
            Some(h) => h,
            None => {
                let list = self.flat.store.list(&self.flat.context).await?;
                self.held.insert(list.into_iter().collect())
            }
        };
        if !held.contains(&index) {
            return Ok(None);
        }
        let data = self.flat.store.read(&self.flat.context, index).await?;
        self.last = Some((index, data.clone()));
        Ok(Some(data))
    }

    async fn next_chunk(&mut self, chunk_size: usize) -> io::Result<Option<Bytes>> {
        let n = (self.flat.len.saturating_sub(self.pos)).min(chunk_size as u64) as usize;
        if n == 0 {
            return Ok(None);
        }
        let block = u64::from(self.flat.store.block_size());
        let mut out = vec![0u8; n];
        for Piece {
            index,
            within,
            range,
        } in pieces(self.pos, n, block)
        {
            if let Some(data) = self.block(index).await? {
                let src = data.get(within..within + range.len()).ok_or_else(|| {
                    io::Error::new(io::ErrorKind::InvalidData, "a stored block is short")
                })?;
                out[range].copy_from_slice(src);
            }
        }
        self.pos += n as u64;
        Ok(Some(Bytes::from(out)))
    }
}

fn stored_bytes(flat: FlatImage, chunk_size: usize) -> impl Stream<Item = io::Result<Bytes>> {
    let cursor = Cursor {
        flat,
        held: None,
        pos: 0,
        last: None,
    };
    stream::unfold(Some(cursor), move |cursor| async move {
        let mut c = cursor?;
        match c.next_chunk(chunk_size).await {
            Ok(Some(chunk)) => Some((Ok(chunk), Some(c))),
            Ok(None) => None,
            Err(e) => Some((Err(e), None)),
        }
    })
}

#[cfg(test)]
mod tests {
    use futures::StreamExt;

    use super::*;
    use crate::{sha256_file, ImageFormat};

    #[tokio::test]
    async fn streams_the_whole_file_in_chunks() {
        let path = std::env::temp_dir().join(format!("bytes-test-{}", std::process::id()));
        let data: Vec<u8> = (0..100_000u32).map(|i| i as u8).collect();
        std::fs::write(&path, &data).unwrap();
        let image = Image {
            name: "t".into(),
            path: path.clone(),
            format: ImageFormat::Raw,
            arch: "x86_64".into(),
            sha256: sha256_file(&path).unwrap(),
            size: data.len() as u64,
            facts: Default::default(),
            run: Default::default(),
        };
        let chunks: Vec<Bytes> = bytes(&image, 4096).map(|c| c.unwrap()).collect().await;
        assert_eq!(chunks.len(), 25);
        assert!(chunks[..24].iter().all(|c| c.len() == 4096));
        assert_eq!(chunks.concat(), data);
        std::fs::remove_file(&path).unwrap();
        let mut missing = Box::pin(bytes(&image, 4096));
        assert!(missing.next().await.unwrap().is_err());
    }
}
