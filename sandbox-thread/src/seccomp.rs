//! Syscall filters for the threads that handle guest input.
//!
//! Each thread class has an [`AllowList`], kept next to the code that runs
//! under it (device workers and vhost-user servers in `sandbox-virtio`,
//! vCPUs in `sandbox-vmm-kvm`, the network stack in `sandbox-net`, the
//! agent link in `sandbox-core`). [`crate::spawn`] installs the list of its
//! class before the thread's code runs: [`BASE`] (memory, locks, time,
//! signals, exit) plus the class's own calls. A call outside the list does
//! not run: it traps (SIGSYS), the library's handler makes it fail with
//! `EPERM` and counts it per syscall number ([`violations`]), and the code
//! sees an ordinary error. So a compromised thread cannot open files or
//! sockets, start processes or change credentials, and the embedding
//! process keeps running. Opening files is refused quietly with `EACCES`
//! (see `quietly_refused`).
//!
//! Filters are on by default. `SANDBOX_SECCOMP=0` in the environment, or
//! [`set_enabled`]`(false)` before VMs start, turns them off (for debugging
//! with tools that need more syscalls).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::OnceLock;

/// The system calls one class of threads may make besides [`BASE`].
#[derive(Debug)]
pub struct AllowList {
    /// The class's name (for logs and reports).
    pub class: &'static str,
    /// Syscall numbers. `socketpair` in a list is allowed for `AF_UNIX`
    /// only.
    pub syscalls: &'static [libc::c_long],
}

/// Calls every confined thread may make: memory, locks, time, signals,
/// thread identity and exit, randomness, closing descriptors (and
/// `fcntl`) and writing (wake-ups through eventfds, log lines to stderr).
pub use sys::BASE;

#[cfg(target_os = "linux")]
#[path = "seccomp/linux.rs"]
mod sys;
#[cfg(not(target_os = "linux"))]
#[path = "seccomp/other.rs"]
mod sys;

impl AllowList {
    /// The whole list: [`BASE`] and the class's calls, sorted, each once.
    pub fn syscalls(&self) -> Vec<libc::c_long> {
        let mut v: Vec<libc::c_long> = BASE.iter().chain(self.syscalls).copied().collect();
        v.sort_unstable();
        v.dedup();
        v
    }
}

static ENABLED: OnceLock<AtomicBool> = OnceLock::new();

fn enabled_flag() -> &'static AtomicBool {
    ENABLED.get_or_init(|| {
        let off = std::env::var("SANDBOX_SECCOMP").is_ok_and(|v| v == "0" || v == "off");
        AtomicBool::new(!off)
    })
}

/// Turns filters on or off for threads started from now on (on by
/// default; `SANDBOX_SECCOMP=0` starts off).
pub fn set_enabled(on: bool) {
    enabled_flag().store(on, Ordering::Relaxed);
}

/// Whether new threads get filters.
pub fn enabled() -> bool {
    enabled_flag().load(Ordering::Relaxed)
}

/// Counts of refused calls per syscall number (below 512).
static VIOLATIONS: [AtomicU64; 512] = [const { AtomicU64::new(0) }; 512];

/// Syscalls refused by a filter so far: (number, count).
pub fn violations() -> Vec<(i64, u64)> {
    VIOLATIONS
        .iter()
        .enumerate()
        .filter_map(|(nr, c)| {
            let n = c.load(Ordering::Relaxed);
            (n > 0).then_some((nr as i64, n))
        })
        .collect()
}

#[cfg(target_os = "linux")]
mod install {
    use std::collections::BTreeMap;
    use std::sync::atomic::Ordering;
    use std::sync::Once;

    use seccompiler::{
        BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
        SeccompRule, TargetArch,
    };

    use super::{AllowList, VIOLATIONS};

    #[cfg(target_arch = "x86_64")]
    const ARCH: TargetArch = TargetArch::x86_64;
    #[cfg(target_arch = "aarch64")]
    const ARCH: TargetArch = TargetArch::aarch64;

    /// The offset of `si_syscall` in a SIGSYS `siginfo_t` (after signo,
    /// errno, code and padding, then `_call_addr`).
    const SI_SYSCALL_OFFSET: usize = 24;

    extern "C" fn on_sigsys(_sig: libc::c_int, info: *mut libc::siginfo_t, ctx: *mut libc::c_void) {
        // SAFETY: the kernel passes a valid siginfo for SIGSYS; si_syscall
        // is an int at this offset on 64-bit Linux.
        let nr = unsafe {
            *(info
                .cast::<u8>()
                .add(SI_SYSCALL_OFFSET)
                .cast::<libc::c_int>())
        };
        if let Some(c) = usize::try_from(nr).ok().and_then(|n| VIOLATIONS.get(n)) {
            c.fetch_add(1, Ordering::Relaxed);
        }
        // Make the refused call return -EPERM.
        // SAFETY: the kernel passes the interrupted context; writing the
        // return register changes what the syscall returns.
        unsafe {
            let uc = ctx.cast::<libc::ucontext_t>();
            #[cfg(target_arch = "x86_64")]
            {
                (*uc).uc_mcontext.gregs[libc::REG_RAX as usize] = -i64::from(libc::EPERM);
            }
            #[cfg(target_arch = "aarch64")]
            {
                (*uc).uc_mcontext.regs[0] = (-i64::from(libc::EPERM)) as u64;
            }
        }
    }

    fn install_handler() {
        static ONCE: Once = Once::new();
        ONCE.call_once(|| {
            // SAFETY: a zeroed sigaction is valid; the handler only touches
            // atomics and the signal context (async-signal-safe).
            unsafe {
                let mut sa: libc::sigaction = std::mem::zeroed();
                sa.sa_sigaction = on_sigsys as *const () as usize;
                sa.sa_flags = libc::SA_SIGINFO;
                libc::sigemptyset(&mut sa.sa_mask);
                libc::sigaction(libc::SIGSYS, &sa, std::ptr::null_mut());
            }
        });
    }

    /// Calls refused quietly with `EACCES` (not trapped, not counted):
    /// opening files. glibc's malloc opens `/proc/sys/vm/overcommit_memory`
    /// once per process when it first shrinks a thread's heap; refused, it
    /// assumes the default and carries on.
    fn quietly_refused() -> Vec<libc::c_long> {
        #[cfg(target_arch = "x86_64")]
        return vec![libc::SYS_openat, libc::SYS_open];
        #[cfg(not(target_arch = "x86_64"))]
        vec![libc::SYS_openat]
    }

    fn compile(
        rules: BTreeMap<i64, Vec<SeccompRule>>,
        mismatch: SeccompAction,
        matched: SeccompAction,
    ) -> Result<BpfProgram, String> {
        SeccompFilter::new(rules, mismatch, matched, ARCH)
            .map_err(|e| e.to_string())?
            .try_into()
            .map_err(|e: seccompiler::BackendError| e.to_string())
    }

    /// The compiled filters of `list`: the allow-list (anything else
    /// traps), and the quiet refusals. The kernel applies the stricter
    /// outcome of the two. A list that names `openat` opens files (a file
    /// system server): it gets no quiet refusals.
    pub(super) fn program(list: &AllowList) -> Result<Vec<BpfProgram>, String> {
        let opens = list.syscalls.contains(&libc::SYS_openat);
        let quiet = if opens { Vec::new() } else { quietly_refused() };
        let mut rules: BTreeMap<i64, Vec<SeccompRule>> = list
            .syscalls()
            .into_iter()
            .chain(quiet.iter().copied())
            .map(|nr| (nr, Vec::new()))
            .collect();
        // Socket pairs only in the Unix domain.
        if let Some(r) = rules.get_mut(&libc::SYS_socketpair) {
            let unix = SeccompCondition::new(
                0,
                SeccompCmpArgLen::Dword,
                SeccompCmpOp::Eq,
                libc::AF_UNIX as u64,
            )
            .map_err(|e| e.to_string())?;
            r.push(SeccompRule::new(vec![unix]).map_err(|e| e.to_string())?);
        }
        let allow = compile(rules, SeccompAction::Trap, SeccompAction::Allow)?;
        if opens {
            return Ok(vec![allow]);
        }
        let refuse = compile(
            quiet.into_iter().map(|nr| (nr, Vec::new())).collect(),
            SeccompAction::Allow,
            SeccompAction::Errno(libc::EACCES as u32),
        )?;
        // The quiet refusals first: installing a filter takes `prctl` and
        // `seccomp`, which the allow-list does not grant.
        Ok(vec![refuse, allow])
    }

    /// Installs the filters of `list` on the calling thread.
    pub(super) fn apply(list: &AllowList) -> Result<(), String> {
        install_handler();
        for prog in program(list)? {
            seccompiler::apply_filter(&prog).map_err(|e| e.to_string())?;
        }
        Ok(())
    }
}

/// Installs the filter of `list` on the calling thread, if filters are
/// enabled. A failure to install is logged and the thread runs unfiltered
/// (a kernel without seccomp), never fails its work. Where there is no
/// seccomp (macOS) it does nothing.
pub fn confine(list: &AllowList) {
    if !enabled() {
        return;
    }
    #[cfg(target_os = "linux")]
    if let Err(e) = install::apply(list) {
        log::warn!(
            "seccomp filter for a {} thread not installed: {e}",
            list.class
        );
    }
    #[cfg(not(target_os = "linux"))]
    let _ = list;
}

/// The number of BPF instructions of `list`'s filters (for reports).
#[cfg(target_os = "linux")]
pub fn filter_len(list: &AllowList) -> Result<usize, String> {
    install::program(list).map(|p| p.iter().map(Vec::len).sum())
}

/// Prints a list's size and asserts it stays small: for each crate's test
/// of its own lists.
#[cfg(target_os = "linux")]
pub fn report(list: &AllowList, at_most: usize) -> (usize, usize) {
    let n = list.syscalls().len();
    let bpf = filter_len(list).expect("the filter compiles");
    eprintln!(
        "{} filter: {n} syscalls, {bpf} BPF instructions",
        list.class
    );
    assert!(n <= at_most, "{}: {n} syscalls", list.class);
    assert!(bpf > n);
    (n, bpf)
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;

    const TEST: AllowList = AllowList {
        class: "test",
        syscalls: &[libc::SYS_read],
    };

    #[test]
    fn a_confined_thread_cannot_make_calls_outside_its_list() {
        let before = violations()
            .iter()
            .find(|(nr, _)| *nr == libc::SYS_socket)
            .map_or(0, |(_, n)| *n);
        let (socket, read) = std::thread::spawn(|| {
            confine(&TEST);
            // Outside the list: refused with EPERM, the thread lives on.
            // SAFETY: plain syscalls.
            let s = unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0) };
            let e = std::io::Error::last_os_error().raw_os_error();
            // Opening files: refused quietly.
            // SAFETY: a valid NUL-terminated path.
            let o = unsafe { libc::open(c"/etc/hostname".as_ptr(), libc::O_RDONLY) };
            assert_eq!(
                (o, std::io::Error::last_os_error().raw_os_error()),
                (-1, Some(libc::EACCES))
            );
            // Inside the list: works.
            let mut buf = [0u8; 1];
            // SAFETY: reading zero bytes from stdin's descriptor.
            let r = unsafe { libc::read(0, buf.as_mut_ptr().cast(), 0) };
            ((s, e), r)
        })
        .join()
        .unwrap();
        assert_eq!(socket, (-1, Some(libc::EPERM)));
        assert!(read >= 0 || read == -1);
        let after = violations()
            .iter()
            .find(|(nr, _)| *nr == libc::SYS_socket)
            .map_or(0, |(_, n)| *n);
        assert_eq!(after, before + 1);
        // This thread (unconfined) still can.
        // SAFETY: plain syscalls.
        let s = unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0) };
        assert!(s >= 0);
        // SAFETY: closing the socket just opened.
        unsafe { libc::close(s) };
    }

    #[test]
    fn the_base_list_is_small() {
        report(&TEST, BASE.len() + 1);
    }
}
