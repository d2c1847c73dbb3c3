//! The jail of the UML kernel process.
//!
//! A guest that breaks its kernel runs code as the kernel process, so that
//! process (and every process it forks: UML runs each guest address space
//! in a host child under ptrace) is confined by default:
//!
//! - **User namespace.** As root, the process drops to a per-VM unprivileged
//!   uid/gid ([`JAIL_ID_BASE`] + n) and maps it to 0 in a new user namespace;
//!   as another user, a new user namespace maps that user to 0. Either way
//!   it holds no capability outside its namespaces, and its capability
//!   bounding set is empty, so the kernel binary runs with none at all.
//! - **Mount namespace and a private root.** A fresh tmpfs (guest RAM plus
//!   [`MEMORY_MARGIN_MIB`]: UML's memory file lives in it) becomes the root
//!   by `pivot_root`. It holds only the kernel binary, its ELF loader and
//!   libraries (read-only binds), the vhost-user and link sockets (binds of
//!   the socket files alone), `/dev/null`, a read-only `/proc/cpuinfo` and
//!   `/tmp`. Nothing else of the host's file
//!   system is reachable.
//! - **PID, IPC, UTS, cgroup and network namespaces.** The kernel is pid 1
//!   of its own pid namespace; an outer host process waits for it and exits
//!   as it did (so killing either kills the guest). The network namespace
//!   is empty: the guest's network is the link socket.
//! - **Limits** (rlimits, inherited by every process of the jail): no core
//!   dumps, [`UmlJail::max_open_files`], [`UmlJail::max_processes`]
//!   (counted per jail: each jail has its own user namespace), and
//!   `no_new_privs`.
//!
//! [`UmlJail::process_only`] is the documented weaker mode for hosts that
//! forbid namespaces: process group, `no_new_privs`, parent-death signal,
//! the same rlimits and, when allowed, an empty network namespace.

mod child;
mod filter;
mod libs;

use std::ffi::{CString, OsStr};
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;

pub(crate) use child::Step;
pub use filter::ABORT_EXIT_CODE;

/// The first host uid/gid of jailed kernel processes started as root (a
/// range no distribution allocates; each VM gets its own id above it).
pub const JAIL_ID_BASE: u32 = 0x5b00_0000;
/// Room in the jail's tmpfs beyond guest RAM (UML's memory file is the
/// guest RAM; the rest is its pid file and management socket).
pub const MEMORY_MARGIN_MIB: u64 = 64;

/// How the UML kernel process is confined.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UmlJail {
    full: bool,
    max_processes: u64,
    max_open_files: u64,
}

impl Default for UmlJail {
    /// The full jail, 4096 processes, 1024 open files per process.
    fn default() -> Self {
        Self {
            full: true,
            max_processes: 4096,
            max_open_files: 1024,
        }
    }
}

impl UmlJail {
    /// The weaker mode for hosts that forbid user namespaces: no private
    /// root and the caller's uid; process group, `no_new_privs`,
    /// parent-death signal, rlimits and (best effort) an empty network
    /// namespace only.
    pub fn process_only() -> Self {
        Self {
            full: false,
            ..Self::default()
        }
    }

    /// Most processes the jail may run (`RLIMIT_NPROC`; each guest process
    /// is a host process under UML). Clamped to the caller's hard limit.
    pub fn max_processes(mut self, n: u64) -> Self {
        self.max_processes = n;
        self
    }

    /// Most open files per jailed process (`RLIMIT_NOFILE`). Clamped to
    /// the caller's hard limit.
    pub fn max_open_files(mut self, n: u64) -> Self {
        self.max_open_files = n;
        self
    }

    /// Whether this is the full jail (namespaces and a private root).
    pub fn is_full(&self) -> bool {
        self.full
    }
}

/// Where the jailed kernel finds its memory file and `uml_dir`.
pub(crate) const JAIL_TMP: &str = "/tmp";
/// The kernel binary inside the jail.
const JAIL_KERNEL: &str = "/kernel";
/// The one host `/proc` file in the jail (read-only).
const CPUINFO: &str = "/proc/cpuinfo";

/// A jail being prepared for one kernel process: which host files appear
/// where, and what the child does before `execve`.
pub(crate) struct Plan {
    opts: UmlJail,
    /// Host mount point of the jail's root (an empty directory).
    root: PathBuf,
    /// The jail's host uid/gid when started as root.
    id: u32,
    as_root: bool,
    memory_mib: u64,
    /// (host source, path inside the jail, read-only).
    binds: Vec<(PathBuf, PathBuf, bool)>,
}

impl Plan {
    /// A plan for a VM of `memory_mib`, mounting the jail on `root` (an
    /// empty directory) and numbered `n` among this process's VMs.
    pub(crate) fn new(opts: &UmlJail, root: PathBuf, memory_mib: u32, n: u64) -> Self {
        // SAFETY: geteuid has no preconditions.
        let as_root = unsafe { libc::geteuid() } == 0;
        let id = JAIL_ID_BASE + ((std::process::id() as u64 % 0x1_0000) * 0x100 + n % 0x100) as u32;
        Self {
            opts: opts.clone(),
            root,
            id,
            as_root,
            memory_mib: memory_mib as u64,
            binds: Vec::new(),
        }
    }

    /// The host uid the kernel process runs as (0 when not confined).
    pub(crate) fn host_uid(&self) -> Option<u32> {
        (self.opts.full && self.as_root).then_some(self.id)
    }

    /// The kernel binary as the kernel process names it; binds it with its
    /// loader and libraries.
    pub(crate) fn kernel(&mut self, kernel: &Path) -> io::Result<PathBuf> {
        if !self.opts.full {
            return Ok(kernel.to_path_buf());
        }
        for lib in libs::runtime_files(kernel)? {
            self.binds.push((lib.clone(), lib, true));
        }
        self.binds
            .push((kernel.to_path_buf(), JAIL_KERNEL.into(), true));
        // UML's `null` console channel opens /dev/null (without it the
        // guest has no console), and the kernel reads the host's CPU
        // features from /proc/cpuinfo at start.
        self.binds
            .push(("/dev/null".into(), "/dev/null".into(), false));
        if Path::new(CPUINFO).exists() {
            self.binds.push((CPUINFO.into(), CPUINFO.into(), true));
        }
        Ok(JAIL_KERNEL.into())
    }

    /// A socket this library created (owned by us): made connectable by
    /// the jail's uid and bound into the jail; returns its jail path.
    pub(crate) fn our_socket(&mut self, path: &Path) -> io::Result<PathBuf> {
        if !self.opts.full {
            return Ok(path.to_path_buf());
        }
        if let Some(id) = self.host_uid() {
            std::os::unix::fs::lchown(path, Some(id), Some(id)).map_err(|e| {
                io::Error::new(
                    e.kind(),
                    format!("handing {} to the jail: {e}", path.display()),
                )
            })?;
        }
        Ok(self.bind_socket(path))
    }

    /// A socket another program serves (qemu-storage-daemon, virtiofsd):
    /// must already be connectable by the jail's uid.
    pub(crate) fn their_socket(&mut self, path: &Path) -> io::Result<PathBuf> {
        if !self.opts.full {
            return Ok(path.to_path_buf());
        }
        let meta = std::fs::metadata(path)
            .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", path.display())))?;
        if let Some(id) = self.host_uid() {
            if meta.uid() != id && meta.mode() & 0o002 == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::PermissionDenied,
                    format!(
                        "{} is not connectable from the UML jail (uid {id}): make it \
                         world-writable (chmod 0666) or owned by that uid, or use \
                         UmlJail::process_only()",
                        path.display()
                    ),
                ));
            }
        }
        Ok(self.bind_socket(path))
    }

    fn bind_socket(&mut self, path: &Path) -> PathBuf {
        let name = path.file_name().unwrap_or(OsStr::new("sock"));
        let mut inside = PathBuf::from(format!("/s/{}-", self.binds.len()));
        inside.as_mut_os_string().push(name);
        self.binds.push((path.to_path_buf(), inside.clone(), false));
        inside
    }

    /// Makes `cmd` start the kernel process inside this plan's jail.
    /// In the full jail, the process `cmd` starts only starts the kernel
    /// and exits: see [`Started`].
    pub(crate) fn apply(self, cmd: &mut Command) -> io::Result<Option<Started>> {
        let limits = child::Limits {
            nofile: self.opts.max_open_files,
            nproc: self.opts.max_processes,
        };
        let filters = filter::Filters::new()?;
        if !self.opts.full {
            // SAFETY: the closure makes only async-signal-safe calls.
            unsafe { cmd.pre_exec(move || child::process_only(&limits, &filters)) };
            return Ok(None);
        }
        // Nothing of the host's environment enters the jail.
        cmd.env_clear().env("TMPDIR", JAIL_TMP);
        let (steps, steps_w) = child::pipe()?;
        let (pid, pid_w) = child::pipe()?;
        let setup = child::Setup::new(self, limits, filters, steps_w, pid_w)?;
        // SAFETY: the closure makes only async-signal-safe calls on data
        // prepared before the fork.
        unsafe { cmd.pre_exec(move || setup.run()) };
        Ok(Some(Started { steps, pid }))
    }
}

/// The read ends of a full jail's report pipes: the process `Command`
/// spawned builds the jail, starts the kernel as its sibling and exits,
/// reporting the kernel's pid (or the step that failed).
pub(crate) struct Started {
    steps: OwnedFd,
    pid: OwnedFd,
}

impl Started {
    /// The kernel's pid once the spawned process has exited successfully.
    pub(crate) fn kernel_pid(&self, spawned: std::process::ExitStatus) -> io::Result<i32> {
        match child::read_pid(self.pid.as_raw_fd()) {
            Some(pid) if spawned.success() => Ok(pid),
            _ => Err(io::Error::other(format!(
                "UML jail: the jail's setup process ended ({spawned}) without starting the kernel"
            ))),
        }
    }

    /// The error for a failed spawn, naming the jail step that failed.
    /// Reaps the kernel's pid 1 if it was started (it is our child).
    pub(crate) fn error(&self, error: io::Error) -> io::Error {
        if let Some(pid) = child::read_pid(self.pid.as_raw_fd()) {
            // SAFETY: waitpid on our own child; a null status pointer.
            unsafe { libc::waitpid(pid, std::ptr::null_mut(), 0) };
        }
        spawn_error(error, Some(&self.steps))
    }
}

/// The error for a failed spawn, naming the jail step that failed if the
/// child reported one on `steps`.
fn spawn_error(error: io::Error, steps: Option<&OwnedFd>) -> io::Error {
    let Some(step) = steps.and_then(|fd| child::read_step(fd.as_raw_fd())) else {
        return error;
    };
    let hint = match (step, error.raw_os_error()) {
        (Step::UnshareUser, _) | (Step::UnshareNamespaces, _) => {
            "; this host forbids the namespaces the UML jail needs (see \
             user.max_user_namespaces, kernel.unprivileged_userns_clone and \
             AppArmor's unprivileged user namespace restriction); \
             UmlJail::process_only() is the weaker mode without them"
        }
        _ => "",
    };
    io::Error::new(
        error.kind(),
        format!("UML jail: {} failed: {error}{hint}", step.describe()),
    )
}

fn cstring(p: impl AsRef<OsStr>) -> io::Result<CString> {
    CString::new(p.as_ref().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "a path holds a NUL byte"))
}
