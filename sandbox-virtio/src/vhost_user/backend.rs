//! `VhostUserBackendReqHandlerMut` for any [`VirtioDevice`].

use std::fs::File;
use std::os::fd::AsRawFd;
use std::sync::Arc;

use vhost::vhost_user::message::{
    VhostTransferStateDirection, VhostTransferStatePhase, VhostUserConfigFlags, VhostUserInflight,
    VhostUserLog, VhostUserMemoryRegion, VhostUserProtocolFeatures, VhostUserShMemConfig,
    VhostUserSharedMsg, VhostUserSingleMemoryRegion, VhostUserVringAddrFlags, VhostUserVringState,
};
use vhost::vhost_user::{Backend, Error, GpuBackend, Result, VhostUserBackendReqHandlerMut};
use vhost::VhostUserMemoryRegionBase;
use virtio_queue::{Queue, QueueT};
use vm_memory::{FileOffset, GuestAddress};

use crate::device::{ActivationContext, FailureReport, FdInterrupt, QueueKick};
use crate::{GuestMemory, VirtioDevice};

/// `VHOST_USER_F_PROTOCOL_FEATURES`.
const F_PROTOCOL_FEATURES: u64 = 1 << 30;

#[derive(Default)]
struct Vring {
    size: u16,
    desc: u64,
    avail: u64,
    used: u64,
    base: u16,
    kick: Option<File>,
    call: Option<File>,
    enabled: bool,
}

struct Region {
    user_addr: u64,
    gpa: u64,
    size: u64,
}

/// Vhost-user request handling for one device.
pub struct VhostUserBackend<D> {
    device: D,
    acked_features: u64,
    mem: Option<Arc<GuestMemory>>,
    regions: Vec<Region>,
    vrings: Vec<Vring>,
    active: bool,
    backend_req: Option<Backend>,
    /// Ends the session when the device fails.
    on_failure: Option<FailureReport>,
}

fn unsupported<T>(what: &'static str) -> Result<T> {
    Err(Error::InvalidOperation(what))
}

fn nonblocking(f: &File) {
    // SAFETY: fcntl on an open descriptor with integer arguments only.
    unsafe {
        let flags = libc::fcntl(f.as_raw_fd(), libc::F_GETFL);
        libc::fcntl(f.as_raw_fd(), libc::F_SETFL, flags | libc::O_NONBLOCK);
    }
}

/// The largest ring a vhost-user front end may set up. vhost-user has no
/// message that tells the front end a device's preferred maximum, and
/// QEMU's virtio-mmio transport offers the guest 1024 entries
/// (`VIRTQUEUE_MAX_SIZE`) whatever the backend, so rings up to that size
/// are accepted even where the device's own transport offers fewer
/// (UML's front end stays at 256).
pub const FRONT_END_MAX_RING: u16 = 1024;

/// The ring size limit of a queue whose device prefers `device_max`.
fn ring_limit(device_max: u16) -> u16 {
    device_max.max(FRONT_END_MAX_RING)
}

/// A fresh non-blocking eventfd: the kick of a queue nobody set up.
fn idle_kick() -> std::io::Result<File> {
    // SAFETY: eventfd takes no pointers; a non-negative result is a new
    // descriptor that the File below owns alone.
    let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: as above: `fd` is open and owned by nothing else.
    Ok(unsafe { <File as std::os::fd::FromRawFd>::from_raw_fd(fd) })
}

impl<D: VirtioDevice> VhostUserBackend<D> {
    /// Wraps `device`; nothing is active until the front end sets it up.
    pub fn new(device: D) -> Self {
        let vrings = device
            .queue_max_sizes()
            .iter()
            .map(|_| Vring::default())
            .collect();
        Self {
            device,
            acked_features: 0,
            mem: None,
            regions: Vec::new(),
            vrings,
            active: false,
            backend_req: None,
            on_failure: None,
        }
    }

    /// How a failed device (its worker panicked) is reported.
    pub fn set_on_failure(&mut self, report: FailureReport) {
        self.on_failure = Some(report);
    }

    /// Stops the device (front end gone).
    pub fn shutdown(&mut self) {
        self.deactivate();
    }

    fn vring(&mut self, index: u32) -> Result<&mut Vring> {
        self.vrings
            .get_mut(index as usize)
            .ok_or(Error::InvalidParam)
    }

    fn to_gpa(&self, user_addr: u64) -> Result<u64> {
        self.regions
            .iter()
            .find(|r| user_addr >= r.user_addr && user_addr - r.user_addr < r.size)
            .map(|r| r.gpa + (user_addr - r.user_addr))
            .ok_or(Error::InvalidParam)
    }

    fn deactivate(&mut self) {
        if !self.active {
            return;
        }
        self.active = false;
        if let Some(queues) = self.device.reset() {
            for (v, q) in self.vrings.iter_mut().zip(queues) {
                v.base = q.next_avail();
            }
        }
    }

    fn ready(&self) -> bool {
        self.mem.is_some()
            && self
                .vrings
                .iter()
                .take(self.device.required_queues())
                .all(|v| self.vring_ready(v))
    }

    fn vring_ready(&self, v: &Vring) -> bool {
        let need_enable = self.acked_features & F_PROTOCOL_FEATURES != 0;
        v.kick.is_some() && v.size > 0 && (v.enabled || !need_enable)
    }

    fn maybe_activate(&mut self) {
        if self.active || !self.ready() {
            return;
        }
        match self.build_context() {
            Ok(ctx) => match self.device.activate(ctx) {
                Ok(()) => self.active = true,
                Err(e) => log::warn!("activating virtio device: {e}"),
            },
            Err(e) => log::warn!("setting up virtio queues: {e}"),
        }
    }

    fn build_context(&self) -> std::result::Result<ActivationContext, String> {
        let mem = self.mem.clone().ok_or("no memory table")?;
        let mut queues = Vec::new();
        let mut kicks = Vec::new();
        let mut calls = Vec::new();
        for (i, (v, max)) in self
            .vrings
            .iter()
            .zip(self.device.queue_max_sizes())
            .enumerate()
        {
            let mut q = Queue::new(ring_limit(*max)).map_err(|e| format!("queue {i}: {e}"))?;
            if !self.vring_ready(v) {
                // An optional queue the front end did not set up: left not
                // ready, with a kick nobody signals.
                queues.push(q);
                kicks.push(QueueKick(
                    idle_kick().map_err(|e| format!("queue {i}: {e}"))?,
                ));
                calls.push(None);
                continue;
            }
            q.set_size(v.size);
            q.set_desc_table_address(Some(v.desc as u32), Some((v.desc >> 32) as u32));
            q.set_avail_ring_address(Some(v.avail as u32), Some((v.avail >> 32) as u32));
            q.set_used_ring_address(Some(v.used as u32), Some((v.used >> 32) as u32));
            q.set_next_avail(v.base);
            q.set_next_used(v.base);
            q.set_ready(true);
            queues.push(q);
            let kick = v.kick.as_ref().ok_or("missing kick")?;
            kicks.push(QueueKick(kick.try_clone().map_err(|e| e.to_string())?));
            calls.push(v.call.as_ref().and_then(|c| c.try_clone().ok()));
        }
        Ok(ActivationContext {
            mem,
            queues,
            kicks,
            interrupt: Arc::new(FdInterrupt::new(calls).on_failure(self.on_failure.clone())),
            acked_features: self.acked_features,
        })
    }
}

impl<D: VirtioDevice> VhostUserBackendReqHandlerMut for VhostUserBackend<D> {
    fn set_owner(&mut self) -> Result<()> {
        Ok(())
    }

    fn reset_owner(&mut self) -> Result<()> {
        self.deactivate();
        Ok(())
    }

    fn reset_device(&mut self) -> Result<()> {
        self.deactivate();
        Ok(())
    }

    fn get_features(&mut self) -> Result<u64> {
        Ok(self.device.features() | F_PROTOCOL_FEATURES)
    }

    fn set_features(&mut self, features: u64) -> Result<()> {
        if features & !(self.device.features() | F_PROTOCOL_FEATURES) != 0 {
            return Err(Error::InvalidParam);
        }
        self.acked_features = features;
        Ok(())
    }

    fn set_mem_table(
        &mut self,
        ctx: &[VhostUserMemoryRegion],
        files: Vec<File>,
        _postcopy_listening: Option<bool>,
    ) -> Result<Option<Vec<VhostUserMemoryRegionBase>>> {
        if ctx.len() != files.len() {
            return Err(Error::InvalidParam);
        }
        let mut ranges = Vec::new();
        let mut regions = Vec::new();
        for (r, f) in ctx.iter().zip(files) {
            let size = usize::try_from(r.memory_size).map_err(|_| Error::InvalidParam)?;
            ranges.push((
                GuestAddress(r.guest_phys_addr),
                size,
                Some(FileOffset::new(f, r.mmap_offset)),
            ));
            regions.push(Region {
                user_addr: r.user_addr,
                gpa: r.guest_phys_addr,
                size: r.memory_size,
            });
        }
        let mem = GuestMemory::from_ranges_with_files(ranges).map_err(|e| {
            log::warn!("mapping guest memory: {e}");
            Error::InvalidParam
        })?;
        self.mem = Some(Arc::new(mem));
        self.regions = regions;
        Ok(None)
    }

    fn set_vring_num(&mut self, index: u32, num: u32) -> Result<()> {
        let max = ring_limit(
            *self
                .device
                .queue_max_sizes()
                .get(index as usize)
                .ok_or(Error::InvalidParam)?,
        );
        if num == 0 || num > u32::from(max) || !num.is_power_of_two() {
            return Err(Error::InvalidParam);
        }
        self.vring(index)?.size = num as u16;
        Ok(())
    }

    fn set_vring_addr(
        &mut self,
        index: u32,
        _flags: VhostUserVringAddrFlags,
        descriptor: u64,
        used: u64,
        available: u64,
        _log: u64,
    ) -> Result<()> {
        let (desc, used, avail) = (
            self.to_gpa(descriptor)?,
            self.to_gpa(used)?,
            self.to_gpa(available)?,
        );
        let v = self.vring(index)?;
        v.desc = desc;
        v.used = used;
        v.avail = avail;
        Ok(())
    }

    fn set_vring_base(&mut self, index: u32, base: u32) -> Result<()> {
        self.vring(index)?.base = u16::try_from(base).map_err(|_| Error::InvalidParam)?;
        Ok(())
    }

    fn get_vring_base(&mut self, index: u32) -> Result<VhostUserVringState> {
        self.deactivate();
        let v = self.vring(index)?;
        v.kick = None;
        Ok(VhostUserVringState::new(index, u32::from(v.base)))
    }

    fn set_vring_kick(&mut self, index: u8, fd: Option<File>) -> Result<()> {
        if let Some(f) = &fd {
            nonblocking(f);
        }
        self.vring(u32::from(index))?.kick = fd;
        self.maybe_activate();
        Ok(())
    }

    fn set_vring_call(&mut self, index: u8, fd: Option<File>) -> Result<()> {
        if let Some(f) = &fd {
            nonblocking(f);
        }
        self.vring(u32::from(index))?.call = fd;
        Ok(())
    }

    fn set_vring_err(&mut self, _index: u8, _fd: Option<File>) -> Result<()> {
        Ok(())
    }

    fn get_protocol_features(&mut self) -> Result<VhostUserProtocolFeatures> {
        // BACKEND_REQ matters beyond its own purpose: UML's virtio_uml
        // allocates the device's interrupt line only when it sets up the
        // backend request channel. Without it every queue interrupt is
        // requested on IRQ 0 (the timer) and fails with EBUSY or EALREADY,
        // which is why vhost-user devices with a rust back end failed to
        // probe under UML (vsock included).
        Ok(VhostUserProtocolFeatures::CONFIG
            | VhostUserProtocolFeatures::REPLY_ACK
            | VhostUserProtocolFeatures::BACKEND_REQ)
    }

    fn set_protocol_features(&mut self, _features: u64) -> Result<()> {
        Ok(())
    }

    fn get_queue_num(&mut self) -> Result<u64> {
        Ok(self.vrings.len() as u64)
    }

    fn set_vring_enable(&mut self, index: u32, enable: bool) -> Result<()> {
        self.vring(index)?.enabled = enable;
        if enable {
            self.maybe_activate();
        } else {
            self.deactivate();
        }
        Ok(())
    }

    fn get_config(
        &mut self,
        offset: u32,
        size: u32,
        _flags: VhostUserConfigFlags,
    ) -> Result<Vec<u8>> {
        if size > 4096 {
            return Err(Error::InvalidParam);
        }
        let mut data = vec![0u8; size as usize];
        self.device.read_config(u64::from(offset), &mut data);
        Ok(data)
    }

    fn set_config(
        &mut self,
        _offset: u32,
        _buf: &[u8],
        _flags: VhostUserConfigFlags,
    ) -> Result<()> {
        Ok(())
    }

    fn set_backend_req_fd(&mut self, backend: Backend) {
        // Keep the channel open: UML treats its end closing as a broken
        // device and removes it.
        self.backend_req = Some(backend);
    }

    fn set_gpu_socket(&mut self, _gpu_backend: GpuBackend) -> Result<()> {
        unsupported("gpu socket")
    }

    fn get_shared_object(&mut self, _uuid: VhostUserSharedMsg) -> Result<File> {
        unsupported("shared objects")
    }

    fn get_inflight_fd(
        &mut self,
        _inflight: &VhostUserInflight,
    ) -> Result<(VhostUserInflight, File)> {
        unsupported("inflight fd")
    }

    fn set_inflight_fd(&mut self, _inflight: &VhostUserInflight, _file: File) -> Result<()> {
        unsupported("inflight fd")
    }

    fn get_max_mem_slots(&mut self) -> Result<u64> {
        unsupported("memory slots")
    }

    fn add_mem_region(
        &mut self,
        _region: &VhostUserSingleMemoryRegion,
        _fd: File,
        _postcopy_listening: Option<bool>,
    ) -> Result<Option<VhostUserMemoryRegionBase>> {
        unsupported("memory slots")
    }

    fn remove_mem_region(&mut self, _region: &VhostUserSingleMemoryRegion) -> Result<()> {
        unsupported("memory slots")
    }

    fn set_device_state_fd(
        &mut self,
        _direction: VhostTransferStateDirection,
        _phase: VhostTransferStatePhase,
        _fd: File,
    ) -> Result<Option<File>> {
        unsupported("device state")
    }

    fn check_device_state(&mut self) -> Result<()> {
        unsupported("device state")
    }

    fn get_shmem_config(&mut self) -> Result<VhostUserShMemConfig> {
        unsupported("shared memory")
    }

    fn set_log_base(&mut self, _log: &VhostUserLog, _file: File) -> Result<()> {
        unsupported("dirty logging")
    }
}
