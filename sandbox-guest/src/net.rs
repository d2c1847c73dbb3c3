//! Guest network set-up from the kernel command line:
//! `sandbox.net=IP/PREFIX,GATEWAY,DNS,MAC` names the link the host stack
//! serves; the interface with that MAC becomes `eth0`, gets the address and
//! a default route, and `/etc/resolv.conf` points at the host's resolver.
//! `sandbox.ca=<base64 DER>` is the sandbox's interception CA, added to the
//! guest trust store; if the guest has a system trust store that cannot be
//! updated, set-up fails and the agent refuses to start (fail closed).

use std::fs;
use std::io;
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;

use crate::etc::RUN_DIR;
/// Debian's bundle (also what curl, OpenSSL and Python use there).
const SYSTEM_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";
/// The combined bundle, for `SSL_CERT_FILE` and friends.
pub const BUNDLE: &str = "/run/sandbox/ca-certificates.crt";

/// A parsed `sandbox.net=` value.
#[derive(Debug, PartialEq, Eq)]
pub struct NetParam {
    pub ip: Ipv4Addr,
    pub prefix: u8,
    pub gateway: Ipv4Addr,
    pub dns: Ipv4Addr,
    pub mac: String,
}

pub fn parse(v: &str) -> Option<NetParam> {
    let mut it = v.split(',');
    let (ip, prefix) = it.next()?.split_once('/')?;
    let p = NetParam {
        ip: ip.parse().ok()?,
        prefix: prefix.parse().ok().filter(|p| *p <= 32)?,
        gateway: it.next()?.parse().ok()?,
        dns: it.next()?.parse().ok()?,
        mac: it.next()?.to_ascii_lowercase(),
    };
    it.next().is_none().then_some(p)
}

/// Configures the link; errors say which step failed.
pub fn configure(p: &NetParam) -> Result<(), String> {
    let sock = socket().map_err(|e| format!("socket: {e}"))?;
    let name = find_by_mac(&p.mac).ok_or_else(|| format!("no interface with MAC {}", p.mac))?;
    if name != "eth0" {
        rename(&sock, &name, "eth0").map_err(|e| format!("renaming {name} to eth0: {e}"))?;
    }
    let mask = if p.prefix == 0 {
        0
    } else {
        u32::MAX << (32 - u32::from(p.prefix))
    };
    addr_ioctl(&sock, "eth0", libc::SIOCSIFADDR, p.ip).map_err(|e| format!("eth0 address: {e}"))?;
    addr_ioctl(&sock, "eth0", libc::SIOCSIFNETMASK, Ipv4Addr::from(mask))
        .map_err(|e| format!("eth0 netmask: {e}"))?;
    set_flags(&sock, "eth0", (libc::IFF_UP | libc::IFF_RUNNING) as i16)
        .map_err(|e| format!("bringing eth0 up: {e}"))?;
    default_route(&sock, p.gateway).map_err(|e| format!("default route via {}: {e}", p.gateway))?;
    // Without a resolver file the network still works by address; not a
    // reason to refuse to start.
    let resolv = format!("nameserver {}\n", p.dns);
    if let Err(e) = crate::etc::install_file(Path::new("/etc/resolv.conf"), &resolv) {
        crate::init::log(&format!("cannot point /etc/resolv.conf at {}: {e}", p.dns));
    }
    Ok(())
}

/// Brings `lo` up, which gives it 127.0.0.1/8 and ::1 (with or without a
/// guest network: servers on localhost need it).
pub fn loopback_up() -> io::Result<()> {
    set_flags(&socket()?, "lo", (libc::IFF_UP | libc::IFF_RUNNING) as i16)
}

/// Adds the CA (base64 DER from the command line) to the trust store.
pub fn install_ca(b64: &str) -> Result<(), String> {
    if b64.is_empty()
        || !b64
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'+' || b == b'/' || b == b'=')
    {
        return Err("malformed sandbox.ca".into());
    }
    let mut pem = String::from("-----BEGIN CERTIFICATE-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        pem.push_str(std::str::from_utf8(chunk).unwrap_or_default());
        pem.push('\n');
    }
    pem.push_str("-----END CERTIFICATE-----\n");
    fs::create_dir_all(RUN_DIR).map_err(|e| format!("{RUN_DIR}: {e}"))?;
    fs::write(format!("{RUN_DIR}/ca.pem"), &pem).map_err(|e| format!("{RUN_DIR}/ca.pem: {e}"))?;
    let system = Path::new(SYSTEM_BUNDLE);
    // A persistent root still holds the CA of an earlier boot: replace it.
    let mut bundle = without_sandbox_cas(&fs::read_to_string(system).unwrap_or_default());
    if !bundle.is_empty() && !bundle.ends_with('\n') {
        bundle.push('\n');
    }
    bundle.push_str(CA_MARKER);
    bundle.push('\n');
    bundle.push_str(&pem);
    fs::write(BUNDLE, &bundle).map_err(|e| format!("{BUNDLE}: {e}"))?;
    // A guest with a system trust store must trust the CA there too.
    if system.parent().is_some_and(Path::is_dir) {
        crate::etc::install_file(system, &bundle).map_err(|e| format!("{SYSTEM_BUNDLE}: {e}"))?;
    }
    Ok(())
}

/// The line written before the sandbox CA in a bundle.
const CA_MARKER: &str = "# sandbox egress interception CA (replaced at every boot)";

/// `bundle` without the certificates that follow a [`CA_MARKER`] line.
fn without_sandbox_cas(bundle: &str) -> String {
    let mut out = String::new();
    let mut skipping = false;
    for line in bundle.lines() {
        if line == CA_MARKER {
            skipping = true;
            continue;
        }
        if !skipping {
            out.push_str(line);
            out.push('\n');
        }
        if line.starts_with("-----END") {
            skipping = false;
        }
    }
    out
}

fn find_by_mac(mac: &str) -> Option<String> {
    fs::read_dir("/sys/class/net")
        .ok()?
        .flatten()
        .find_map(|e| {
            let addr = fs::read_to_string(e.path().join("address")).ok()?;
            (addr.trim().eq_ignore_ascii_case(mac))
                .then(|| e.file_name().to_string_lossy().into_owned())
        })
}

fn socket() -> io::Result<OwnedFd> {
    // SAFETY: plain socket(2); the result is checked.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a fresh descriptor we own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn ifreq(name: &str) -> libc::ifreq {
    // SAFETY: ifreq is plain old data; all-zero is valid.
    let mut r: libc::ifreq = unsafe { std::mem::zeroed() };
    for (d, s) in r
        .ifr_name
        .iter_mut()
        .zip(name.bytes().take(libc::IFNAMSIZ - 1))
    {
        *d = s as libc::c_char;
    }
    r
}

fn ioctl<T>(sock: &OwnedFd, req: libc::c_ulong, arg: &mut T) -> io::Result<()> {
    // SAFETY: `arg` is the structure this request expects, valid for the call.
    let rc = unsafe { libc::ioctl(sock.as_raw_fd(), req as _, arg as *mut T) };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

fn set_flags(sock: &OwnedFd, name: &str, flags: i16) -> io::Result<()> {
    let mut r = ifreq(name);
    ioctl(sock, libc::SIOCGIFFLAGS, &mut r)?;
    // SAFETY: SIOCGIFFLAGS filled the flags member of the union.
    unsafe { r.ifr_ifru.ifru_flags |= flags };
    ioctl(sock, libc::SIOCSIFFLAGS, &mut r)
}

fn rename(sock: &OwnedFd, from: &str, to: &str) -> io::Result<()> {
    let mut r = ifreq(from);
    let new = ifreq(to).ifr_name;
    r.ifr_ifru.ifru_newname = new;
    ioctl(sock, libc::SIOCSIFNAME, &mut r)
}

fn sockaddr(ip: Ipv4Addr) -> libc::sockaddr {
    let sin = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: 0,
        sin_addr: libc::in_addr {
            s_addr: u32::from(ip).to_be(),
        },
        sin_zero: [0; 8],
    };
    // SAFETY: sockaddr_in and sockaddr have the same size; the bytes are a
    // valid sockaddr for AF_INET.
    unsafe { std::mem::transmute::<libc::sockaddr_in, libc::sockaddr>(sin) }
}

fn addr_ioctl(sock: &OwnedFd, name: &str, req: libc::c_ulong, ip: Ipv4Addr) -> io::Result<()> {
    let mut r = ifreq(name);
    r.ifr_ifru.ifru_addr = sockaddr(ip);
    ioctl(sock, req, &mut r)
}

/// The kernel's `struct rtentry` (layout of linux/route.h).
#[repr(C)]
struct RtEntry {
    rt_pad1: libc::c_ulong,
    rt_dst: libc::sockaddr,
    rt_gateway: libc::sockaddr,
    rt_genmask: libc::sockaddr,
    rt_flags: libc::c_ushort,
    rt_pad2: libc::c_short,
    rt_pad3: libc::c_ulong,
    rt_pad4: *mut libc::c_void,
    rt_metric: libc::c_short,
    rt_dev: *mut libc::c_char,
    rt_mtu: libc::c_ulong,
    rt_window: libc::c_ulong,
    rt_irtt: libc::c_ushort,
}

fn default_route(sock: &OwnedFd, gw: Ipv4Addr) -> io::Result<()> {
    let mut rt = RtEntry {
        rt_pad1: 0,
        rt_dst: sockaddr(Ipv4Addr::UNSPECIFIED),
        rt_gateway: sockaddr(gw),
        rt_genmask: sockaddr(Ipv4Addr::UNSPECIFIED),
        rt_flags: (libc::RTF_UP | libc::RTF_GATEWAY) as libc::c_ushort,
        rt_pad2: 0,
        rt_pad3: 0,
        rt_pad4: std::ptr::null_mut(),
        rt_metric: 0,
        rt_dev: std::ptr::null_mut(),
        rt_mtu: 0,
        rt_window: 0,
        rt_irtt: 0,
    };
    ioctl(sock, libc::SIOCADDRT, &mut rt)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_earlier_sandbox_ca_is_replaced_not_accumulated() {
        let system = "-----BEGIN CERTIFICATE-----\nAAA\n-----END CERTIFICATE-----\n";
        let old = format!(
            "{system}{CA_MARKER}\n-----BEGIN CERTIFICATE-----\nOLD\n-----END CERTIFICATE-----\n"
        );
        assert_eq!(without_sandbox_cas(&old), system);
        assert_eq!(without_sandbox_cas(system), system);
    }

    #[test]
    fn parses_the_parameter() {
        let p = parse("10.0.2.15/24,10.0.2.2,10.0.2.3,02:5B:00:00:00:0F").unwrap();
        assert_eq!(p.ip, Ipv4Addr::new(10, 0, 2, 15));
        assert_eq!(p.prefix, 24);
        assert_eq!(p.mac, "02:5b:00:00:00:0f");
        assert!(parse("10.0.2.15/33,10.0.2.2,10.0.2.3,m").is_none());
        assert!(parse("10.0.2.15,10.0.2.2").is_none());
        assert!(parse("10.0.2.15/24,10.0.2.2,10.0.2.3,m,extra").is_none());
    }
}
