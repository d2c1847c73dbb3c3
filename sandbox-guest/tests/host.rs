//! The agent's request handling, driven on the host over a socketpair: no VM,
//! so agent logic iterates in seconds. VM tests then prove the real path.

use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command};
use std::time::Duration;

use sandbox_protocol::{
    encode, FrameDecoder, GuestMsg, HostMsg, PtySize, Spawn, Stream, GUEST_MAGIC, INITIAL_WINDOW,
    PROTOCOL_VERSION,
};

struct Agent {
    child: Child,
    sock: UnixStream,
    decoder: FrameDecoder,
}

impl Agent {
    fn start() -> Self {
        let (mine, theirs) = UnixStream::pair().unwrap();
        let fd = theirs.as_raw_fd();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_sandbox-guest"));
        cmd.args(["--fd", "3"]);
        // SAFETY: dup2 is async-signal-safe; `fd` stays open until spawn returns.
        unsafe {
            cmd.pre_exec(move || {
                if libc::dup2(fd, 3) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd.spawn().unwrap();
        drop(theirs);
        mine.set_read_timeout(Some(Duration::from_secs(20)))
            .unwrap();
        let mut agent = Self {
            child,
            sock: mine,
            decoder: FrameDecoder::new(),
        };
        let mut magic = [0u8; 8];
        agent.sock.read_exact(&mut magic).unwrap();
        assert_eq!(magic, GUEST_MAGIC);
        match agent.recv() {
            GuestMsg::Hello(h) => assert_eq!(h.version, PROTOCOL_VERSION),
            other => panic!("expected Hello, got {other:?}"),
        }
        agent
    }

    fn send(&mut self, msg: &HostMsg) {
        self.sock.write_all(&encode(msg).unwrap()).unwrap();
    }

    fn recv(&mut self) -> GuestMsg {
        let mut buf = [0u8; 65536];
        loop {
            if let Some(m) = self.decoder.decode_next::<GuestMsg>().unwrap() {
                return m;
            }
            let n = self.sock.read(&mut buf).unwrap();
            assert!(n > 0, "agent closed the connection");
            self.decoder.push(&buf[..n]);
        }
    }

    fn spawn(&mut self, id: u32, program: &str, args: &[&str], stdin: bool) {
        self.send(&HostMsg::Spawn {
            id,
            spawn: Spawn {
                program: program.into(),
                args: args.iter().map(|a| a.as_bytes().to_vec()).collect(),
                stdin,
                ..Spawn::default()
            },
        });
    }

    /// Collects stdout, stderr and the exit of request `id`.
    fn finish(&mut self, id: u32) -> (Vec<u8>, Vec<u8>, Option<i32>, Option<i32>) {
        let (mut out, mut err) = (Vec::new(), Vec::new());
        loop {
            match self.recv() {
                GuestMsg::Started { id: i, .. } | GuestMsg::StdinCredit { id: i, .. }
                    if i == id => {}
                GuestMsg::Output {
                    id: i,
                    stream,
                    data,
                } if i == id => match stream {
                    Stream::Stdout => out.extend(data),
                    Stream::Stderr => err.extend(data),
                },
                GuestMsg::Exited {
                    id: i,
                    code,
                    signal,
                } if i == id => return (out, err, code, signal),
                other => panic!("unexpected {other:?}"),
            }
        }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn runs_a_process_and_reports_output_and_exit() {
    let mut a = Agent::start();
    a.spawn(1, "sh", &["-c", "echo out; echo err >&2; exit 7"], false);
    let (out, err, code, signal) = a.finish(1);
    assert_eq!(
        (out.as_slice(), err.as_slice()),
        (&b"out\n"[..], &b"err\n"[..])
    );
    assert_eq!((code, signal), (Some(7), None));
}

#[test]
fn default_environment_and_cwd() {
    let mut a = Agent::start();
    a.send(&HostMsg::Spawn {
        id: 1,
        spawn: Spawn {
            program: b"sh".to_vec(),
            args: vec![b"-c".to_vec(), b"echo $HOME:$FOO:$(pwd)".to_vec()],
            env: vec![(b"FOO".to_vec(), b"bar".to_vec())],
            cwd: Some(b"/tmp".to_vec()),
            stdin: false,
            pty: None,
            user: None,
        },
    });
    let (out, _, code, _) = a.finish(1);
    assert_eq!(code, Some(0));
    assert_eq!(out, b"/root:bar:/tmp\n");
}

#[test]
fn a_missing_program_fails_with_its_errno() {
    let mut a = Agent::start();
    a.spawn(3, "/no/such/program", &[], false);
    match a.recv() {
        GuestMsg::SpawnFailed { id, errno, .. } => assert_eq!((id, errno), (3, libc::ENOENT)),
        other => panic!("unexpected {other:?}"),
    }
    // The agent keeps serving.
    a.spawn(4, "true", &[], false);
    assert_eq!(a.finish(4).2, Some(0));
}

/// The program is looked up in the request's own `PATH` (replacing the
/// default one), and a script without a `#!` line runs under `/bin/sh`, as
/// `execvp` does; a missing working directory is named in the error.
#[test]
fn path_lookup_script_fallback_and_missing_cwd() {
    let dir = std::env::temp_dir().join(format!("agent-path-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let script = dir.join("greet");
    std::fs::write(&script, "echo hello from $0 with $1\n").unwrap();
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let path = format!("{}:/usr/bin:/bin", dir.display());
    let mut a = Agent::start();
    let spawn = |id, program: &str, cwd: &str| HostMsg::Spawn {
        id,
        spawn: Spawn {
            program: program.into(),
            args: vec![b"x".to_vec()],
            env: vec![(b"PATH".to_vec(), path.clone().into_bytes())],
            cwd: Some(cwd.into()),
            ..Spawn::default()
        },
    };
    a.send(&spawn(1, "greet", "/"));
    let (out, err, code, _) = a.finish(1);
    assert_eq!(code, Some(0), "{}", String::from_utf8_lossy(&err));
    assert_eq!(
        out,
        format!("hello from {} with x\n", script.display()).as_bytes()
    );
    a.send(&spawn(2, "greet", "/no/such/dir"));
    match a.recv() {
        GuestMsg::SpawnFailed { id, errno, message } => {
            assert_eq!((id, errno), (2, libc::ENOENT));
            assert!(message.contains("/no/such/dir"), "{message}");
        }
        other => panic!("unexpected {other:?}"),
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn stdin_is_forwarded_and_closed() {
    let mut a = Agent::start();
    a.spawn(5, "cat", &[], true);
    a.send(&HostMsg::Stdin {
        id: 5,
        data: b"through stdin".to_vec(),
    });
    a.send(&HostMsg::CloseStdin { id: 5 });
    let (out, _, code, _) = a.finish(5);
    assert_eq!((out.as_slice(), code), (&b"through stdin"[..], Some(0)));
}

#[test]
fn signals_reach_the_process_group_and_are_reported() {
    let mut a = Agent::start();
    a.spawn(6, "sh", &["-c", "sleep 30 & wait"], false);
    assert!(matches!(a.recv(), GuestMsg::Started { id: 6, .. }));
    a.send(&HostMsg::Signal {
        id: 6,
        signal: libc::SIGTERM,
    });
    let (_, _, code, signal) = a.finish(6);
    assert_eq!((code, signal), (None, Some(libc::SIGTERM)));
}

#[test]
fn duplicate_and_unknown_ids_are_rejected() {
    let mut a = Agent::start();
    a.spawn(8, "sleep", &["5"], false);
    assert!(matches!(a.recv(), GuestMsg::Started { id: 8, .. }));
    a.spawn(8, "true", &[], false);
    assert!(matches!(a.recv(), GuestMsg::Rejected { id: Some(8), .. }));
    a.send(&HostMsg::Signal { id: 99, signal: 9 });
    assert!(matches!(a.recv(), GuestMsg::Rejected { id: Some(99), .. }));
    a.send(&HostMsg::Signal { id: 8, signal: 9 });
    assert_eq!(a.finish(8).3, Some(9));
}

#[test]
fn a_malformed_frame_is_rejected_and_ends_the_connection() {
    let mut a = Agent::start();
    a.sock.write_all(&[3, 0, 0, 0, 0xff, 0xff, 0xff]).unwrap();
    assert!(matches!(a.recv(), GuestMsg::Rejected { id: None, .. }));
    let status = a.child.wait().unwrap();
    assert!(!status.success());
}

#[test]
fn an_oversized_length_is_refused_without_reading_the_body() {
    let mut a = Agent::start();
    a.sock.write_all(&u32::MAX.to_le_bytes()).unwrap();
    assert!(matches!(a.recv(), GuestMsg::Rejected { id: None, .. }));
    assert!(!a.child.wait().unwrap().success());
}

#[test]
fn shutdown_is_acknowledged_and_the_agent_exits() {
    let mut a = Agent::start();
    a.spawn(2, "sleep", &["30"], false);
    assert!(matches!(a.recv(), GuestMsg::Started { id: 2, .. }));
    a.send(&HostMsg::Shutdown);
    assert_eq!(a.recv(), GuestMsg::ShuttingDown);
    assert!(a.child.wait().unwrap().success());
}

#[test]
fn many_concurrent_processes_do_not_block_each_other() {
    let mut a = Agent::start();
    // A process that never ends must not hold up the others.
    a.spawn(100, "sleep", &["30"], false);
    for id in 0..20 {
        a.spawn(id, "sh", &["-c", &format!("echo {id}")], false);
    }
    let mut exited = std::collections::HashMap::new();
    let mut outputs = std::collections::HashMap::new();
    while exited.len() < 20 {
        match a.recv() {
            GuestMsg::Output { id, data, .. } => {
                outputs.entry(id).or_insert_with(Vec::new).extend(data)
            }
            GuestMsg::Exited { id, code, .. } => {
                exited.insert(id, code);
            }
            GuestMsg::Started { .. } => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    for id in 0..20u32 {
        assert_eq!(exited[&id], Some(0));
        assert_eq!(outputs[&id], format!("{id}\n").into_bytes());
    }
}

#[test]
fn a_pty_process_sees_a_terminal_of_the_requested_size() {
    let mut a = Agent::start();
    a.send(&HostMsg::Spawn {
        id: 1,
        spawn: Spawn {
            program: b"sh".to_vec(),
            args: vec![
                b"-c".to_vec(),
                b"tty; stty size; echo $TERM; test -t 0 && echo isatty".to_vec(),
            ],
            pty: Some(PtySize {
                rows: 30,
                cols: 100,
            }),
            ..Spawn::default()
        },
    });
    let (out, err, code, _) = a.finish(1);
    let text = String::from_utf8_lossy(&out);
    assert!(text.contains("/dev/pts/"), "{text}");
    assert!(text.contains("30 100"), "{text}");
    assert!(text.contains("xterm-256color"), "{text}");
    assert!(text.contains("isatty"), "{text}");
    assert!(err.is_empty(), "a pty merges stderr into its output");
    assert_eq!(code, Some(0));
}

#[test]
fn a_pty_takes_input_and_resizes() {
    let mut a = Agent::start();
    a.send(&HostMsg::Spawn {
        id: 2,
        spawn: Spawn {
            program: b"sh".to_vec(),
            pty: Some(PtySize { rows: 24, cols: 80 }),
            ..Spawn::default()
        },
    });
    a.send(&HostMsg::Stdin {
        id: 2,
        data: b"stty size\n".to_vec(),
    });
    let mut seen = Vec::new();
    while !String::from_utf8_lossy(&seen).contains("24 80") {
        if let GuestMsg::Output { data, .. } = a.recv() {
            seen.extend(data);
        }
    }
    a.send(&HostMsg::Resize {
        id: 2,
        size: PtySize {
            rows: 50,
            cols: 132,
        },
    });
    a.send(&HostMsg::Stdin {
        id: 2,
        data: b"stty size; exit 3\n".to_vec(),
    });
    let (out, _, code, _) = a.finish(2);
    assert!(String::from_utf8_lossy(&out).contains("50 132"));
    assert_eq!(code, Some(3));
}

#[test]
fn output_stops_at_the_credit_window_until_the_host_grants_more() {
    let mut a = Agent::start();
    let total = 3 * INITIAL_WINDOW as usize;
    a.spawn(3, "head", &["-c", &total.to_string(), "/dev/zero"], false);
    // First the whole window arrives...
    let mut got = 0usize;
    while got < INITIAL_WINDOW as usize {
        match a.recv() {
            GuestMsg::Output { data, .. } => got += data.len(),
            GuestMsg::Exited { .. } => panic!("exited without the host reading"),
            _ => {}
        }
    }
    // ...then nothing more while the host grants no credit.
    a.sock
        .set_read_timeout(Some(Duration::from_millis(700)))
        .unwrap();
    let mut buf = [0u8; 65536];
    assert!(
        a.decoder.decode_next::<GuestMsg>().unwrap().is_none() && a.sock.read(&mut buf).is_err(),
        "the agent sent past its credit"
    );
    assert_eq!(got, INITIAL_WINDOW as usize, "exactly one window in flight");
    a.sock
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    a.send(&HostMsg::Credit {
        id: 3,
        stream: Stream::Stdout,
        bytes: (total - got) as u32,
    });
    let (out, _, code, _) = a.finish(3);
    assert_eq!(got + out.len(), total);
    assert_eq!(code, Some(0));
}

/// A port forward to a listener on this host's loopback (the agent runs
/// here, so its 127.0.0.1 is ours): connect, bytes both ways with credit,
/// half-close each way, then `Closed`.
#[test]
fn a_forwarded_connection_carries_bytes_and_half_closes() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let mut a = Agent::start();
    a.send(&HostMsg::Connect { id: 1, port });
    let (mut peer, _) = listener.accept().unwrap();
    assert_eq!(a.recv(), GuestMsg::Connected { id: 1 });
    a.send(&HostMsg::Stdin {
        id: 1,
        data: b"to the service".to_vec(),
    });
    assert_eq!(a.recv(), GuestMsg::StdinCredit { id: 1, bytes: 14 });
    a.send(&HostMsg::CloseStdin { id: 1 });
    let mut got = Vec::new();
    peer.read_to_end(&mut got).unwrap();
    assert_eq!(
        got, b"to the service",
        "then end of file: the host half-closed"
    );
    peer.write_all(b"to the host").unwrap();
    peer.shutdown(std::net::Shutdown::Write).unwrap();
    let mut back = Vec::new();
    loop {
        match a.recv() {
            GuestMsg::Output {
                id: 1,
                stream,
                data,
            } => {
                assert_eq!(stream, Stream::Stdout);
                back.extend(data);
            }
            GuestMsg::OutputEnd { id: 1, .. } => break,
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(back, b"to the host");
    assert_eq!(a.recv(), GuestMsg::Closed { id: 1 });
}

#[test]
fn a_forward_to_a_closed_port_fails_with_econnrefused_and_abort_resets() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let open = listener.local_addr().unwrap().port();
    // A port bound without listening stays refused for the whole test: a
    // port merely freed could be taken by a listener of a parallel test.
    let (_held, closed) = bound_not_listening();
    let mut a = Agent::start();
    a.send(&HostMsg::Connect {
        id: 1,
        port: closed,
    });
    match a.recv() {
        GuestMsg::ConnectFailed { id: 1, errno, .. } => assert_eq!(errno, libc::ECONNREFUSED),
        other => panic!("unexpected {other:?}"),
    }
    // The id is free again, and an aborted connection ends at once even
    // though the peer never closes.
    a.send(&HostMsg::Connect { id: 1, port: open });
    let (mut peer, _) = listener.accept().unwrap();
    assert_eq!(a.recv(), GuestMsg::Connected { id: 1 });
    a.send(&HostMsg::Abort { id: 1 });
    assert!(matches!(a.recv(), GuestMsg::OutputEnd { id: 1, .. }));
    assert_eq!(a.recv(), GuestMsg::Closed { id: 1 });
    let mut rest = Vec::new();
    let _ = peer.read_to_end(&mut rest);
    assert!(rest.is_empty());
}

#[test]
fn a_forward_reaches_a_service_listening_on_ipv6_loopback_only() {
    let listener = std::net::TcpListener::bind("[::1]:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let mut a = Agent::start();
    a.send(&HostMsg::Connect { id: 4, port });
    let (mut peer, _) = listener.accept().unwrap();
    assert_eq!(a.recv(), GuestMsg::Connected { id: 4 });
    peer.write_all(b"v6").unwrap();
    drop(peer);
    assert_eq!(
        a.recv(),
        GuestMsg::Output {
            id: 4,
            stream: Stream::Stdout,
            data: b"v6".to_vec()
        }
    );
}

/// A TCP socket bound to a free loopback port and never listening: connects
/// to the port are refused while it is held, and no one else can take it.
fn bound_not_listening() -> (std::os::fd::OwnedFd, u16) {
    use std::os::fd::FromRawFd as _;
    // SAFETY: plain socket calls on a descriptor this function owns; the
    // address structures are initialised and their sizes passed.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
        assert!(fd >= 0, "socket: {}", std::io::Error::last_os_error());
        let owned = std::os::fd::OwnedFd::from_raw_fd(fd);
        let mut addr: libc::sockaddr_in = std::mem::zeroed();
        addr.sin_family = libc::AF_INET as libc::sa_family_t;
        addr.sin_addr.s_addr = u32::from(std::net::Ipv4Addr::LOCALHOST).to_be();
        let len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
        let rc = libc::bind(fd, (&raw const addr).cast(), len);
        assert_eq!(rc, 0, "bind: {}", std::io::Error::last_os_error());
        let mut got_len = len;
        let rc = libc::getsockname(fd, (&raw mut addr).cast(), &mut got_len);
        assert_eq!(rc, 0, "getsockname: {}", std::io::Error::last_os_error());
        (owned, u16::from_be(addr.sin_port))
    }
}
