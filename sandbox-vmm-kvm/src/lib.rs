//! Linux KVM VMM built on rust-vmm crates (kvm-ioctls, vm-memory,
//! linux-loader, vm-superio): vCPU threads, PVH boot of the project's x86_64
//! guest kernel, CPUID filtering, serial console and a virtio-mmio bus that
//! hosts the same `sandbox-virtio` devices as the UML backend.
//!
//! Not implemented yet: this crate is a placeholder so the workspace has its
//! final shape. `sandbox-core` reports the KVM backend as unavailable.
