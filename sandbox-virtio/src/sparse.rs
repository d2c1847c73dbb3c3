//! Copies into sparse files: all-zero pages are left as holes.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;

/// The unit of hole detection.
pub const PAGE: usize = 4096;

/// Writes the non-zero pages of `bytes` to `file` at `base` (runs of
/// non-zero pages with one call each); returns the bytes written. The file
/// should already have its final length, so skipped pages read as zero.
pub fn write_nonzero(bytes: &[u8], file: &File, base: u64) -> io::Result<u64> {
    let mut stored = 0u64;
    let mut run: Option<usize> = None;
    let mut flush = |start: usize, end: usize| -> io::Result<()> {
        let data = &bytes[start..end];
        file.write_all_at(data, base + start as u64)?;
        stored += data.len() as u64;
        Ok(())
    };
    for (p, page) in bytes.chunks(PAGE).enumerate() {
        let zero = page.iter().all(|b| *b == 0);
        match (zero, run) {
            (false, None) => run = Some(p * PAGE),
            (true, Some(start)) => {
                flush(start, p * PAGE)?;
                run = None;
            }
            _ => {}
        }
    }
    if let Some(start) = run {
        flush(start, bytes.len())?;
    }
    Ok(stored)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn zero_pages_become_holes() {
        let path = std::env::temp_dir().join(format!("sbx-sparse-{}", std::process::id()));
        let file = File::options()
            .create(true)
            .truncate(true)
            .read(true)
            .write(true)
            .open(&path)
            .unwrap();
        let mut bytes = vec![0u8; 64 * PAGE];
        bytes[3 * PAGE + 7] = 1;
        bytes[4 * PAGE] = 2;
        bytes[63 * PAGE + PAGE - 1] = 3;
        file.set_len(1 << 20).unwrap();
        assert_eq!(write_nonzero(&bytes, &file, 4096).unwrap(), 3 * PAGE as u64);
        let mut back = vec![0u8; bytes.len()];
        file.read_exact_at(&mut back, 4096).unwrap();
        assert_eq!(back, bytes);
        assert!(file.metadata().unwrap().blocks() * 512 <= 16 * PAGE as u64);
        std::fs::remove_file(&path).unwrap();
    }
}
