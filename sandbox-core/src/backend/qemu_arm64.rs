//! arm64 guests under QEMU's arm64 emulator (`qemu-system-aarch64`, TCG):
//! the machine the HVF backend builds on a Mac, emulated on any Linux host.
//!
//! QEMU runs the `virt` machine with the device tree `sandbox-vmm-hvf`
//! writes for Hypervisor.framework (so this backend checks that blob), and
//! every virtio device is ours, served over vhost-user sockets exactly as
//! for UML: QEMU's `vhost-user-*` devices sit on the `virt` machine's
//! virtio-mmio transports that our device tree names, and guest memory is
//! a shared memfd the device threads map. It exists to verify the arm64
//! kernel, agent and images end to end on x86_64 hosts; emulation makes it
//! slow (seconds to boot), and it has no network yet.

use std::io;
use std::os::unix::net::{UnixListener, UnixStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use sandbox_protocol::{cmdline, AGENT_VSOCK_PORT};
use sandbox_virtio::block::Block;
use sandbox_virtio::vhost_user::{self, Served};
use sandbox_virtio::vsock::{Vsock, VsockConnector};
use sandbox_virtio::{ConsoleLog, VirtioDevice};
use sandbox_vmm_hvf::layout::Layout;

use super::{Machine, MachineSpec};
use crate::{artifacts, Error};

/// The emulator binary (Debian's `qemu-system-arm`).
pub(super) const QEMU: &str = "qemu-system-aarch64";
const CONSOLE_LOG_BYTES: usize = 256 << 10;
const GUEST_CID: u64 = 3;
/// Queue size of virtio-fs queues (our device's maximum).
const FS_QUEUE_SIZE: u16 = 256;

static NEXT_ID: AtomicU64 = AtomicU64::new(0);

/// Whether the emulator runs here; the error says what to install.
pub(super) fn probe() -> Result<(), String> {
    match Command::new(QEMU)
        .arg("--version")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
    {
        Ok(s) if s.success() => Ok(()),
        Ok(s) => Err(format!("`{QEMU} --version` failed ({s})")),
        Err(e) => Err(format!(
            "{QEMU} cannot run ({e}); install Debian's qemu-system-arm"
        )),
    }
}

fn host(what: impl Into<String>) -> impl FnOnce(io::Error) -> Error {
    let what = what.into();
    move |e| Error::Protocol(format!("{what}: {e}"))
}

/// One device on one of `virt`'s virtio-mmio transports.
struct Slot {
    /// QEMU's device type.
    qemu_device: &'static str,
    /// Extra `-device` properties.
    props: String,
    /// The vhost-user socket QEMU connects to (none for a device QEMU
    /// emulates itself).
    socket: Option<PathBuf>,
}

pub(super) fn start(spec: MachineSpec) -> Result<Box<dyn Machine>, Error> {
    super::arm64::check_image(spec.rootfs.image(), "BackendKind::QemuArm64")?;
    if spec.network.is_some() {
        return Err(Error::Unsupported {
            what: "network",
            backend: "qemu-arm64",
            why: "the emulated arm64 backend has no network device yet; boot without .network()"
                .into(),
        });
    }
    let kernel = artifacts::manifest_path("kernel-arm64", "arm64 kernel")?;
    let n = NEXT_ID.fetch_add(1, Ordering::Relaxed);
    let id = format!("sbx-a64-{}-{n}", std::process::id());
    let tmp = std::env::temp_dir();
    let workdir = sandbox_vmm_uml::workdir::create(&tmp, &id)
        .map_err(host(format!("creating {}", tmp.join(&id).display())))?;
    let (vsock, connector) = Vsock::new(GUEST_CID).map_err(host("creating the vsock device"))?;
    let mut m = QemuMachine {
        id,
        qemu: None,
        workdir,
        served: Vec::new(),
        counters: Vec::new(),
        vsock: connector,
        console: ConsoleLog::new(CONSOLE_LOG_BYTES),
        log_thread: None,
    };
    let root = spec.rootfs.open(Some(spec.events.clone()))?;
    let read_only = root.read_only();
    let mut slots = vec![m.serve("blk", Block::new(root, "sandbox-root"), "vhost-user-blk")?];
    for (name, block) in super::data_disks(&spec)? {
        slots.push(m.serve(&name, block, "vhost-user-blk")?);
    }
    let mounts_param = crate::mount::agent_param(&spec.mounts);
    for (i, mount) in spec.mounts.into_iter().enumerate() {
        let mut slot = match mount.served {
            crate::mount::Served::Device(d, _) => {
                m.serve(&format!("fs{i}"), d, "vhost-user-fs-device")?
            }
            crate::mount::Served::External(socket) => Slot {
                qemu_device: "vhost-user-fs-device",
                props: String::new(),
                socket: Some(socket),
            },
        };
        // QEMU's default (1024) is past our device's queue size.
        slot.props = format!(",tag={},queue-size={}", mount.tag, FS_QUEUE_SIZE);
        slots.push(slot);
    }
    slots.push(m.serve("vsock", vsock, "vhost-user-vsock-device")?);
    // QEMU 7.2's vhost-user-rng hands the backend the transport's feature
    // bits unfiltered (indirect descriptors, event index), which our rng
    // does not offer and refuses; QEMU's own virtio-rng feeds the guest
    // host entropy instead.
    slots.push(Slot {
        qemu_device: "virtio-rng-device",
        props: String::new(),
        socket: None,
    });

    let layout = Layout::new(spec.cpus, u64::from(spec.memory_mib), slots.len())
        .map_err(|e| Error::InvalidConfig(e.to_string()))?;
    // Emulated guests are slow: output pumps get time to drain.
    let mut extra = vec![cmdline::param(cmdline::OUTPUT_GRACE_MS, 30_000)];
    extra.extend(mounts_param);
    let bootargs = super::arm64::bootargs(read_only, &spec.hostname, &extra);
    let dtb = m.workdir.join("virt.dtb");
    let blob = sandbox_vmm_hvf::fdt::device_tree(&layout, &bootargs)
        .map_err(|e| Error::InvalidConfig(format!("device tree: {e}")))?;
    std::fs::write(&dtb, blob).map_err(host(format!("writing {}", dtb.display())))?;
    let cmd = command(&kernel, &dtb, &layout, &slots);
    m.launch(cmd)?;
    Ok(Box::new(m))
}

/// The QEMU command line: `virt` with GICv3, guest RAM in a shared memfd
/// (the vhost-user device threads map it), our device tree, and each
/// device pinned to the transport the tree describes
/// (`virtio-mmio-bus.N` is the transport at `0x0a00_0000 + N * 0x200`).
fn command(kernel: &Path, dtb: &Path, layout: &Layout, slots: &[Slot]) -> Command {
    let mib = layout.ram_bytes() >> 20;
    let mut cmd = Command::new(QEMU);
    cmd.args(["-M", "virt,gic-version=3,memory-backend=mem"])
        .args(["-cpu", "max", "-accel", "tcg"])
        .args(["-smp", &layout.cpus().to_string()])
        .args(["-m", &format!("{mib}M")])
        .args([
            "-object",
            &format!("memory-backend-memfd,id=mem,size={mib}M,share=on"),
        ])
        // Modern (virtio 1.x) transports: vhost-user needs VERSION_1.
        .args(["-global", "virtio-mmio.force-legacy=false"])
        .args(["-nographic", "-nodefaults", "-no-reboot", "-no-user-config"])
        .args(["-serial", "stdio", "-monitor", "none"])
        .arg("-kernel")
        .arg(kernel)
        .arg("-dtb")
        .arg(dtb);
    for (i, slot) in slots.iter().enumerate() {
        let mut device = format!("{},bus=virtio-mmio-bus.{i}{}", slot.qemu_device, slot.props);
        if let Some(socket) = &slot.socket {
            cmd.arg("-chardev")
                .arg(format!("socket,id=c{i},path={}", socket.display()));
            device.push_str(&format!(",chardev=c{i}"));
        }
        cmd.arg("-device").arg(device);
    }
    cmd
}

/// A running emulated arm64 guest. Dropping it kills QEMU and cleans up.
struct QemuMachine {
    id: String,
    qemu: Option<Child>,
    workdir: PathBuf,
    served: Vec<Served>,
    counters: Vec<(String, sandbox_virtio::CounterReader)>,
    vsock: VsockConnector,
    console: ConsoleLog,
    log_thread: Option<JoinHandle<Result<(), sandbox_thread::Panicked>>>,
}

impl QemuMachine {
    fn serve(
        &mut self,
        name: &str,
        device: impl VirtioDevice + 'static,
        qemu_device: &'static str,
    ) -> Result<Slot, Error> {
        let socket = self.workdir.join(format!("{name}.sock"));
        let listener =
            UnixListener::bind(&socket).map_err(host(format!("binding {}", socket.display())))?;
        if let Some(reader) = device.counters() {
            self.counters.push((name.to_string(), reader));
        }
        let served = vhost_user::serve(name, listener, device)
            .map_err(host(format!("serving the {name} device")))?;
        self.served.push(served);
        Ok(Slot {
            qemu_device,
            props: String::new(),
            socket: Some(socket),
        })
    }

    fn launch(&mut self, mut cmd: Command) -> Result<(), Error> {
        let (reader, writer) = io::pipe().map_err(host("creating the console pipe"))?;
        let writer2 = writer
            .try_clone()
            .map_err(host("creating the console pipe"))?;
        cmd.stdin(Stdio::null()).stdout(writer).stderr(writer2);
        cmd.process_group(0);
        // SAFETY: prctl in the forked child before exec; async-signal-safe.
        unsafe {
            cmd.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd.spawn().map_err(host(format!("starting {QEMU}")))?;
        // `cmd` holds the pipe's write ends: drop it so the console thread
        // sees end of file when QEMU exits.
        drop(cmd);
        self.qemu = Some(child);
        let log = self.console.clone();
        self.log_thread = Some(
            sandbox_thread::spawn(
                "qemu-console",
                Some(&sandbox_vmm_uml::seccomp::CONSOLE),
                move || log.capture(reader),
            )
            .map_err(host("starting the console thread"))?,
        );
        Ok(())
    }

    fn try_wait(&mut self) -> Option<std::process::ExitStatus> {
        self.qemu.as_mut().and_then(|c| c.try_wait().ok().flatten())
    }
}

impl Machine for QemuMachine {
    fn id(&self) -> String {
        self.id.clone()
    }

    fn connect_control(&mut self, timeout: Duration) -> io::Result<UnixStream> {
        let vsock = self.vsock.clone();
        vsock.connect_when_listening(AGENT_VSOCK_PORT, timeout, Duration::from_millis(20), || {
            self.try_wait()
                .map(|status| format!("{QEMU} exited ({status})"))
        })
    }

    fn console_tail(&self, lines: usize) -> String {
        self.console.tail(lines)
    }

    fn power_off_timeout(&self) -> Duration {
        // An emulated guest syncs and powers off slowly.
        Duration::from_secs(30)
    }

    fn wait_exit(&mut self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if self.try_wait().is_some() {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.qemu.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        for s in self.served.drain(..) {
            s.stop();
        }
        if let Some(t) = self.log_thread.take() {
            let _ = t.join();
        }
        let _ = std::fs::remove_dir_all(&self.workdir);
    }

    fn stop_reason(&mut self) -> Option<crate::StopReason> {
        use crate::StopReason;
        use std::os::unix::process::ExitStatusExt;
        let console = self.console.tail(40);
        if let Some(line) = crate::stop::panic_line(&console) {
            return Some(StopReason::Panic(line));
        }
        let status = self.try_wait()?;
        Some(if console.contains("reboot: Restarting system") {
            // `-no-reboot` turns a guest reboot into QEMU's exit.
            StopReason::Reboot
        } else if let Some(sig) = status.signal() {
            StopReason::Crash(format!("{QEMU} was killed by signal {sig}"))
        } else if !status.success() {
            StopReason::Crash(format!("{QEMU} exited with {status}"))
        } else {
            StopReason::PowerOff
        })
    }

    fn device_counters(&self) -> Vec<(String, sandbox_virtio::DeviceCounters)> {
        sandbox_virtio::counters::read_named(&self.counters)
    }

    fn console_dropped_bytes(&self) -> u64 {
        self.console.dropped_bytes()
    }

    fn pause(&mut self) -> Result<(), Error> {
        Err(no_pause("pause"))
    }

    fn resume(&mut self) -> Result<(), Error> {
        Err(no_pause("resume"))
    }
}

impl Drop for QemuMachine {
    fn drop(&mut self) {
        self.kill();
    }
}

fn no_pause(what: &'static str) -> Error {
    Error::Unsupported {
        what,
        backend: "qemu-arm64",
        why: "the emulated arm64 backend verifies arm64 guests; pause and snapshots need the \
              KVM backend (BackendKind::Kvm)"
            .into(),
    }
}
