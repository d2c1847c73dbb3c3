//! The qcow2 reader against images written by qemu-img, and against
//! malformed headers.

use std::path::{Path, PathBuf};
use std::process::Command;

use super::*;

pub(super) struct Dir(pub(super) PathBuf);

impl Dir {
    pub(super) fn new(tag: &str) -> Self {
        let d = std::env::temp_dir().join(format!("qcow2-test-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        Self(d)
    }
    pub(super) fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

pub(super) fn run(cmd: &mut Command) {
    let out = cmd
        .output()
        .expect("qemu-img and qemu-io (Debian qemu-utils) are installed");
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// 4 MiB whose sectors carry their own index, with a zero stretch.
fn raw_image(path: &Path) -> Vec<u8> {
    let mut data: Vec<u8> = (0..4u32 << 20)
        .map(|i| ((i / 512) % 251) as u8 ^ (i as u8))
        .collect();
    data[1 << 20..(1 << 20) + (256 << 10)].fill(0);
    std::fs::write(path, &data).unwrap();
    data
}

fn assert_reads_match(img: &mut Qcow2Image, expected: &[u8]) {
    assert_eq!(img.size(), expected.len() as u64);
    let mut whole = vec![0u8; expected.len()];
    img.read_at(0, &mut whole).unwrap();
    assert!(whole == expected, "whole-image read differs");
    for (offset, len) in [
        (0u64, 512usize),
        (511 * 512, 70_000),
        (3 << 20, 1 << 20),
        (4093 * 1024, 3072),
    ] {
        let mut buf = vec![0u8; len];
        img.read_at(offset, &mut buf).unwrap();
        assert!(
            buf == expected[offset as usize..offset as usize + len],
            "range {offset}+{len}"
        );
    }
    assert!(img
        .read_at(expected.len() as u64 - 10, &mut [0u8; 20])
        .is_err());
}

#[test]
fn compressed_images_read_back_exactly() {
    let d = Dir::new("compressed");
    let raw = d.path("raw.img");
    let data = raw_image(&raw);
    for (name, opts) in [
        ("c64k.qcow2", "cluster_size=65536"),
        ("c4k.qcow2", "cluster_size=4096"),
    ] {
        let out = d.path(name);
        run(Command::new("qemu-img")
            .args([
                "convert", "-q", "-f", "raw", "-O", "qcow2", "-c", "-o", opts,
            ])
            .arg(&raw)
            .arg(&out));
        let mut img = Qcow2Image::open(&out).unwrap();
        assert_reads_match(&mut img, &data);
    }
}

#[test]
fn uncompressed_v2_and_v3_images_read_back_exactly() {
    let d = Dir::new("plain");
    let raw = d.path("raw.img");
    let data = raw_image(&raw);
    for (name, compat) in [("v2.qcow2", "compat=0.10"), ("v3.qcow2", "compat=1.1")] {
        let out = d.path(name);
        run(Command::new("qemu-img")
            .args(["convert", "-q", "-f", "raw", "-O", "qcow2", "-o", compat])
            .arg(&raw)
            .arg(&out));
        let mut img = Qcow2Image::open(&out).unwrap();
        assert_eq!(
            img.header().version,
            if compat == "compat=0.10" { 2 } else { 3 }
        );
        assert_reads_match(&mut img, &data);
    }
}

#[test]
fn overlays_read_through_to_their_backing_chain() {
    let d = Dir::new("backing");
    let raw = d.path("raw.img");
    let mut expected = raw_image(&raw);
    run(Command::new("qemu-img")
        .args(["convert", "-q", "-f", "raw", "-O", "qcow2", "-c"])
        .arg(&raw)
        .arg(d.path("base.qcow2")));
    // A relative backing name, resolved next to the overlay.
    run(Command::new("qemu-img")
        .args([
            "create",
            "-q",
            "-f",
            "qcow2",
            "-b",
            "base.qcow2",
            "-F",
            "qcow2",
        ])
        .arg(d.path("top.qcow2")));
    run(Command::new("qemu-io")
        .args([
            "-f",
            "qcow2",
            "-c",
            "write -P 0xab 1048576 65536",
            "-c",
            "write -z 0 4096",
        ])
        .arg(d.path("top.qcow2")));
    expected[1 << 20..(1 << 20) + 65536].fill(0xab);
    expected[..4096].fill(0);
    let mut img = Qcow2Image::open(&d.path("top.qcow2")).unwrap();
    assert_reads_match(&mut img, &expected);
}

fn header_bytes(edit: impl FnOnce(&mut Vec<u8>)) -> Vec<u8> {
    let mut h = vec![0u8; 104];
    h[0..4].copy_from_slice(&header::MAGIC.to_be_bytes());
    h[4..8].copy_from_slice(&3u32.to_be_bytes());
    h[20..24].copy_from_slice(&16u32.to_be_bytes()); // 64 KiB clusters
    h[24..32].copy_from_slice(&(1u64 << 20).to_be_bytes());
    h[36..40].copy_from_slice(&1u32.to_be_bytes());
    h[40..48].copy_from_slice(&65536u64.to_be_bytes());
    h[100..104].copy_from_slice(&104u32.to_be_bytes());
    edit(&mut h);
    h
}

#[test]
fn malformed_headers_are_errors() {
    assert!(Header::parse(&header_bytes(|_| {})).is_ok());
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("short", header_bytes(|h| h.truncate(40))),
        ("magic", header_bytes(|h| h[0] = b'X')),
        ("version", header_bytes(|h| h[7] = 9)),
        ("cluster bits", header_bytes(|h| h[23] = 40)),
        ("encrypted", header_bytes(|h| h[35] = 1)),
        ("corrupt bit", header_bytes(|h| h[79] = 2)),
        (
            "huge L1",
            header_bytes(|h| h[36..40].copy_from_slice(&u32::MAX.to_be_bytes())),
        ),
        ("unaligned L1", header_bytes(|h| h[47] = 1)),
        (
            "L1 too small",
            header_bytes(|h| h[24..32].copy_from_slice(&u64::MAX.to_be_bytes())),
        ),
        (
            "backing name",
            header_bytes(|h| h[16..20].copy_from_slice(&4096u32.to_be_bytes())),
        ),
    ];
    for (what, bytes) in cases {
        assert!(Header::parse(&bytes).is_err(), "{what} should be refused");
    }
}

#[test]
fn truncated_files_and_backing_loops_are_errors() {
    let d = Dir::new("bad");
    // Header valid, L1 table beyond the end of the file.
    std::fs::write(d.path("short.qcow2"), header_bytes(|_| {})).unwrap();
    assert!(Qcow2Image::open(&d.path("short.qcow2")).is_err());
    // Two overlays backed by each other.
    run(Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2"])
        .arg(d.path("a.qcow2"))
        .arg("1M"));
    run(Command::new("qemu-img")
        .args([
            "create", "-q", "-f", "qcow2", "-b", "a.qcow2", "-F", "qcow2",
        ])
        .arg(d.path("b.qcow2")));
    run(Command::new("qemu-img")
        .args([
            "rebase", "-q", "-u", "-f", "qcow2", "-b", "b.qcow2", "-F", "qcow2",
        ])
        .arg(d.path("a.qcow2")));
    assert!(Qcow2Image::open(&d.path("a.qcow2")).is_err());
}
