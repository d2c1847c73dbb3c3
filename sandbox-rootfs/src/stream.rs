//! Streaming an image's container bytes (the file as stored: raw, or qcow2
//! for a flattened image) in fixed-size chunks.

use bytes::Bytes;
use futures::stream::{self, Stream};
use tokio::io::AsyncReadExt;

use crate::Image;

/// The bytes of `image`'s file as a stream of chunks of `chunk_size` bytes
/// (the last may be shorter). Memory use is one chunk at a time.
pub fn bytes(image: &Image, chunk_size: usize) -> impl Stream<Item = std::io::Result<Bytes>> {
    let path = image.path.clone();
    let chunk_size = chunk_size.max(1);
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
