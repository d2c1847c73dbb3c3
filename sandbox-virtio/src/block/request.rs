//! Parsing and executing one virtio-blk request. Every length and address
//! comes from the guest: a malformed chain is counted and answered without
//! touching the disk, never a panic.

use std::io::{Read, Write};
use std::ops::Deref;

use virtio_queue::DescriptorChain;

use super::BlockMetrics;
use crate::GuestMemory;
use sandbox_rootfs::Disk;

pub(super) use virtio_bindings::virtio_blk::{
    VIRTIO_BLK_T_FLUSH as T_FLUSH, VIRTIO_BLK_T_GET_ID as T_GET_ID, VIRTIO_BLK_T_IN as T_IN,
    VIRTIO_BLK_T_OUT as T_OUT,
};

const S_OK: u8 = virtio_bindings::virtio_blk::VIRTIO_BLK_S_OK as u8;
pub(super) const S_IOERR: u8 = virtio_bindings::virtio_blk::VIRTIO_BLK_S_IOERR as u8;
pub(super) const S_UNSUPP: u8 = virtio_bindings::virtio_blk::VIRTIO_BLK_S_UNSUPP as u8;

/// Bytes moved between the disk and guest memory per step (the size of the
/// handler's bounce buffer).
pub(super) const CHUNK: usize = 1 << 20;

/// Executes the request in `chain` and returns the number of bytes written
/// into guest memory (the used length).
pub(super) fn execute<M>(
    chain: DescriptorChain<M>,
    mem: &GuestMemory,
    disk: &mut dyn Disk,
    id: &str,
    metrics: &BlockMetrics,
    buf: &mut [u8],
) -> u32
where
    M: Deref<Target = GuestMemory> + Clone,
{
    let (Ok(mut reader), Ok(mut writer)) = (chain.clone().reader(mem), chain.writer(mem)) else {
        metrics.malformed.inc();
        return 0;
    };
    let mut header = [0u8; 16];
    let status_at = writer.available_bytes().checked_sub(1);
    let (Some(status_at), Ok(())) = (status_at, reader.read_exact(&mut header)) else {
        metrics.malformed.inc();
        return 0;
    };
    let Ok(mut status_writer) = writer.split_at(status_at) else {
        metrics.malformed.inc();
        return 0;
    };
    let kind = u32::from_le_bytes([header[0], header[1], header[2], header[3]]);
    let mut sector = [0u8; 8];
    sector.copy_from_slice(&header[8..16]);
    let offset = u64::from_le_bytes(sector).checked_mul(512);

    let status = match kind {
        T_IN => {
            let len = writer.available_bytes();
            match offset.filter(|o| in_range(disk, *o, len)) {
                Some(offset) => copy_to_guest(disk, offset, len, &mut writer, metrics, buf),
                None => S_IOERR,
            }
        }
        T_OUT => {
            let len = reader.available_bytes();
            match offset.filter(|o| in_range(disk, *o, len)) {
                Some(_) if disk.read_only() => S_IOERR,
                Some(offset) => copy_from_guest(disk, offset, len, &mut reader, metrics, buf),
                None => S_IOERR,
            }
        }
        T_FLUSH => {
            let started = std::time::Instant::now();
            let r = disk.flush();
            metrics.flushes.inc();
            metrics
                .flush_micros
                .add(started.elapsed().as_micros().try_into().unwrap_or(u64::MAX));
            match r {
                Ok(()) => S_OK,
                Err(_) => S_IOERR,
            }
        }
        T_GET_ID => {
            let n = writer.available_bytes().min(20).min(id.len());
            match writer.write_all(&id.as_bytes()[..n]) {
                Ok(()) => S_OK,
                Err(_) => S_IOERR,
            }
        }
        _ => S_UNSUPP,
    };
    if status == S_IOERR {
        metrics.io_errors.inc();
    }
    metrics.requests.inc();
    if status_writer.write_all(&[status]).is_err() {
        metrics.malformed.inc();
    }
    (writer.bytes_written() + status_writer.bytes_written()) as u32
}

fn in_range(disk: &dyn Disk, offset: u64, len: usize) -> bool {
    offset
        .checked_add(len as u64)
        .is_some_and(|end| end <= disk.size())
}

/// Runs `step(position, buffer)` over `len` bytes in pieces of the bounce
/// buffer's size, so a large request never needs a buffer of its own size.
fn chunked(
    len: usize,
    buf: &mut [u8],
    mut step: impl FnMut(u64, &mut [u8]) -> std::io::Result<()>,
) -> u8 {
    let mut done = 0usize;
    while done < len {
        let n = buf.len().min(len - done);
        if step(done as u64, &mut buf[..n]).is_err() {
            return S_IOERR;
        }
        done += n;
    }
    S_OK
}

fn copy_to_guest(
    disk: &mut dyn Disk,
    offset: u64,
    len: usize,
    writer: &mut impl Write,
    metrics: &BlockMetrics,
    bounce: &mut [u8],
) -> u8 {
    let status = chunked(len, bounce, |pos, buf| {
        disk.read_at(offset + pos, buf)?;
        writer.write_all(buf)
    });
    if status == S_OK {
        metrics.read_bytes.add(len as u64);
    }
    status
}

fn copy_from_guest(
    disk: &mut dyn Disk,
    offset: u64,
    len: usize,
    reader: &mut impl Read,
    metrics: &BlockMetrics,
    bounce: &mut [u8],
) -> u8 {
    let status = chunked(len, bounce, |pos, buf| {
        reader.read_exact(buf)?;
        disk.write_at(offset + pos, buf)
    });
    if status == S_OK {
        metrics.write_bytes.add(len as u64);
    }
    status
}
