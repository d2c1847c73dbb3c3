//! The frame port: the one interface between a guest network device and
//! the stack. Whatever carries the guest's Ethernet frames (UML's `bess`
//! socket, a virtio-net device, an in-memory test guest) hands the stack a
//! [`FramePort`]: frames from the guest arrive on `rx`, frames for the guest
//! leave on `tx`.

use std::net::{Ipv4Addr, SocketAddrV4};

use smoltcp::phy::ChecksumCapabilities;
use smoltcp::wire::{
    EthernetAddress, EthernetFrame, EthernetProtocol, EthernetRepr, IpAddress, IpProtocol,
    Ipv4Packet, Ipv4Repr, UdpPacket, UdpRepr,
};
use tokio::sync::mpsc;

/// Largest Ethernet frame any link carries (a 65535-byte MTU plus the
/// 14-byte header); each network enforces its own MTU below that.
pub const MAX_FRAME: usize = 65535 + 14;

/// One end of a frame link.
pub struct FramePort {
    /// Frames arriving at this end.
    pub rx: mpsc::Receiver<Vec<u8>>,
    /// Frames leaving this end.
    pub tx: mpsc::Sender<Vec<u8>>,
}

impl FramePort {
    /// Two connected ends, each queue holding up to `depth` frames.
    pub fn pair(depth: usize) -> (FramePort, FramePort) {
        let (a_tx, b_rx) = mpsc::channel(depth);
        let (b_tx, a_rx) = mpsc::channel(depth);
        (
            FramePort { rx: a_rx, tx: a_tx },
            FramePort { rx: b_rx, tx: b_tx },
        )
    }
}

/// Builds an Ethernet/IPv4/UDP frame.
pub(crate) fn udp_frame(
    src_mac: EthernetAddress,
    dst_mac: EthernetAddress,
    src: SocketAddrV4,
    dst: SocketAddrV4,
    payload: &[u8],
) -> Vec<u8> {
    let udp = UdpRepr {
        src_port: src.port(),
        dst_port: dst.port(),
    };
    let ip = Ipv4Repr {
        src_addr: *src.ip(),
        dst_addr: *dst.ip(),
        next_header: IpProtocol::Udp,
        payload_len: udp.header_len() + payload.len(),
        hop_limit: 64,
    };
    let eth = EthernetRepr {
        src_addr: src_mac,
        dst_addr: dst_mac,
        ethertype: EthernetProtocol::Ipv4,
    };
    let len = eth.buffer_len() + ip.buffer_len() + ip.payload_len;
    let mut buf = vec![0u8; len];
    let caps = ChecksumCapabilities::default();
    let mut frame = EthernetFrame::new_unchecked(&mut buf[..]);
    eth.emit(&mut frame);
    let mut ipp = Ipv4Packet::new_unchecked(frame.payload_mut());
    ip.emit(&mut ipp, &caps);
    let mut udpp = UdpPacket::new_unchecked(ipp.payload_mut());
    udp.emit(
        &mut udpp,
        &IpAddress::Ipv4(*src.ip()),
        &IpAddress::Ipv4(*dst.ip()),
        payload.len(),
        |p| p.copy_from_slice(payload),
        &caps,
    );
    buf
}

/// What the stack needs to know about a guest frame before smoltcp sees it.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Classified<'a> {
    /// ARP or IPv4 that smoltcp handles as is.
    Stack,
    /// A TCP SYN (without ACK) opening a new connection.
    TcpSyn {
        src: SocketAddrV4,
        dst: SocketAddrV4,
    },
    /// A UDP datagram.
    Udp {
        src_mac: EthernetAddress,
        src: SocketAddrV4,
        dst: SocketAddrV4,
        payload: &'a [u8],
    },
    /// Dropped: malformed, oversized, or a protocol we do not carry.
    Drop(&'static str),
}

/// Parses just enough of a guest frame to route it; never panics. Frames
/// longer than `max_frame` are dropped, and with `guest` set, IPv4 from any
/// other source address (no spoofing).
pub(crate) fn classify(frame: &[u8], max_frame: usize, guest: Option<Ipv4Addr>) -> Classified<'_> {
    if frame.len() > max_frame {
        return Classified::Drop("oversized frame");
    }
    let Ok(eth) = EthernetFrame::new_checked(frame) else {
        return Classified::Drop("short Ethernet frame");
    };
    match eth.ethertype() {
        EthernetProtocol::Arp => return Classified::Stack,
        EthernetProtocol::Ipv4 => {}
        _ => return Classified::Drop("not IPv4 or ARP"),
    }
    let payload = &frame[14..];
    let Ok(ip) = Ipv4Packet::new_checked(payload) else {
        return Classified::Drop("malformed IPv4 header");
    };
    if !ip.verify_checksum() {
        return Classified::Drop("bad IPv4 checksum");
    }
    if ip.more_frags() || ip.frag_offset() != 0 {
        return Classified::Drop("IPv4 fragment");
    }
    let (src_ip, dst_ip): (Ipv4Addr, Ipv4Addr) = (ip.src_addr(), ip.dst_addr());
    // smoltcp would answer such a source (a reset to 0.0.0.0 trips an
    // assertion in it); no guest has a reason to send from one.
    if src_ip.is_unspecified()
        || src_ip.is_broadcast()
        || src_ip.is_multicast()
        || src_ip.is_loopback()
    {
        return Classified::Drop("invalid IPv4 source address");
    }
    if guest.is_some_and(|g| g != src_ip) {
        return Classified::Drop("IPv4 source is not the guest's address");
    }
    let header_len = usize::from(ip.header_len());
    let total = usize::from(ip.total_len());
    let Some(body) = payload.get(header_len..total) else {
        return Classified::Drop("IPv4 length past the frame");
    };
    match ip.next_header() {
        IpProtocol::Tcp => {
            let Ok(tcp) = smoltcp::wire::TcpPacket::new_checked(body) else {
                return Classified::Drop("malformed TCP header");
            };
            if tcp.syn() && !tcp.ack() {
                Classified::TcpSyn {
                    src: SocketAddrV4::new(src_ip, tcp.src_port()),
                    dst: SocketAddrV4::new(dst_ip, tcp.dst_port()),
                }
            } else {
                Classified::Stack
            }
        }
        IpProtocol::Udp => {
            let Ok(udp) = UdpPacket::new_checked(body) else {
                return Classified::Drop("malformed UDP header");
            };
            if !udp.verify_checksum(&IpAddress::Ipv4(src_ip), &IpAddress::Ipv4(dst_ip)) {
                return Classified::Drop("bad UDP checksum");
            }
            let len = usize::from(udp.len());
            Classified::Udp {
                src_mac: eth.src_addr(),
                src: SocketAddrV4::new(src_ip, udp.src_port()),
                dst: SocketAddrV4::new(dst_ip, udp.dst_port()),
                payload: &body[8..len],
            }
        }
        IpProtocol::Icmp => Classified::Stack,
        _ => Classified::Drop("IPv4 protocol not carried"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn udp_frames_round_trip() {
        let a = EthernetAddress([2, 0, 0, 0, 0, 1]);
        let b = EthernetAddress([2, 0, 0, 0, 0, 2]);
        let src: SocketAddrV4 = "10.0.2.15:5353".parse().unwrap();
        let dst: SocketAddrV4 = "10.0.2.3:53".parse().unwrap();
        let f = udp_frame(a, b, src, dst, b"hello");
        match classify(&f, 1514, None) {
            Classified::Udp {
                src_mac,
                src: s,
                dst: d,
                payload,
            } => {
                assert_eq!((src_mac, s, d, payload), (a, src, dst, &b"hello"[..]));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn garbage_is_dropped_not_panicked_on() {
        assert!(matches!(classify(&[], 1514, None), Classified::Drop(_)));
        assert!(matches!(
            classify(&[0u8; 13], 1514, None),
            Classified::Drop(_)
        ));
        assert!(matches!(
            classify(&[0u8; 9000], 1514, None),
            Classified::Drop(_)
        ));
        let a = EthernetAddress([2, 0, 0, 0, 0, 1]);
        let good = udp_frame(
            a,
            a,
            "1.2.3.4:1".parse().unwrap(),
            "5.6.7.8:2".parse().unwrap(),
            b"xyz",
        );
        for i in 14..good.len() {
            let mut bad = good.clone();
            bad[i] ^= 0x5a;
            let _ = classify(&bad, 1514, None);
            let _ = classify(&good[..i], 1514, None);
        }
        let spoofed = udp_frame(
            a,
            a,
            "1.2.3.5:1".parse().unwrap(),
            "5.6.7.8:2".parse().unwrap(),
            b"xyz",
        );
        let me = Some(Ipv4Addr::new(1, 2, 3, 4));
        assert!(matches!(classify(&good, 1514, me), Classified::Udp { .. }));
        assert_eq!(
            classify(&spoofed, 1514, me),
            Classified::Drop("IPv4 source is not the guest's address")
        );
        let zero = udp_frame(
            a,
            a,
            "0.0.0.0:1".parse().unwrap(),
            "5.6.7.8:2".parse().unwrap(),
            b"xyz",
        );
        assert_eq!(
            classify(&zero, 1514, None),
            Classified::Drop("invalid IPv4 source address")
        );
        let mut bad = good.clone();
        bad[14 + 10] ^= 1; // IPv4 checksum
        assert_eq!(
            classify(&bad, 1514, None),
            Classified::Drop("bad IPv4 checksum")
        );
        let mut bad = good.clone();
        let n = bad.len();
        bad[n - 1] ^= 1; // payload, so the UDP checksum fails
        assert_eq!(
            classify(&bad, 1514, None),
            Classified::Drop("bad UDP checksum")
        );
    }
}
