//! The guest file system from the host (`vm.fs()`): metadata, listings,
//! whole, ranged and streamed reads, streamed writes, mkdir, remove, rename.
//! Paths are absolute guest paths; errors carry the guest errno.

use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::{OsStrExt, OsStringExt};

use sandbox_protocol::{FileStat, FsOp, FsReply, HostMsg};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};

use crate::client::Event;
use crate::process::{self, OutputStream};
use crate::{Error, Vm};

pub use sandbox_protocol::{FileKind, FileStat as Metadata};

/// Permission bits of files created by [`Fs::write_file`].
const NEW_FILE_MODE: u32 = 0o644;

/// One directory entry: its name (lossless as an `OsString`; `as_bytes()`
/// gives the raw bytes) and its `lstat` metadata.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DirEntry {
    /// The entry's name.
    pub name: OsString,
    /// Its metadata.
    pub metadata: FileStat,
}

/// Options of [`Fs::write_file`].
#[derive(Clone, Copy, Debug, Default)]
pub struct WriteOptions {
    /// Create missing parent directories.
    pub create_parents: bool,
}

/// How long a metadata request (stat, read_dir, mkdir, remove, rename)
/// may go unanswered before it is cancelled; see [`Fs::deadline`].
pub const DEFAULT_DEADLINE: std::time::Duration = std::time::Duration::from_secs(30);

/// Guest file system operations of one VM.
pub struct Fs<'vm> {
    vm: &'vm Vm,
    deadline: std::time::Duration,
}

fn bytes(p: &OsStr) -> Vec<u8> {
    p.as_bytes().to_vec()
}

fn check_path(op: &'static str, path: &OsStr) -> Result<(), Error> {
    if path.as_bytes().first() == Some(&b'/') && !path.as_bytes().contains(&0) {
        Ok(())
    } else {
        Err(Error::InvalidConfig(format!(
            "{op}: {:?} must be an absolute guest path without NUL bytes",
            path
        )))
    }
}

impl<'vm> Fs<'vm> {
    pub(crate) fn new(vm: &'vm Vm) -> Self {
        Self {
            vm,
            deadline: DEFAULT_DEADLINE,
        }
    }

    /// How long a metadata request may go unanswered (default
    /// [`DEFAULT_DEADLINE`]); past it the guest is told to cancel it and
    /// the call fails with `ETIMEDOUT`. Each request runs on its own guest
    /// thread, so a stuck one never delays others.
    pub fn deadline(mut self, deadline: std::time::Duration) -> Self {
        self.deadline = deadline;
        self
    }

    /// Sends `op` and returns its route.
    fn send(
        &self,
        op: &'static str,
        path: &OsStr,
        fs_op: FsOp,
    ) -> Result<crate::client::Request, Error> {
        check_path(op, path)?;
        let client = self.vm.client();
        let req = client.register().map_err(|r| self.vm.stopped(r))?;
        client
            .link()
            .send(HostMsg::Fs {
                id: req.id,
                op: fs_op,
            })
            .map_err(|r| self.vm.stopped(r))?;
        Ok(req)
    }

    /// Runs a request without streamed data; entries are collected.
    async fn simple(
        &self,
        op: &'static str,
        path: &OsStr,
        fs_op: FsOp,
    ) -> Result<(FsReply, Vec<DirEntry>), Error> {
        let mut req = self.send(op, path, fs_op)?;
        let mut entries = Vec::new();
        let deadline = tokio::time::Instant::now() + self.deadline;
        loop {
            let event = match tokio::time::timeout_at(deadline, req.events.recv()).await {
                Ok(event) => event,
                Err(_) => {
                    let _ = self.vm.client().link().send(HostMsg::Abort { id: req.id });
                    return Err(Error::Fs {
                        op,
                        path: path.to_string_lossy().into_owned(),
                        errno: libc::ETIMEDOUT,
                        message: format!(
                            "no answer from the guest within {} ms; the request was cancelled",
                            self.deadline.as_millis()
                        ),
                    });
                }
            };
            match event {
                Some(Event::FsEntries(batch)) => {
                    entries.extend(batch.into_iter().map(|e| DirEntry {
                        name: OsString::from_vec(e.name),
                        metadata: e.stat,
                    }))
                }
                Some(Event::FsDone(Ok(reply))) => return Ok((reply, entries)),
                Some(Event::FsDone(Err(e))) => {
                    return Err(Error::Fs {
                        op,
                        path: path.to_string_lossy().into_owned(),
                        errno: e.errno,
                        message: e.message,
                    })
                }
                Some(Event::Rejected(m)) => return Err(Error::Rejected(m)),
                Some(_) => {}
                None => {
                    let reason = self.vm.client().link().closed().unwrap_or_default();
                    return Err(self.vm.stopped(reason));
                }
            }
        }
    }

    /// Metadata of `path`, not following a final symlink (`lstat`).
    pub async fn stat(&self, path: impl AsRef<OsStr>) -> Result<Metadata, Error> {
        let p = path.as_ref();
        match self
            .simple("stat", p, FsOp::Stat { path: bytes(p) })
            .await?
        {
            (FsReply::Stat(st), _) => Ok(st),
            (other, _) => Err(Error::Protocol(format!("stat answered {other:?}"))),
        }
    }

    /// Every entry of directory `path` with its metadata, in one call.
    pub async fn read_dir(&self, path: impl AsRef<OsStr>) -> Result<Vec<DirEntry>, Error> {
        let p = path.as_ref();
        let (_, entries) = self
            .simple("read_dir", p, FsOp::ReadDir { path: bytes(p) })
            .await?;
        Ok(entries)
    }

    /// Creates directory `path` (with `recursive`, its parents too, and an
    /// existing directory is fine).
    pub async fn mkdir(&self, path: impl AsRef<OsStr>, recursive: bool) -> Result<(), Error> {
        let p = path.as_ref();
        let op = FsOp::Mkdir {
            path: bytes(p),
            recursive,
        };
        self.simple("mkdir", p, op).await.map(|_| ())
    }

    /// Removes `path` (with `recursive`, a directory's contents too; with
    /// `force`, a missing path is not an error).
    pub async fn remove(
        &self,
        path: impl AsRef<OsStr>,
        recursive: bool,
        force: bool,
    ) -> Result<(), Error> {
        let p = path.as_ref();
        let op = FsOp::Remove {
            path: bytes(p),
            recursive,
            force,
        };
        self.simple("remove", p, op).await.map(|_| ())
    }

    /// Renames `from` to `to` with one guest `rename(2)`.
    pub async fn rename(
        &self,
        from: impl AsRef<OsStr>,
        to: impl AsRef<OsStr>,
    ) -> Result<(), Error> {
        let (f, t) = (from.as_ref(), to.as_ref());
        check_path("rename", t)?;
        let op = FsOp::Rename {
            from: bytes(f),
            to: bytes(t),
        };
        self.simple("rename", f, op).await.map(|_| ())
    }

    /// A stream of the file's bytes from `offset`, `length` bytes or to the
    /// end. Memory stays bounded whatever the file size: the guest sends
    /// only as fast as the stream is read.
    pub fn open_read(
        &self,
        path: impl AsRef<OsStr>,
        offset: u64,
        length: Option<u64>,
    ) -> Result<FileReader, Error> {
        let p = path.as_ref();
        let op = FsOp::ReadFile {
            path: bytes(p),
            offset,
            length,
        };
        let req = self.send("read_file", p, op)?;
        let (done, _stdin, data) = process::file_request(
            req,
            "read_file",
            p.to_string_lossy().into_owned(),
            self.vm.client().link().clone(),
            self.vm.console_fn(),
        );
        let guard = data.abort_guard();
        Ok(FileReader { data, done, guard })
    }

    /// The whole file.
    pub async fn read_file(&self, path: impl AsRef<OsStr>) -> Result<Vec<u8>, Error> {
        self.read_range(path, 0, None).await
    }

    /// `length` bytes (or to the end) from `offset`.
    pub async fn read_range(
        &self,
        path: impl AsRef<OsStr>,
        offset: u64,
        length: Option<u64>,
    ) -> Result<Vec<u8>, Error> {
        let mut reader = self.open_read(path, offset, length)?;
        let mut data = Vec::new();
        let read = reader.data.read_to_end(&mut data).await;
        reader.guard.disarm();
        reader.done.finish().await?;
        read.map_err(Error::io("reading a guest file"))?;
        Ok(data)
    }

    /// Creates or truncates `path` and writes `data` to it.
    pub async fn write_file(
        &self,
        path: impl AsRef<OsStr>,
        data: &[u8],
        opts: WriteOptions,
    ) -> Result<(), Error> {
        self.write_from(path, data, opts).await
    }

    /// Creates or truncates `path` and streams `source` into it with bounded
    /// memory: it is read only as fast as the guest writes.
    pub async fn write_from(
        &self,
        path: impl AsRef<OsStr>,
        mut source: impl AsyncRead + Unpin,
        opts: WriteOptions,
    ) -> Result<(), Error> {
        let p = path.as_ref();
        let op = FsOp::WriteFile {
            path: bytes(p),
            create_parents: opts.create_parents,
            mode: NEW_FILE_MODE,
        };
        let req = self.send("write_file", p, op)?;
        let (done, mut sink, _data) = process::file_request(
            req,
            "write_file",
            p.to_string_lossy().into_owned(),
            self.vm.client().link().clone(),
            self.vm.console_fn(),
        );
        // A guest-side failure closes the sink; `finish` then says why.
        let copied = tokio::io::copy(&mut source, &mut sink).await;
        let _ = sink.shutdown().await;
        done.finish().await?;
        copied.map_err(Error::io("streaming a file into the guest"))?;
        Ok(())
    }
}

/// A guest file being read; see [`Fs::open_read`]. Dropping it before
/// [`FileReader::finish`] cancels the guest's read.
pub struct FileReader {
    data: OutputStream,
    done: process::FileDone,
    guard: crate::client::AbortOnDrop,
}

impl FileReader {
    /// Waits for the guest to confirm the whole range was read (or says
    /// why not), after the stream reached its end.
    pub async fn finish(mut self) -> Result<(), Error> {
        self.guard.disarm();
        self.done.finish().await
    }
}

impl AsyncRead for FileReader {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.data).poll_read(cx, buf)
    }
}
