//! Platforms without seccomp (macOS): no list, and
//! [`super::confine`] installs nothing. Hypervisor.framework threads there
//! rely on the process sandbox the embedding application sets up.

/// See [`super::BASE`]: empty where there is no seccomp.
pub const BASE: &[libc::c_long] = &[];
