//! The vCPU threads of a VM, on every architecture: starting them under
//! their syscall filter, kicking them out of `KVM_RUN`, pausing at the
//! gate, waiting for the guest's end and stopping.

use std::os::unix::thread::JoinHandleExt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, Once};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use sandbox_virtio::ConsoleLog;

use crate::pause::Gate;
use crate::{seccomp, GuestExit, KvmError};

#[derive(Default)]
struct ExitState {
    exit: Mutex<Option<GuestExit>>,
    changed: Condvar,
}

/// The signal that kicks a vCPU thread out of `KVM_RUN`.
fn kick_signal() -> i32 {
    libc::SIGRTMIN() + 1
}

fn install_kick_handler() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        extern "C" fn noop(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {}
        let _ = vmm_sys_util::signal::register_signal_handler(kick_signal(), noop);
    });
}

/// Interrupts a vCPU thread's `KVM_RUN` (or its wait while parked).
fn kick<T>(thread: &JoinHandle<T>) {
    if thread.is_finished() {
        return;
    }
    // SAFETY: the thread is alive (not finished, and not joined: we hold
    // its handle); the signal's handler does nothing but interrupt
    // KVM_RUN.
    unsafe { libc::pthread_kill(thread.as_pthread_t(), kick_signal()) };
}

/// Console lines searched for a panic when the guest resets.
const PANIC_SEARCH_LINES: usize = 80;

/// A reset right after the kernel's panic line is the panic (`panic=-1`
/// resets the machine the way a reboot does).
fn classify_reset(exit: GuestExit, console: &ConsoleLog) -> GuestExit {
    if exit != GuestExit::Reboot {
        return exit;
    }
    let tail = console.tail(PANIC_SEARCH_LINES);
    match tail
        .lines()
        .rev()
        .find_map(|l| l.split_once("Kernel panic - not syncing: "))
    {
        Some((_, why)) => GuestExit::Panic(why.trim().to_string()),
        None => exit,
    }
}

/// A VM's vCPU threads.
pub struct Vcpus {
    pub stop: Arc<AtomicBool>,
    pub gate: Arc<Gate>,
    state: Arc<ExitState>,
    threads: Vec<JoinHandle<Result<(), sandbox_thread::Panicked>>>,
}

impl Vcpus {
    pub fn new() -> Self {
        install_kick_handler();
        Self {
            stop: Arc::new(AtomicBool::new(false)),
            gate: Arc::default(),
            state: Arc::default(),
            threads: Vec::new(),
        }
    }

    /// Starts vCPU `id`'s thread running `run` (which returns how the
    /// guest stopped). A panic in it stops the VM as a crash, not the
    /// host; the first vCPU to stop stops the others.
    pub fn spawn(
        &mut self,
        id: u8,
        console: &ConsoleLog,
        run: impl FnOnce() -> GuestExit + Send + 'static,
    ) -> Result<(), KvmError> {
        let (stop, state, console) = (self.stop.clone(), self.state.clone(), console.clone());
        let thread = sandbox_thread::spawn(format!("vcpu{id}"), Some(&seccomp::VCPU), move || {
            let exit = match sandbox_thread::contain(run) {
                Ok(exit) => classify_reset(exit, &console),
                Err(p) => GuestExit::Crashed(format!("the VMM failed: {p}")),
            };
            let mut slot = state.exit.lock().unwrap_or_else(|e| e.into_inner());
            if slot.is_none() && exit != GuestExit::Stopped {
                *slot = Some(exit);
            }
            stop.store(true, Ordering::Release);
            state.changed.notify_all();
        })
        .map_err(crate::host("starting a vCPU thread"))?;
        self.threads.push(thread);
        Ok(())
    }

    /// Threads started, and how many of them still run (snapshots use it;
    /// they are x86_64 only).
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    pub fn counts(&self) -> (usize, usize) {
        let running = self.threads.iter().filter(|t| !t.is_finished()).count();
        (self.threads.len(), running)
    }

    /// How the guest stopped, waiting up to `timeout` for it to stop.
    pub fn wait_exit(&self, timeout: Duration) -> Option<GuestExit> {
        let deadline = Instant::now() + timeout;
        let mut slot = self.state.exit.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            if let Some(exit) = slot.clone() {
                return Some(exit);
            }
            let left = deadline.checked_duration_since(Instant::now())?;
            slot = self
                .state
                .changed
                .wait_timeout(slot, left)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    /// Whether a vCPU stopped (the guest ended or crashed).
    pub fn exited(&self) -> Option<GuestExit> {
        self.state
            .exit
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Every running vCPU leaves `KVM_RUN` and parks, within `timeout`.
    pub fn pause(&self, timeout: Duration) -> Result<(), KvmError> {
        self.gate.request_pause();
        let deadline = Instant::now() + timeout;
        loop {
            let running: Vec<_> = self.threads.iter().filter(|t| !t.is_finished()).collect();
            if self.gate.wait_parked(running.len(), Duration::ZERO) >= running.len() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                self.gate.resume();
                return Err(KvmError::Host {
                    what: "pausing the guest".into(),
                    source: std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        format!("a vCPU did not leave KVM_RUN within {timeout:?}"),
                    ),
                });
            }
            for t in &running {
                kick(t);
            }
            self.gate
                .wait_parked(running.len(), Duration::from_millis(1));
        }
    }

    /// Lets parked vCPUs run again.
    pub fn resume(&self) {
        self.gate.resume();
    }

    pub fn is_paused(&self) -> bool {
        self.gate.is_paused()
    }

    /// Stops every vCPU and joins its thread.
    pub fn stop(&mut self) {
        self.stop.store(true, Ordering::Release);
        self.gate.stop();
        for t in self.threads.drain(..) {
            while !t.is_finished() {
                kick(&t);
                std::thread::sleep(Duration::from_millis(1));
            }
            let _ = t.join();
        }
    }
}

/// Guest RAM is not inherited by children forked by any thread of this
/// process (as QEMU does): no copy-on-write of the whole guest while a
/// child runs until its exec, and no guest memory in a child at all.
fn advise_guest_ram(addr: *mut u8, len: usize) {
    // SAFETY: advice on a mapping this VM owns; it changes no contents.
    unsafe { libc::madvise(addr.cast(), len, libc::MADV_DONTFORK) };
}

/// Gives `vm` every region of `mem` as a memory slot.
pub fn register_memory(vm: &kvm_ioctls::VmFd, mem: &crate::GuestMemory) -> Result<(), KvmError> {
    use vm_memory::{GuestMemoryBackend, GuestMemoryRegion};
    for (slot, region) in mem.iter().enumerate() {
        let host_addr = mem
            .get_host_address(region.start_addr())
            .map_err(|e| KvmError::Config(format!("guest memory: {e}")))?;
        let r = kvm_bindings::kvm_userspace_memory_region {
            slot: slot as u32,
            flags: 0,
            guest_phys_addr: region.start_addr().0,
            memory_size: region.len(),
            userspace_addr: host_addr as u64,
        };
        advise_guest_ram(host_addr, region.len() as usize);
        // SAFETY: the region is mapped for as long as `mem` lives, and the
        // VM (and its devices) keep `mem` until they stop.
        unsafe { vm.set_user_memory_region(r) }
            .map_err(crate::kvm("KVM_SET_USER_MEMORY_REGION"))?;
    }
    Ok(())
}

/// A vCPU exit's memory-mapped access reaches this.
pub trait MmioBus {
    /// A load; unmapped addresses read as all ones.
    fn mmio_read(&self, addr: u64, data: &mut [u8]);
    /// A store; unmapped addresses are ignored.
    fn mmio_write(&self, addr: u64, data: &[u8]);
}

/// The exits every architecture handles alike: MMIO, system events
/// (power-off and reset), failed entries and interrupted runs. `Some`
/// with what it meant (`Some(None)`: run on); `None` for the exits the
/// architecture handles itself.
pub fn common_exit(
    exit: &mut kvm_ioctls::VcpuExit,
    bus: &impl MmioBus,
) -> Option<Option<GuestExit>> {
    use kvm_ioctls::VcpuExit;
    Some(match exit {
        VcpuExit::MmioRead(addr, data) => {
            bus.mmio_read(*addr, data);
            None
        }
        VcpuExit::MmioWrite(addr, data) => {
            bus.mmio_write(*addr, data);
            None
        }
        VcpuExit::SystemEvent(kind, _) => Some(match *kind {
            kvm_bindings::KVM_SYSTEM_EVENT_RESET => GuestExit::Reboot,
            kvm_bindings::KVM_SYSTEM_EVENT_SHUTDOWN => GuestExit::PowerOff,
            other => GuestExit::Crashed(format!("system event {other}")),
        }),
        VcpuExit::FailEntry(reason, cpu) => Some(GuestExit::Crashed(format!(
            "KVM_EXIT_FAIL_ENTRY: reason {reason:#x} on cpu {cpu}"
        ))),
        VcpuExit::Intr => None,
        _ => return None,
    })
}

/// The lifecycle methods of a `KvmVm` (either architecture's), over its
/// `vcpus`, `console`, `mem` and `bus.mmio` fields, and its `Drop`.
macro_rules! lifecycle {
    ($vm:ident) => {
        impl $vm {
            /// Host address ranges of guest RAM (to tell guest memory from
            /// the VMM's own in `/proc/self/smaps`).
            pub fn guest_memory_ranges(&self) -> Vec<(usize, usize)> {
                use vm_memory::{GuestMemoryBackend, GuestMemoryRegion};
                self.mem
                    .iter()
                    .filter_map(|r| {
                        let host = self.mem.get_host_address(r.start_addr()).ok()?;
                        Some((host as usize, r.len() as usize))
                    })
                    .collect()
            }

            /// The console log.
            pub fn console(&self) -> &sandbox_virtio::ConsoleLog {
                &self.console
            }

            /// How the guest stopped, waiting up to `timeout` for it to stop.
            pub fn wait_exit(&self, timeout: std::time::Duration) -> Option<crate::GuestExit> {
                self.vcpus.wait_exit(timeout)
            }

            /// Whether a vCPU stopped (the guest ended or crashed).
            pub fn exited(&self) -> Option<crate::GuestExit> {
                self.vcpus.exited()
            }

            /// Pauses the guest: every vCPU leaves `KVM_RUN` and waits,
            /// within `timeout`. Device workers finish what the guest
            /// queued before and then idle (the guest queues nothing while
            /// paused); host data for the guest (vsock, network) waits in
            /// the device or the host stack. The guest's clock keeps
            /// running: after `resume` its monotonic and wall clocks show
            /// the time paused, as after a long preemption, and a kvmclock
            /// guest is told it was stopped so its watchdogs stay quiet.
            /// Pausing a paused VM returns at once.
            pub fn pause(&self, timeout: std::time::Duration) -> Result<(), crate::KvmError> {
                self.vcpus.pause(timeout)
            }

            /// Lets a paused guest run again (nothing happens if it is
            /// running).
            pub fn resume(&self) {
                self.vcpus.resume();
            }

            /// Whether the guest is paused.
            pub fn is_paused(&self) -> bool {
                self.vcpus.is_paused()
            }

            /// Stops every vCPU and device and joins their threads.
            pub fn stop(&mut self) {
                self.vcpus.stop();
                for dev in &self.bus.mmio {
                    dev.shutdown();
                }
            }
        }

        impl Drop for $vm {
            fn drop(&mut self) {
                self.stop();
            }
        }
    };
}
pub(crate) use lifecycle;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reset_after_a_panic_line_is_a_panic() {
        let log = ConsoleLog::new(4096);
        log.push(b"[ 1.0] Kernel panic - not syncing: VFS: Unable to mount root fs\n");
        assert_eq!(
            classify_reset(GuestExit::Reboot, &log),
            GuestExit::Panic("VFS: Unable to mount root fs".into())
        );
        assert_eq!(
            classify_reset(GuestExit::Reboot, &ConsoleLog::new(4096)),
            GuestExit::Reboot
        );
    }
}
