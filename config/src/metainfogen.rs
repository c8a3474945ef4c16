//! `metainfogen:` — how an origin cuts blobs into pieces when it generates their metainfo.

use std::collections::BTreeMap;

use bytesize::ByteSize;
use kraken_core::{PieceHashAlgorithm, PieceLengthPolicy, PieceLengthPolicyError};
use serde::{Deserialize, Serialize};

use crate::validate::{Validate, ValidationError};

/// Piece length by blob size, and the piece hash.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MetaInfoGenConfig {
    /// Blob size threshold → piece length for blobs of at least that size, as in Kraken:
    /// `{0: 64KiB, 16MiB: 256KiB, 256MiB: 1MiB}`. Sizes are byte sizes (`4MiB`, `1GB`) or
    /// integers; an entry for `0` is required. Setting this replaces the whole default table.
    #[serde(with = "crate::units::byte_map")]
    pub piece_lengths: BTreeMap<ByteSize, ByteSize>,
    /// Hash protecting each piece: `blake3` (default, fastest) or `sha256`.
    pub piece_hash: PieceHashAlgorithm,
}

impl Default for MetaInfoGenConfig {
    fn default() -> Self {
        Self {
            piece_lengths: PieceLengthPolicy::default()
                .entries()
                .map(|(size, length)| (ByteSize(size), ByteSize(length)))
                .collect(),
            piece_hash: PieceHashAlgorithm::default(),
        }
    }
}

impl MetaInfoGenConfig {
    /// The piece length table as the policy metainfo generation uses.
    pub fn piece_length_policy(&self) -> Result<PieceLengthPolicy, PieceLengthPolicyError> {
        PieceLengthPolicy::new(
            self.piece_lengths
                .iter()
                .map(|(size, length)| (size.0, length.0)),
        )
    }
}

impl Validate for MetaInfoGenConfig {
    fn validate(&self) -> Result<(), ValidationError> {
        self.piece_length_policy().map(drop).map_err(|error| {
            ValidationError::at(
                "piece_lengths",
                format!("{error} (e.g. `{{0: 64KiB, 256MiB: 1MiB}}`)"),
            )
        })
    }
}
