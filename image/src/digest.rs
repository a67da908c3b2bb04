//! Content digests (`algorithm:hex`), validated on parse so that a digest can
//! be used as a file name without further checks.

use std::fmt;
use std::str::FromStr;

use sha2::Digest as _;

/// A validated `sha256:<64 hex>` or `sha512:<128 hex>` digest.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest {
    algorithm: Algorithm,
    hex: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Algorithm {
    Sha256,
    Sha512,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid digest {0:?}: expected sha256:<64 lowercase hex> or sha512:<128 lowercase hex>")]
pub struct ParseDigestError(pub String);

impl Digest {
    pub fn algorithm(&self) -> Algorithm {
        self.algorithm
    }

    /// The hex part alone: safe as a file name.
    pub fn hex(&self) -> &str {
        &self.hex
    }

    /// sha256 of `data`.
    pub fn sha256_of(data: &[u8]) -> Self {
        Self {
            algorithm: Algorithm::Sha256,
            hex: hex::encode(sha2::Sha256::digest(data)),
        }
    }

    pub fn from_sha256(bytes: &[u8]) -> Self {
        Self {
            algorithm: Algorithm::Sha256,
            hex: hex::encode(bytes),
        }
    }

    /// A hasher for this digest's algorithm, to verify streamed content.
    pub fn hasher(&self) -> Hasher {
        match self.algorithm {
            Algorithm::Sha256 => Hasher::Sha256(sha2::Sha256::new()),
            Algorithm::Sha512 => Hasher::Sha512(sha2::Sha512::new()),
        }
    }
}

/// Streaming hasher matching a [`Digest`]'s algorithm.
#[derive(Clone)]
pub enum Hasher {
    Sha256(sha2::Sha256),
    Sha512(sha2::Sha512),
}

impl Hasher {
    pub fn sha256() -> Self {
        Hasher::Sha256(sha2::Sha256::new())
    }

    pub fn update(&mut self, data: &[u8]) {
        match self {
            Hasher::Sha256(h) => h.update(data),
            Hasher::Sha512(h) => h.update(data),
        }
    }

    pub fn finish(self) -> Digest {
        match self {
            Hasher::Sha256(h) => Digest {
                algorithm: Algorithm::Sha256,
                hex: hex::encode(h.finalize()),
            },
            Hasher::Sha512(h) => Digest {
                algorithm: Algorithm::Sha512,
                hex: hex::encode(h.finalize()),
            },
        }
    }
}

impl FromStr for Digest {
    type Err = ParseDigestError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || ParseDigestError(s.to_string());
        let (alg, hex) = s.split_once(':').ok_or_else(err)?;
        let (algorithm, len) = match alg {
            "sha256" => (Algorithm::Sha256, 64),
            "sha512" => (Algorithm::Sha512, 128),
            _ => return Err(err()),
        };
        if hex.len() != len || !hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
            return Err(err());
        }
        Ok(Self {
            algorithm,
            hex: hex.to_string(),
        })
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let alg = match self.algorithm {
            Algorithm::Sha256 => "sha256",
            Algorithm::Sha512 => "sha512",
        };
        write!(f, "{alg}:{}", self.hex)
    }
}

impl serde::Serialize for Digest {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Digest {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints_sha256() {
        let s = format!("sha256:{}", "ab".repeat(32));
        let d: Digest = s.parse().unwrap();
        assert_eq!(d.to_string(), s);
        assert_eq!(d.hex(), "ab".repeat(32));
    }

    #[test]
    fn rejects_paths_uppercase_and_short_digests() {
        for bad in [
            "sha256:../../etc/passwd",
            &format!("sha256:{}", "AB".repeat(32)),
            "sha256:abc",
            &format!("md5:{}", "ab".repeat(16)),
            "",
            &"ab".repeat(32),
        ] {
            assert!(bad.parse::<Digest>().is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn hasher_matches_one_shot() {
        let mut h = Hasher::sha256();
        h.update(b"hello ");
        h.update(b"world");
        assert_eq!(h.finish(), Digest::sha256_of(b"hello world"));
        assert_eq!(
            Digest::sha256_of(b"").to_string(),
            "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }
}
