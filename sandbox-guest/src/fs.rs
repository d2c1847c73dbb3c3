//! File system requests from the host: metadata, directory listings,
//! streamed reads (under the output credit window) and streamed writes
//! (fed by stdin chunks with stdin credit). Each runs on its own thread.

use std::ffi::OsStr;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::fd::AsRawFd;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::Arc;

use sandbox_protocol::{
    DirEntry, FileKind, FileStat, FsError, FsOp, FsReply, GuestMsg, Stream, INITIAL_WINDOW,
    MAX_CHUNK,
};

use crate::server::{lock, Entry, Out, Table};
use crate::window::Window;

/// Entries per `FsEntries` message, well under the frame limit.
const ENTRIES_PER_BATCH: usize = 512;

fn path(bytes: &[u8]) -> PathBuf {
    PathBuf::from(OsStr::from_bytes(bytes))
}

fn fs_error(e: &io::Error) -> FsError {
    let errno = e.raw_os_error().unwrap_or(match e.kind() {
        io::ErrorKind::PermissionDenied => libc::EPERM,
        io::ErrorKind::ResourceBusy => libc::EBUSY,
        io::ErrorKind::InvalidInput => libc::EINVAL,
        io::ErrorKind::Interrupted => libc::EINTR,
        _ => libc::EIO,
    });
    FsError {
        errno,
        message: e.to_string(),
    }
}

/// Opens `p` for a streamed read or write without ever blocking in
/// `open(2)` (a FIFO waits there for its other end) and refuses anything
/// but a regular file: FIFOs, sockets and devices are `EINVAL`, a
/// directory `EISDIR`.
fn open_regular(p: &Path, opts: &mut OpenOptions) -> io::Result<File> {
    let file = opts
        .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(p)?;
    let ft = file.metadata()?.file_type();
    if ft.is_dir() {
        return Err(io::Error::from_raw_os_error(libc::EISDIR));
    }
    if !ft.is_file() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "not a regular file (FIFOs, sockets and devices are not read or written through the file API)",
        ));
    }
    // SAFETY: F_GETFL/F_SETFL on a descriptor we own take integer arguments.
    unsafe {
        let flags = libc::fcntl(file.as_raw_fd(), libc::F_GETFL);
        if flags >= 0 {
            libc::fcntl(file.as_raw_fd(), libc::F_SETFL, flags & !libc::O_NONBLOCK);
        }
    }
    Ok(file)
}

fn done(out: &Out, id: u32, result: io::Result<FsReply>) {
    let _ = out.send(GuestMsg::FsDone {
        id,
        result: result.map_err(|e| fs_error(&e)),
    });
}

/// `lstat` of `p` as protocol metadata.
pub fn stat(p: &Path) -> io::Result<FileStat> {
    let m = fs::symlink_metadata(p)?;
    let ft = m.file_type();
    let kind = if ft.is_symlink() {
        FileKind::Symlink
    } else if ft.is_dir() {
        FileKind::Dir
    } else if ft.is_file() {
        FileKind::File
    } else {
        FileKind::Other
    };
    let link_target = if ft.is_symlink() {
        fs::read_link(p).ok().map(|t| t.into_os_string().into_vec())
    } else {
        None
    };
    Ok(FileStat {
        kind,
        size: m.size(),
        mode: m.mode(),
        uid: m.uid(),
        gid: m.gid(),
        mtime_ns: m.mtime() * 1_000_000_000 + m.mtime_nsec(),
        link_target,
    })
}

/// Starts request `id`. Streamed requests are registered before this
/// returns, so the host's data and credit that follow find them.
pub fn start(id: u32, op: FsOp, out: &Out, table: &Table) {
    let window = Arc::new(Window::new(INITIAL_WINDOW));
    let (tx, rx) = mpsc::channel::<Vec<u8>>();
    match op {
        FsOp::ReadFile { .. } => {
            lock(table).insert(id, Entry::io(Some(window.clone()), None));
        }
        FsOp::WriteFile { .. } => {
            lock(table).insert(id, Entry::io(None, Some(tx)));
        }
        _ => {}
    }
    let out = out.clone();
    let table = table.clone();
    let _ = std::thread::Builder::new()
        .name(format!("fs-{id}"))
        .spawn(move || match op {
            FsOp::Stat { path: p } => done(&out, id, stat(&path(&p)).map(FsReply::Stat)),
            FsOp::ReadDir { path: p } => done(&out, id, read_dir(id, &path(&p), &out)),
            FsOp::ReadFile {
                path: p,
                offset,
                length,
            } => read_file(id, &path(&p), offset, length, window, &out, &table),
            FsOp::WriteFile {
                path: p,
                create_parents,
                mode,
            } => write_file(id, &path(&p), create_parents, mode, rx, &out, &table),
            FsOp::Mkdir { path: p, recursive } => {
                let p = path(&p);
                let r = if recursive {
                    fs::create_dir_all(&p)
                } else {
                    fs::create_dir(&p)
                };
                done(&out, id, r.map(|()| FsReply::Done));
            }
            FsOp::Remove {
                path: p,
                recursive,
                force,
            } => done(
                &out,
                id,
                remove(&path(&p), recursive, force).map(|()| FsReply::Done),
            ),
            FsOp::Rename { from, to } => done(
                &out,
                id,
                fs::rename(path(&from), path(&to)).map(|()| FsReply::Done),
            ),
        });
}

fn read_dir(id: u32, p: &Path, out: &Out) -> io::Result<FsReply> {
    let mut batch = Vec::new();
    for entry in fs::read_dir(p)? {
        let Ok(entry) = entry else { continue };
        // An entry removed meanwhile is skipped, not an error.
        let Ok(st) = stat(&entry.path()) else {
            continue;
        };
        batch.push(DirEntry {
            name: entry.file_name().into_vec(),
            stat: st,
        });
        if batch.len() == ENTRIES_PER_BATCH {
            out.send(GuestMsg::FsEntries {
                id,
                entries: std::mem::take(&mut batch),
            })?;
        }
    }
    if !batch.is_empty() {
        out.send(GuestMsg::FsEntries { id, entries: batch })?;
    }
    Ok(FsReply::Done)
}

fn remove(p: &Path, recursive: bool, force: bool) -> io::Result<()> {
    crate::protect::check_remove(p, recursive)?;
    let r = match fs::symlink_metadata(p) {
        Ok(m) if m.is_dir() && recursive => fs::remove_dir_all(p),
        Ok(m) if m.is_dir() => fs::remove_dir(p),
        Ok(_) => fs::remove_file(p),
        Err(e) => Err(e),
    };
    match r {
        Err(e) if force && e.kind() == io::ErrorKind::NotFound => Ok(()),
        r => r,
    }
}

fn read_file(
    id: u32,
    p: &Path,
    offset: u64,
    length: Option<u64>,
    window: Arc<Window>,
    out: &Out,
    table: &Table,
) {
    let opened = open_regular(p, OpenOptions::new().read(true)).and_then(|mut f| {
        f.seek(SeekFrom::Start(offset))?;
        Ok(f)
    });
    let mut file = match opened {
        Ok(f) => f,
        Err(e) => {
            lock(table).remove(&id);
            return done(out, id, Err(e));
        }
    };
    let mut left = length.unwrap_or(u64::MAX);
    let mut buf = vec![0u8; MAX_CHUNK];
    let result = loop {
        if left == 0 {
            break Ok(FsReply::Done);
        }
        let Some(credit) = window.wait() else {
            break Err(io::Error::new(io::ErrorKind::Interrupted, "read cancelled"));
        };
        let max = (credit.min(left) as usize).min(MAX_CHUNK);
        match file.read(&mut buf[..max]) {
            Ok(0) => break Ok(FsReply::Done),
            Ok(n) => {
                window.consume(n);
                left -= n as u64;
                let chunk = GuestMsg::Output {
                    id,
                    stream: Stream::Stdout,
                    data: buf[..n].to_vec(),
                };
                if let Err(e) = out.send(chunk) {
                    break Err(e);
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => break Err(e),
        }
    };
    lock(table).remove(&id);
    done(out, id, result);
}

fn write_file(
    id: u32,
    p: &Path,
    create_parents: bool,
    mode: u32,
    rx: mpsc::Receiver<Vec<u8>>,
    out: &Out,
    table: &Table,
) {
    let parents = match p.parent() {
        Some(dir) if create_parents => fs::create_dir_all(dir),
        _ => Ok(()),
    };
    // Truncated only once it is known to be a regular file.
    let opened = parents.and_then(|()| {
        let f = open_regular(p, OpenOptions::new().write(true).create(true).mode(mode))?;
        f.set_len(0)?;
        Ok(f)
    });
    let mut file = match opened {
        Ok(f) => f,
        Err(e) => {
            lock(table).remove(&id);
            return done(out, id, Err(e));
        }
    };
    let mut result = Ok(FsReply::Done);
    for chunk in rx {
        if result.is_ok() {
            if let Err(e) = file.write_all(&chunk) {
                result = Err(e);
            }
        }
        // Credit even after a failure, so the host never waits forever.
        let _ = out.send(GuestMsg::StdinCredit {
            id,
            bytes: chunk.len() as u32,
        });
    }
    if result.is_ok() {
        result = file.flush().map(|()| FsReply::Done);
    }
    lock(table).remove(&id);
    done(out, id, result);
}
