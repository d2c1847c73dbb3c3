//! Seeds for the virtio fuzz targets: inputs that reach past the first
//! checks (a valid descriptor chain, an mmio initialization sequence, valid
//! vhost-user message headers), so the fuzzer mutates from there.

use std::path::Path;

use crate::Result;

fn write(fuzz_dir: &Path, target: &str, name: &str, bytes: &[u8]) -> Result<()> {
    let dir = fuzz_dir.join("corpus").join(target);
    std::fs::create_dir_all(&dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    std::fs::write(dir.join(name), bytes).map_err(|e| e.to_string())
}

/// Copies the inputs of fixed crashes (`fuzz/regressions/<target>/`) into
/// the corpora, so every CI run replays them first.
fn regressions(fuzz_dir: &Path) -> Result<()> {
    let root = fuzz_dir.join("regressions");
    let Ok(targets) = std::fs::read_dir(&root) else {
        return Ok(());
    };
    for target in targets.flatten() {
        let name = target.file_name().to_string_lossy().into_owned();
        let inputs = std::fs::read_dir(target.path())
            .map_err(|e| format!("reading {}: {e}", target.path().display()))?;
        for input in inputs.flatten() {
            let bytes = std::fs::read(input.path())
                .map_err(|e| format!("reading {}: {e}", input.path().display()))?;
            let file = format!("regression-{}", input.file_name().to_string_lossy());
            write(fuzz_dir, &name, &file, &bytes)?;
        }
    }
    Ok(())
}

/// Puts one descriptor (`addr`, `len`, `flags`) at the head of the queue
/// whose rings start at `base` (layout of `sandbox_virtio::fuzzing`), and
/// makes it available.
fn one_chain(mem: &mut Vec<u8>, base: usize, addr: u64, len: u32, flags: u16) {
    let need = base + 0x300;
    if mem.len() < need {
        mem.resize(need, 0);
    }
    mem[base..base + 8].copy_from_slice(&addr.to_le_bytes());
    mem[base + 8..base + 12].copy_from_slice(&len.to_le_bytes());
    mem[base + 12..base + 14].copy_from_slice(&flags.to_le_bytes());
    // avail: flags 0, idx 1, ring[0] = 0
    mem[base + 0x100..base + 0x106].copy_from_slice(&[0, 0, 1, 0, 0, 0]);
}

const WRITE: u16 = 2;

fn mmio_init() -> Vec<u8> {
    // (flag, offset/4, value): flag bit 0 = write, bits 1-2 = size (4 bytes).
    let w = |off: u8, v: u32| {
        let mut a = vec![5u8, off / 4];
        a.extend_from_slice(&v.to_le_bytes());
        a
    };
    let r = |off: u8| vec![4u8, off / 4];
    let mut s = Vec::new();
    for part in [
        r(0x00),
        r(0x04),
        r(0x08),
        w(0x70, 1),
        w(0x70, 3),
        w(0x14, 1),
        r(0x10),
        w(0x24, 1),
        w(0x20, 1),
        w(0x70, 0xb),
        r(0x70),
    ] {
        s.extend(part);
    }
    for q in 0..2u32 {
        for part in [
            w(0x30, q),
            r(0x34),
            w(0x38, 16),
            w(0x80, 0x1000 * q),
            w(0x90, 0x1000 * q + 0x100),
            w(0xa0, 0x1000 * q + 0x200),
            w(0x44, 1),
        ] {
            s.extend(part);
        }
    }
    for part in [w(0x70, 0xf), w(0x50, 0), r(0x60), w(0x64, 1), r(0xfc)] {
        s.extend(part);
    }
    // A config-space read (offset 0x100 is beyond one byte's reach / 4).
    s.extend([0u8, 0xff / 4 + 1]);
    s
}

fn vhost_user_session() -> Vec<u8> {
    let msg = |req: u32, payload: &[u8]| {
        let mut m = req.to_le_bytes().to_vec();
        m.extend_from_slice(&1u32.to_le_bytes()); // version 1
        m.extend_from_slice(&(payload.len() as u32).to_le_bytes());
        m.extend_from_slice(payload);
        m
    };
    let mut s = Vec::new();
    s.extend(msg(1, &[])); // GET_FEATURES
    s.extend(msg(3, &[])); // SET_OWNER
    s.extend(msg(15, &[])); // GET_PROTOCOL_FEATURES
    s.extend(msg(2, &(1u64 << 32 | 1 << 30).to_le_bytes())); // SET_FEATURES
    s.extend(msg(17, &[])); // GET_QUEUE_NUM
    let mut state = 0u32.to_le_bytes().to_vec();
    state.extend_from_slice(&256u32.to_le_bytes());
    s.extend(msg(8, &state)); // SET_VRING_NUM
    s.extend(msg(10, &state)); // SET_VRING_BASE
    let mut cfg = 0u32.to_le_bytes().to_vec(); // offset
    cfg.extend_from_slice(&8u32.to_le_bytes()); // size
    cfg.extend_from_slice(&0u32.to_le_bytes()); // flags
    cfg.extend_from_slice(&[0; 8]);
    s.extend(msg(24, &cfg)); // GET_CONFIG
    s
}

/// One FUSE request: the 40-byte in-header (its length first) and `body`.
fn fuse(opcode: u32, unique: u64, node: u64, body: &[u8]) -> Vec<u8> {
    let mut v = Vec::new();
    v.extend_from_slice(&(40 + body.len() as u32).to_le_bytes());
    v.extend_from_slice(&opcode.to_le_bytes());
    v.extend_from_slice(&unique.to_le_bytes());
    v.extend_from_slice(&node.to_le_bytes());
    v.extend_from_slice(&[0; 16]);
    v.extend_from_slice(body);
    v
}

/// A FUSE session: INIT, then lookups, creation, reads and a listing (the
/// layout of `sandbox_virtio::fuzzing::fs_requests`).
fn fuse_session() -> Vec<u8> {
    let words = |w: &[u32]| w.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
    let with_name = |mut head: Vec<u8>, name: &[u8]| {
        head.extend_from_slice(name);
        head
    };
    let mut read_in = 0u64.to_le_bytes().to_vec(); // fh
    read_in.extend_from_slice(&0u64.to_le_bytes()); // offset
    read_in.extend(words(&[4096, 0]));
    read_in.extend_from_slice(&0u64.to_le_bytes()); // lock owner
    read_in.extend(words(&[0, 0]));
    let mut s = Vec::new();
    for m in [
        fuse(26, 1, 0, &words(&[7, 31, 0, 0])), // INIT
        fuse(1, 2, 1, b"file\0"),               // LOOKUP
        fuse(14, 3, 2, &words(&[0, 0])),        // OPEN
        fuse(15, 4, 2, &read_in),               // READ
        fuse(9, 5, 1, &with_name(words(&[0o755, 0]), b"newdir\0")), // MKDIR
        fuse(35, 6, 1, &with_name(words(&[0o101, 0o644, 0, 0]), b"new\0")), // CREATE
        fuse(1, 7, 1, b"..\0"),                 // LOOKUP ..
        fuse(28, 8, 1, &read_in),               // READDIR
    ] {
        s.extend(m);
    }
    s
}

/// Seeds for `oci_documents`: an OCI layout (index, manifest, config, a
/// layer) and a `docker save` manifest, in the target's placeholder form.
pub fn oci(fuzz_dir: &Path) -> Result<()> {
    let config = r#"{"architecture":"amd64","os":"linux","config":{"Env":["A=1"],"Cmd":["sh"]},"rootfs":{"type":"layers","diff_ids":["@3"]}}"#;
    let layout = [
        r#"{"schemaVersion":2,"manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"@1","size":#1,"annotations":{"org.opencontainers.image.ref.name":"app:1"}}]}"#,
        r#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"@2","size":#2},"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"@3","size":#3}]}"#,
        config,
        "layer bytes",
    ];
    write(fuzz_dir, "oci_documents", "seed-layout", &join(&layout))?;
    let docker = [
        r#"D[{"Config":"$1.json","RepoTags":["app:1"],"Layers":["blobs/sha256/$2"]}]"#,
        &config.replace("@3", "@2"),
        "layer bytes",
    ];
    write(fuzz_dir, "oci_documents", "seed-docker", &join(&docker))
}

fn join(parts: &[&str]) -> Vec<u8> {
    let mut v = Vec::new();
    for (i, p) in parts.iter().enumerate() {
        if i > 0 {
            v.push(0xff);
        }
        v.extend_from_slice(p.as_bytes());
    }
    v
}

/// Writes every virtio seed.
pub fn virtio(fuzz_dir: &Path) -> Result<()> {
    let mut rng = Vec::new();
    one_chain(&mut rng, 0, 0x1000, 64, WRITE);
    write(fuzz_dir, "virtio_rng", "seed-request", &rng)?;

    let mut net = Vec::new();
    one_chain(&mut net, 0, 0x2000, 12 + 60, 0); // tx: header + frame
    one_chain(&mut net, 0x800, 0x3000, 2048, WRITE); // rx buffer
    net.resize(0x3000 + 2048, 0);
    net.extend_from_slice(&[0xff; 60]); // the host's frame
    write(fuzz_dir, "virtio_net", "seed-rx-tx", &net)?;

    write(fuzz_dir, "virtio_mmio", "seed-init", &mmio_init())?;
    write(fuzz_dir, "virtio_fs", "seed-session", &fuse_session())?;
    regressions(fuzz_dir)?;
    write(
        fuzz_dir,
        "vhost_user_messages",
        "seed-session",
        &vhost_user_session(),
    )
}
