//! Where an image's files are: an OCI layout directory, or a tar archive
//! (`docker save` output, or an OCI layout packed as a tar). Only read
//! here, never extracted: a member of an archive is a byte range of it.

use std::collections::HashMap;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use super::OciError;

/// Most members an archive may hold (its index lives in memory).
const MAX_MEMBERS: usize = 200_000;
/// Most links followed to reach one member.
const MAX_LINKS: usize = 8;

/// A byte range of a host file holding one blob.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Location {
    /// The file.
    pub file: PathBuf,
    /// Where the blob starts in it.
    pub offset: u64,
    /// Its length.
    pub size: u64,
}

impl Location {
    /// A reader of exactly this range.
    pub fn open(&self) -> Result<impl Read, OciError> {
        let io = |e| OciError::io(format!("reading {}", self.file.display()), e);
        let mut f = File::open(&self.file).map_err(io)?;
        f.seek(SeekFrom::Start(self.offset)).map_err(io)?;
        Ok(f.take(self.size))
    }

    /// The whole range, refused above `max` bytes (JSON documents).
    pub fn read_small(&self, what: &str, max: u64) -> Result<Vec<u8>, OciError> {
        if self.size > max {
            return Err(OciError::TooLarge {
                what: what.to_string(),
                size: self.size,
                max,
            });
        }
        let mut v = Vec::with_capacity(self.size as usize);
        self.open()?
            .read_to_end(&mut v)
            .map_err(|e| OciError::io(format!("reading {what}"), e))?;
        if v.len() as u64 != self.size {
            return Err(OciError::Malformed(format!(
                "{what} is truncated ({} of {} bytes)",
                v.len(),
                self.size
            )));
        }
        Ok(v)
    }
}

pub(crate) enum Member {
    File {
        offset: u64,
        size: u64,
    },
    /// A symbolic or hard link, as a normalized archive path.
    Link(String),
}

/// The files of an image source.
pub(crate) enum Store {
    Dir(PathBuf),
    Tar {
        path: PathBuf,
        members: HashMap<String, Member>,
    },
}

/// `name` as a relative path of plain components (`a/b`), or `None` for
/// anything absolute, empty or climbing (`..`).
pub(crate) fn normalize(name: &str) -> Option<String> {
    let mut parts: Vec<&str> = Vec::new();
    if name.starts_with('/') {
        return None;
    }
    for c in name.split('/') {
        match c {
            "" | "." => {}
            ".." => return None,
            c => parts.push(c),
        }
    }
    (!parts.is_empty()).then(|| parts.join("/"))
}

/// A link's target resolved against the directory of the link `at`.
fn resolve_symlink(at: &str, target: &str) -> Option<String> {
    if target.starts_with('/') {
        return None;
    }
    let mut parts: Vec<&str> = at.split('/').collect();
    parts.pop();
    for c in target.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                parts.pop()?;
            }
            c => parts.push(c),
        }
    }
    (!parts.is_empty()).then(|| parts.join("/"))
}

impl Store {
    pub(crate) fn open(path: &Path) -> Result<Self, OciError> {
        let meta = std::fs::metadata(path)
            .map_err(|e| OciError::io(format!("opening the image source {}", path.display()), e))?;
        if meta.is_dir() {
            return Ok(Store::Dir(path.to_path_buf()));
        }
        if !meta.is_file() {
            return Err(OciError::Malformed(format!(
                "{} is neither a directory (OCI layout) nor a file (tar archive)",
                path.display()
            )));
        }
        let file =
            File::open(path).map_err(|e| OciError::io(format!("opening {}", path.display()), e))?;
        let bad = |e: std::io::Error| {
            OciError::Malformed(format!(
                "{} is not a readable tar archive: {e}",
                path.display()
            ))
        };
        let mut archive = tar::Archive::new(file);
        let mut members = HashMap::new();
        for entry in archive.entries().map_err(bad)? {
            let entry = entry.map_err(bad)?;
            if members.len() >= MAX_MEMBERS {
                return Err(OciError::Malformed(format!(
                    "{} has more than {MAX_MEMBERS} members",
                    path.display()
                )));
            }
            let raw = entry.path_bytes();
            let Some(name) = std::str::from_utf8(&raw).ok().and_then(normalize) else {
                continue;
            };
            let kind = entry.header().entry_type();
            let member = if kind.is_file() {
                Member::File {
                    offset: entry.raw_file_position(),
                    size: entry.size(),
                }
            } else if kind.is_symlink() || kind.is_hard_link() {
                let Some(target) = entry
                    .link_name_bytes()
                    .and_then(|t| std::str::from_utf8(&t).ok().map(str::to_string))
                else {
                    continue;
                };
                let resolved = if kind.is_symlink() {
                    resolve_symlink(&name, &target)
                } else {
                    normalize(&target)
                };
                match resolved {
                    Some(t) => Member::Link(t),
                    None => continue,
                }
            } else {
                continue;
            };
            members.insert(name, member);
        }
        Ok(Store::Tar {
            path: path.to_path_buf(),
            members,
        })
    }

    /// Whether `name` is in the source.
    pub(crate) fn has(&self, name: &str) -> bool {
        self.locate(name).is_ok()
    }

    /// Where the file `name` (a relative path) is.
    pub(crate) fn locate(&self, name: &str) -> Result<Location, OciError> {
        let missing = || OciError::Missing(name.to_string());
        let norm = normalize(name).ok_or_else(missing)?;
        match self {
            Store::Dir(root) => {
                // Plain components only, none of them a symlink: the layout
                // cannot point the import at other host files.
                let mut p = root.clone();
                let mut meta = None;
                for c in norm.split('/') {
                    p.push(c);
                    let m = std::fs::symlink_metadata(&p).map_err(|_| missing())?;
                    if m.file_type().is_symlink() {
                        return Err(OciError::Malformed(format!(
                            "{} is a symbolic link; an OCI layout's files must be plain files",
                            p.display()
                        )));
                    }
                    meta = Some(m);
                }
                let m = meta.ok_or_else(missing)?;
                if !m.is_file() {
                    return Err(missing());
                }
                Ok(Location {
                    file: p,
                    offset: 0,
                    size: m.len(),
                })
            }
            Store::Tar { path, members } => {
                let mut at = norm;
                for _ in 0..=MAX_LINKS {
                    match members.get(&at) {
                        Some(Member::File { offset, size }) => {
                            return Ok(Location {
                                file: path.clone(),
                                offset: *offset,
                                size: *size,
                            })
                        }
                        Some(Member::Link(t)) => at = t.clone(),
                        None => return Err(missing()),
                    }
                }
                Err(OciError::Malformed(format!(
                    "{name}: more than {MAX_LINKS} links in a row in the archive"
                )))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_plain_relative_paths() {
        assert_eq!(normalize("./a//b/"), Some("a/b".into()));
        assert_eq!(normalize("/a"), None);
        assert_eq!(normalize("a/../b"), None);
        assert_eq!(normalize("."), None);
        assert_eq!(
            resolve_symlink("x/y/layer.tar", "../z/layer.tar"),
            Some("x/z/layer.tar".into())
        );
        assert_eq!(resolve_symlink("a/l", "../../etc/passwd"), None);
        assert_eq!(resolve_symlink("a/l", "/etc/passwd"), None);
    }
}
