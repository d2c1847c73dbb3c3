//! An image source made of arbitrary documents: the input splits at 0xff
//! bytes into `index.json` (or, when the input starts with `D`,
//! `manifest.json` of a `docker save` archive) and blobs stored under
//! their digests. `@1`..`@9` in a document stand for part n's digest
//! (`sha256:<hex>`) and `#1`..`#9` for its size, so the fuzzer reaches the
//! manifest and config parsers. Resolution must return an image or an
//! error, never panic, and read nothing outside the scratch directory.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sandbox_rootfs::oci::{resolve, Digest, Platform, Selector};

fuzz_target!(|data: &[u8]| {
    let dir = std::env::temp_dir().join(format!("fuzz-oci-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    if std::fs::create_dir_all(dir.join("blobs/sha256")).is_err() {
        return;
    }
    let (docker, data) = match data.split_first() {
        Some((b'D', rest)) => (true, rest),
        _ => (false, data),
    };
    let mut parts: Vec<Vec<u8>> = data.split(|b| *b == 0xff).take(10).map(<[u8]>::to_vec).collect();
    // Substitute placeholders from the last part back, so a document can
    // name any later one.
    for i in (0..parts.len()).rev() {
        let mut text = parts[i].clone();
        for (j, p) in parts.iter().enumerate().skip(1) {
            if j <= 9 {
                let d = Digest::of(p);
                text = replace(&text, format!("@{j}").as_bytes(), d.to_string().as_bytes());
                text = replace(&text, format!("${j}").as_bytes(), d.hex().as_bytes());
                text = replace(&text, format!("#{j}").as_bytes(), p.len().to_string().as_bytes());
            }
        }
        parts[i] = text;
    }
    for p in parts.iter().skip(1) {
        let d = Digest::of(p);
        let _ = std::fs::write(dir.join("blobs/sha256").join(d.hex()), p);
        if docker {
            let _ = std::fs::write(dir.join(format!("{}.json", d.hex())), p);
        }
    }
    let top = if docker { "manifest.json" } else { "index.json" };
    let _ = std::fs::write(dir.join(top), parts.first().map(Vec::as_slice).unwrap_or(&[]));
    let platform = Platform::parse("linux/amd64").unwrap();
    for sel in [Selector::Only, Selector::Name("app:1".into())] {
        if let Ok(r) = resolve(&dir, &sel, &platform) {
            for l in &r.layers {
                assert!(l.location.file.starts_with(&dir), "{:?}", l.location.file);
            }
        }
    }
});

fn replace(hay: &[u8], from: &[u8], to: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(hay.len());
    let mut i = 0;
    while i < hay.len() {
        if hay[i..].starts_with(from) {
            out.extend_from_slice(to);
            i += from.len();
        } else {
            out.push(hay[i]);
            i += 1;
        }
    }
    out
}
