//! The syscall allow-list of the network stack's thread (the filters
//! themselves are `sandbox-thread`'s).

use sandbox_thread::seccomp::AllowList;

/// The stack's thread: guest frames and smoltcp, on a single-threaded
/// runtime with timers only. Frames arrive and leave through in-memory
/// channels, flows are handed to the application's runtime, so beyond
/// [`sandbox_thread::seccomp::BASE`] (which has `write`, the wake-up of
/// another runtime's thread) it needs nothing but `read`.
pub static NET_STACK: AllowList = AllowList {
    class: "net-stack",
    syscalls: &[
        #[cfg(target_os = "linux")]
        libc::SYS_read,
    ],
};

#[cfg(all(test, target_os = "linux"))]
mod tests {
    #[test]
    fn the_stack_list_is_small() {
        sandbox_thread::seccomp::report(&super::NET_STACK, 30);
    }
}
