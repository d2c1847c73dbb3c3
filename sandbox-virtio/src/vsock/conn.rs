//! One host-initiated stream connection and its credit accounting.

use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;

/// Receive buffer the host side advertises to the guest.
pub const BUF_ALLOC: u32 = 1 << 20;

pub struct Conn {
    /// Device end of the host socket pair (non-blocking).
    pub sock: UnixStream,
    /// The guest's receive buffer and how much of our data it consumed.
    pub peer_buf_alloc: u32,
    pub peer_fwd_cnt: u32,
    /// Bytes sent to the guest.
    pub tx_cnt: u32,
    /// Bytes of guest data received.
    pub rx_cnt: u32,
    /// Bytes of guest data written to the host socket.
    pub fwd_cnt: u32,
    /// `fwd_cnt` as last told to the guest.
    pub fwd_cnt_sent: u32,
    /// Guest data the host socket has not accepted yet (bounded by
    /// `BUF_ALLOC` as long as the guest respects its credit).
    pub to_host: Vec<u8>,
    /// Host data read but not yet delivered to the guest.
    pub to_guest: Vec<u8>,
    /// The host socket may have data to read.
    pub host_readable: bool,
    /// The host closed its end (read returned 0 or failed).
    pub host_closed: bool,
    /// Whether the guest's credit was used up at the last staging.
    pub stalled: bool,
}

impl Conn {
    pub fn new(sock: UnixStream) -> Self {
        Self {
            sock,
            peer_buf_alloc: 0,
            peer_fwd_cnt: 0,
            tx_cnt: 0,
            rx_cnt: 0,
            fwd_cnt: 0,
            fwd_cnt_sent: 0,
            to_host: Vec::new(),
            to_guest: Vec::new(),
            host_readable: true,
            host_closed: false,
            stalled: false,
        }
    }

    /// Bytes the guest can still accept from us.
    pub fn peer_credit(&self) -> u32 {
        self.peer_buf_alloc
            .saturating_sub(self.tx_cnt.wrapping_sub(self.peer_fwd_cnt))
    }

    /// Queues guest data for the host; false if the guest sent more than the
    /// credit it was given (`BUF_ALLOC` past the last `fwd_cnt` it saw).
    pub fn push_to_host(&mut self, data: &[u8]) -> bool {
        let in_flight = self.rx_cnt.wrapping_sub(self.fwd_cnt_sent) as usize + data.len();
        if in_flight > BUF_ALLOC as usize {
            return false;
        }
        self.rx_cnt = self.rx_cnt.wrapping_add(data.len() as u32);
        self.to_host.extend_from_slice(data);
        self.flush_to_host();
        true
    }

    /// Writes what the host socket accepts now.
    pub fn flush_to_host(&mut self) {
        while !self.to_host.is_empty() {
            match self.sock.write(&self.to_host) {
                Ok(n) => {
                    self.to_host.drain(..n);
                    self.fwd_cnt = self.fwd_cnt.wrapping_add(n as u32);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(_) => {
                    self.host_closed = true;
                    self.to_host.clear();
                    return;
                }
            }
        }
    }

    /// Whether the guest should hear about freed buffer space: after a
    /// quarter of the buffer, so a guest never stalls (it still has three
    /// quarters of its credit) and small writes do not each cost an update.
    pub fn credit_update_due(&self) -> bool {
        self.fwd_cnt.wrapping_sub(self.fwd_cnt_sent) >= BUF_ALLOC / 4
    }

    /// Stages host data for the guest, up to `max` bytes in total and never
    /// more than the guest's credit allows. Returns true when the guest's
    /// credit has just run out (a credit stall: the host must wait for the
    /// guest to consume).
    pub fn stage_from_host(&mut self, max: usize) -> bool {
        let credit = self.peer_credit() as usize;
        let stalled = credit == 0 && self.peer_buf_alloc > 0;
        let newly_stalled = stalled && !self.stalled;
        self.stalled = stalled;
        self.stage(max, credit);
        newly_stalled
    }

    fn stage(&mut self, max: usize, credit: usize) {
        let room = max.min(credit).saturating_sub(self.to_guest.len());
        if !self.host_readable || self.host_closed || room == 0 {
            return;
        }
        let start = self.to_guest.len();
        self.to_guest.resize(start + room, 0);
        loop {
            match self.sock.read(&mut self.to_guest[start..]) {
                Ok(0) => self.host_closed = true,
                Ok(n) => {
                    self.to_guest.truncate(start + n);
                    return;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => self.host_readable = false,
                Err(_) => self.host_closed = true,
            }
            self.to_guest.truncate(start);
            return;
        }
    }
}
