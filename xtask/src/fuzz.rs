//! Builds the cargo-fuzz targets and runs each briefly.

use std::process::Command;

use crate::cache::{self, step};
use crate::Result;

/// Seconds each fuzz target runs in CI.
pub const CI_SECONDS: u32 = 20;

/// Installs cargo-fuzz if missing, builds every target, runs each for a
/// short while. The stable toolchain is the only one here, so the nightly
/// flags cargo-fuzz passes are enabled with `RUSTC_BOOTSTRAP=1`.
pub fn build_and_run(seconds: u32) -> Result<()> {
    cache::ensure_cargo_tool("fuzz")?;
    let fuzz_dir = cache::repo().join("fuzz");
    let list = Command::new(env!("CARGO"))
        .args(["fuzz", "list"])
        .current_dir(&fuzz_dir)
        .output()
        .map_err(|e| e.to_string())?;
    let targets: Vec<String> = String::from_utf8_lossy(&list.stdout)
        .lines()
        .map(str::to_string)
        .collect();
    seed_qcow2(&fuzz_dir)?;
    seed_net(&fuzz_dir)?;
    crate::fuzz_seeds::virtio(&fuzz_dir)?;
    crate::fuzz_seeds::oci(&fuzz_dir)?;
    step(&format!("{} fuzz targets, {seconds} s each", targets.len()));
    for t in &targets {
        step(&format!("fuzz {t}: build and run {seconds}s"));
        let status = Command::new(env!("CARGO"))
            .args([
                "fuzz",
                "run",
                t,
                "--",
                &format!("-max_total_time={seconds}"),
            ])
            .env("RUSTC_BOOTSTRAP", "1")
            .current_dir(&fuzz_dir)
            .status()
            .map_err(|e| e.to_string())?;
        if !status.success() {
            return Err(format!("fuzz target {t} failed"));
        }
    }
    Ok(())
}

/// Seeds the qcow2 target with real images (plain and compressed, small
/// clusters), so the fuzzer starts past the magic and header checks.
fn seed_qcow2(fuzz_dir: &std::path::Path) -> Result<()> {
    let dir = fuzz_dir.join("corpus/qcow2_image");
    std::fs::create_dir_all(&dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    let raw = dir.join("seed.raw");
    let pattern: Vec<u8> = (0..64u32 << 10).map(|i| (i % 251) as u8).collect();
    std::fs::write(&raw, pattern).map_err(|e| e.to_string())?;
    for (name, args) in [
        ("seed-plain.qcow2", vec!["-o", "cluster_size=512"]),
        (
            "seed-compressed.qcow2",
            vec!["-c", "-o", "cluster_size=512"],
        ),
    ] {
        cache::run(
            Command::new("qemu-img")
                .args(["convert", "-q", "-f", "raw", "-O", "qcow2"])
                .args(args)
                .arg(&raw)
                .arg(dir.join(name)),
        )?;
    }
    std::fs::remove_file(&raw).map_err(|e| e.to_string())
}

/// Seeds the network targets with well-formed guest traffic (ARP, a TCP
/// SYN, a DNS query over UDP, HTTP heads), so the fuzzer starts past the
/// header checks.
fn seed_net(fuzz_dir: &std::path::Path) -> Result<()> {
    let write = |target: &str, name: &str, bytes: &[u8]| -> Result<()> {
        let dir = fuzz_dir.join("corpus").join(target);
        std::fs::create_dir_all(&dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
        std::fs::write(dir.join(name), bytes).map_err(|e| e.to_string())
    };
    let dns = dns_query(b"api.example.test");
    write("net_dns", "seed-query", &dns)?;
    let guest = [10, 0, 2, 15];
    write("net_frames", "seed-arp", &arp_request(guest, [10, 0, 2, 2]))?;
    // Port 40000 -> 80, seq 1, header length 20, SYN, window 65535.
    let syn = [
        0x9c, 0x40, 0, 80, 0, 0, 0, 1, 0, 0, 0, 0, 0x50, 0x02, 0xff, 0xff, 0, 0, 0, 0,
    ];
    write(
        "net_frames",
        "seed-syn",
        &ipv4_frame(guest, [203, 0, 113, 5], 6, &syn),
    )?;
    let mut udp = vec![0xc3, 0x50, 0, 53, 0, 0, 0, 0];
    udp.extend_from_slice(&dns);
    let len = udp.len() as u16;
    udp[4..6].copy_from_slice(&len.to_be_bytes());
    write(
        "net_frames",
        "seed-dns",
        &ipv4_frame(guest, [10, 0, 2, 3], 17, &udp),
    )?;
    write(
        "net_http1_framing",
        "seed-chunked",
        b"\x00POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\nGET / HTTP/1.1\r\nContent-Length: 2\r\n\r\nab",
    )?;
    // A TLS 1.3 ClientHello naming a.example.
    write(
        "net_tls_hello",
        "seed-client-hello",
        b"\x16\x03\x01\x00\x48\x01\x00\x00\x44\x03\x03\x07\x07\x07\x07\x07\x07\x07\x07\x07\x07\x07\x07\x07\x07\x07\x07\x07\x07\x07\x07\x07\x07\x07\x07\x07\x07\x07\x07\x07\x07\x07\x07\x00\x00\x02\x13\x01\x01\x00\x00\x19\x00\x00\x00\x0e\x00\x0c\x00\x00\x09a.example\x00\x2b\x00\x03\x02\x03\x04",
    )
}

fn checksum(data: &[u8]) -> u16 {
    let mut sum: u32 = data
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// An Ethernet + IPv4 frame around a TCP (6) or UDP (17) segment whose
/// checksum field is filled in here.
fn ipv4_frame(src: [u8; 4], dst: [u8; 4], proto: u8, l4: &[u8]) -> Vec<u8> {
    let mut seg = l4.to_vec();
    let mut pseudo = [
        &src[..],
        &dst[..],
        &[0, proto],
        &(seg.len() as u16).to_be_bytes(),
    ]
    .concat();
    pseudo.extend_from_slice(&seg);
    let at = if proto == 6 { 16 } else { 6 };
    seg[at..at + 2].copy_from_slice(&checksum(&pseudo).to_be_bytes());
    let mut ip = vec![0x45, 0, 0, 0, 0, 1, 0x40, 0, 64, proto, 0, 0];
    ip[2..4].copy_from_slice(&((20 + seg.len()) as u16).to_be_bytes());
    ip.extend_from_slice(&src);
    ip.extend_from_slice(&dst);
    let c = checksum(&ip);
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    let mut f = vec![
        0x02, 0x5b, 0, 0, 0, 0x02, 0x02, 0x5b, 0, 0, 0, 0x0f, 0x08, 0x00,
    ];
    f.extend_from_slice(&ip);
    f.extend_from_slice(&seg);
    f
}

fn arp_request(sender: [u8; 4], target: [u8; 4]) -> Vec<u8> {
    let mut f = vec![0xff; 6];
    f.extend_from_slice(&[
        0x02, 0x5b, 0, 0, 0, 0x0f, 0x08, 0x06, 0, 1, 0x08, 0, 6, 4, 0, 1,
    ]);
    f.extend_from_slice(&[0x02, 0x5b, 0, 0, 0, 0x0f]);
    f.extend_from_slice(&sender);
    f.extend_from_slice(&[0; 6]);
    f.extend_from_slice(&target);
    f
}

fn dns_query(name: &[u8]) -> Vec<u8> {
    let mut m = vec![0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
    for label in name.split(|b| *b == b'.') {
        m.push(label.len() as u8);
        m.extend_from_slice(label);
    }
    m.extend_from_slice(&[0, 0, 1, 0, 1]);
    m
}
