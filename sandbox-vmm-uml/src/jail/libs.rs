//! The files a dynamically linked kernel binary needs at run time: its
//! ELF loader and shared libraries, as the host's loader resolves them
//! (once per binary and modification time; the result is cached).
//!
//! The loader named in the binary's `PT_INTERP` lists them itself
//! (`ld.so --list`, what glibc's `ldd` script runs after its own checks):
//! about 3 ms here against about 30 ms for `ldd`, paid by the first boot of
//! every process. `ldd` remains the fallback for loaders without `--list`.

use std::collections::HashMap;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;
use std::time::SystemTime;

type Cache = HashMap<PathBuf, (SystemTime, Vec<PathBuf>)>;

/// The loader and libraries `binary` needs (empty for a static binary).
pub(crate) fn runtime_files(binary: &Path) -> io::Result<Vec<PathBuf>> {
    static CACHE: Mutex<Option<Cache>> = Mutex::new(None);
    let mtime = std::fs::metadata(binary)?.modified()?;
    let mut cache = CACHE.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((t, files)) = cache.get_or_insert_with(HashMap::new).get(binary) {
        if *t == mtime {
            return Ok(files.clone());
        }
    }
    let files = match interpreter(binary)? {
        None => Vec::new(), // static: nothing to bind
        Some(loader) => match listed_by(&loader, binary) {
            Some(files) => files,
            None => ldd(binary)?,
        },
    };
    cache
        .get_or_insert_with(HashMap::new)
        .insert(binary.to_path_buf(), (mtime, files.clone()));
    Ok(files)
}

/// `loader --list binary`, if that loader supports it and lists cleanly.
fn listed_by(loader: &Path, binary: &Path) -> Option<Vec<PathBuf>> {
    let out = Command::new(loader)
        .arg("--list")
        .arg(binary)
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    parse(&String::from_utf8_lossy(&out.stdout)).ok()
}

/// The `PT_INTERP` path of a 64-bit little-endian ELF file; `None` for a
/// statically linked one.
fn interpreter(binary: &Path) -> io::Result<Option<PathBuf>> {
    let bad = |what: &str| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{}: {what}", binary.display()),
        )
    };
    // Only the headers are read: a UML kernel with symbols is 100+ MiB.
    let file = std::fs::File::open(binary)?;
    // Bytes `at..at + n` (n at most a page), None past the end.
    let bytes = |at: u64, n: u64| -> Option<Vec<u8>> {
        let mut buf = vec![0; usize::try_from(n).ok().filter(|&n| n <= 4096)?];
        file.read_exact_at(&mut buf, at).ok()?;
        Some(buf)
    };
    let u16_at = |at: u64| bytes(at, 2).map(|b| u16::from_le_bytes([b[0], b[1]]));
    let u64_at = |at: u64| {
        bytes(at, 8)
            .and_then(|b| b.try_into().ok())
            .map(u64::from_le_bytes)
    };
    if bytes(0, 6).as_deref() != Some(&[0x7f, b'E', b'L', b'F', 2, 1][..]) {
        return Err(bad("not a 64-bit little-endian ELF file"));
    }
    let (Some(phoff), Some(phentsize), Some(phnum)) = (u64_at(0x20), u16_at(0x36), u16_at(0x38))
    else {
        return Err(bad("truncated ELF header"));
    };
    for i in 0..u64::from(phnum) {
        let at = phoff
            .checked_add(i * u64::from(phentsize))
            .ok_or_else(|| bad("program header out of range"))?;
        let kind = bytes(at, 4).ok_or_else(|| bad("program header out of range"))?;
        if kind != [3, 0, 0, 0] {
            continue; // not PT_INTERP
        }
        let header = |field: u64| at.checked_add(field).and_then(u64_at);
        let (Some(offset), Some(size)) = (header(8), header(32)) else {
            return Err(bad("truncated PT_INTERP header"));
        };
        let path = bytes(offset, size).ok_or_else(|| bad("PT_INTERP out of range"))?;
        let path = path.split(|&b| b == 0).next().unwrap_or_default();
        return Ok(Some(PathBuf::from(
            String::from_utf8_lossy(path).into_owned(),
        )));
    }
    Ok(None)
}

/// What `ldd` lists.
fn ldd(binary: &Path) -> io::Result<Vec<PathBuf>> {
    let out = Command::new("ldd").arg(binary).output().map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("running ldd to find the UML kernel's libraries: {e} (install libc-bin)"),
        )
    })?;
    let text = String::from_utf8_lossy(&out.stdout);
    let files = if !out.status.success() {
        if text.contains("not a dynamic executable")
            || String::from_utf8_lossy(&out.stderr).contains("not a dynamic executable")
        {
            Vec::new()
        } else {
            return Err(io::Error::other(format!(
                "ldd {} failed: {}",
                binary.display(),
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
    } else {
        parse(&text)?
    };
    Ok(files)
}

/// The absolute paths in `ldd` output; a library it could not find is an
/// error.
fn parse(text: &str) -> io::Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        if line.contains("=> not found") {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!("the UML kernel needs a library the host lacks: {line}"),
            ));
        }
        let path = match line.split_once("=>") {
            Some((_, right)) => right.split_whitespace().next(),
            None => line.split_whitespace().next(),
        };
        if let Some(p) = path.filter(|p| p.starts_with('/')) {
            let p = PathBuf::from(p);
            if !files.contains(&p) {
                files.push(p);
            }
        }
    }
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ldd_output_is_parsed() {
        let text = "\tlinux-vdso.so.1 (0x00007ffd)\n\
                    \tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f)\n\
                    \t/lib64/ld-linux-x86-64.so.2 (0x00007f)\n";
        assert_eq!(
            parse(text).unwrap(),
            vec![
                PathBuf::from("/lib/x86_64-linux-gnu/libc.so.6"),
                PathBuf::from("/lib64/ld-linux-x86-64.so.2")
            ]
        );
        assert!(parse("\tlibfoo.so => not found\n").is_err());
    }

    #[test]
    fn the_loader_lists_what_ldd_lists() {
        let sh = Path::new("/bin/sh");
        let loader = interpreter(sh).unwrap().expect("/bin/sh is dynamic");
        let mut listed = listed_by(&loader, sh).expect("glibc's loader has --list");
        let mut by_ldd = ldd(sh).unwrap();
        listed.sort();
        by_ldd.sort();
        assert_eq!(listed, by_ldd);
    }

    #[test]
    fn malformed_elf_files_are_errors() {
        let dir = std::env::temp_dir().join(format!("libs-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        for (name, bytes) in [
            ("text", b"#!/bin/sh\n".to_vec()),
            ("short", vec![0x7f, b'E', b'L', b'F', 2, 1, 1]),
        ] {
            let path = dir.join(name);
            std::fs::write(&path, bytes).unwrap();
            assert!(interpreter(&path).is_err(), "{name}");
        }
        // A header with program headers far past the end of the file.
        let mut header = vec![0u8; 64];
        header[..6].copy_from_slice(&[0x7f, b'E', b'L', b'F', 2, 1]);
        header[0x20..0x28].copy_from_slice(&u64::MAX.to_le_bytes());
        header[0x36] = 56;
        header[0x38] = 1;
        let path = dir.join("far");
        std::fs::write(&path, header).unwrap();
        assert!(interpreter(&path).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_real_binary_has_a_loader() {
        let files = runtime_files(Path::new("/bin/sh")).unwrap();
        assert!(
            files
                .iter()
                .any(|f| f.to_string_lossy().contains("ld-linux")),
            "{files:?}"
        );
    }
}
