//! User-Mode Linux backend: runs the project's UML kernel (`ARCH=um`) as a
//! child process and serves its virtio devices in-process over vhost-user
//! sockets (the kernel's `virtio_uml` driver is the front end).
//!
//! Isolation is that of a host process running a Linux kernel with ptrace:
//! weaker than a hardware VM. The child runs in its own process group with
//! `no_new_privs` and dies with its parent; [`UmlVm`] kills the whole group
//! and removes its sockets on shutdown or drop.

mod launcher;
pub mod seccomp;
mod vm;
pub mod workdir;

pub use sandbox_virtio::ConsoleLog;
pub use vm::{DataDisk, UmlConfig, UmlError, UmlNet, UmlVm};
