//! The agent's kernel command-line parameters, named once: the host
//! (`sandbox-core` and the VMMs) writes them with [`param`], the agent reads
//! them with [`find`].

use std::fmt::Display;

/// `sandbox.hostname=NAME`: the guest's hostname.
pub const HOSTNAME: &str = "sandbox.hostname";
/// How every backend's kernel mounts the root disk. `noinit_itable` keeps
/// ext4 from zeroing the image's lazily initialized inode tables in the
/// background after boot (ext4lazyinit): that work rewrote blocks into a
/// persistent or cow root's overlay, and on an emulating KVM host (every
/// guest-kernel instruction emulated) it made an idle 2-vCPU guest cost a
/// fifth of a host core for minutes (1.14 s of host CPU per 5 s idle, 0.23
/// s without it). Uninitialized groups stay flagged as such, which the
/// kernel and e2fsck honour.
pub const ROOT: [&str; 4] = [
    "root=/dev/vda",
    "rootfstype=ext4",
    "rootflags=noinit_itable",
    "rootwait",
];
/// `sandbox.channel=vsock:PORT`: where the agent listens for the host.
pub const CHANNEL: &str = "sandbox.channel";
/// `sandbox.poweroff=port:0xNNN` (KVM, no ACPI): power off by writing to
/// this I/O port.
pub const POWEROFF: &str = "sandbox.poweroff";
/// `sandbox.output_grace_ms=N`: how long output pumps may drain after a
/// process exits.
pub const OUTPUT_GRACE_MS: &str = "sandbox.output_grace_ms";
/// `sandbox.net=IP/PREFIX,GATEWAY,DNS,MAC`: the guest's link.
pub const NET: &str = "sandbox.net";
/// `sandbox.ca=<base64 DER>`: the egress interception CA to trust.
pub const CA: &str = "sandbox.ca";

/// `sandbox.mounts=TAG:HEXPATH[,TAG:HEXPATH...]`: virtio-fs file systems
/// the agent mounts before it reports ready (the guest path hex-encoded, so
/// any path fits in one command-line word). Written with [`mounts`], read
/// with [`parse_mounts`].
pub const MOUNTS: &str = "sandbox.mounts";

/// The [`MOUNTS`] value for `(tag, guest path)` pairs.
pub fn mounts<'a>(list: impl IntoIterator<Item = (&'a str, &'a str)>) -> String {
    list.into_iter()
        .map(|(tag, path)| {
            let hex: String = path.bytes().map(|b| format!("{b:02x}")).collect();
            format!("{tag}:{hex}")
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// The `(tag, guest path)` pairs of a [`MOUNTS`] value; `None` if it is
/// malformed.
pub fn parse_mounts(value: &str) -> Option<Vec<(String, String)>> {
    value
        .split(',')
        .map(|entry| {
            let (tag, hex) = entry.split_once(':')?;
            if tag.is_empty() || hex.len() % 2 != 0 {
                return None;
            }
            let bytes = (0..hex.len())
                .step_by(2)
                .map(|i| u8::from_str_radix(hex.get(i..i + 2)?, 16).ok())
                .collect::<Option<Vec<u8>>>()?;
            Some((tag.to_string(), String::from_utf8(bytes).ok()?))
        })
        .collect()
}

/// `key=value`, one kernel command-line word.
pub fn param(key: &str, value: impl Display) -> String {
    format!("{key}={value}")
}

/// The value of `key` on `cmdline` (its first occurrence).
pub fn find<'a>(cmdline: &'a str, key: &str) -> Option<&'a str> {
    cmdline
        .split_ascii_whitespace()
        .find_map(|w| w.strip_prefix(key)?.strip_prefix('='))
}

/// The [`CHANNEL`] value for a vsock port.
pub fn vsock_channel(port: u32) -> String {
    format!("vsock:{port}")
}

/// The [`POWEROFF`] value for an I/O port.
pub fn poweroff_port(port: u16) -> String {
    format!("port:{port:#x}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn written_parameters_are_found() {
        let line = [
            param(HOSTNAME, "box"),
            param(CHANNEL, vsock_channel(1024)),
            param(POWEROFF, poweroff_port(0x501)),
            param(OUTPUT_GRACE_MS, 30000),
        ]
        .join(" ");
        assert_eq!(find(&line, HOSTNAME), Some("box"));
        assert_eq!(find(&line, CHANNEL), Some("vsock:1024"));
        assert_eq!(find(&line, POWEROFF), Some("port:0x501"));
        assert_eq!(find(&line, OUTPUT_GRACE_MS), Some("30000"));
        // A key that is a prefix of another does not match it.
        assert_eq!(find("sandbox.netx=1", NET), None);
        assert_eq!(find("", CA), None);
    }

    #[test]
    fn mounts_round_trip_any_path() {
        let list = [("sbxfs0", "/workspace"), ("sbxfs1", "/home/a b,c:d/é")];
        let line = param(MOUNTS, mounts(list));
        assert!(!line.contains(' '));
        let parsed = parse_mounts(find(&line, MOUNTS).unwrap()).unwrap();
        assert_eq!(
            parsed,
            list.map(|(t, p)| (t.to_string(), p.to_string())).to_vec()
        );
        assert_eq!(parse_mounts("tag"), None);
        assert_eq!(parse_mounts("tag:2"), None);
        assert_eq!(parse_mounts("tag:zz"), None);
        assert_eq!(parse_mounts(":2f"), None);
    }
}
