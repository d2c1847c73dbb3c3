//! The host's own resolvers, from its resolver configuration
//! (`/etc/resolv.conf`, the `nameserver` lines), for DNS grants that
//! should answer the guest as the host itself would be answered.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;

/// The host's resolver configuration file.
pub const RESOLV_CONF: &str = "/etc/resolv.conf";

/// The resolvers named in the host's `/etc/resolv.conf`, in order, on
/// port 53. An error says which file could not be read or that it names
/// none.
pub fn host_resolvers() -> io::Result<Vec<SocketAddr>> {
    resolvers_in(Path::new(RESOLV_CONF))
}

/// The resolvers named in the resolv.conf-format file at `path`.
pub fn resolvers_in(path: &Path) -> io::Result<Vec<SocketAddr>> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| io::Error::new(e.kind(), format!("reading {}: {e}", path.display())))?;
    let found = parse(&text);
    if found.is_empty() {
        return Err(io::Error::new(
            io::ErrorKind::NotFound,
            format!("{} names no nameserver", path.display()),
        ));
    }
    Ok(found)
}

/// The `nameserver` addresses of resolv.conf text (comments, other
/// options and malformed lines ignored; an IPv6 zone suffix dropped).
pub fn parse(text: &str) -> Vec<SocketAddr> {
    text.lines()
        .filter_map(|line| {
            let mut words = line.split_whitespace();
            (words.next()? == "nameserver").then_some(())?;
            let addr = words.next()?;
            let addr = addr.split('%').next()?;
            addr.parse::<IpAddr>()
                .ok()
                .map(|ip| SocketAddr::new(ip, 53))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nameserver_lines_in_order() {
        let text = "# generated\nsearch example.com\nnameserver 192.0.2.53\n\
                    ;nameserver 192.0.2.1\nnameserver fe80::1%eth0\nnameserver bogus\n\
                    options ndots:2\n nameserver 198.51.100.7 # trailing\n";
        let got: Vec<String> = parse(text).iter().map(ToString::to_string).collect();
        assert_eq!(got, ["192.0.2.53:53", "[fe80::1]:53", "198.51.100.7:53"]);
        assert!(parse("").is_empty());
    }

    #[test]
    fn a_file_without_resolvers_is_an_error() {
        let p = std::env::temp_dir().join(format!("sandbox-resolv-{}", std::process::id()));
        std::fs::write(&p, "search x\n").unwrap();
        assert!(resolvers_in(&p).is_err());
        std::fs::write(&p, "nameserver 127.0.0.53\n").unwrap();
        assert_eq!(
            resolvers_in(&p).unwrap(),
            ["127.0.0.53:53".parse().unwrap()]
        );
        std::fs::remove_file(p).unwrap();
    }
}
