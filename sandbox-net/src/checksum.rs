//! The TCP checksum of IPv4 frames, computed and checked by the link
//! device of the stack and of the sim guest in place of smoltcp's.
//!
//! smoltcp sums 16-bit words into a 32-bit accumulator; on 64 KiB
//! segments that loop was the largest single item of the stack's profile.
//! This sums native-endian 32-bit words into a 64-bit accumulator (which
//! the compiler vectorizes) and folds once: the Internet checksum does not
//! depend on byte order or word size as long as every piece starts on an
//! even offset (RFC 1071, section 2), so the folded sum only needs its
//! bytes in native order when written back.

use std::ops::Range;

/// The unfolded sum of `data` as native-endian 32-bit words, the last one
/// padded with zero bytes.
fn sum(data: &[u8]) -> u64 {
    let mut chunks = data.chunks_exact(4);
    let mut acc: u64 = (&mut chunks)
        .map(|c| u64::from(u32::from_ne_bytes([c[0], c[1], c[2], c[3]])))
        .sum();
    let rest = chunks.remainder();
    let mut tail = [0u8; 4];
    tail[..rest.len()].copy_from_slice(rest);
    acc += u64::from(u32::from_ne_bytes(tail));
    acc
}

/// Folds an unfolded sum to 16 bits (ones' complement addition).
fn fold(mut acc: u64) -> u16 {
    while acc >> 16 != 0 {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    acc as u16
}

/// Where the TCP segment of an unfragmented IPv4/TCP Ethernet frame is,
/// with the sum of its pseudo-header; `None` for any other frame or a
/// malformed one (smoltcp's parser judges those).
fn tcp_segment(frame: &[u8]) -> Option<(Range<usize>, u64)> {
    const ETH: usize = 14;
    if frame.len() < ETH + 20 || frame[12..14] != [0x08, 0x00] {
        return None;
    }
    let ip = &frame[ETH..];
    let ihl = usize::from(ip[0] & 0x0f) * 4;
    let total = usize::from(u16::from_be_bytes([ip[2], ip[3]]));
    // Fragments (more-fragments set or a non-zero offset) carry part of a
    // segment only.
    let fragment = u16::from_be_bytes([ip[6], ip[7]]) & 0x3fff != 0;
    if ip[0] >> 4 != 4 || ip[9] != 6 || fragment || ihl < 20 || total > ip.len() {
        return None;
    }
    let len = total.checked_sub(ihl).filter(|l| *l >= 20)?;
    let mut pseudo = [0u8; 12];
    pseudo[..8].copy_from_slice(&ip[12..20]);
    pseudo[9] = 6;
    pseudo[10..].copy_from_slice(&(len as u16).to_be_bytes());
    Some((ETH + ihl..ETH + total, sum(&pseudo)))
}

/// Writes the TCP checksum of an IPv4/TCP frame (other frames are left
/// as they are).
pub(crate) fn fill_tcp(frame: &mut [u8]) {
    let Some((seg, pseudo)) = tcp_segment(frame) else {
        return;
    };
    let tcp = &mut frame[seg];
    tcp[16..18].fill(0);
    let csum = !fold(pseudo + sum(tcp));
    tcp[16..18].copy_from_slice(&csum.to_ne_bytes());
}

/// Whether a frame's TCP checksum is right (true for frames that are not
/// unfragmented IPv4/TCP).
pub(crate) fn tcp_ok(frame: &[u8]) -> bool {
    match tcp_segment(frame) {
        Some((seg, pseudo)) => fold(pseudo + sum(&frame[seg])) == 0xffff,
        None => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use smoltcp::phy::ChecksumCapabilities;
    use smoltcp::wire::{
        EthernetAddress, EthernetFrame, EthernetProtocol, EthernetRepr, IpAddress, IpProtocol,
        Ipv4Packet, Ipv4Repr, TcpControl, TcpPacket, TcpRepr, TcpSeqNumber,
    };

    /// An Ethernet/IPv4/TCP frame with `payload`, checksummed by smoltcp.
    fn frame(payload: &[u8]) -> Vec<u8> {
        frame_over(payload, 0, false)
    }

    /// As [`frame`], written over a buffer of `fill` bytes, with the
    /// options of a SYN if `syn`.
    fn frame_over(payload: &[u8], fill: u8, syn: bool) -> Vec<u8> {
        let (src, dst) = ([10, 0, 2, 15].into(), [203, 0, 113, 5].into());
        let tcp = TcpRepr {
            src_port: 40000,
            dst_port: 443,
            control: if syn {
                TcpControl::Syn
            } else {
                TcpControl::Psh
            },
            seq_number: TcpSeqNumber(0x1234_5678),
            ack_number: Some(TcpSeqNumber(7)),
            window_len: 512,
            // Options whose lengths (4 + 3 + 2) leave padding to fill.
            window_scale: syn.then_some(7),
            max_seg_size: syn.then_some(64960),
            sack_permitted: syn,
            sack_ranges: [None; 3],
            timestamp: None,
            payload,
        };
        let ip = Ipv4Repr {
            src_addr: src,
            dst_addr: dst,
            next_header: IpProtocol::Tcp,
            payload_len: tcp.header_len() + payload.len(),
            hop_limit: 64,
        };
        let eth = EthernetRepr {
            src_addr: EthernetAddress([2, 0, 0, 0, 0, 1]),
            dst_addr: EthernetAddress([2, 0, 0, 0, 0, 2]),
            ethertype: EthernetProtocol::Ipv4,
        };
        let mut buf = vec![fill; 14 + ip.buffer_len() + tcp.buffer_len()];
        let caps = ChecksumCapabilities::default();
        let mut f = EthernetFrame::new_unchecked(&mut buf[..]);
        eth.emit(&mut f);
        let mut p = Ipv4Packet::new_unchecked(f.payload_mut());
        ip.emit(&mut p, &caps);
        tcp.emit(
            &mut TcpPacket::new_unchecked(p.payload_mut()),
            &IpAddress::Ipv4(src),
            &IpAddress::Ipv4(dst),
            &caps,
        );
        buf
    }

    #[test]
    fn agrees_with_smoltcp_on_every_length_and_content() {
        let mut x: u32 = 0x9e37_79b9;
        for len in (0..70).chain([1459, 1460, 4095, 64_960, 65_000 - 40]) {
            let payload: Vec<u8> = (0..len)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 17;
                    x ^= x << 5;
                    x as u8
                })
                .collect();
            let want = frame(&payload);
            assert!(tcp_ok(&want), "smoltcp's checksum refused at {len}");
            let mut ours = want.clone();
            ours[14 + 20 + 16] ^= 0xa5;
            assert!(!tcp_ok(&ours), "a wrong checksum passed at {len}");
            fill_tcp(&mut ours);
            assert_eq!(ours, want, "payload of {len} bytes");
        }
    }

    /// Reused frame buffers (`pool.rs`) are process-wide, so a frame must
    /// overwrite every byte of the buffer it is written into: smoltcp's
    /// emitters write each header field, the option padding and the
    /// payload. Pinned here against a smoltcp upgrade.
    #[test]
    fn smoltcp_overwrites_every_byte_of_a_reused_buffer() {
        for syn in [false, true] {
            let payload = vec![0x5a; if syn { 0 } else { 20_000 }];
            assert_eq!(
                frame_over(&payload, 0xee, syn),
                frame_over(&payload, 0x00, syn),
                "syn {syn}"
            );
        }
    }

    #[test]
    fn other_and_malformed_frames_are_left_alone() {
        let good = frame(b"hello");
        // A truncated IP total length, a fragment, an ARP ethertype, UDP.
        let mut cases = vec![good[..30].to_vec()];
        let mut frag = good.clone();
        frag[14 + 6] = 0x20; // more fragments
        cases.push(frag);
        let mut arp = good.clone();
        arp[12..14].copy_from_slice(&[0x08, 0x06]);
        cases.push(arp);
        let mut udp = good.clone();
        udp[14 + 9] = 17;
        cases.push(udp);
        let mut short = good.clone();
        short[14 + 2..14 + 4].copy_from_slice(&30u16.to_be_bytes()); // 10-byte TCP
        cases.push(short);
        let mut long = good.clone();
        long[14 + 2..14 + 4].copy_from_slice(&9000u16.to_be_bytes());
        cases.push(long);
        for mut f in cases {
            let before = f.clone();
            assert!(tcp_ok(&f));
            fill_tcp(&mut f);
            assert_eq!(f, before);
        }
    }
}
