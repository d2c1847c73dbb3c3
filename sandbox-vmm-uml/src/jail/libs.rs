//! The files a dynamically linked kernel binary needs at run time: its
//! ELF loader and shared libraries, as the host's `ldd` resolves them
//! (once per binary and modification time; the result is cached).

use std::collections::HashMap;
use std::io;
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
    cache
        .get_or_insert_with(HashMap::new)
        .insert(binary.to_path_buf(), (mtime, files.clone()));
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
