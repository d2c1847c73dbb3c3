//! The syscall allow-list of the vCPU threads (the filters themselves are
//! `sandbox-thread`'s).

use sandbox_thread::seccomp::AllowList;

/// A vCPU thread: `KVM_RUN` and the exits it handles inline. Port and
/// memory-mapped I/O reach the serial port (a bounded in-memory log, an
/// irqfd) and the virtio-mmio registers, whose `DRIVER_OK` starts a device's
/// worker thread and whose reset stops it; the host stops a vCPU with a
/// signal that interrupts `KVM_RUN`.
pub static VCPU: AllowList = AllowList {
    class: "vcpu",
    syscalls: &[
        libc::SYS_ioctl,
        libc::SYS_read,
        // Preparing device workers (the spawner thread starts them).
        libc::SYS_eventfd2,
        libc::SYS_epoll_create1,
        libc::SYS_epoll_ctl,
        libc::SYS_fcntl,
        libc::SYS_dup,
        // vsock's host connections are socket pairs (AF_UNIX only).
        libc::SYS_socketpair,
    ],
};

#[cfg(test)]
mod tests {
    #[test]
    fn the_vcpu_list_is_small() {
        sandbox_thread::seccomp::report(&super::VCPU, 40);
    }
}
