//! The Linux syscall numbers every confined thread may use.

/// See [`super::BASE`].
pub const BASE: &[libc::c_long] = &[
    libc::SYS_write,
    libc::SYS_close,
    // Debug builds of std check that a descriptor is open before closing
    // it (`F_GETFD`).
    libc::SYS_fcntl,
    libc::SYS_mmap,
    libc::SYS_munmap,
    libc::SYS_mremap,
    libc::SYS_madvise,
    libc::SYS_mprotect,
    libc::SYS_brk,
    libc::SYS_futex,
    libc::SYS_sched_yield,
    libc::SYS_sched_getaffinity,
    libc::SYS_clock_gettime,
    libc::SYS_clock_nanosleep,
    libc::SYS_rt_sigprocmask,
    libc::SYS_rt_sigreturn,
    libc::SYS_sigaltstack,
    libc::SYS_gettid,
    libc::SYS_getpid,
    libc::SYS_exit,
    libc::SYS_rseq,
    libc::SYS_set_robust_list,
    libc::SYS_getrandom,
    #[cfg(target_arch = "x86_64")]
    libc::SYS_nanosleep,
];
