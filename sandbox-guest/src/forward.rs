//! Port forwards: a TCP connection to a guest port opened for the host
//! (`vm.forward_tcp`), carried over the agent link with the messages and
//! credit windows of a process's stdin and stdout. One thread reads the
//! socket (under the host's credit), one writes the host's bytes into it.

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::Duration;

use sandbox_protocol::{GuestMsg, Stream, INITIAL_WINDOW, MAX_CHUNK};

use crate::server::{lock, Entry, Out, Table};
use crate::window::Window;

/// A loopback connect either succeeds or is refused at once; this bounds
/// a listener whose accept queue is full.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Opens request `id`'s connection to the guest's port on its own thread.
pub fn start(id: u32, port: u16, out: &Out, table: &Table) {
    let (thread_out, table) = (out.clone(), table.clone());
    let spawned = std::thread::Builder::new()
        .name(format!("fwd-{id}"))
        .spawn(move || run(id, port, &thread_out, &table));
    if let Err(e) = spawned {
        failed(out, id, port, &e);
    }
}

fn failed(out: &Out, id: u32, port: u16, e: &io::Error) {
    let _ = out.send(GuestMsg::ConnectFailed {
        id,
        errno: e.raw_os_error().unwrap_or(libc::EIO),
        message: format!("connecting to port {port} on the guest's loopback: {e}"),
    });
}

/// Connects to the port on the guest's loopback: `127.0.0.1` first, then
/// `::1` if nothing listens there (servers bound to "localhost" may take
/// only the IPv6 address).
fn connect(port: u16) -> io::Result<TcpStream> {
    let v4 = SocketAddr::from(([127, 0, 0, 1], port));
    match TcpStream::connect_timeout(&v4, CONNECT_TIMEOUT) {
        Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
            let v6 = SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, port));
            // The IPv4 error is the one to report if IPv6 fails too.
            TcpStream::connect_timeout(&v6, CONNECT_TIMEOUT).map_err(|_| e)
        }
        other => other,
    }
}

fn run(id: u32, port: u16, out: &Out, table: &Table) {
    let opened = connect(port).and_then(|s| {
        let _ = s.set_nodelay(true);
        Ok((s.try_clone()?, s.try_clone()?, s))
    });
    let (mut reader, writer, control) = match opened {
        Ok(parts) => parts,
        Err(e) => return failed(out, id, port, &e),
    };
    let window = Arc::new(Window::new(INITIAL_WINDOW));
    let (tx, rx) = mpsc::channel::<Vec<u8>>();
    lock(table).insert(
        id,
        Entry {
            socket: Some(control),
            ..Entry::io(Some(window.clone()), Some(tx))
        },
    );
    let _ = out.send(GuestMsg::Connected { id });
    let writing = {
        let out = out.clone();
        std::thread::Builder::new()
            .name(format!("fwd-in-{id}"))
            .spawn(move || write_half(id, writer, rx, &out))
    };
    let mut buf = vec![0u8; MAX_CHUNK];
    let mut reset = false;
    while let Some(credit) = window.wait() {
        let max = (credit as usize).min(MAX_CHUNK);
        match reader.read(&mut buf[..max]) {
            Ok(0) => break,
            Ok(n) => {
                window.consume(n);
                let _ = out.send(GuestMsg::Output {
                    id,
                    stream: Stream::Stdout,
                    data: buf[..n].to_vec(),
                });
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => {
                reset = true;
                break;
            }
        }
    }
    let _ = out.send(GuestMsg::OutputEnd {
        id,
        stream: Stream::Stdout,
    });
    if reset {
        // Nothing more can be written either: stop the writer.
        let _ = reader.shutdown(Shutdown::Both);
        if let Some(e) = lock(table).get_mut(&id) {
            e.stdin = None;
        }
    }
    if let Ok(w) = writing {
        let _ = w.join();
    }
    lock(table).remove(&id);
    let _ = out.send(GuestMsg::Closed { id });
}

/// Writes the host's chunks into the socket, returning credit for each;
/// shuts the socket's writing half down when the host closes its side.
fn write_half(id: u32, mut socket: TcpStream, rx: mpsc::Receiver<Vec<u8>>, out: &Out) {
    for chunk in rx {
        if socket.write_all(&chunk).is_err() {
            // The guest side is gone: wake the reader too.
            let _ = socket.shutdown(Shutdown::Both);
            return;
        }
        let _ = out.send(GuestMsg::StdinCredit {
            id,
            bytes: chunk.len() as u32,
        });
    }
    let _ = socket.shutdown(Shutdown::Write);
}
