//! A persistent overlay file corrupted at arbitrary places: the input is a
//! list of (offset, byte) patches XORed into a valid overlay our own code
//! created (so the fuzzer starts from real structure). Opening must fail
//! cleanly or yield a disk that reads and writes without panicking.
#![no_main]

use std::path::PathBuf;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use sandbox_rootfs::{Disk, Image, ImageFormat, MemDisk, OverlayOptions, Qcow2Overlay};

const BASE: usize = 256 << 10;

fn dir() -> PathBuf {
    let shm = std::path::Path::new("/dev/shm");
    let parent = if shm.is_dir() {
        shm.to_path_buf()
    } else {
        std::env::temp_dir()
    };
    parent.join(format!("fuzz-overlay-{}", std::process::id()))
}

fn image() -> Image {
    Image {
        name: "fuzz-base".into(),
        path: dir().join("base.raw"),
        format: ImageFormat::Raw,
        arch: "x86_64".into(),
        sha256: "00".repeat(32),
        size: BASE as u64,
        facts: Default::default(),
        run: Default::default(),
    }
}

fn options() -> OverlayOptions {
    OverlayOptions {
        cluster_size: 4096,
        max_unsynced_bytes: u64::MAX,
    }
}

/// A small valid overlay with a few allocated clusters.
fn template() -> &'static [u8] {
    static T: OnceLock<Vec<u8>> = OnceLock::new();
    T.get_or_init(|| {
        std::fs::create_dir_all(dir()).unwrap();
        let image = image();
        std::fs::write(&image.path, vec![7u8; BASE]).unwrap();
        let path = dir().join("template.qcow2");
        let _ = std::fs::remove_file(&path);
        let mut o =
            Qcow2Overlay::open(&path, Box::new(MemDisk::new(BASE)), &image, options()).unwrap();
        for at in [0u64, 8192, 100_000, (BASE - 4096) as u64] {
            o.write_at(at, &[0x5a; 3000]).unwrap();
        }
        drop(o);
        std::fs::read(&path).unwrap()
    })
}

fuzz_target!(|data: &[u8]| {
    let mut file = template().to_vec();
    for patch in data.chunks_exact(3) {
        let at = usize::from(u16::from_le_bytes([patch[0], patch[1]])) % file.len();
        file[at] ^= patch[2];
    }
    let path = dir().join("case.qcow2");
    if std::fs::write(&path, &file).is_err() {
        return;
    }
    let base = Box::new(MemDisk::new(BASE));
    if let Ok(mut o) = Qcow2Overlay::open(&path, base, &image(), options()) {
        let mut buf = vec![0u8; BASE];
        let _ = o.read_at(0, &mut buf);
        let _ = o.write_at(4096 * 7 + 100, &[1; 9000]);
        let _ = o.write_at(0, &[2; 512]);
        let _ = o.read_at(0, &mut buf);
    }
});
