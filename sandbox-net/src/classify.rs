//! Classification of destination addresses for policy decisions.
//!
//! IPv4-mapped IPv6 (`::ffff:a.b.c.d`), IPv4-compatible and NAT64
//! (`64:ff9b::/96`, `64:ff9b:1::/48`) addresses are classified by the IPv4
//! address they embed, so `::ffff:127.0.0.1` is loopback, not "public".

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// What kind of address a flow goes to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DstClass {
    /// 127.0.0.0/8, ::1.
    Loopback,
    /// RFC 1918, 100.64.0.0/10 (CGNAT), fc00::/7 (unique local).
    Private,
    /// 169.254.0.0/16, fe80::/10.
    LinkLocal,
    /// 224.0.0.0/4, ff00::/8.
    Multicast,
    /// 255.255.255.255.
    Broadcast,
    /// 192.0.2.0/24, 198.51.100.0/24, 203.0.113.0/24, 2001:db8::/32.
    Documentation,
    /// Everything else that is not routable on the internet: 0.0.0.0/8,
    /// 192.0.0.0/24, 198.18.0.0/15 (benchmarking), 240.0.0.0/4, ::, and the
    /// other special IPv6 blocks.
    Reserved,
    /// A public internet address.
    Public,
}

impl DstClass {
    /// Classifies `ip`, looking through IPv4-mapped and NAT64 forms.
    pub fn of(ip: IpAddr) -> Self {
        match ip {
            IpAddr::V4(v4) => classify_v4(v4),
            IpAddr::V6(v6) => match embedded_v4(v6) {
                Some(v4) => classify_v4(v4),
                None => classify_v6(v6),
            },
        }
    }

    /// True for [`DstClass::Public`].
    pub fn is_public(self) -> bool {
        self == Self::Public
    }

    /// True for destinations that are the host itself or its link rather
    /// than a network beyond it: loopback, link-local (cloud metadata
    /// services live at 169.254.169.254), multicast, broadcast and the
    /// reserved blocks (0.0.0.0/8 reaches the host's own sockets on
    /// Linux). Wildcard and predicate grants never match these, and
    /// [`crate::DirectConnector`] refuses them unless told otherwise.
    pub fn is_special_use(self) -> bool {
        matches!(
            self,
            Self::Loopback | Self::LinkLocal | Self::Multicast | Self::Broadcast | Self::Reserved
        )
    }
}

/// The IPv4 address inside an IPv4-mapped, IPv4-compatible or NAT64 IPv6
/// address.
pub fn embedded_v4(v6: Ipv6Addr) -> Option<Ipv4Addr> {
    let s = v6.segments();
    let o = v6.octets();
    let tail = Ipv4Addr::new(o[12], o[13], o[14], o[15]);
    // ::ffff:a.b.c.d
    if s[..5] == [0, 0, 0, 0, 0] && s[5] == 0xffff {
        return Some(tail);
    }
    // 64:ff9b::/96 (well-known NAT64 prefix, RFC 6052)
    if s[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
        return Some(tail);
    }
    // 64:ff9b:1::/48 (local-use NAT64, RFC 8215): /96 form inside it.
    if s[0] == 0x64 && s[1] == 0xff9b && s[2] == 1 && s[3..6] == [0, 0, 0] {
        return Some(tail);
    }
    // ::a.b.c.d (deprecated IPv4-compatible), but not :: and ::1.
    if s[..6] == [0, 0, 0, 0, 0, 0] && u32::from(tail) > 1 {
        return Some(tail);
    }
    None
}

fn classify_v4(ip: Ipv4Addr) -> DstClass {
    let o = ip.octets();
    if ip.is_loopback() {
        DstClass::Loopback
    } else if ip.is_broadcast() {
        DstClass::Broadcast
    } else if ip.is_private() || (o[0] == 100 && (o[1] & 0xc0) == 64) {
        DstClass::Private
    } else if ip.is_link_local() {
        DstClass::LinkLocal
    } else if ip.is_multicast() {
        DstClass::Multicast
    } else if ip.is_documentation() {
        DstClass::Documentation
    } else if o[0] == 0
        || o[0] >= 240
        || (o[0] == 192 && o[1] == 0 && o[2] == 0)
        || (o[0] == 198 && (o[1] & 0xfe) == 18)
    {
        DstClass::Reserved
    } else {
        DstClass::Public
    }
}

fn classify_v6(ip: Ipv6Addr) -> DstClass {
    let s = ip.segments();
    if ip.is_loopback() {
        DstClass::Loopback
    } else if ip.is_multicast() {
        DstClass::Multicast
    } else if (s[0] & 0xfe00) == 0xfc00 {
        DstClass::Private
    } else if (s[0] & 0xffc0) == 0xfe80 {
        DstClass::LinkLocal
    } else if s[0] == 0x2001 && s[1] == 0x0db8 {
        DstClass::Documentation
    } else if ip.is_unspecified()
        || (s[0] & 0xe000) != 0x2000 // outside 2000::/3 global unicast
        || (s[0] == 0x2001 && s[1] < 0x0200) // 2001::/23 IETF protocol assignments
        || s[0] == 0x2002 // 6to4
        || (s[0] == 0x3fff && s[1] < 0x1000)
    // 3fff::/20 documentation (RFC 9637)
    {
        if s[0] == 0x3fff {
            DstClass::Documentation
        } else {
            DstClass::Reserved
        }
    } else {
        DstClass::Public
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(s: &str) -> DstClass {
        DstClass::of(s.parse().unwrap())
    }

    #[test]
    fn ipv4_classes() {
        assert_eq!(c("127.0.0.1"), DstClass::Loopback);
        assert_eq!(c("127.255.0.9"), DstClass::Loopback);
        assert_eq!(c("10.1.2.3"), DstClass::Private);
        assert_eq!(c("172.16.0.1"), DstClass::Private);
        assert_eq!(c("172.32.0.1"), DstClass::Public);
        assert_eq!(c("192.168.1.1"), DstClass::Private);
        assert_eq!(c("100.64.0.1"), DstClass::Private);
        assert_eq!(c("100.128.0.1"), DstClass::Public);
        assert_eq!(c("169.254.169.254"), DstClass::LinkLocal);
        assert_eq!(c("224.0.0.251"), DstClass::Multicast);
        assert_eq!(c("255.255.255.255"), DstClass::Broadcast);
        assert_eq!(c("192.0.2.7"), DstClass::Documentation);
        assert_eq!(c("198.51.100.7"), DstClass::Documentation);
        assert_eq!(c("203.0.113.7"), DstClass::Documentation);
        assert_eq!(c("0.0.0.0"), DstClass::Reserved);
        assert_eq!(c("198.18.0.1"), DstClass::Reserved);
        assert_eq!(c("240.0.0.1"), DstClass::Reserved);
        assert_eq!(c("192.0.0.8"), DstClass::Reserved);
        assert_eq!(c("1.1.1.1"), DstClass::Public);
        assert_eq!(c("8.8.8.8"), DstClass::Public);
    }

    #[test]
    fn ipv6_classes() {
        assert_eq!(c("::1"), DstClass::Loopback);
        assert_eq!(c("::"), DstClass::Reserved);
        assert_eq!(c("fd00::1"), DstClass::Private);
        assert_eq!(c("fe80::1"), DstClass::LinkLocal);
        assert_eq!(c("ff02::1"), DstClass::Multicast);
        assert_eq!(c("2001:db8::1"), DstClass::Documentation);
        assert_eq!(c("3fff::1"), DstClass::Documentation);
        assert_eq!(c("2606:4700::1111"), DstClass::Public);
        assert_eq!(c("2002::1"), DstClass::Reserved);
    }

    #[test]
    fn special_use() {
        for a in [
            "127.0.0.1",
            "0.0.0.0",
            "169.254.169.254",
            "::1",
            "::ffff:127.0.0.1",
            "fe80::1",
            "224.0.0.1",
            "255.255.255.255",
            "::",
        ] {
            assert!(c(a).is_special_use(), "{a}");
        }
        for a in [
            "10.0.0.1",
            "203.0.113.80",
            "1.1.1.1",
            "2606:4700::1111",
            "fd00::1",
        ] {
            assert!(!c(a).is_special_use(), "{a}");
        }
    }

    #[test]
    fn embedded_ipv4_is_classified_by_what_it_embeds() {
        assert_eq!(c("::ffff:127.0.0.1"), DstClass::Loopback);
        assert_eq!(c("::ffff:10.0.0.1"), DstClass::Private);
        assert_eq!(c("::ffff:169.254.169.254"), DstClass::LinkLocal);
        assert_eq!(c("64:ff9b::7f00:1"), DstClass::Loopback);
        assert_eq!(c("64:ff9b::a9fe:a9fe"), DstClass::LinkLocal);
        assert_eq!(c("64:ff9b:1::c0a8:1"), DstClass::Private);
        assert_eq!(c("64:ff9b::808:808"), DstClass::Public);
        assert_eq!(c("::127.0.0.1"), DstClass::Loopback);
    }
}
