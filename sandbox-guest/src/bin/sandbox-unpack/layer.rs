//! One layer: its bytes on the source device, decompressed, checked
//! against its diff_id, applied entry by entry.

use std::fs::File;
use std::io::{self, BufRead, BufReader, Read, Seek, SeekFrom};
use std::path::Path;

use sha2::{Digest, Sha256};

use crate::apply::Layer;
use crate::root::Root;

/// Where a layer is on the source device and what it must hash to.
pub struct Spec {
    offset: u64,
    size: u64,
    pub diff_id: String,
}

impl Spec {
    /// `OFFSET:SIZE:DIFF_ID_HEX`.
    pub fn parse(s: &str) -> Result<Self, String> {
        let bad = || format!("bad layer spec {s:?}; expected OFFSET:SIZE:DIFF_ID_HEX");
        let mut it = s.split(':');
        let offset = it.next().and_then(|v| v.parse().ok()).ok_or_else(bad)?;
        let size = it.next().and_then(|v| v.parse().ok()).ok_or_else(bad)?;
        let diff_id = it.next().ok_or_else(bad)?.to_string();
        let ok = diff_id.len() == 64 && diff_id.bytes().all(|b| b.is_ascii_hexdigit());
        if !ok || it.next().is_some() {
            return Err(bad());
        }
        Ok(Self {
            offset,
            size,
            diff_id,
        })
    }
}

#[derive(Debug, Clone, Copy)]
pub enum Compression {
    None,
    Gzip,
    Zstd,
}

pub struct Stats {
    pub entries: u64,
    pub bytes: u64,
    pub compression: Compression,
}

/// Hashes and counts the uncompressed stream, and stops it past the
/// import's byte budget (a decompression bomb ends here).
struct Metered<'a, R> {
    inner: R,
    hash: Sha256,
    bytes: u64,
    budget: &'a mut u64,
}

impl<R: Read> Read for Metered<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        if n as u64 > *self.budget {
            return Err(io::Error::other(
                "the layers unpack to more bytes than the import allows (max_unpacked_bytes); a decompression bomb, or raise the limit",
            ));
        }
        *self.budget -= n as u64;
        self.bytes += n as u64;
        self.hash.update(&buf[..n]);
        Ok(n)
    }
}

fn sniff(head: &[u8]) -> Compression {
    if head.starts_with(&[0x1f, 0x8b]) {
        Compression::Gzip
    } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        Compression::Zstd
    } else {
        Compression::None
    }
}

fn decoder<'a>(r: BufReader<io::Take<File>>, c: Compression) -> io::Result<Box<dyn Read + 'a>> {
    Ok(match c {
        Compression::None => Box::new(r),
        Compression::Gzip => Box::new(flate2::bufread::MultiGzDecoder::new(r)),
        Compression::Zstd => Box::new(
            ruzstd::decoding::StreamingDecoder::new(r)
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("zstd: {e}")))?,
        ),
    })
}

/// Applies the layer `spec` from `source` onto `root`.
pub fn apply(source: &Path, spec: &Spec, root: &Root, budget: &mut u64) -> Result<Stats, String> {
    let io = |what: &str, e: io::Error| format!("{what}: {}", describe(&e));
    let mut f = File::open(source).map_err(|e| io("opening the source", e))?;
    f.seek(SeekFrom::Start(spec.offset))
        .map_err(|e| io("seeking the source", e))?;
    let mut r = BufReader::with_capacity(1 << 20, f.take(spec.size));
    let compression = sniff(r.fill_buf().map_err(|e| io("reading", e))?);
    let mut metered = Metered {
        inner: decoder(r, compression).map_err(|e| io("decompressing", e))?,
        hash: Sha256::new(),
        bytes: 0,
        budget,
    };
    let entries = {
        let mut layer = Layer::new(root);
        let mut archive = tar::Archive::new(&mut metered);
        let list = archive.entries().map_err(|e| io("reading the tar", e))?;
        for entry in list {
            let mut entry = entry.map_err(|e| io("reading the tar", e))?;
            layer.entry(&mut entry).map_err(|e| {
                let path = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
                format!("{path}: {}", describe(&e))
            })?;
        }
        layer
            .finish()
            .map_err(|e| io("setting directory metadata", e))?;
        layer.entries
    };
    // The digest covers the whole stream, the end-of-archive blocks too.
    io::copy(&mut metered, &mut io::sink()).map_err(|e| io("reading the tar", e))?;
    let actual = hex(&metered.hash.finalize());
    if actual != spec.diff_id.to_ascii_lowercase() {
        return Err(format!(
            "the uncompressed layer is sha256:{actual}, but the image config says sha256:{}",
            spec.diff_id
        ));
    }
    Ok(Stats {
        entries,
        bytes: metered.bytes,
        compression,
    })
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// An error as the host will show it: a full target disk said plainly.
fn describe(e: &io::Error) -> String {
    if e.raw_os_error() == Some(libc::ENOSPC) {
        "no space left on the target disk: the unpacked image is larger than the import allows (max_image_bytes)".into()
    } else {
        e.to_string()
    }
}
