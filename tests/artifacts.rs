//! The artifacts `cargo xtask build` produced: kernel configs carry every
//! option the guests rely on, the agent is fully static.

use std::collections::HashMap;
use std::path::PathBuf;

fn cache() -> PathBuf {
    std::env::var_os("SANDBOX_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(std::env::var("HOME").unwrap()).join(".cache/sandbox"))
}

fn manifest(name: &str) -> serde_json::Value {
    sandbox::ensure_artifacts().expect("building what the quickstart left out");
    let path = cache().join("manifest").join(format!("{name}.json"));
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e}; run `cargo xtask build`", path.display()));
    serde_json::from_str(&text).unwrap()
}

fn kernel_config(flavor: &str) -> HashMap<String, String> {
    let path = manifest(&format!("kernel-{flavor}"))["config"]
        .as_str()
        .unwrap()
        .to_string();
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    text.lines()
        .filter_map(|l| {
            if let Some(name) = l
                .strip_prefix("# ")
                .and_then(|l| l.strip_suffix(" is not set"))
            {
                return Some((name.to_string(), "n".to_string()));
            }
            let (k, v) = l.split_once('=')?;
            Some((k.to_string(), v.to_string()))
        })
        .collect()
}

/// Built in by both flavors: virtio, file systems, containers, Docker's
/// bridge networking with iptables-nft.
const COMMON: &[&str] = &[
    "VIRTIO",
    "VIRTIO_BLK",
    "VIRTIO_NET",
    "VIRTIO_CONSOLE",
    "HW_RANDOM_VIRTIO",
    "VIRTIO_FS",
    "VSOCKETS",
    "VIRTIO_VSOCKETS",
    "EXT4_FS",
    "OVERLAY_FS",
    "TMPFS",
    "DEVTMPFS",
    "UNIX98_PTYS",
    "NAMESPACES",
    "UTS_NS",
    "IPC_NS",
    "USER_NS",
    "PID_NS",
    "NET_NS",
    "CGROUPS",
    "MEMCG",
    "CGROUP_PIDS",
    "CGROUP_DEVICE",
    "SECCOMP",
    "SECCOMP_FILTER",
    "NETFILTER",
    "NF_TABLES",
    "NF_TABLES_INET",
    "NFT_COMPAT",
    "NFT_NAT",
    "NFT_MASQ",
    "NFT_CT",
    "NF_CONNTRACK",
    "NF_NAT",
    "NETFILTER_XTABLES",
    "NETFILTER_XT_MATCH_ADDRTYPE",
    "NETFILTER_XT_MATCH_CONNTRACK",
    "NETFILTER_XT_MATCH_COMMENT",
    "NETFILTER_XT_TARGET_MASQUERADE",
    "IP_NF_IPTABLES",
    "IP_NF_FILTER",
    "IP_NF_NAT",
    "BRIDGE",
    "BRIDGE_NETFILTER",
    "VETH",
];

fn assert_options(flavor: &str, yes: &[&str], no: &[&str]) {
    let cfg = kernel_config(flavor);
    let wrong: Vec<String> = yes
        .iter()
        .filter(|o| cfg.get(&format!("CONFIG_{o}")).map(String::as_str) != Some("y"))
        .map(|o| format!("CONFIG_{o}={:?}", cfg.get(&format!("CONFIG_{o}"))))
        .chain(
            no.iter()
                .filter(|o| cfg.get(&format!("CONFIG_{o}")).is_some_and(|v| v != "n"))
                .map(|o| format!("CONFIG_{o} should be off")),
        )
        .collect();
    assert!(wrong.is_empty(), "{flavor} kernel config: {wrong:#?}");
}

#[test]
fn uml_kernel_config_has_every_required_option() {
    let mut yes = COMMON.to_vec();
    // UML is uniprocessor, so the cpuset controller (SMP only) is absent.
    yes.extend(["VIRTIO_UML", "UML_NET_VECTOR"]);
    // No modules; no guest access to the host's files; no UML block driver.
    assert_options("uml", &yes, &["MODULES", "HOSTFS", "BLK_DEV_UBD"]);
}

#[test]
fn x86_64_kernel_config_has_every_required_option() {
    let mut yes = COMMON.to_vec();
    yes.extend([
        "64BIT",
        "PVH",
        "KVM_GUEST",
        "VIRTIO_MMIO",
        "VIRTIO_MMIO_CMDLINE_DEVICES",
        "SERIAL_8250_CONSOLE",
        "SMP",
        "CPUSETS",
    ]);
    assert_options("x86_64", &yes, &["MODULES"]);
    let vmlinux = manifest("kernel-x86_64")["path"]
        .as_str()
        .unwrap()
        .to_string();
    let bytes = std::fs::read(&vmlinux).unwrap();
    assert_eq!(
        &bytes[..4],
        b"\x7fELF",
        "{vmlinux} is an uncompressed ELF vmlinux"
    );
}

/// Program header types that a fully static executable must not have.
const PT_DYNAMIC: u32 = 2;
const PT_INTERP: u32 = 3;

#[test]
fn guest_agent_is_static_with_no_dynamic_section() {
    let path = manifest("agent")["path"].as_str().unwrap().to_string();
    let elf = std::fs::read(&path).unwrap();
    assert_eq!(&elf[..4], b"\x7fELF");
    assert_eq!(elf[4], 2, "64-bit");
    let u16_at = |o: usize| u16::from_le_bytes([elf[o], elf[o + 1]]) as usize;
    let u64_at = |o: usize| u64::from_le_bytes(elf[o..o + 8].try_into().unwrap()) as usize;
    let (phoff, phentsize, phnum) = (u64_at(0x20), u16_at(0x36), u16_at(0x38));
    assert!(phnum > 0);
    let types: Vec<u32> = (0..phnum)
        .map(|i| {
            let o = phoff + i * phentsize;
            u32::from_le_bytes(elf[o..o + 4].try_into().unwrap())
        })
        .collect();
    assert!(
        !types.contains(&PT_DYNAMIC),
        "{path} has a PT_DYNAMIC segment"
    );
    assert!(
        !types.contains(&PT_INTERP),
        "{path} asks for an interpreter"
    );
    // And no .dynamic section either.
    let (shoff, shentsize, shnum) = (u64_at(0x28), u16_at(0x3a), u16_at(0x3c));
    for i in 0..shnum {
        let o = shoff + i * shentsize;
        let sh_type = u32::from_le_bytes(elf[o + 4..o + 8].try_into().unwrap());
        assert_ne!(sh_type, 6, "{path} has a SHT_DYNAMIC section");
    }
}

#[test]
fn minimal_image_manifest_describes_the_file() {
    let image = sandbox_core::images::builtin("minimal").unwrap();
    assert_eq!(image.arch, "x86_64");
    let bytes = std::fs::read(&image.path).unwrap();
    assert_eq!(bytes.len() as u64, image.size);
    use sha2::Digest;
    assert_eq!(hex::encode(sha2::Sha256::digest(&bytes)), image.sha256);
    // ext4 superblock magic at 1024 + 0x38.
    assert_eq!(&bytes[1024 + 0x38..1024 + 0x3a], &[0x53, 0xef]);
}

/// Runs Docker's own `check-config.sh` (from the `debian:12-docker`
/// image's `docker.io` package) on a built config and returns, per
/// section, the `CONFIG_*` items it reported as not built in.
fn docker_check_config(flavor: &str) -> HashMap<String, Vec<String>> {
    let script = manifest("docker-check-config")["path"]
        .as_str()
        .unwrap()
        .to_string();
    let config = manifest(&format!("kernel-{flavor}"))["config"]
        .as_str()
        .unwrap()
        .to_string();
    let out = std::process::Command::new("bash")
        .arg(&script)
        .arg(&config)
        .env("NO_COLOR", "1")
        .output()
        .unwrap_or_else(|e| panic!("running {script}: {e}"));
    let text = String::from_utf8_lossy(&out.stdout);
    // Strip the script's colour escapes.
    let mut plain = String::new();
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c == 'm' {
                    break;
                }
            }
        } else {
            plain.push(c);
        }
    }
    let mut sections: HashMap<String, Vec<String>> = HashMap::new();
    let mut section = String::new();
    let mut seen = 0;
    for line in plain.lines() {
        if line.ends_with(':') && !line.starts_with(' ') && !line.starts_with('-') {
            section = line.trim_end_matches(':').to_string();
            continue;
        }
        let Some(item) = line.trim_start_matches([' ', '-']).strip_prefix("CONFIG_") else {
            continue;
        };
        seen += 1;
        let (name, state) = item.split_once(": ").unwrap_or((item, ""));
        // Built in only: the guests load no modules.
        if state != "enabled" {
            sections
                .entry(section.clone())
                .or_default()
                .push(format!("{name}: {state}"));
        }
    }
    assert!(
        seen > 40 && plain.contains("Generally Necessary"),
        "{script} printed no config report:\n{plain}"
    );
    sections
}

#[test]
fn docker_check_config_finds_every_generally_necessary_option_built_in() {
    for flavor in ["uml", "x86_64"] {
        let mut missing = docker_check_config(flavor)
            .remove("Generally Necessary")
            .unwrap_or_default();
        // The cpuset controller needs SMP, and UML is uniprocessor: the
        // one item UML cannot have (docs/docker.md).
        if flavor == "uml" {
            missing.retain(|m| !m.starts_with("CPUSETS:"));
        }
        assert!(
            missing.is_empty(),
            "{flavor}: Docker's check-config.sh reports {missing:#?}"
        );
    }
}

/// What Docker's default bridge network needs with iptables-nft (the
/// bookworm default) beyond check-config's "Generally Necessary" list:
/// iptables rules become nftables expressions through `nft_compat`.
const DOCKER_BRIDGE_NFT: &[&str] = &[
    "NF_TABLES",
    "NF_TABLES_INET",
    "NF_TABLES_IPV4",
    "NFT_COMPAT",
    "NFT_NAT",
    "NFT_MASQ",
    "NFT_CT",
    "NETFILTER_XT_NAT",
    "NETFILTER_XT_MATCH_COMMENT",
    "NETFILTER_XT_MATCH_MULTIPORT",
    "NETFILTER_XT_MARK",
    "OVERLAY_FS",
    "CGROUP_PIDS",
    "MEMCG",
    "BLK_CGROUP",
    "CGROUP_BPF",
    "USER_NS",
    "SECCOMP_FILTER",
];

#[test]
fn docker_bridge_networking_with_iptables_nft_is_built_in() {
    for flavor in ["uml", "x86_64"] {
        assert_options(flavor, DOCKER_BRIDGE_NFT, &[]);
    }
}
