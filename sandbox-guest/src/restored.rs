//! Continuing from a snapshot: fresh randomness, the wall clock and, with a
//! network, the new host stack's interception CA.

use std::fs::OpenOptions;
use std::os::fd::AsRawFd;

use crate::init;

/// `_IOW('R', 0x03, int[2])`: mix bytes into the input pool, crediting
/// them.
const RNDADDENTROPY: libc::c_ulong = 0x4008_5203;
/// `_IO('R', 0x07)`: reseed the CRNG from the input pool now.
const RNDRESEEDCRNG: libc::c_ulong = 0x5207;
/// Bytes of host entropy used.
const MAX_ENTROPY: usize = 512;

/// `struct rand_pool_info` with room for [`MAX_ENTROPY`] bytes.
#[repr(C)]
struct RandPoolInfo {
    entropy_count: libc::c_int,
    buf_size: libc::c_int,
    buf: [u8; MAX_ENTROPY],
}

/// What a restore may give the guest anew.
pub struct Identity<'a> {
    pub hostname: Option<&'a str>,
    pub machine_id: Option<&'a str>,
}

/// Mixes `entropy` into the kernel's pool, reseeds its generator, sets the
/// wall clock, installs `ca` in place of the snapshot's CA and applies a
/// new identity. Failures are logged: the guest goes on either way
/// (without the new CA, HTTPS through interception fails closed: the old
/// CA's key is gone).
pub fn apply(entropy: &[u8], unix_time_ns: u64, ca: Option<&str>, identity: Identity) {
    if let Some(ca) = ca {
        if let Err(e) = crate::net::install_ca(ca) {
            init::log(&format!(
                "installing the new CA after a restore failed: {e}"
            ));
        }
    }
    if let Some(name) = identity.hostname {
        if let Err(e) = init::set_hostname(name).and_then(|()| crate::etc::install_hostname(name)) {
            init::log(&format!(
                "setting hostname {name:?} after a restore failed: {e}"
            ));
        }
    }
    if let Some(id) = identity.machine_id {
        let valid = id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit());
        let written = if valid {
            crate::etc::install_file(std::path::Path::new("/etc/machine-id"), &format!("{id}\n"))
        } else {
            Err(std::io::Error::other("not 32 hex digits"))
        };
        if let Err(e) = written {
            init::log(&format!(
                "writing /etc/machine-id after a restore failed: {e}"
            ));
        }
    }
    if let Err(e) = reseed(entropy) {
        init::log(&format!(
            "reseeding the random generator after a restore failed: {e}"
        ));
    }
    let ts = libc::timespec {
        tv_sec: (unix_time_ns / 1_000_000_000) as libc::time_t,
        tv_nsec: (unix_time_ns % 1_000_000_000) as libc::c_long,
    };
    // SAFETY: `ts` is a valid timespec for the call's duration.
    if unix_time_ns != 0 && unsafe { libc::clock_settime(libc::CLOCK_REALTIME, &ts) } != 0 {
        init::log(&format!(
            "setting the clock after a restore failed: {}",
            std::io::Error::last_os_error()
        ));
    }
}

fn reseed(entropy: &[u8]) -> std::io::Result<()> {
    let n = entropy.len().min(MAX_ENTROPY);
    let mut info = RandPoolInfo {
        entropy_count: (n * 8) as libc::c_int,
        buf_size: n as libc::c_int,
        buf: [0; MAX_ENTROPY],
    };
    info.buf[..n].copy_from_slice(&entropy[..n]);
    let urandom = OpenOptions::new().write(true).open("/dev/urandom")?;
    // SAFETY: RNDADDENTROPY reads a rand_pool_info of `buf_size` bytes
    // after its header, all inside `info`.
    if unsafe { libc::ioctl(urandom.as_raw_fd(), RNDADDENTROPY as _, &info) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: RNDRESEEDCRNG takes no argument.
    if unsafe { libc::ioctl(urandom.as_raw_fd(), RNDRESEEDCRNG as _) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}
