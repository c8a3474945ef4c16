//! Content digests (`sha256:<64 lowercase hex>`), the identity of every blob.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use sha2::Digest as _;

use crate::clip;

/// A SHA-256 content digest. The only algorithm Docker and OCI registries require, and the only
/// one we accept: a second algorithm would give one blob two identities in every store.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest([u8; 32]);

/// Why a string is not a valid digest.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DigestError {
    #[error("digest {input:?} has no algorithm prefix: expected sha256:<64 hex characters>")]
    MissingAlgorithm { input: String },
    #[error("digest algorithm {algorithm:?} is not supported: only sha256 is")]
    UnsupportedAlgorithm { algorithm: String },
    #[error("a sha256 digest has 64 hex characters, {input:?} has {len}")]
    WrongLength { input: String, len: usize },
    #[error(
        "digest {input:?} has {found:?} at position {position}: only lowercase hex (0-9, a-f) \
         is allowed"
    )]
    InvalidCharacter {
        input: String,
        found: char,
        position: usize,
    },
}

impl Digest {
    /// The algorithm prefix, as written in `sha256:<hex>`.
    pub const ALGORITHM: &'static str = "sha256";

    /// Wraps raw SHA-256 output.
    pub const fn from_sha256_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    /// Hashes a byte slice held in memory. Large blobs go through [`Sha256Hasher`] instead.
    pub fn of(bytes: &[u8]) -> Self {
        Self(sha2::Sha256::digest(bytes).into())
    }

    /// Parses the bare 64-character hex form (no `sha256:` prefix), as used in file names.
    pub fn from_hex(hex: &str) -> Result<Self, DigestError> {
        parse_hex(hex, hex)
    }

    /// The 64-character lowercase hex form without the algorithm prefix.
    pub fn hex(&self) -> String {
        hex::encode(self.0)
    }

    /// The raw 32 digest bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

fn parse_hex(hex_part: &str, whole: &str) -> Result<Digest, DigestError> {
    if let Some((position, found)) = hex_part
        .char_indices()
        .find(|(_, c)| !matches!(c, '0'..='9' | 'a'..='f'))
    {
        return Err(DigestError::InvalidCharacter {
            input: clip(whole),
            found,
            position,
        });
    }
    if hex_part.len() != 64 {
        return Err(DigestError::WrongLength {
            input: clip(whole),
            len: hex_part.len(),
        });
    }
    let mut bytes = [0u8; 32];
    // Every character was checked above, so decoding cannot fail; map the error anyway rather
    // than unwrap, to keep this function panic-free by construction.
    hex::decode_to_slice(hex_part, &mut bytes).map_err(|_| DigestError::WrongLength {
        input: clip(whole),
        len: hex_part.len(),
    })?;
    Ok(Digest(bytes))
}

impl FromStr for Digest {
    type Err = DigestError;

    fn from_str(input: &str) -> Result<Self, Self::Err> {
        let Some((algorithm, hex_part)) = input.split_once(':') else {
            return Err(DigestError::MissingAlgorithm { input: clip(input) });
        };
        if algorithm != Self::ALGORITHM {
            return Err(DigestError::UnsupportedAlgorithm {
                algorithm: clip(algorithm),
            });
        }
        parse_hex(hex_part, input)
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", Self::ALGORITHM, self.hex())
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Digest({self})")
    }
}

impl Serialize for Digest {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Digest {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// Incremental SHA-256 over a stream of chunks, yielding a [`Digest`].
#[derive(Clone, Default)]
pub struct Sha256Hasher(sha2::Sha256);

impl Sha256Hasher {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn update(&mut self, chunk: &[u8]) {
        self.0.update(chunk);
    }

    pub fn finish(self) -> Digest {
        Digest(self.0.finalize().into())
    }
}

impl fmt::Debug for Sha256Hasher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Sha256Hasher")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EMPTY: &str = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    #[test]
    fn parses_and_displays_round_trip() {
        let digest: Digest = EMPTY.parse().unwrap();
        assert_eq!(digest.to_string(), EMPTY);
        assert_eq!(digest, Digest::of(b""));
        assert_eq!(Digest::from_hex(&digest.hex()).unwrap(), digest);
    }

    #[test]
    fn streaming_hash_matches_one_shot() {
        let mut hasher = Sha256Hasher::new();
        hasher.update(b"hello ");
        hasher.update(b"world");
        assert_eq!(hasher.finish(), Digest::of(b"hello world"));
    }

    #[test]
    fn rejects_malformed_input_with_named_problem() {
        let hex64 = "a".repeat(64);
        assert!(matches!(
            hex64.parse::<Digest>(),
            Err(DigestError::MissingAlgorithm { .. })
        ));
        assert!(matches!(
            format!("sha512:{hex64}").parse::<Digest>(),
            Err(DigestError::UnsupportedAlgorithm { algorithm }) if algorithm == "sha512"
        ));
        assert!(matches!(
            "sha256:abc".parse::<Digest>(),
            Err(DigestError::WrongLength { len: 3, .. })
        ));
        let upper = format!("sha256:{}", "A".repeat(64));
        let err = upper.parse::<Digest>().unwrap_err();
        assert!(matches!(
            err,
            DigestError::InvalidCharacter {
                found: 'A',
                position: 0,
                ..
            }
        ));
        assert!(err.to_string().contains("lowercase hex"));
    }

    #[test]
    fn error_messages_clip_hostile_input() {
        let long = format!("sha256:{}", "z".repeat(10_000));
        let message = long.parse::<Digest>().unwrap_err().to_string();
        assert!(message.len() < 300, "{message}");
    }

    #[test]
    fn serde_uses_the_string_form() {
        let digest = Digest::of(b"x");
        let json = serde_json::to_string(&digest).unwrap();
        assert_eq!(json, format!("\"{digest}\""));
        assert_eq!(serde_json::from_str::<Digest>(&json).unwrap(), digest);
        assert!(serde_json::from_str::<Digest>("\"sha256:00\"").is_err());
    }
}
