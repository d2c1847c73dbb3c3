//! A raw image file, read-only.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;

use crate::Disk;

/// A raw image served as is; writes fail with `EROFS`.
pub struct RawImage {
    file: File,
    size: u64,
}

impl RawImage {
    /// Opens `path` read-only; the size is rounded down to whole sectors.
    pub fn open(path: &Path) -> io::Result<Self> {
        let file = File::open(path)?;
        let size = file.metadata()?.len() & !511;
        Ok(Self { file, size })
    }
}

impl Disk for RawImage {
    fn size(&self) -> u64 {
        self.size
    }

    fn read_only(&self) -> bool {
        true
    }

    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        self.file.read_exact_at(buf, offset)
    }

    fn write_at(&mut self, _offset: u64, _data: &[u8]) -> io::Result<()> {
        Err(io::Error::from_raw_os_error(libc::EROFS))
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}
