//! Peer identities.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::clip;

/// A 20-byte peer identity, random per process unless configured. Shown as 40 hex characters.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PeerId([u8; 20]);

/// Why a string or byte slice is not a peer id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PeerIdError {
    #[error("peer id {input:?} must be 40 hex characters")]
    InvalidHex { input: String },
    #[error("peer id must be 20 bytes, got {len}")]
    WrongLength { len: usize },
}

impl PeerId {
    pub const LEN: usize = 20;

    /// A fresh random id.
    pub fn random() -> Self {
        Self(rand::random())
    }

    pub const fn from_array(bytes: [u8; 20]) -> Self {
        Self(bytes)
    }

    /// Parses the raw wire form.
    pub fn from_slice(bytes: &[u8]) -> Result<Self, PeerIdError> {
        <[u8; 20]>::try_from(bytes)
            .map(Self)
            .map_err(|_| PeerIdError::WrongLength { len: bytes.len() })
    }

    pub fn as_bytes(&self) -> &[u8; 20] {
        &self.0
    }

    /// A stable id derived from a name, so a configured origin keeps its identity across
    /// restarts (trackers and peers recognise it).
    pub fn from_name(name: &str) -> Self {
        let hash = blake3::hash(name.as_bytes());
        let mut bytes = [0u8; 20];
        bytes.copy_from_slice(&hash.as_bytes()[..20]);
        Self(bytes)
    }
}

impl FromStr for PeerId {
    type Err = PeerIdError;

    fn from_str(input: &str) -> Result<Self, Self::Err> {
        let mut bytes = [0u8; 20];
        hex::decode_to_slice(input, &mut bytes)
            .map_err(|_| PeerIdError::InvalidHex { input: clip(input) })?;
        Ok(Self(bytes))
    }
}

impl fmt::Display for PeerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for PeerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PeerId({self})")
    }
}

impl Serialize for PeerId {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for PeerId {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_validates() {
        let id = PeerId::random();
        assert_eq!(id.to_string().parse::<PeerId>().unwrap(), id);
        assert_eq!(PeerId::from_slice(id.as_bytes()).unwrap(), id);
        assert_eq!(
            PeerId::from_slice(&[1, 2]),
            Err(PeerIdError::WrongLength { len: 2 })
        );
        assert!("xyz".parse::<PeerId>().is_err());
        assert_ne!(PeerId::random(), PeerId::random());
        assert_eq!(PeerId::from_name("origin-1"), PeerId::from_name("origin-1"));
        assert_ne!(PeerId::from_name("origin-1"), PeerId::from_name("origin-2"));
    }
}
