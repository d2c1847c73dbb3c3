//! What the forked child does before it executes the kernel. Everything
//! here runs between `fork` and `execve` in a copy of a multi-threaded
//! process, so it allocates nothing and makes raw system calls only; all
//! paths and texts are prepared by [`Setup::new`] before the fork.

use std::ffi::{c_int, CStr, CString};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::Path;

use super::filter::Filters;
use super::{cstring, Plan};

/// The jail's steps, as the child reports the one that failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum Step {
    Limits = 1,
    OpenProc,
    UnshareUser,
    MapIds,
    UnshareNamespaces,
    MountPrivate,
    MountTmpfs,
    MakeDirs,
    Bind,
    PivotRoot,
    DropIds,
    DropCapabilities,
    Seccomp,
    Fork,
}

const STEPS: [Step; 14] = [
    Step::Limits,
    Step::OpenProc,
    Step::UnshareUser,
    Step::MapIds,
    Step::UnshareNamespaces,
    Step::MountPrivate,
    Step::MountTmpfs,
    Step::MakeDirs,
    Step::Bind,
    Step::PivotRoot,
    Step::DropIds,
    Step::DropCapabilities,
    Step::Seccomp,
    Step::Fork,
];

impl Step {
    pub(crate) fn describe(self) -> &'static str {
        match self {
            Step::Limits => "setting resource limits",
            Step::OpenProc => "opening /proc/self",
            Step::UnshareUser => "creating a user namespace",
            Step::MapIds => "writing the uid/gid maps",
            Step::UnshareNamespaces => "creating mount/pid/ipc/uts/net/cgroup namespaces",
            Step::MountPrivate => "making mounts private",
            Step::MountTmpfs => "mounting the jail's tmpfs root",
            Step::MakeDirs => "creating directories in the jail",
            Step::Bind => "binding the kernel, its libraries or a socket into the jail",
            Step::PivotRoot => "pivot_root into the jail",
            Step::DropIds => "dropping to the jail's uid/gid",
            Step::DropCapabilities => "emptying the capability bounding set",
            Step::Seccomp => "installing the seccomp filter",
            Step::Fork => "starting the kernel as pid 1 of its pid namespace",
        }
    }
}

/// The rlimits of jailed processes.
#[derive(Clone, Copy)]
pub(crate) struct Limits {
    pub nofile: u64,
    pub nproc: u64,
}

/// A non-blocking close-on-exec pipe: the child writes the failed step or
/// the kernel's pid into it.
pub(crate) fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0 as c_int; 2];
    // SAFETY: pipe2 writes two descriptors into the array we own.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC | libc::O_NONBLOCK) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: both descriptors are fresh and owned by nobody else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// The step a failed child reported, if any.
pub(crate) fn read_step(fd: RawFd) -> Option<Step> {
    let mut b = 0u8;
    // SAFETY: reads one byte into a local.
    let n = unsafe { libc::read(fd, (&mut b as *mut u8).cast(), 1) };
    (n == 1).then_some(())?;
    STEPS.iter().copied().find(|s| *s as u8 == b)
}

fn last_error() -> io::Error {
    io::Error::last_os_error()
}

fn check(r: c_int) -> io::Result<()> {
    if r < 0 {
        Err(last_error())
    } else {
        Ok(())
    }
}

/// Sets `resource` to `want`, clamped to the hard limit we hold.
fn limit(resource: libc::__rlimit_resource_t, want: u64) -> io::Result<()> {
    let mut cur = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit with a local struct.
    unsafe {
        check(libc::getrlimit(resource, &mut cur))?;
        let v = want.min(cur.rlim_max);
        check(libc::setrlimit(
            resource,
            &libc::rlimit {
                rlim_cur: v,
                rlim_max: v,
            },
        ))
    }
}

/// No core dumps (a crashing kernel process would write the guest's
/// memory, its secrets, to the host's disk), and the jail's limits.
fn set_limits(limits: &Limits) -> io::Result<()> {
    limit(libc::RLIMIT_CORE, 0)?;
    limit(libc::RLIMIT_NOFILE, limits.nofile)?;
    limit(libc::RLIMIT_NPROC, limits.nproc)
}

/// `no_new_privs`, death with the launcher thread, and no inherited
/// descriptors: every descriptor above stderr that the host process left
/// without `O_CLOEXEC` (its own or its parent's) closes at `execve`.
fn common() {
    // SAFETY: prctl and close_range with integer arguments. close_range
    // fails on kernels before 5.11; std's own descriptors are close-on-exec
    // already, so that costs only the hygiene.
    unsafe {
        libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0);
        libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0);
        libc::syscall(
            libc::SYS_close_range,
            3u32,
            u32::MAX,
            libc::CLOSE_RANGE_CLOEXEC,
        );
    }
}

/// The weaker mode: no namespaces but an (optional) empty network one.
pub(crate) fn process_only(limits: &Limits, filters: &Filters) -> io::Result<()> {
    common();
    set_limits(limits)?;
    // An empty network namespace: the kernel process reaches no host
    // network (its sockets are file system paths, which work across
    // namespaces). Best effort: without the privilege the host's stays.
    // SAFETY: unshare with a flag.
    unsafe { libc::unshare(libc::CLONE_NEWNET) };
    filters.install()
}

/// One bind into the jail.
struct Bind {
    source: CString,
    /// Host path of the target (under the jail's mount point).
    target: CString,
    read_only: bool,
}

/// Everything the full jail's child needs, prepared before the fork.
pub(crate) struct Setup {
    as_root: bool,
    id: u32,
    limits: Limits,
    root: CString,
    tmpfs: CString,
    dirs: Vec<CString>,
    tmp: CString,
    binds: Vec<Bind>,
    uid_map: CString,
    gid_map: CString,
    filters: Filters,
    steps: OwnedFd,
    pid_pipe: OwnedFd,
}

impl Setup {
    pub(crate) fn new(
        plan: Plan,
        limits: Limits,
        filters: Filters,
        steps: OwnedFd,
        pid_pipe: OwnedFd,
    ) -> io::Result<Self> {
        let under = |p: &Path| plan.root.join(p.strip_prefix("/").unwrap_or(p));
        let mut dirs: Vec<std::path::PathBuf> =
            vec![under(Path::new("/tmp")), under(Path::new("/s"))];
        for (_, inside, _) in &plan.binds {
            let mut parents: Vec<_> = inside
                .ancestors()
                .skip(1)
                .filter(|a| a.parent().is_some())
                .map(under)
                .collect();
            parents.reverse();
            for p in parents {
                if !dirs.contains(&p) {
                    dirs.push(p);
                }
            }
        }
        // SAFETY: getuid/getgid have no preconditions.
        let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
        let (outer_uid, outer_gid) = if plan.as_root {
            (plan.id, plan.id)
        } else {
            (uid, gid)
        };
        Ok(Self {
            as_root: plan.as_root,
            id: plan.id,
            limits,
            root: cstring(&plan.root)?,
            tmpfs: cstring(format!(
                "size={}m,mode=0755",
                plan.memory_mib + super::MEMORY_MARGIN_MIB
            ))?,
            tmp: cstring(under(Path::new("/tmp")))?,
            dirs: dirs.iter().map(cstring).collect::<io::Result<_>>()?,
            binds: plan
                .binds
                .iter()
                .map(|(source, inside, read_only)| {
                    Ok(Bind {
                        source: cstring(source)?,
                        target: cstring(under(inside))?,
                        read_only: *read_only,
                    })
                })
                .collect::<io::Result<_>>()?,
            uid_map: cstring(format!("0 {outer_uid} 1"))?,
            gid_map: cstring(format!("0 {outer_gid} 1"))?,
            filters,
            steps,
            pid_pipe,
        })
    }

    /// Reports `step` to the parent if `r` failed.
    fn at<T>(&self, step: Step, r: io::Result<T>) -> io::Result<T> {
        if r.is_err() {
            let b = step as u8;
            // SAFETY: writes one byte from a local to our pipe.
            unsafe { libc::write(self.steps.as_raw_fd(), (&b as *const u8).cast(), 1) };
        }
        r
    }

    /// Runs in the forked child: builds the jail, then forks the kernel's
    /// pid 1 and (in the outer process) waits for it.
    pub(crate) fn run(&self) -> io::Result<()> {
        common();
        let proc_self = self.at(Step::OpenProc, open_path(c"/proc/self"))?;
        let others = libc::CLONE_NEWIPC
            | libc::CLONE_NEWUTS
            | libc::CLONE_NEWNET
            | libc::CLONE_NEWCGROUP
            | libc::CLONE_NEWPID;
        if self.as_root {
            // Mounts first, as real root (the mount namespace then belongs
            // to the host's user namespace, where the jail has no
            // capability: it cannot undo them), then the drop.
            self.at(Step::UnshareNamespaces, unshare(libc::CLONE_NEWNS))?;
            self.build_root()?;
            self.at(Step::DropIds, drop_ids(self.id))?;
            self.at(Step::UnshareUser, unshare(libc::CLONE_NEWUSER))?;
            self.at(Step::MapIds, self.map_ids(&proc_self))?;
            self.at(Step::UnshareNamespaces, unshare(others))?;
        } else {
            self.at(Step::UnshareUser, unshare(libc::CLONE_NEWUSER))?;
            self.at(Step::MapIds, self.map_ids(&proc_self))?;
            self.at(Step::UnshareNamespaces, unshare(libc::CLONE_NEWNS | others))?;
            self.build_root()?;
        }
        drop(proc_self);
        // Last of all the steps that open descriptors: the host process
        // may hold more than `nofile` of them (a virtio-fs server keeps one
        // per guest-visible inode), and every open above the limit would
        // fail with EMFILE. They all close at exec.
        self.at(Step::Limits, set_limits(&self.limits))?;
        self.at(Step::DropCapabilities, drop_bounding_set())?;
        self.at(Step::Seccomp, self.filters.install())?;
        self.at(Step::Fork, start_pid1(self.pid_pipe.as_raw_fd()))
    }

    fn map_ids(&self, proc_self: &OwnedFd) -> io::Result<()> {
        write_at(proc_self, c"setgroups", c"deny")?;
        write_at(proc_self, c"uid_map", &self.uid_map)?;
        write_at(proc_self, c"gid_map", &self.gid_map)
    }

    /// Mounts the tmpfs root, fills it and pivots into it.
    fn build_root(&self) -> io::Result<()> {
        let null = std::ptr::null::<libc::c_char>();
        // SAFETY: mount, mkdir, open, chmod, chdir, pivot_root and umount2
        // with NUL-terminated paths prepared before the fork.
        unsafe {
            self.at(
                Step::MountPrivate,
                check(libc::mount(
                    null,
                    c"/".as_ptr(),
                    null,
                    libc::MS_REC | libc::MS_PRIVATE,
                    null.cast(),
                )),
            )?;
            self.at(
                Step::MountTmpfs,
                check(libc::mount(
                    c"tmpfs".as_ptr(),
                    self.root.as_ptr(),
                    c"tmpfs".as_ptr(),
                    libc::MS_NOSUID | libc::MS_NODEV,
                    self.tmpfs.as_ptr().cast(),
                )),
            )?;
            for d in &self.dirs {
                if libc::mkdir(d.as_ptr(), 0o755) != 0
                    && io::Error::last_os_error().raw_os_error() != Some(libc::EEXIST)
                {
                    return self.at(Step::MakeDirs, Err(last_error()));
                }
            }
            self.at(
                Step::MakeDirs,
                check(libc::chmod(self.tmp.as_ptr(), 0o1777)),
            )?;
            for b in &self.binds {
                self.at(Step::Bind, bind(b))?;
            }
            self.at(Step::PivotRoot, pivot(&self.root))
        }
    }
}

fn unshare(flags: c_int) -> io::Result<()> {
    // SAFETY: unshare takes flags only.
    check(unsafe { libc::unshare(flags) })
}

/// Opens `path` as an `O_PATH` directory.
fn open_path(path: &CStr) -> io::Result<OwnedFd> {
    // SAFETY: open with a NUL-terminated path; the fd is fresh.
    let fd = unsafe {
        libc::open(
            path.as_ptr(),
            libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC,
        )
    };
    check(fd)?;
    // SAFETY: fd is fresh and ours.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Writes `text` to the file `name` under `dir`.
fn write_at(dir: &OwnedFd, name: &CStr, text: &CStr) -> io::Result<()> {
    // SAFETY: openat/write/close on descriptors and buffers we own.
    unsafe {
        let fd = libc::openat(
            dir.as_raw_fd(),
            name.as_ptr(),
            libc::O_WRONLY | libc::O_CLOEXEC,
        );
        check(fd)?;
        let bytes = text.to_bytes();
        let n = libc::write(fd, bytes.as_ptr().cast(), bytes.len());
        let err = last_error();
        libc::close(fd);
        if n != bytes.len() as isize {
            return Err(err);
        }
    }
    Ok(())
}

/// Creates the target and binds the source onto it (read-only if asked,
/// keeping the flags the source's mount has).
fn bind(b: &Bind) -> io::Result<()> {
    // SAFETY: raw calls on paths prepared before the fork.
    unsafe { bind_raw(b) }
}

/// # Safety
/// Raw calls; the paths are NUL-terminated.
unsafe fn bind_raw(b: &Bind) -> io::Result<()> {
    // SAFETY: the caller guarantees the paths; locals only otherwise.
    unsafe {
        let null = std::ptr::null::<libc::c_char>();
        let fd = libc::open(
            b.target.as_ptr(),
            libc::O_CREAT | libc::O_WRONLY | libc::O_CLOEXEC,
            0o600,
        );
        check(fd)?;
        libc::close(fd);
        check(libc::mount(
            b.source.as_ptr(),
            b.target.as_ptr(),
            null,
            libc::MS_BIND,
            null.cast(),
        ))?;
        if b.read_only {
            let mut st: libc::statvfs = std::mem::zeroed();
            check(libc::statvfs(b.target.as_ptr(), &mut st))?;
            // ST_* flags share the MS_* values; a remount in a user namespace
            // must keep the locked ones.
            let kept = st.f_flag
                & (libc::ST_NOEXEC | libc::ST_NOATIME | libc::ST_NODIRATIME | libc::ST_RELATIME);
            let flags = libc::MS_BIND
                | libc::MS_REMOUNT
                | libc::MS_RDONLY
                | libc::MS_NOSUID
                | libc::MS_NODEV
                | kept as libc::c_ulong;
            check(libc::mount(
                null,
                b.target.as_ptr(),
                null,
                flags,
                null.cast(),
            ))?;
        }
        Ok(())
    }
}

/// Makes `root` the root directory and detaches the old one.
fn pivot(root: &CStr) -> io::Result<()> {
    let dot = c".".as_ptr();
    // SAFETY: chdir, pivot_root and umount2 with NUL-terminated paths.
    unsafe {
        check(libc::chdir(root.as_ptr()))?;
        check(libc::syscall(libc::SYS_pivot_root, dot, dot) as c_int)?;
        check(libc::umount2(dot, libc::MNT_DETACH))?;
        check(libc::chdir(c"/".as_ptr()))
    }
}

/// Drops every supplementary group and moves to `id`/`id`.
fn drop_ids(id: u32) -> io::Result<()> {
    // SAFETY: setgroups with an empty list; setres[ug]id with integers.
    unsafe {
        check(libc::setgroups(0, std::ptr::null()))?;
        check(libc::setresgid(id, id, id))?;
        check(libc::setresuid(id, id, id))?;
        // A uid change makes the process non-dumpable, which hands its
        // /proc files (uid_map) to root; exec would restore it anyway.
        check(libc::prctl(libc::PR_SET_DUMPABLE, 1, 0, 0, 0))
    }
}

/// Empties the capability bounding set: the kernel, executed as uid 0 of
/// its namespace, then gets no capability at all.
fn drop_bounding_set() -> io::Result<()> {
    for cap in 0..64 {
        // SAFETY: prctl with integers.
        if unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap, 0, 0, 0) } != 0 {
            let e = last_error();
            if e.raw_os_error() == Some(libc::EINVAL) {
                break; // past the last capability this kernel knows
            }
            return Err(e);
        }
    }
    Ok(())
}

/// Starts pid 1 of the new pid namespace as a sibling (`CLONE_PARENT`:
/// the launcher thread is its parent, so it is waited for and dies with
/// it), reports its pid on `pid_pipe` and exits; the sibling returns and
/// executes the kernel. (A waiting middle process would keep a copy of the
/// whole host process's memory alive: it is a fork that never executes.)
fn start_pid1(pid_pipe: RawFd) -> io::Result<()> {
    // A raw clone: libc's fork runs atfork handlers, unsafe here.
    // SAFETY: clone without CLONE_VM behaves as fork.
    let pid = unsafe {
        libc::syscall(
            libc::SYS_clone,
            (libc::CLONE_PARENT | libc::SIGCHLD) as libc::c_ulong,
            0,
            0,
            0,
            0,
        )
    };
    if pid < 0 {
        return Err(last_error());
    }
    if pid == 0 {
        // The parent-death signal is not inherited across this clone (the
        // launcher thread is the parent now): set it again.
        // Its own session and process group, led by the kernel (as without
        // the jail): UML's own `setsid` then fails harmlessly, and the
        // host kills the whole group by the kernel's pid.
        // SAFETY: prctl and setsid with integers only.
        unsafe {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0);
            libc::setsid();
        }
        return Ok(());
    }
    let bytes = (pid as i32).to_ne_bytes();
    // SAFETY: write from a local, then leave without running Rust code.
    unsafe {
        let n = libc::write(pid_pipe, bytes.as_ptr().cast(), bytes.len());
        libc::_exit(if n == 4 { 0 } else { 1 });
    }
}

/// The kernel's host pid, written by [`start_pid1`].
pub(crate) fn read_pid(fd: RawFd) -> Option<i32> {
    let mut b = [0u8; 4];
    // SAFETY: reads four bytes into a local.
    let n = unsafe { libc::read(fd, b.as_mut_ptr().cast(), 4) };
    (n == 4).then(|| i32::from_ne_bytes(b))
}
