//! Environment facts: what an agent should know about the machine it
//! drives, as `{source, topic, relation, value}` triples.

mod os_release;

use sandbox_rootfs::WriteMode;

use crate::{Error, Sandbox, Vm};

/// Where a fact comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FactSource {
    /// The sandbox definition and the image's recorded facts.
    Config,
    /// Observed inside a running guest.
    Guest,
}

/// One fact, e.g. `(guest, "command", "present", "curl")`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Fact {
    /// Where it comes from.
    pub source: FactSource,
    /// What it is about: `distro`, `shell`, `command`, `rootfs`, ...
    pub topic: String,
    /// How the value relates to the topic: `is`, `present`, `missing`, ...
    pub relation: String,
    /// The value.
    pub value: String,
}

fn fact(source: FactSource, topic: &str, relation: &str, value: impl Into<String>) -> Fact {
    Fact {
        source,
        topic: topic.into(),
        relation: relation.into(),
        value: value.into(),
    }
}

/// Commands whose presence is reported by [`Vm::environment_facts`].
pub const PROBED_COMMANDS: &[&str] = &[
    "sh", "bash", "ls", "cat", "grep", "sed", "awk", "find", "tar", "gzip", "curl", "wget", "git",
    "python3", "pip3", "node", "npm", "jq", "make", "gcc", "apt-get", "apk", "ps", "ip",
    "iptables", "docker",
];

impl Sandbox {
    /// Facts known from the definition and the image, without booting:
    /// the image, the root's write mode (`rootfs write_mode` is
    /// `read-only`, `ephemeral`, `persistent` or `cow`, with the ephemeral
    /// budget or the overlay path), the network egress mode (`none`, or
    /// `policy` with the guest's address; never a secret), data disks, and
    /// the image's recorded facts.
    pub fn environment_facts(&self) -> Vec<Fact> {
        let c = FactSource::Config;
        let image = self.image();
        let rootfs = self.rootfs();
        let mode = rootfs.write_mode();
        let mut facts = vec![
            fact(c, "image", "is", image.name.clone()),
            fact(c, "arch", "is", image.arch.clone()),
            fact(c, "rootfs", "write_mode", mode.name()),
            fact(c, "rootfs", "described_as", rootfs.describe()),
        ];
        match &mode {
            WriteMode::Ephemeral { max_dirty_bytes } => facts.push(fact(
                c,
                "rootfs",
                "max_dirty_bytes",
                max_dirty_bytes.to_string(),
            )),
            WriteMode::Persistent { path } => facts.push(fact(
                c,
                "rootfs",
                "overlay_path",
                path.display().to_string(),
            )),
            WriteMode::ReadOnly | WriteMode::Cow => {}
        }
        match self.network_options() {
            None => facts.push(fact(c, "network", "egress", "none")),
            Some(net) => {
                let n = &net.config;
                facts.extend([
                    fact(c, "network", "egress", "policy"),
                    fact(
                        c,
                        "network",
                        "described_as",
                        "default deny: every new flow is decided by the host's policy; \
                         DNS is answered by the host; HTTPS to granted names is \
                         intercepted with a per-VM CA the guest trusts",
                    ),
                    fact(
                        c,
                        "network",
                        "guest_address",
                        format!("{}/{}", n.guest_ip, n.prefix_len),
                    ),
                    fact(c, "network", "resolver", n.dns_ip.to_string()),
                ]);
            }
        }
        for (i, disk) in self.data_disks().iter().enumerate() {
            let dev = format!("/dev/vd{}", char::from(b'b' + i as u8));
            let what = match disk {
                crate::DataDisk::Rootfs(r) => format!("{dev}: {}", r.describe()),
                crate::DataDisk::VhostUser(_) => format!("{dev}: external vhost-user-blk"),
            };
            facts.push(fact(c, "disk", "attached", what));
        }
        for (k, v) in &image.facts {
            facts.push(fact(c, k, "is", v.clone()));
        }
        facts
    }
}

/// Prints `key value` lines for the facts observed by running a shell:
/// the shell and which commands exist (the names are ours, passed as
/// arguments; nothing of the guest's files is evaluated).
const PROBE: &str = r#"
echo "shell ${SHELL:-$(command -v bash || command -v sh)}"
for c in "$@"; do
  if command -v "$c" >/dev/null 2>&1; then echo "present $c"; else echo "missing $c"; fi
done
"#;

/// Package managers, by the command that names them.
const PACKAGE_MANAGERS: &[&str] = &["apt-get", "apk", "dnf", "yum", "zypper", "pacman"];

impl Vm {
    /// Facts observed in the running guest: kernel, distro (pretty name,
    /// `id` and `version`, parsed from `/etc/os-release` as data), package
    /// manager, how `/` is mounted (`rw` or `ro`), shell, and which of
    /// [`PROBED_COMMANDS`] exist.
    pub async fn environment_facts(&self) -> Result<Vec<Fact>, Error> {
        let g = FactSource::Guest;
        let fs = self.fs();
        let text = |b: Vec<u8>| String::from_utf8_lossy(&b).trim().to_string();
        let mut facts = Vec::new();
        let ostype = fs.read_file("/proc/sys/kernel/ostype").await.map(text);
        let release = fs.read_file("/proc/sys/kernel/osrelease").await.map(text);
        if let (Ok(t), Ok(r)) = (ostype, release) {
            facts.push(fact(g, "kernel", "is", clean(&format!("{t} {r}"))));
        }
        if let Ok(b) = fs.read_file("/etc/os-release").await {
            let pairs = os_release::parse(&String::from_utf8_lossy(&b));
            let get = |k| os_release::get(&pairs, k).map(clean);
            if let Some(name) = get("PRETTY_NAME")
                .or_else(|| get("NAME"))
                .or_else(|| get("ID"))
            {
                facts.push(fact(g, "distro", "is", name));
            }
            if let Some(id) = get("ID") {
                facts.push(fact(g, "distro", "id", id));
            }
            if let Some(v) = get("VERSION_ID") {
                facts.push(fact(g, "distro", "version", v));
            }
        }
        if let Ok(b) = fs.read_file("/proc/self/mounts").await {
            if let Some(mode) = root_mount_mode(&String::from_utf8_lossy(&b)) {
                facts.push(fact(g, "rootfs", "mounted", mode));
            }
        }
        let out = self
            .command("sh")
            .args(["-c", PROBE, "probe"])
            .args(PROBED_COMMANDS)
            .args(
                PACKAGE_MANAGERS
                    .iter()
                    .filter(|p| !PROBED_COMMANDS.contains(p)),
            )
            .exec()
            .await?;
        let mut manager = None;
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            let Some((key, value)) = line.split_once(' ') else {
                continue;
            };
            if key == "present" && PACKAGE_MANAGERS.contains(&value) && manager.is_none() {
                manager = Some(value.trim_end_matches("-get").to_string());
            }
            match key {
                "present" | "missing" if PROBED_COMMANDS.contains(&value) => {
                    facts.push(fact(g, "command", key, value))
                }
                "shell" => facts.push(fact(g, "shell", "is", clean(value))),
                _ => {}
            }
        }
        facts.push(fact(
            g,
            "package_manager",
            "is",
            manager.unwrap_or_else(|| "none".into()),
        ));
        Ok(facts)
    }
}

/// `s` without control characters (a fact is one line).
fn clean(s: &str) -> String {
    s.chars().filter(|c| !c.is_control()).collect()
}

/// `rw` or `ro` for the last mount of `/` in a mounts table.
fn root_mount_mode(mounts: &str) -> Option<&'static str> {
    mounts
        .lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let (_, target, _, opts) = (f.next()?, f.next()?, f.next()?, f.next()?);
            (target == "/").then_some(opts)
        })
        .next_back()
        .map(|opts| {
            if opts.split(',').any(|o| o == "ro") {
                "ro"
            } else {
                "rw"
            }
        })
}

#[cfg(test)]
mod tests {
    use super::root_mount_mode;

    #[test]
    fn the_last_root_mount_decides() {
        let m = "rootfs / rootfs rw 0 0\n/dev/vda / ext4 ro,relatime 0 0\nproc /proc proc rw 0 0\n";
        assert_eq!(root_mount_mode(m), Some("ro"));
        assert_eq!(root_mount_mode("/dev/vda / ext4 rw 0 0\n"), Some("rw"));
        assert_eq!(root_mount_mode("proc /proc proc rw 0 0\n"), None);
    }
}
