//! Environment facts: what an agent should know about the machine it
//! drives, as `{source, topic, relation, value}` triples.

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
    /// Facts known from the definition and the image, without booting.
    pub fn environment_facts(&self) -> Vec<Fact> {
        let c = FactSource::Config;
        let image = self.image();
        let mut facts = vec![
            fact(c, "image", "is", image.name.clone()),
            fact(c, "arch", "is", image.arch.clone()),
            fact(
                c,
                "rootfs",
                "write_mode",
                "ephemeral: writes stay in memory and vanish at shutdown",
            ),
            fact(
                c,
                "network",
                "egress",
                "none: the guest has no network interface",
            ),
        ];
        for (k, v) in &image.facts {
            facts.push(fact(c, k, "is", v.clone()));
        }
        facts
    }
}

/// Prints `key value` lines for the facts observed in the guest.
const PROBE: &str = r#"
echo "kernel $(uname -sr)"
if [ -r /etc/os-release ]; then . /etc/os-release; echo "distro ${PRETTY_NAME:-$ID}"; fi
echo "shell ${SHELL:-$(command -v bash || command -v sh)}"
for c in "$@"; do
  if command -v "$c" >/dev/null 2>&1; then echo "present $c"; else echo "missing $c"; fi
done
"#;

impl Vm {
    /// Facts observed in the running guest: kernel, distro (from
    /// `/etc/os-release`), shell, and which of [`PROBED_COMMANDS`] exist.
    pub async fn environment_facts(&self) -> Result<Vec<Fact>, Error> {
        let out = self
            .command("sh")
            .args(["-c", PROBE, "probe"])
            .args(PROBED_COMMANDS)
            .exec()
            .await?;
        let g = FactSource::Guest;
        let text = String::from_utf8_lossy(&out.stdout);
        Ok(text
            .lines()
            .filter_map(|line| {
                let (key, value) = line.split_once(' ')?;
                Some(match key {
                    "present" | "missing" => fact(g, "command", key, value),
                    topic => fact(g, topic, "is", value),
                })
            })
            .collect())
    }
}
