//! The syscall allow-lists of the threads this crate starts: device workers
//! and vhost-user servers (the filters themselves are `sandbox-thread`'s).

pub use sandbox_thread::seccomp::*;

/// A virtio device worker (block, vsock, net, rng) on either transport:
/// kicks, interrupts, host sockets and disk files already open.
#[cfg(target_os = "linux")]
pub static DEVICE: AllowList = AllowList {
    class: "device",
    syscalls: &[
        libc::SYS_read,
        libc::SYS_readv,
        libc::SYS_writev,
        libc::SYS_pread64,
        libc::SYS_pwrite64,
        libc::SYS_preadv,
        libc::SYS_pwritev,
        libc::SYS_lseek,
        libc::SYS_fsync,
        libc::SYS_fdatasync,
        libc::SYS_fallocate,
        libc::SYS_ftruncate,
        libc::SYS_fstat,
        libc::SYS_newfstatat,
        libc::SYS_statx,
        libc::SYS_fcntl,
        libc::SYS_ioctl,
        libc::SYS_recvfrom,
        libc::SYS_sendto,
        libc::SYS_recvmsg,
        libc::SYS_sendmsg,
        libc::SYS_shutdown,
        // vsock: a socket pair per host connection (AF_UNIX only).
        libc::SYS_socketpair,
        libc::SYS_epoll_pwait,
        libc::SYS_epoll_ctl,
        #[cfg(target_arch = "x86_64")]
        libc::SYS_epoll_wait,
        #[cfg(target_arch = "x86_64")]
        libc::SYS_poll,
        #[cfg(target_arch = "aarch64")]
        libc::SYS_ppoll,
    ],
};

/// [`DEVICE`] where there is no seccomp (macOS): nothing to install.
#[cfg(not(target_os = "linux"))]
pub static DEVICE: AllowList = AllowList {
    class: "device",
    syscalls: &[],
};

/// A vhost-user server: the front end's messages (with descriptors: guest
/// memory to map, kick and call eventfds), and starting and stopping the
/// device's workers.
#[cfg(target_os = "linux")]
pub static VHOST_USER: AllowList = AllowList {
    class: "vhost-user",
    syscalls: &[
        libc::SYS_read,
        libc::SYS_recvmsg,
        libc::SYS_sendmsg,
        libc::SYS_recvfrom,
        libc::SYS_sendto,
        libc::SYS_shutdown,
        // Checking the kind of socket the front end passes.
        libc::SYS_getsockopt,
        libc::SYS_fstat,
        libc::SYS_newfstatat,
        libc::SYS_statx,
        libc::SYS_fcntl,
        libc::SYS_dup,
        libc::SYS_ftruncate,
        // Preparing device workers (the spawner thread starts them).
        libc::SYS_eventfd2,
        libc::SYS_epoll_create1,
        libc::SYS_epoll_ctl,
        // vsock's host connections are socket pairs (AF_UNIX only).
        libc::SYS_socketpair,
    ],
};

/// The virtio-fs worker: the FUSE server and the file system it serves (a
/// confined passthrough of a host directory, which opens and changes host
/// files relative to descriptors it holds, or the application's file system
/// reached through tasks on its runtime). No sockets, no `execve`, no
/// `ptrace`, no mounts.
#[cfg(target_os = "linux")]
pub static FS: AllowList = AllowList {
    class: "virtio-fs",
    syscalls: &[
        libc::SYS_read,
        libc::SYS_readv,
        libc::SYS_writev,
        libc::SYS_pread64,
        libc::SYS_pwrite64,
        libc::SYS_preadv,
        libc::SYS_pwritev,
        libc::SYS_preadv2,
        libc::SYS_pwritev2,
        libc::SYS_lseek,
        libc::SYS_openat,
        #[cfg(target_arch = "x86_64")]
        libc::SYS_open,
        libc::SYS_newfstatat,
        libc::SYS_fstat,
        libc::SYS_statx,
        libc::SYS_fstatfs,
        libc::SYS_getdents64,
        libc::SYS_readlinkat,
        libc::SYS_mkdirat,
        libc::SYS_mknodat,
        libc::SYS_symlinkat,
        libc::SYS_unlinkat,
        libc::SYS_renameat2,
        libc::SYS_linkat,
        libc::SYS_fchmod,
        libc::SYS_fchmodat,
        libc::SYS_fchownat,
        libc::SYS_utimensat,
        libc::SYS_ftruncate,
        libc::SYS_fallocate,
        libc::SYS_fsync,
        libc::SYS_fdatasync,
        // A guest `sync` (FUSE_SYNCFS).
        libc::SYS_syncfs,
        libc::SYS_dup,
        libc::SYS_ioctl,
        libc::SYS_getuid,
        libc::SYS_getgid,
        libc::SYS_umask,
        // The passthrough acts as the request's user for creations, and
        // drops CAP_FSETID around writes.
        libc::SYS_setresuid,
        libc::SYS_setresgid,
        libc::SYS_capget,
        libc::SYS_capset,
        // The worker's own loop.
        libc::SYS_epoll_pwait,
        libc::SYS_epoll_ctl,
        #[cfg(target_arch = "x86_64")]
        libc::SYS_epoll_wait,
    ],
};

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;

    #[test]
    fn the_device_lists_are_small() {
        report(&DEVICE, 60);
        report(&VHOST_USER, 50);
        report(&FS, 75);
    }
}
