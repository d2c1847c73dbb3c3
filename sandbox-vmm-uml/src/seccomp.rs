//! The syscall allow-list of the UML backend's console thread (the filters
//! themselves are `sandbox-thread`'s).
//!
//! The launcher thread is not filtered: it forks the kernel process, which
//! would inherit the filter, and it handles no guest input. The kernel
//! process gets its own allow-list in its jail (`jail/filter.rs`).

use sandbox_thread::seccomp::AllowList;

/// The console thread: reads the kernel's output pipe into a bounded
/// in-memory log.
pub static CONSOLE: AllowList = AllowList {
    class: "uml-console",
    syscalls: &[libc::SYS_read],
};

#[cfg(test)]
mod tests {
    #[test]
    fn the_console_list_is_small() {
        sandbox_thread::seccomp::report(&super::CONSOLE, 30);
    }
}
