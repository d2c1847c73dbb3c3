//! Starting a process with `posix_spawn` (glibc's is a `clone(CLONE_VM |
//! CLONE_VFORK)`), never `fork`. `std::process::Command` forks in this
//! agent whatever it is asked: its `posix_spawn` path finds glibc's version
//! and `posix_spawn_file_actions_addchdir_np` by dynamic lookup, which a
//! static binary does not have, and it forks anyway whenever the
//! environment sets `PATH` and the program is a bare name. A fork copies the
//! agent's page tables, and under an emulating hypervisor (the guest
//! kernel's every instruction emulated) or UML that is the dearest part of
//! starting a process.
//!
//! The program is looked up in the child's `PATH` here, as `execvp` would,
//! and a file without a `#!` line that the kernel refuses (`ENOEXEC`) runs
//! under `/bin/sh`, as `execvp` does.

use std::ffi::{CString, OsStr};
use std::io;
use std::mem::MaybeUninit;
use std::os::fd::RawFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

/// What the child gets on one of its standard descriptors.
pub enum Fd<'a> {
    /// This descriptor, duplicated onto it.
    Dup(RawFd),
    /// This file, opened in the child with these flags.
    Open(&'a CString, libc::c_int),
}

/// A process to start.
pub struct Spec<'a> {
    /// The program: a path, or a name looked up in `env`'s `PATH`.
    pub program: &'a [u8],
    pub args: &'a [Vec<u8>],
    /// `(NAME, value)` pairs, in order (a later one wins).
    pub env: &'a [(Vec<u8>, Vec<u8>)],
    pub cwd: &'a [u8],
    /// Standard input, output and error.
    pub stdio: [Fd<'a>; 3],
    /// A new session (the child leads it, so the first terminal it opens
    /// becomes its controlling terminal) instead of a new process group.
    pub session: bool,
}

/// RAII for the two glibc spawn objects.
struct Actions(MaybeUninit<libc::posix_spawn_file_actions_t>);
struct Attr(MaybeUninit<libc::posix_spawnattr_t>);

impl Drop for Actions {
    fn drop(&mut self) {
        // SAFETY: initialized in `spawn` before any early return.
        unsafe { libc::posix_spawn_file_actions_destroy(self.0.as_mut_ptr()) };
    }
}

impl Drop for Attr {
    fn drop(&mut self) {
        // SAFETY: initialized in `spawn` before any early return.
        unsafe { libc::posix_spawnattr_destroy(self.0.as_mut_ptr()) };
    }
}

fn nz(rc: libc::c_int) -> io::Result<()> {
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::from_raw_os_error(rc))
    }
}

fn cstring(bytes: &[u8]) -> io::Result<CString> {
    CString::new(bytes).map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            "a NUL byte in a program name, argument, variable or directory",
        )
    })
}

/// Starts `spec`; returns the child's pid.
pub fn spawn(spec: &Spec) -> io::Result<i32> {
    if spec.program.is_empty() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "empty program name",
        ));
    }
    let path = resolve(spec.program, path_var(spec.env), spec.cwd)?;
    let argv: Vec<CString> = std::iter::once(spec.program)
        .chain(spec.args.iter().map(Vec::as_slice))
        .map(cstring)
        .collect::<io::Result<_>>()?;
    let envp: Vec<CString> = spec
        .env
        .iter()
        .map(|(k, v)| cstring(&[k.as_slice(), b"=", v].concat()))
        .collect::<io::Result<_>>()?;
    let cwd = cstring(spec.cwd)?;

    let mut actions = Actions(MaybeUninit::uninit());
    let mut attr = Attr(MaybeUninit::uninit());
    // SAFETY: each call gets a pointer to its (initialized, after the first
    // two) object; the strings outlive the spawn.
    unsafe {
        nz(libc::posix_spawn_file_actions_init(actions.0.as_mut_ptr()))?;
        nz(libc::posix_spawnattr_init(attr.0.as_mut_ptr()))?;
        let a = actions.0.as_mut_ptr();
        for (target, fd) in spec.stdio.iter().enumerate() {
            let target = target as libc::c_int;
            match *fd {
                Fd::Dup(fd) => nz(libc::posix_spawn_file_actions_adddup2(a, fd, target))?,
                Fd::Open(path, flags) => nz(libc::posix_spawn_file_actions_addopen(
                    a,
                    target,
                    path.as_ptr(),
                    flags,
                    0,
                ))?,
            }
        }
        nz(libc::posix_spawn_file_actions_addchdir_np(a, cwd.as_ptr()))?;

        let at = attr.0.as_mut_ptr();
        // The agent ignores SIGPIPE (Rust's runtime does); the child starts
        // with it at its default, and with no signal blocked.
        let mut sigs = MaybeUninit::<libc::sigset_t>::uninit();
        libc::sigemptyset(sigs.as_mut_ptr());
        nz(libc::posix_spawnattr_setsigmask(at, sigs.as_ptr()))?;
        libc::sigaddset(sigs.as_mut_ptr(), libc::SIGPIPE);
        nz(libc::posix_spawnattr_setsigdefault(at, sigs.as_ptr()))?;
        let mut flags = libc::POSIX_SPAWN_SETSIGMASK | libc::POSIX_SPAWN_SETSIGDEF;
        if spec.session {
            flags |= libc::POSIX_SPAWN_SETSID as libc::c_int;
        } else {
            flags |= libc::POSIX_SPAWN_SETPGROUP;
            nz(libc::posix_spawnattr_setpgroup(at, 0))?;
        }
        nz(libc::posix_spawnattr_setflags(at, flags as libc::c_short))?;
    }

    let run = |path: &CString, argv: &[CString]| -> io::Result<i32> {
        let mut argv_p: Vec<*mut libc::c_char> =
            argv.iter().map(|s| s.as_ptr().cast_mut()).collect();
        argv_p.push(std::ptr::null_mut());
        let mut envp_p: Vec<*mut libc::c_char> =
            envp.iter().map(|s| s.as_ptr().cast_mut()).collect();
        envp_p.push(std::ptr::null_mut());
        let mut pid = 0;
        // SAFETY: the pointer arrays are NUL-terminated and point into
        // strings that live across the call; the spawn objects are
        // initialized.
        nz(unsafe {
            libc::posix_spawn(
                &mut pid,
                path.as_ptr(),
                actions.0.as_ptr(),
                attr.0.as_ptr(),
                argv_p.as_ptr(),
                envp_p.as_ptr(),
            )
        })?;
        Ok(pid)
    };
    let path = cstring(path.as_os_str().as_bytes())?;
    match run(&path, &argv) {
        Err(e) if e.raw_os_error() == Some(libc::ENOEXEC) => {
            // What execvp does with a script that has no `#!` line.
            let mut sh_argv = vec![cstring(b"/bin/sh")?, path.clone()];
            sh_argv.extend(argv.into_iter().skip(1));
            run(&sh_argv[0].clone(), &sh_argv)
        }
        other => other,
    }
}

/// The last `PATH` in `env` (the one the child sees).
fn path_var(env: &[(Vec<u8>, Vec<u8>)]) -> Option<&[u8]> {
    env.iter()
        .rev()
        .find(|(k, _)| k == b"PATH")
        .map(|(_, v)| v.as_slice())
}

/// Where `execvp` would find `program`: itself if it names a path, else
/// the first executable regular file of that name in `path`'s directories
/// (an empty entry is the working directory; relative ones are taken from
/// the child's working directory `cwd`). `ENOENT` if there is none,
/// `EACCES` if one exists but is not executable.
pub fn resolve(program: &[u8], path: Option<&[u8]>, cwd: &[u8]) -> io::Result<PathBuf> {
    let program = Path::new(OsStr::from_bytes(program));
    if program.as_os_str().as_bytes().contains(&b'/') {
        return Ok(program.to_path_buf());
    }
    let cwd = Path::new(OsStr::from_bytes(cwd));
    let mut denied = false;
    for dir in path.unwrap_or(b"/bin:/usr/bin").split(|&b| b == b':') {
        let dir = Path::new(OsStr::from_bytes(dir));
        let candidate = cwd.join(dir).join(program);
        let Ok(meta) = std::fs::metadata(&candidate) else {
            continue;
        };
        if !meta.is_file() {
            continue;
        }
        let c = cstring(candidate.as_os_str().as_bytes())?;
        // SAFETY: `c` is a NUL-terminated path.
        if unsafe { libc::access(c.as_ptr(), libc::X_OK) } == 0 {
            return Ok(candidate);
        }
        denied = true;
    }
    Err(io::Error::from_raw_os_error(if denied {
        libc::EACCES
    } else {
        libc::ENOENT
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_name_is_found_in_path_and_a_path_is_kept() {
        let sh = resolve(b"sh", Some(b"/nonexistent:/bin:/usr/bin"), b"/").unwrap();
        assert!(sh.ends_with("sh") && sh.is_absolute(), "{sh:?}");
        let kept = resolve(b"./x/y", Some(b"/bin"), b"/").unwrap();
        assert_eq!(kept, Path::new("./x/y"));
    }

    #[test]
    fn missing_and_unexecutable_programs_have_execvps_errors() {
        let dir = std::env::temp_dir().join(format!("spawn-resolve-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("plain"), b"data").unwrap();
        let path = dir.as_os_str().as_bytes();
        let missing = resolve(b"absent-program", Some(path), b"/").unwrap_err();
        assert_eq!(missing.raw_os_error(), Some(libc::ENOENT));
        let denied = resolve(b"plain", Some(path), b"/").unwrap_err();
        assert_eq!(denied.raw_os_error(), Some(libc::EACCES));
        // A relative PATH entry is taken from the child's directory.
        let parent = dir.parent().unwrap().as_os_str().as_bytes();
        let name = dir.file_name().unwrap().as_bytes();
        let rel = resolve(b"plain", Some(name), parent).unwrap_err();
        assert_eq!(rel.raw_os_error(), Some(libc::EACCES));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn the_last_path_entry_wins() {
        let pair = |k: &[u8], v: &[u8]| (k.to_vec(), v.to_vec());
        let env = [pair(b"PATH", b"/a"), pair(b"X", b"1"), pair(b"PATH", b"/b")];
        assert_eq!(path_var(&env), Some(&b"/b"[..]));
        assert_eq!(path_var(&[]), None);
    }
}
