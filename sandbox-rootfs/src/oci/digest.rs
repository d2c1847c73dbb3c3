//! Content digests (`sha256:<64 hex>`), the only algorithm accepted.

use std::fmt;
use std::io::{self, Read};

use sha2::{Digest as _, Sha256};

use super::OciError;

/// A validated `sha256:` digest. Its hex part is safe to use as a file
/// name (64 lowercase hex characters, nothing else).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest(String);

impl Digest {
    /// Parses `sha256:<64 lowercase hex>`; anything else (another
    /// algorithm, uppercase, a path) is refused.
    pub fn parse(s: &str) -> Result<Self, OciError> {
        let Some((alg, hex)) = s.split_once(':') else {
            return Err(OciError::BadDigest(s.chars().take(100).collect()));
        };
        if alg != "sha256" {
            return Err(OciError::UnsupportedDigest(alg.chars().take(20).collect()));
        }
        let ok = hex.len() == 64
            && hex
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
        if !ok {
            return Err(OciError::BadDigest(s.chars().take(100).collect()));
        }
        Ok(Self(hex.to_string()))
    }

    /// The digest of `bytes`.
    pub fn of(bytes: &[u8]) -> Self {
        Self(hex::encode(Sha256::digest(bytes)))
    }

    /// The digest of everything `r` yields, and how many bytes that was.
    pub fn of_reader(r: impl Read) -> io::Result<(Self, u64)> {
        let mut hashing = super::HashingReader::new(r);
        io::copy(&mut hashing, &mut io::sink())?;
        Ok(hashing.finish())
    }

    pub(crate) fn from_hash(bytes: &[u8]) -> Self {
        Self(hex::encode(bytes))
    }

    /// The 64 hex characters.
    pub fn hex(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sha256:{}", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_well_formed_sha256_digests_parse() {
        let good = format!("sha256:{}", "a".repeat(64));
        assert_eq!(Digest::parse(&good).unwrap().to_string(), good);
        for bad in [
            "sha256:",
            "sha256:ABC",
            &format!("sha256:{}", "A".repeat(64)),
            &format!("sha256:{}/..", "a".repeat(62)),
            &format!("sha256:{}", "a".repeat(65)),
            "nocolon",
        ] {
            assert!(
                matches!(Digest::parse(bad), Err(OciError::BadDigest(_))),
                "{bad}"
            );
        }
        assert!(matches!(
            Digest::parse(&format!("sha512:{}", "a".repeat(128))),
            Err(OciError::UnsupportedDigest(_))
        ));
    }

    #[test]
    fn digests_of_bytes_and_readers_agree() {
        let d = Digest::of(b"abc");
        assert_eq!(
            d.hex(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(Digest::of_reader(&b"abc"[..]).unwrap(), (d, 3));
    }
}
