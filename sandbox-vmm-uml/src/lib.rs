//! User-Mode Linux backend: runs the project's UML kernel (`ARCH=um`) as a
//! child process and serves its virtio devices in-process over vhost-user
//! sockets (the kernel's `virtio_uml` driver is the front end).
//!
//! Isolation is that of a host process running a Linux kernel with ptrace:
//! weaker than a hardware VM, so the kernel process runs in a jail (see
//! [`UmlJail`]: user, mount, pid, IPC, UTS, cgroup and network namespaces,
//! a private tmpfs root, rlimits). It dies with its parent; [`UmlVm`] kills
//! the whole process group and removes its sockets on shutdown or drop.

mod jail;
mod launcher;
mod lpj;
mod power_off;
pub mod seccomp;
mod vm;
pub mod workdir;

pub use jail::{UmlJail, ABORT_EXIT_CODE, JAIL_ID_BASE, MEMORY_MARGIN_MIB};
pub use power_off::{reached_power_down, PowerOff, POWER_DOWN_LINE, TEARDOWN_GRACE};
pub use sandbox_virtio::ConsoleLog;
pub use vm::{DataDisk, UmlConfig, UmlError, UmlNet, UmlVm};
