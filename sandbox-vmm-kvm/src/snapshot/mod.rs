//! Snapshots of a paused KVM guest: the vCPUs' and the VM's KVM state, the
//! devices' state and the CPU features the guest was started with in a
//! versioned, checksummed state file, and guest RAM in a sparse memory
//! file (docs/snapshots.md). `KvmVm::snapshot` writes them and
//! `KvmVm::restore` starts a VM from them.

#[cfg(target_arch = "x86_64")]
pub mod cpu;
#[cfg(target_arch = "x86_64")]
pub mod features;
pub mod memory;

use std::io::{self, Read, Write};
use std::path::Path;

#[cfg(target_arch = "x86_64")]
use kvm_bindings::{kvm_clock_data, kvm_irqchip, kvm_pit_state2};
#[cfg(target_arch = "x86_64")]
use kvm_ioctls::VmFd;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::KvmError;
#[cfg(target_arch = "x86_64")]
pub use cpu::VcpuState;
#[cfg(target_arch = "x86_64")]
pub use features::CpuFeatures;

/// The state file's first bytes.
const MAGIC: &[u8; 8] = b"SBXSNAP\n";
/// Bumped whenever [`MachineState`] changes shape: other versions are
/// refused, never half-read.
/// Version 2 added the CPU features record.
pub const STATE_VERSION: u32 = 2;
/// A state file is small (KVM state, device registers); anything larger
/// is not one of ours.
const MAX_STATE_BYTES: u64 = 64 << 20;
/// `KVM_IRQCHIP_PIC_MASTER`, `_PIC_SLAVE`, `_IOAPIC`.
#[cfg(target_arch = "x86_64")]
const IRQCHIPS: [u32; 3] = [0, 1, 2];

/// Why a snapshot cannot be taken or used.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    /// Reading or writing a snapshot file failed.
    #[error("{what}: {source}")]
    Io {
        /// The file and the step.
        what: String,
        /// The cause.
        source: io::Error,
    },
    /// The file is not a state file, is truncated or was changed.
    #[error("{0}")]
    Corrupt(String),
    /// The file was written by another state version.
    #[error("the snapshot's state version is {found}, this library reads version {STATE_VERSION}: take the snapshot again with this version")]
    Version {
        /// The file's version.
        found: u32,
    },
    /// This host cannot run the snapshot's guest (its CPU features).
    #[error("{0}")]
    Incompatible(String),
    /// Saving or loading KVM state failed.
    #[error(transparent)]
    Kvm(#[from] KvmError),
    /// This platform's VMM cannot do it (snapshots are x86_64 only).
    #[error("{0} is not supported: snapshots are built for x86_64 KVM hosts only")]
    Unsupported(String),
}

/// The VM-wide interrupt controllers and clock.
#[cfg(target_arch = "x86_64")]
#[derive(Debug, Serialize, Deserialize)]
pub struct VmKvmState {
    /// PIC master, PIC slave and IOAPIC, in that order.
    pub irqchips: Vec<kvm_irqchip>,
    pub pit: kvm_pit_state2,
    /// kvmclock at the time of the snapshot.
    pub clock: kvm_clock_data,
}

#[cfg(target_arch = "x86_64")]
impl VmKvmState {
    /// Saves the VM's state; every vCPU must be stopped.
    pub fn save(vm: &VmFd) -> Result<Self, KvmError> {
        let kvm = |what| move |source| KvmError::Kvm { what, source };
        let mut irqchips = Vec::new();
        for chip_id in IRQCHIPS {
            let mut chip = kvm_irqchip {
                chip_id,
                ..Default::default()
            };
            vm.get_irqchip(&mut chip).map_err(kvm("KVM_GET_IRQCHIP"))?;
            irqchips.push(chip);
        }
        Ok(Self {
            irqchips,
            pit: vm.get_pit2().map_err(kvm("KVM_GET_PIT2"))?,
            clock: vm.get_clock().map_err(kvm("KVM_GET_CLOCK"))?,
        })
    }

    /// Loads the state into a new VM (after its irqchip and PIT exist).
    /// The clock is set to where it stood, so the guest sees no time pass
    /// while it was saved.
    pub fn restore(&self, vm: &VmFd) -> Result<(), KvmError> {
        let kvm = |what| move |source| KvmError::Kvm { what, source };
        for chip in &self.irqchips {
            vm.set_irqchip(chip).map_err(kvm("KVM_SET_IRQCHIP"))?;
        }
        vm.set_pit2(&self.pit).map_err(kvm("KVM_SET_PIT2"))?;
        let clock = kvm_clock_data {
            clock: self.clock.clock,
            // Only the value is set: no host-TSC-relative flags.
            ..Default::default()
        };
        vm.set_clock(&clock).map_err(kvm("KVM_SET_CLOCK"))
    }
}

/// The state file's name in a snapshot directory.
pub const STATE_FILE: &str = "state";
/// The memory file's name in a snapshot directory.
pub const MEMORY_FILE: &str = "memory";

/// What a snapshot took.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SnapshotInfo {
    /// Guest RAM.
    pub ram_bytes: u64,
    /// Bytes of RAM the memory file stores (the rest are holes).
    pub memory_bytes: u64,
    /// The disks copied.
    pub disks: Vec<SavedDisk>,
}

/// A paused guest's machine state (its RAM is in the memory file).
#[derive(Debug, Serialize, Deserialize)]
pub struct MachineState {
    /// Guest RAM regions (guest address, bytes), as laid out in the
    /// memory file.
    pub regions: Vec<(u64, usize)>,
    /// The CPU features the guest was started with.
    #[cfg(target_arch = "x86_64")]
    pub features: CpuFeatures,
    #[cfg(target_arch = "x86_64")]
    pub vcpus: Vec<VcpuState>,
    #[cfg(target_arch = "x86_64")]
    pub vm: VmKvmState,
    /// Transport and queue state of each virtio-mmio device, in bus order.
    pub devices: Vec<sandbox_virtio::mmio::MmioState>,
    pub serial: SerialSnapshot,
    /// The block devices' disks as they were, one raw sparse file each
    /// in the snapshot directory.
    pub disks: Vec<SavedDisk>,
}

/// A block device's disk copied into the snapshot.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SavedDisk {
    /// The device's index on the bus.
    pub device: usize,
    /// The file's name in the snapshot directory.
    pub file: String,
    /// The disk's size.
    pub size: u64,
    /// Bytes of data stored (the rest are holes).
    pub stored: u64,
}

/// The 16550 serial port's registers.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SerialSnapshot {
    pub baud_divisor_low: u8,
    pub baud_divisor_high: u8,
    pub interrupt_enable: u8,
    pub interrupt_identification: u8,
    pub line_control: u8,
    pub line_status: u8,
    pub modem_control: u8,
    pub modem_status: u8,
    pub scratch: u8,
    pub in_buffer: Vec<u8>,
}

impl SerialSnapshot {
    /// The registers of a running port.
    pub fn of(s: &vm_superio::serial::SerialState) -> Self {
        Self {
            baud_divisor_low: s.baud_divisor_low,
            baud_divisor_high: s.baud_divisor_high,
            interrupt_enable: s.interrupt_enable,
            interrupt_identification: s.interrupt_identification,
            line_control: s.line_control,
            line_status: s.line_status,
            modem_control: s.modem_control,
            modem_status: s.modem_status,
            scratch: s.scratch,
            in_buffer: s.in_buffer.clone(),
        }
    }

    /// The state to start a port from.
    pub fn to_state(&self) -> vm_superio::serial::SerialState {
        vm_superio::serial::SerialState {
            baud_divisor_low: self.baud_divisor_low,
            baud_divisor_high: self.baud_divisor_high,
            interrupt_enable: self.interrupt_enable,
            interrupt_identification: self.interrupt_identification,
            line_control: self.line_control,
            line_status: self.line_status,
            modem_control: self.modem_control,
            modem_status: self.modem_status,
            scratch: self.scratch,
            in_buffer: self.in_buffer.clone(),
        }
    }
}

impl MachineState {
    /// Writes the state file: magic, version, body length, the body's
    /// SHA-256 and the body (JSON).
    pub fn write(&self, path: &Path) -> Result<(), SnapshotError> {
        let io_err = |source| SnapshotError::Io {
            what: format!("writing {}", path.display()),
            source,
        };
        let body = serde_json::to_vec(self)
            .map_err(|e| SnapshotError::Corrupt(format!("encoding the state: {e}")))?;
        let mut file = std::fs::File::create(path).map_err(io_err)?;
        file.write_all(MAGIC).map_err(io_err)?;
        file.write_all(&STATE_VERSION.to_le_bytes())
            .map_err(io_err)?;
        file.write_all(&(body.len() as u64).to_le_bytes())
            .map_err(io_err)?;
        file.write_all(&Sha256::digest(&body)).map_err(io_err)?;
        file.write_all(&body).map_err(io_err)?;
        file.sync_all().map_err(io_err)
    }

    /// Reads a state file, refusing a foreign, truncated, changed or
    /// other-version file with a clear error.
    pub fn read(path: &Path) -> Result<Self, SnapshotError> {
        let io_err = |source| SnapshotError::Io {
            what: format!("reading {}", path.display()),
            source,
        };
        let corrupt = |why: &str| {
            SnapshotError::Corrupt(format!(
                "{} is not a usable snapshot state file: {why}",
                path.display()
            ))
        };
        let mut file = std::fs::File::open(path).map_err(io_err)?;
        let mut head = [0u8; 8 + 4 + 8 + 32];
        file.read_exact(&mut head)
            .map_err(|_| corrupt("it is shorter than the header"))?;
        if &head[..8] != MAGIC {
            return Err(corrupt("no snapshot header"));
        }
        let version = u32::from_le_bytes(head[8..12].try_into().unwrap_or_default());
        if version != STATE_VERSION {
            return Err(SnapshotError::Version { found: version });
        }
        let len = u64::from_le_bytes(head[12..20].try_into().unwrap_or_default());
        if len > MAX_STATE_BYTES {
            return Err(corrupt(&format!("its body claims {len} bytes")));
        }
        let mut body = Vec::with_capacity(len as usize);
        file.take(len + 1).read_to_end(&mut body).map_err(io_err)?;
        if body.len() as u64 != len {
            return Err(corrupt(&format!(
                "its body is {} bytes, the header says {len} (truncated or extended)",
                body.len()
            )));
        }
        if Sha256::digest(&body)[..] != head[20..] {
            return Err(corrupt(
                "its checksum does not match (the file was changed)",
            ));
        }
        serde_json::from_slice(&body).map_err(|e| corrupt(&format!("its body does not parse: {e}")))
    }
}

#[cfg(all(test, target_arch = "x86_64"))]
mod tests;
