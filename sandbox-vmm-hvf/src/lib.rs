//! The macOS Hypervisor.framework VMM for arm64 guests.
//!
//! What exists so far is the platform-independent half, built and unit
//! tested on every host: the guest address map ([`layout`], QEMU `virt`'s),
//! the device tree ([`fdt`]), the arm64 `Image` header and boot entry
//! ([`image`]), exit syndrome decoding ([`esr`]) and PSCI ([`psci`]). The
//! applevisor half (vCPU threads, the in-kernel GICv3, memory mapping) is
//! not written yet; nothing here runs a guest. docs/hvf-backend.md says what
//! is verified where.

pub mod esr;
pub mod fdt;
pub mod image;
pub mod layout;
pub mod psci;
