//! macOS Hypervisor.framework VMM. Compiles to an empty crate on every other
//! platform; on macOS it is not implemented yet and not verified anywhere.
