//! The seccomp filter of the UML kernel process (and the stub processes it
//! forks, which inherit it).
//!
//! UML runs guest processes in host children under `PTRACE_SYSEMU`: a
//! guest system call stops at syscall entry and is skipped by the host
//! kernel before seccomp runs, so guest syscalls never meet this filter
//! (the UML kernel emulates them). What does meet it is the host code of
//! the kernel process and of its stubs. The lists below are what a boot,
//! commands, disk and network I/O, a shutdown and a panic made, measured
//! with `strace -c` on the kernel process and `perf trace -s -a` for all
//! of them (docs/uml-backend.md has the measurement), plus the calls glibc
//! and the dynamic loader make on paths a boot did not take. Any other
//! call kills the kernel process (`SIGSYS`), which the VM reports.
//!
//! A second filter makes UML's abort path work as pid 1 of its pid
//! namespace: `uml_abort()` (after a panic or a fatal fault in the kernel)
//! loops on `kill(getpid(), SIGABRT)`, which a namespace's init ignores, so
//! the kernel would spin forever. That one call fails with `EPERM` instead,
//! and `uml_abort()` then exits with status 127 ([`ABORT_EXIT_CODE`]). An
//! abort thus never looks like a seccomp kill: `SIGSYS` means a call
//! outside the allow-list, and nothing else.

#[cfg(target_arch = "x86_64")]
use std::collections::BTreeMap;
use std::io;

use seccompiler::BpfProgram;
#[cfg(target_arch = "x86_64")]
use seccompiler::{
    SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter, SeccompRule,
    TargetArch,
};

/// The exit status of a UML kernel that aborted in its jail (`uml_abort()`
/// exits with it when its `kill(getpid(), SIGABRT)` fails).
pub const ABORT_EXIT_CODE: i32 = 127;

/// The host calls of the UML kernel process and its stubs.
#[cfg(target_arch = "x86_64")]
pub(crate) const ALLOWED: &[libc::c_long] = &[
    // Measured (boot, commands, I/O, shutdown, panic).
    libc::SYS_access,
    libc::SYS_arch_prctl,
    libc::SYS_bind,
    libc::SYS_brk,
    libc::SYS_clone,
    libc::SYS_clone3,
    libc::SYS_close,
    libc::SYS_connect,
    libc::SYS_epoll_create,
    libc::SYS_epoll_create1,
    libc::SYS_epoll_ctl,
    libc::SYS_epoll_wait,
    libc::SYS_eventfd2,
    libc::SYS_execve,
    libc::SYS_exit,
    libc::SYS_exit_group,
    libc::SYS_fcntl,
    libc::SYS_fsync,
    libc::SYS_getdents64,
    libc::SYS_getpid,
    libc::SYS_getppid,
    libc::SYS_getrandom,
    libc::SYS_ioctl,
    libc::SYS_kill,
    libc::SYS_lseek,
    libc::SYS_madvise,
    libc::SYS_mkdir,
    libc::SYS_mmap,
    libc::SYS_mprotect,
    libc::SYS_munmap,
    libc::SYS_newfstatat,
    libc::SYS_openat,
    libc::SYS_prctl,
    libc::SYS_pread64,
    libc::SYS_prlimit64,
    libc::SYS_ptrace,
    libc::SYS_read,
    // UML probes `reboot` (it fails: the jail holds no CAP_SYS_BOOT).
    libc::SYS_reboot,
    // The vector network driver's batched link I/O.
    libc::SYS_recvmmsg,
    libc::SYS_rmdir,
    libc::SYS_rseq,
    libc::SYS_rt_sigaction,
    libc::SYS_rt_sigprocmask,
    libc::SYS_rt_sigreturn,
    libc::SYS_rt_sigsuspend,
    libc::SYS_sendmmsg,
    libc::SYS_sendmsg,
    libc::SYS_set_robust_list,
    libc::SYS_set_tid_address,
    libc::SYS_setsid,
    libc::SYS_sigaltstack,
    libc::SYS_socket,
    libc::SYS_socketpair,
    libc::SYS_statfs,
    libc::SYS_timer_create,
    libc::SYS_timer_delete,
    libc::SYS_timer_gettime,
    libc::SYS_timer_settime,
    libc::SYS_uname,
    libc::SYS_unlink,
    libc::SYS_wait4,
    libc::SYS_write,
    // Not seen, on paths a test run did not take: I/O and time variants,
    // error paths and the C library's own housekeeping.
    libc::SYS_clock_gettime,
    libc::SYS_clock_nanosleep,
    libc::SYS_dup,
    libc::SYS_dup2,
    libc::SYS_dup3,
    libc::SYS_fallocate,
    libc::SYS_fdatasync,
    libc::SYS_fstat,
    libc::SYS_ftruncate,
    libc::SYS_futex,
    libc::SYS_getcwd,
    libc::SYS_getegid,
    libc::SYS_geteuid,
    libc::SYS_getgid,
    libc::SYS_getpgrp,
    libc::SYS_gettid,
    libc::SYS_gettimeofday,
    libc::SYS_getuid,
    libc::SYS_mremap,
    libc::SYS_msync,
    libc::SYS_nanosleep,
    libc::SYS_open,
    libc::SYS_pipe2,
    libc::SYS_poll,
    libc::SYS_ppoll,
    libc::SYS_preadv,
    libc::SYS_pwrite64,
    libc::SYS_pwritev,
    libc::SYS_readv,
    libc::SYS_getpeername,
    libc::SYS_getsockname,
    libc::SYS_getsockopt,
    libc::SYS_recvfrom,
    libc::SYS_recvmsg,
    libc::SYS_sendto,
    libc::SYS_setsockopt,
    libc::SYS_restart_syscall,
    libc::SYS_sched_yield,
    libc::SYS_setpgid,
    libc::SYS_shutdown,
    libc::SYS_stat,
    libc::SYS_tgkill,
    libc::SYS_writev,
];

#[cfg(target_arch = "x86_64")]
const ARCH: TargetArch = TargetArch::x86_64;

/// The compiled filters (the panic rule, then the allow-list), built before
/// the fork: installing them allocates nothing. (Empty and unused where
/// UML does not run: it is x86_64 only.)
pub(crate) struct Filters(
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))] Vec<BpfProgram>,
);

#[cfg(target_arch = "x86_64")]
impl Filters {
    pub(crate) fn new() -> io::Result<Self> {
        // The library's switch for all its filters (`SANDBOX_SECCOMP=0`).
        if !sandbox_thread::seccomp::enabled() {
            return Ok(Self(Vec::new()));
        }
        let allow = ALLOWED.iter().map(|nr| (*nr, Vec::new())).collect();
        let abort_self = |nr: libc::c_long, args: &[(u8, u64)]| -> io::Result<_> {
            let conditions = args
                .iter()
                .map(|(i, v)| {
                    SeccompCondition::new(*i, SeccompCmpArgLen::Dword, SeccompCmpOp::Eq, *v)
                })
                .collect::<Result<Vec<_>, _>>()
                .map_err(io::Error::other)?;
            Ok((
                nr,
                vec![SeccompRule::new(conditions).map_err(io::Error::other)?],
            ))
        };
        let sigabrt = libc::SIGABRT as u64;
        let panic: BTreeMap<_, _> = [
            abort_self(libc::SYS_kill, &[(0, 1), (1, sigabrt)])?,
            abort_self(libc::SYS_tgkill, &[(0, 1), (2, sigabrt)])?,
        ]
        .into_iter()
        .collect();
        // The abort rule first: installing a filter is a `seccomp` call,
        // which the allow-list refuses once it is in place.
        Ok(Self(vec![
            compile(
                panic,
                SeccompAction::Allow,
                SeccompAction::Errno(libc::EPERM as u32),
            )?,
            compile(allow, SeccompAction::KillProcess, SeccompAction::Allow)?,
        ]))
    }

    /// Installs the filters on the calling thread (after `no_new_privs`).
    /// Raw system calls only: safe between fork and exec.
    pub(crate) fn install(&self) -> io::Result<()> {
        for prog in &self.0 {
            seccompiler::apply_filter(prog).map_err(|_| io::Error::last_os_error())?;
        }
        Ok(())
    }
}

#[cfg(not(target_arch = "x86_64"))]
impl Filters {
    /// UML is x86_64 only here: no filter elsewhere.
    pub(crate) fn new() -> io::Result<Self> {
        Ok(Self(Vec::new()))
    }

    pub(crate) fn install(&self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(target_arch = "x86_64")]
fn compile(
    rules: BTreeMap<libc::c_long, Vec<SeccompRule>>,
    mismatch: SeccompAction,
    matched: SeccompAction,
) -> io::Result<BpfProgram> {
    SeccompFilter::new(rules, mismatch, matched, ARCH)
        .map_err(io::Error::other)?
        .try_into()
        .map_err(|e: seccompiler::BackendError| io::Error::other(e))
}

#[cfg(all(test, target_arch = "x86_64"))]
mod tests {
    use super::*;

    #[test]
    fn the_filters_compile_and_the_list_has_no_duplicates() {
        let f = Filters::new().unwrap();
        assert_eq!(f.0.len(), 2);
        assert!(f.0.iter().all(|p| !p.is_empty()));
        let mut v = ALLOWED.to_vec();
        v.sort_unstable();
        v.dedup();
        assert_eq!(v.len(), ALLOWED.len());
    }

    #[test]
    fn the_list_leaves_out_the_host_kernel_surface_uml_never_uses() {
        for nr in [
            libc::SYS_bpf,
            libc::SYS_perf_event_open,
            libc::SYS_keyctl,
            libc::SYS_add_key,
            libc::SYS_userfaultfd,
            libc::SYS_io_uring_setup,
            libc::SYS_mount,
            libc::SYS_unshare,
            libc::SYS_setns,
            libc::SYS_init_module,
            libc::SYS_process_vm_writev,
            libc::SYS_open_by_handle_at,
        ] {
            assert!(!ALLOWED.contains(&nr), "{nr}");
        }
    }
}
