//! The server name of a TLS ClientHello, read from the guest's first bytes
//! without consuming them, for pass-through grants (the bytes then go
//! upstream unchanged). Guest input: every length is checked, nothing
//! panics, and a hello is at most [`MAX_HELLO`] bytes.

/// Most bytes of TLS records read while looking for a whole ClientHello.
pub const MAX_HELLO: usize = 16 << 10;

/// What the first bytes of a connection say.
#[derive(Debug, PartialEq, Eq)]
pub enum Hello {
    /// More bytes are needed.
    Incomplete,
    /// Not a TLS ClientHello (or a malformed one).
    NotTls,
    /// A complete ClientHello with this server name (`None`: no SNI).
    Tls { server_name: Option<String> },
}

/// Parses the ClientHello at the start of `buf`, which may span several
/// handshake records.
pub fn parse(buf: &[u8]) -> Hello {
    // Reassemble the handshake bytes of the leading handshake records.
    let mut hs = Vec::new();
    let mut at = 0;
    loop {
        let Some(head) = buf.get(at..at + 5) else {
            return incomplete_or_not(buf, at);
        };
        if head[0] != 0x16 || head[1] != 0x03 {
            return Hello::NotTls;
        }
        let len = usize::from(u16::from_be_bytes([head[3], head[4]]));
        if len == 0 || len > 1 << 14 {
            return Hello::NotTls;
        }
        let Some(body) = buf.get(at + 5..at + 5 + len) else {
            return if at + 5 + len > MAX_HELLO {
                Hello::NotTls
            } else {
                Hello::Incomplete
            };
        };
        hs.extend_from_slice(body);
        at += 5 + len;
        if hs.len() >= 4 {
            if hs[0] != 0x01 {
                return Hello::NotTls;
            }
            let need =
                4 + (usize::from(hs[1]) << 16 | usize::from(hs[2]) << 8 | usize::from(hs[3]));
            if need > MAX_HELLO {
                return Hello::NotTls;
            }
            if hs.len() >= need {
                return match server_name(&hs[4..need]) {
                    Some(name) => Hello::Tls { server_name: name },
                    None => Hello::NotTls,
                };
            }
        }
        if at >= MAX_HELLO {
            return Hello::NotTls;
        }
    }
}

fn incomplete_or_not(buf: &[u8], at: usize) -> Hello {
    // A partial record header that cannot start a handshake record.
    match buf.get(at..) {
        Some([b, ..]) if *b != 0x16 => Hello::NotTls,
        Some([_, v, ..]) if *v != 0x03 => Hello::NotTls,
        _ => Hello::Incomplete,
    }
}

/// A cursor over guest bytes.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Some(head)
    }

    fn u8(&mut self) -> Option<usize> {
        self.take(1).map(|b| usize::from(b[0]))
    }

    fn u16(&mut self) -> Option<usize> {
        self.take(2)
            .map(|b| usize::from(u16::from_be_bytes([b[0], b[1]])))
    }

    fn vec8(&mut self) -> Option<&'a [u8]> {
        let n = self.u8()?;
        self.take(n)
    }

    fn vec16(&mut self) -> Option<&'a [u8]> {
        let n = self.u16()?;
        self.take(n)
    }
}

/// The SNI host name of a ClientHello body: `Some(None)` when it has no
/// SNI extension, `None` when it is malformed.
fn server_name(body: &[u8]) -> Option<Option<String>> {
    let mut r = Reader(body);
    r.take(2 + 32)?; // legacy_version, random
    r.vec8()?; // legacy_session_id
    r.vec16()?; // cipher_suites
    r.vec8()?; // legacy_compression_methods
    if r.0.is_empty() {
        return Some(None);
    }
    let mut exts = Reader(r.vec16()?);
    while !exts.0.is_empty() {
        let kind = exts.u16()?;
        let data = exts.vec16()?;
        if kind != 0 {
            continue;
        }
        let mut list = Reader(Reader(data).vec16()?);
        while !list.0.is_empty() {
            let name_type = list.u8()?;
            let name = list.vec16()?;
            if name_type == 0 {
                let name = std::str::from_utf8(name).ok()?;
                let ok = !name.is_empty()
                    && name
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.' || b == b'_');
                return ok.then(|| Some(name.to_ascii_lowercase()));
            }
        }
        return Some(None);
    }
    Some(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A minimal ClientHello with `sni` (if any), in one record.
    pub(crate) fn client_hello(sni: Option<&str>) -> Vec<u8> {
        let mut body = vec![0x03, 0x03];
        body.extend([7u8; 32]);
        body.push(0); // session id
        body.extend([0, 2, 0x13, 0x01]); // one cipher suite
        body.extend([1, 0]); // null compression
        let mut exts = Vec::new();
        if let Some(name) = sni {
            let n = name.len() as u16;
            exts.extend([0, 0]);
            exts.extend((n + 5).to_be_bytes());
            exts.extend((n + 3).to_be_bytes());
            exts.push(0);
            exts.extend(n.to_be_bytes());
            exts.extend(name.as_bytes());
        }
        exts.extend([0, 43, 0, 3, 2, 3, 4]); // supported_versions
        body.extend((exts.len() as u16).to_be_bytes());
        body.extend(exts);
        let mut hs = vec![1, 0];
        hs.extend((body.len() as u16).to_be_bytes());
        hs.extend(body);
        let mut rec = vec![0x16, 0x03, 0x01];
        rec.extend((hs.len() as u16).to_be_bytes());
        rec.extend(hs);
        rec
    }

    #[test]
    fn reads_the_server_name() {
        let h = client_hello(Some("API.Example.com"));
        assert_eq!(
            parse(&h),
            Hello::Tls {
                server_name: Some("api.example.com".into())
            }
        );
        assert_eq!(parse(&client_hello(None)), Hello::Tls { server_name: None });
    }

    #[test]
    fn every_prefix_is_incomplete_and_split_records_reassemble() {
        let h = client_hello(Some("a.example"));
        for n in 0..h.len() {
            assert_eq!(parse(&h[..n]), Hello::Incomplete, "prefix {n}");
        }
        // The same handshake split over two records.
        let hs = &h[5..];
        let mut split = Vec::new();
        for part in [&hs[..10], &hs[10..]] {
            split.extend([0x16, 0x03, 0x01]);
            split.extend((part.len() as u16).to_be_bytes());
            split.extend(part);
        }
        assert!(matches!(
            parse(&split),
            Hello::Tls {
                server_name: Some(_)
            }
        ));
    }

    #[test]
    fn other_protocols_and_garbage_are_not_tls() {
        assert_eq!(parse(b"GET / HTTP/1.1\r\n"), Hello::NotTls);
        assert_eq!(parse(&[0x16, 0x02]), Hello::NotTls);
        let mut bad = client_hello(Some("x.example"));
        bad[5] = 2; // a ServerHello
        assert_eq!(parse(&bad), Hello::NotTls);
        // A name with a byte no host name has.
        let mut evil = client_hello(Some("a/b.example"));
        assert_eq!(parse(&evil), Hello::NotTls);
        // Truncated extension lengths.
        let n = evil.len();
        evil[n - 9] = 0xff;
        assert!(matches!(parse(&evil), Hello::NotTls | Hello::Incomplete));
    }
}
