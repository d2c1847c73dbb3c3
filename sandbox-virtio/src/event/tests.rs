use std::os::fd::AsRawFd;

use super::*;

#[test]
fn pipe_event_fd_counts_wakeups_and_reads_empty_as_would_block() {
    let e = pipe::EventFd::new().unwrap();
    assert_eq!(
        e.read().unwrap_err().kind(),
        io::ErrorKind::WouldBlock,
        "nothing pending"
    );
    e.write(1).unwrap();
    let clone = e.try_clone().unwrap();
    clone.write(1).unwrap();
    assert_eq!(e.read().unwrap(), 2);
    assert!(e.read().is_err(), "a read takes every wake-up");
}

#[test]
fn a_full_pipe_still_takes_writes() {
    let e = pipe::EventFd::new().unwrap();
    for _ in 0..100_000 {
        e.write(1).unwrap();
    }
    assert!(e.read().unwrap() > 0);
}

#[test]
fn level_interest_reports_until_drained() {
    let p = Poller::new().unwrap();
    let e = event_fd().unwrap();
    p.add(e.as_raw_fd(), Interest::Read, 7).unwrap();
    let mut ev = Events::with_capacity(4);
    assert_eq!(p.wait(0, &mut ev).unwrap(), 0);
    e.write(1).unwrap();
    for _ in 0..2 {
        assert_eq!(p.wait(0, &mut ev).unwrap(), 1);
        assert_eq!(ev.tokens().collect::<Vec<_>>(), [7]);
    }
    e.read().unwrap();
    assert_eq!(p.wait(0, &mut ev).unwrap(), 0);
}

#[test]
fn edge_interest_reports_each_change_once() {
    let p = Poller::new().unwrap();
    let e = event_fd().unwrap();
    p.add(e.as_raw_fd(), Interest::ReadEdge, 3).unwrap();
    let mut ev = Events::with_capacity(4);
    e.write(1).unwrap();
    assert_eq!(p.wait(0, &mut ev).unwrap(), 1);
    assert_eq!(
        p.wait(0, &mut ev).unwrap(),
        0,
        "still readable, reported once"
    );
    e.write(1).unwrap();
    assert_eq!(p.wait(0, &mut ev).unwrap(), 1);
    p.delete(e.as_raw_fd()).unwrap();
    e.write(1).unwrap();
    assert_eq!(p.wait(0, &mut ev).unwrap(), 0, "deleted");
}

#[test]
fn a_poller_is_watchable_by_another() {
    let inner = Poller::new().unwrap();
    let outer = Poller::new().unwrap();
    let e = event_fd().unwrap();
    inner
        .add(e.as_raw_fd(), Interest::ReadWriteEdge, 1)
        .unwrap();
    outer.add(inner.fd(), Interest::ReadEdge, 9).unwrap();
    let mut ev = Events::with_capacity(4);
    // An eventfd is writable from the start.
    assert_eq!(outer.wait(1000, &mut ev).unwrap(), 1);
    assert_eq!(ev.tokens().next(), Some(9));
    assert!(inner.wait(0, &mut ev).unwrap() >= 1);
    assert_eq!(ev.tokens().next(), Some(1));
}

#[test]
fn a_wait_times_out() {
    let p = Poller::new().unwrap();
    let mut ev = Events::with_capacity(1);
    let t = std::time::Instant::now();
    assert_eq!(p.wait(30, &mut ev).unwrap(), 0);
    assert!(t.elapsed() >= std::time::Duration::from_millis(25));
}
