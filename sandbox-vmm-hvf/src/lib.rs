//! The macOS Hypervisor.framework VMM for arm64 guests.
//!
//! What exists so far is the platform-independent half, built and unit
//! tested on every host: the guest address map ([`layout`], QEMU `virt`'s),
//! the device tree ([`fdt`]), the arm64 `Image` header and boot entry
//! ([`image`]), exit syndrome decoding ([`esr`]), PSCI ([`psci`]), the
//! console UART ([`pl011`]), the handling of one vCPU exit ([`exit`]) and
//! `sandbox-virtio`'s virtio-mmio transports on the bus, with interrupts
//! raised by a thread instead of irqfds ([`virtio`]), and how long a vCPU
//! in WFI sleeps ([`idle`]).
//! The applevisor half (`hvf`, macOS only: the VM, the in-kernel GICv3,
//! RAM, vCPU threads) is type-checked here and has never run.
//! docs/hvf-backend.md says what is verified where.

pub mod esr;
pub mod exit;
pub mod fdt;
pub mod idle;
pub mod image;
pub mod layout;
pub mod pl011;
pub mod psci;
pub mod virtio;

#[cfg(target_os = "macos")]
#[path = "sys/macos.rs"]
pub mod hvf;
