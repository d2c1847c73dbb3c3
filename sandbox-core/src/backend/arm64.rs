//! What every arm64 backend gives a guest alike: QEMU's emulator on Linux
//! hosts (`qemu_arm64`) and Hypervisor.framework on a Mac (`hvf`) boot the
//! same kernel, agent and images on the same machine layout
//! (`sandbox_vmm_hvf::layout`).

use sandbox_protocol::{cmdline, AGENT_VSOCK_PORT};

use crate::Error;

/// The guest architecture the arm64 backends boot, as images record it.
pub(crate) const ARCH: &str = "aarch64";

/// Refuses an image of another architecture, saying how to get an arm64
/// one; `backend` names the backend in the message.
#[cfg_attr(not(any(target_os = "linux", target_os = "macos")), allow(dead_code))]
pub(crate) fn check_image(image: &crate::Image, backend: &str) -> Result<(), Error> {
    if image.arch == ARCH {
        return Ok(());
    }
    Err(Error::InvalidConfig(format!(
        "image {:?} is built for {:?}; {backend} boots {ARCH} images \
         (images::builtin_arch(\"minimal\", \"{ARCH}\") after `cargo xtask build --arch arm64`)",
        image.name, image.arch
    )))
}

/// The kernel command line: the PL011 console, no reboot on panic, the
/// root on the first virtio-blk device, the agent as init with its vsock
/// channel, and `extra` parameters after them.
#[cfg_attr(not(any(target_os = "linux", target_os = "macos")), allow(dead_code))]
pub(crate) fn bootargs(read_only: bool, hostname: &str, extra: &[String]) -> String {
    let mut args = format!(
        "console=ttyAMA0 panic=-1 {} {} init=/sbin/sandbox-guest {} {}",
        cmdline::ROOT.join(" "),
        if read_only { "ro" } else { "rw" },
        cmdline::param(cmdline::HOSTNAME, hostname),
        cmdline::param(cmdline::CHANNEL, cmdline::vsock_channel(AGENT_VSOCK_PORT)),
    );
    for e in extra {
        args.push(' ');
        args.push_str(e);
    }
    args
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_command_line_boots_the_agent_on_its_channel() {
        let args = bootargs(true, "box", &["x=1".into()]);
        assert!(args.starts_with("console=ttyAMA0 panic=-1 "), "{args}");
        assert!(args.contains(" ro init=/sbin/sandbox-guest "), "{args}");
        for p in cmdline::ROOT {
            assert!(args.contains(p), "{args}");
        }
        assert!(args.ends_with(" x=1"), "{args}");
        assert!(bootargs(false, "box", &[]).contains(" rw init="));
    }
}
