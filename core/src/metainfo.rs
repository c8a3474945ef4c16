//! Metainfo: how a blob is cut into pieces and the cryptographic hash of every piece, so a peer
//! can verify each piece on arrival before it is written, served or announced.

use std::collections::BTreeMap;
use std::fmt;
use std::io::{self, Read};

use bytesize::ByteSize;
use serde::{Deserialize, Serialize};
use sha2::Digest as _;

use crate::{Digest, Sha256Hasher};

/// Length in bytes of every piece hash (both supported algorithms produce 32 bytes).
pub const PIECE_HASH_LEN: usize = 32;

/// The hash of one piece.
pub type PieceHash = [u8; PIECE_HASH_LEN];

/// Which hash protects pieces. BLAKE3 is the default: `bench/` (`piece_hash`) measured it
/// several times faster than SHA-256 even with SHA-NI on these machines, and piece hashing sits
/// on every peer's receive path. SHA-256 stays readable for metainfo written by other tools.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PieceHashAlgorithm {
    #[default]
    Blake3,
    Sha256,
}

impl PieceHashAlgorithm {
    /// Hashes one piece.
    pub fn hash(self, data: &[u8]) -> PieceHash {
        match self {
            Self::Blake3 => *blake3::hash(data).as_bytes(),
            Self::Sha256 => sha2::Sha256::digest(data).into(),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Blake3 => "blake3",
            Self::Sha256 => "sha256",
        }
    }
}

/// Describes a blob as a sequence of verifiable pieces. Every piece has `piece_length` bytes but
/// the last, which has the remainder; an empty blob has no pieces.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MetaInfo {
    digest: Digest,
    length: u64,
    piece_length: u64,
    #[serde(default)]
    piece_hash_algorithm: PieceHashAlgorithm,
    #[serde(with = "hex_hashes")]
    piece_hashes: Vec<PieceHash>,
}

/// Why metainfo received from a peer or file is inconsistent.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MetaInfoError {
    #[error("piece length must be at least 1 byte")]
    ZeroPieceLength,
    #[error(
        "a blob of {length} bytes in pieces of {piece_length} bytes has {expected} pieces, but \
         {actual} piece hashes were given"
    )]
    PieceCountMismatch {
        length: u64,
        piece_length: u64,
        expected: u64,
        actual: usize,
    },
    #[error("a piece hash must be {PIECE_HASH_LEN} bytes, got {len}")]
    BadPieceHashLength { len: usize },
    #[error("blob of {length} bytes has more pieces than the supported maximum of 2^32")]
    TooManyPieces { length: u64 },
}

/// Why a piece was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PieceError {
    #[error("piece {index} is out of range: the blob has {count} pieces")]
    OutOfRange { index: u32, count: u32 },
    #[error("piece {index} must be {expected} bytes, got {actual}")]
    WrongLength {
        index: u32,
        expected: u64,
        actual: u64,
    },
    #[error(
        "piece {index} failed {algorithm} verification: its content does not match the metainfo"
    )]
    HashMismatch { index: u32, algorithm: &'static str },
}

impl MetaInfo {
    /// Assembles metainfo from its parts, checking they agree.
    pub fn new(
        digest: Digest,
        length: u64,
        piece_length: u64,
        piece_hash_algorithm: PieceHashAlgorithm,
        piece_hashes: Vec<PieceHash>,
    ) -> Result<Self, MetaInfoError> {
        if piece_length == 0 {
            return Err(MetaInfoError::ZeroPieceLength);
        }
        let expected = length.div_ceil(piece_length);
        if expected > u64::from(u32::MAX) {
            return Err(MetaInfoError::TooManyPieces { length });
        }
        if expected != piece_hashes.len() as u64 {
            return Err(MetaInfoError::PieceCountMismatch {
                length,
                piece_length,
                expected,
                actual: piece_hashes.len(),
            });
        }
        Ok(Self {
            digest,
            length,
            piece_length,
            piece_hash_algorithm,
            piece_hashes,
        })
    }

    /// Like [`MetaInfo::new`], from piece hashes as received on the wire.
    pub fn from_wire(
        digest: Digest,
        length: u64,
        piece_length: u64,
        piece_hash_algorithm: PieceHashAlgorithm,
        piece_hashes: &[Vec<u8>],
    ) -> Result<Self, MetaInfoError> {
        let hashes = piece_hashes
            .iter()
            .map(|hash| {
                PieceHash::try_from(hash.as_slice())
                    .map_err(|_| MetaInfoError::BadPieceHashLength { len: hash.len() })
            })
            .collect::<Result<Vec<_>, _>>()?;
        Self::new(digest, length, piece_length, piece_hash_algorithm, hashes)
    }

    /// Computes metainfo by reading a whole blob. Blocking: run it on a blocking thread.
    /// Returns the metainfo and the blob's actual SHA-256, which the caller compares with what
    /// it expected.
    pub fn generate(
        reader: impl Read,
        piece_length: u64,
        algorithm: PieceHashAlgorithm,
    ) -> io::Result<Self> {
        let mut generator = MetaInfoGenerator::new(piece_length, algorithm)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        let mut reader = reader;
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let read = match reader.read(&mut buf) {
                Ok(0) => break,
                Ok(read) => read,
                Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
                Err(error) => return Err(error),
            };
            generator.update(&buf[..read]);
        }
        generator
            .finish()
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
    }

    pub fn digest(&self) -> &Digest {
        &self.digest
    }

    /// Blob length in bytes.
    pub fn length(&self) -> u64 {
        self.length
    }

    pub fn piece_length(&self) -> u64 {
        self.piece_length
    }

    pub fn piece_hash_algorithm(&self) -> PieceHashAlgorithm {
        self.piece_hash_algorithm
    }

    pub fn piece_hashes(&self) -> &[PieceHash] {
        &self.piece_hashes
    }

    /// Number of pieces. Fits in u32: checked at construction.
    pub fn num_pieces(&self) -> u32 {
        self.piece_hashes.len() as u32
    }

    /// Byte offset of piece `index` within the blob.
    pub fn piece_offset(&self, index: u32) -> u64 {
        u64::from(index) * self.piece_length
    }

    /// Length of piece `index` (the last piece may be shorter), or an error if out of range.
    pub fn piece_len(&self, index: u32) -> Result<u64, PieceError> {
        if index >= self.num_pieces() {
            return Err(PieceError::OutOfRange {
                index,
                count: self.num_pieces(),
            });
        }
        let offset = self.piece_offset(index);
        Ok(self.piece_length.min(self.length - offset))
    }

    /// Checks a piece's length and hash against the metainfo.
    pub fn verify_piece(&self, index: u32, data: &[u8]) -> Result<(), PieceError> {
        let expected = self.piece_len(index)?;
        if data.len() as u64 != expected {
            return Err(PieceError::WrongLength {
                index,
                expected,
                actual: data.len() as u64,
            });
        }
        if self.piece_hash_algorithm.hash(data) != self.piece_hashes[index as usize] {
            return Err(PieceError::HashMismatch {
                index,
                algorithm: self.piece_hash_algorithm.name(),
            });
        }
        Ok(())
    }
}

impl fmt::Debug for MetaInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MetaInfo")
            .field("digest", &self.digest)
            .field("length", &self.length)
            .field("piece_length", &self.piece_length)
            .field("pieces", &self.piece_hashes.len())
            .field("piece_hash", &self.piece_hash_algorithm)
            .finish()
    }
}

/// Builds metainfo incrementally while a blob streams past (during an upload or a backend
/// fetch), so the blob is read once for both its digest and its piece hashes.
#[derive(Debug)]
pub struct MetaInfoGenerator {
    piece_length: u64,
    algorithm: PieceHashAlgorithm,
    whole: Sha256Hasher,
    piece: Vec<u8>,
    hashes: Vec<PieceHash>,
    length: u64,
}

impl MetaInfoGenerator {
    pub fn new(piece_length: u64, algorithm: PieceHashAlgorithm) -> Result<Self, MetaInfoError> {
        if piece_length == 0 {
            return Err(MetaInfoError::ZeroPieceLength);
        }
        Ok(Self {
            piece_length,
            algorithm,
            whole: Sha256Hasher::new(),
            piece: Vec::new(),
            hashes: Vec::new(),
            length: 0,
        })
    }

    /// Feeds the next bytes of the blob.
    pub fn update(&mut self, mut data: &[u8]) {
        self.whole.update(data);
        self.length += data.len() as u64;
        while !data.is_empty() {
            let room = (self.piece_length as usize).saturating_sub(self.piece.len());
            let take = room.min(data.len());
            self.piece.extend_from_slice(&data[..take]);
            data = &data[take..];
            if self.piece.len() as u64 == self.piece_length {
                self.hashes.push(self.algorithm.hash(&self.piece));
                self.piece.clear();
            }
        }
    }

    /// Bytes fed so far.
    pub fn length(&self) -> u64 {
        self.length
    }

    /// Completes the metainfo; its digest is the SHA-256 of everything fed.
    pub fn finish(mut self) -> Result<MetaInfo, MetaInfoError> {
        if !self.piece.is_empty() {
            self.hashes.push(self.algorithm.hash(&self.piece));
        }
        MetaInfo::new(
            self.whole.finish(),
            self.length,
            self.piece_length,
            self.algorithm,
            self.hashes,
        )
    }
}

/// Picks a piece length from a blob's size: the entry with the largest size threshold not above
/// the blob's size wins (Kraken's `metainfogen.piece_lengths`). Pieces scale with the blob so
/// even small blobs have many pieces to spread across a swarm, while large blobs keep the
/// per-piece overhead (hashes, requests, streams) bounded.
#[derive(Clone, PartialEq, Eq)]
pub struct PieceLengthPolicy {
    by_min_size: BTreeMap<u64, u64>,
}

/// Why a piece length table is unusable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PieceLengthPolicyError {
    #[error("piece length table is empty: it needs at least an entry for size 0")]
    Empty,
    #[error("piece length table has no entry for size 0, so small blobs would have none")]
    NoZeroEntry,
    #[error("piece length for blobs of at least {threshold} bytes is 0")]
    ZeroPieceLength { threshold: u64 },
}

impl PieceLengthPolicy {
    pub fn new(
        table: impl IntoIterator<Item = (u64, u64)>,
    ) -> Result<Self, PieceLengthPolicyError> {
        let by_min_size: BTreeMap<u64, u64> = table.into_iter().collect();
        if by_min_size.is_empty() {
            return Err(PieceLengthPolicyError::Empty);
        }
        if !by_min_size.contains_key(&0) {
            return Err(PieceLengthPolicyError::NoZeroEntry);
        }
        if let Some((threshold, _)) = by_min_size.iter().find(|(_, length)| **length == 0) {
            return Err(PieceLengthPolicyError::ZeroPieceLength {
                threshold: *threshold,
            });
        }
        Ok(Self { by_min_size })
    }

    /// The piece length for a blob of `size` bytes.
    pub fn piece_length_for(&self, size: u64) -> u64 {
        self.by_min_size
            .range(..=size)
            .next_back()
            .map(|(_, length)| *length)
            .unwrap_or(DEFAULT_PIECE_LENGTHS[0].1)
    }

    pub fn entries(&self) -> impl Iterator<Item = (u64, u64)> + '_ {
        self.by_min_size.iter().map(|(k, v)| (*k, *v))
    }
}

const KIB: u64 = 1024;
const MIB: u64 = 1024 * KIB;
const GIB: u64 = 1024 * MIB;

/// Default thresholds: 256–2048 pieces from 16 MiB to 4 GiB, at most ~8 Ki pieces beyond. A
/// swarm shares a piece only once it is whole, so many small pieces let peers start trading
/// sooner and shorten the tail; the swarm simulation (services/scheduler/tests) finished 16
/// agents at 1.26x the physical bound with 128 pieces per blob and 1.11x with 512.
const DEFAULT_PIECE_LENGTHS: [(u64, u64); 7] = [
    (0, 64 * KIB),
    (32 * MIB, 128 * KIB),
    (64 * MIB, 256 * KIB),
    (256 * MIB, 512 * KIB),
    (GIB, MIB),
    (4 * GIB, 4 * MIB),
    (64 * GIB, 16 * MIB),
];

impl Default for PieceLengthPolicy {
    fn default() -> Self {
        Self {
            by_min_size: DEFAULT_PIECE_LENGTHS.into_iter().collect(),
        }
    }
}

impl fmt::Debug for PieceLengthPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map()
            .entries(
                self.by_min_size
                    .iter()
                    .map(|(k, v)| (ByteSize(*k), ByteSize(*v))),
            )
            .finish()
    }
}

mod hex_hashes {
    use serde::{Deserialize, Deserializer, Serializer, de::Error as _, ser::SerializeSeq};

    use super::{PIECE_HASH_LEN, PieceHash};

    pub(super) fn serialize<S: Serializer>(hashes: &[PieceHash], s: S) -> Result<S::Ok, S::Error> {
        let mut seq = s.serialize_seq(Some(hashes.len()))?;
        for hash in hashes {
            seq.serialize_element(&hex::encode(hash))?;
        }
        seq.end()
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<PieceHash>, D::Error> {
        Vec::<String>::deserialize(d)?
            .iter()
            .map(|text| {
                let mut hash = [0u8; PIECE_HASH_LEN];
                hex::decode_to_slice(text, &mut hash)
                    .map_err(|_| D::Error::custom("piece hash must be 64 hex characters"))?;
                Ok(hash)
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn blob(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 7 % 251) as u8).collect()
    }

    #[test]
    fn generates_pieces_and_digest() {
        let data = blob(10_000);
        let info = MetaInfo::generate(&data[..], 4096, PieceHashAlgorithm::Blake3).unwrap();
        assert_eq!(*info.digest(), Digest::of(&data));
        assert_eq!(info.length(), 10_000);
        assert_eq!(info.num_pieces(), 3);
        assert_eq!(info.piece_len(2).unwrap(), 10_000 - 8192);
        for index in 0..3 {
            let start = info.piece_offset(index) as usize;
            let end = start + info.piece_len(index).unwrap() as usize;
            info.verify_piece(index, &data[start..end]).unwrap();
        }
    }

    #[test]
    fn streaming_generator_matches_any_chunking() {
        let data = blob(50_000);
        let whole = MetaInfo::generate(&data[..], 1000, PieceHashAlgorithm::Sha256).unwrap();
        let mut generator = MetaInfoGenerator::new(1000, PieceHashAlgorithm::Sha256).unwrap();
        for chunk in data.chunks(333) {
            generator.update(chunk);
        }
        assert_eq!(generator.finish().unwrap(), whole);
    }

    #[test]
    fn empty_blob_has_no_pieces() {
        let info = MetaInfo::generate(&b""[..], 1024, PieceHashAlgorithm::Blake3).unwrap();
        assert_eq!(info.num_pieces(), 0);
        assert_eq!(*info.digest(), Digest::of(b""));
        assert!(matches!(
            info.piece_len(0),
            Err(PieceError::OutOfRange { .. })
        ));
    }

    #[test]
    fn rejects_bad_pieces() {
        let data = blob(3000);
        let info = MetaInfo::generate(&data[..], 1000, PieceHashAlgorithm::Blake3).unwrap();
        let mut corrupt = data[..1000].to_vec();
        corrupt[10] ^= 1;
        assert_eq!(
            info.verify_piece(0, &corrupt),
            Err(PieceError::HashMismatch {
                index: 0,
                algorithm: "blake3"
            })
        );
        assert_eq!(
            info.verify_piece(0, &data[..999]),
            Err(PieceError::WrongLength {
                index: 0,
                expected: 1000,
                actual: 999
            })
        );
        assert_eq!(
            info.verify_piece(3, &data[..1000]),
            Err(PieceError::OutOfRange { index: 3, count: 3 })
        );
    }

    #[test]
    fn validates_parts() {
        let digest = Digest::of(b"");
        assert_eq!(
            MetaInfo::new(digest, 10, 0, PieceHashAlgorithm::Blake3, vec![]),
            Err(MetaInfoError::ZeroPieceLength)
        );
        assert!(matches!(
            MetaInfo::new(digest, 10, 4, PieceHashAlgorithm::Blake3, vec![[0; 32]; 2]),
            Err(MetaInfoError::PieceCountMismatch {
                expected: 3,
                actual: 2,
                ..
            })
        ));
        assert_eq!(
            MetaInfo::from_wire(digest, 1, 4, PieceHashAlgorithm::Blake3, &[vec![0; 31]]),
            Err(MetaInfoError::BadPieceHashLength { len: 31 })
        );
    }

    #[test]
    fn json_round_trip() {
        let info = MetaInfo::generate(&blob(5000)[..], 1024, PieceHashAlgorithm::Blake3).unwrap();
        let json = serde_json::to_string(&info).unwrap();
        assert_eq!(serde_json::from_str::<MetaInfo>(&json).unwrap(), info);
    }

    #[test]
    fn piece_length_policy_picks_largest_threshold_below_size() {
        let policy = PieceLengthPolicy::new([(0, 10), (100, 20), (1000, 40)]).unwrap();
        assert_eq!(policy.piece_length_for(0), 10);
        assert_eq!(policy.piece_length_for(99), 10);
        assert_eq!(policy.piece_length_for(100), 20);
        assert_eq!(policy.piece_length_for(u64::MAX), 40);
        assert_eq!(
            PieceLengthPolicy::new([]),
            Err(PieceLengthPolicyError::Empty)
        );
        assert_eq!(
            PieceLengthPolicy::new([(5, 1)]),
            Err(PieceLengthPolicyError::NoZeroEntry)
        );
        assert_eq!(
            PieceLengthPolicy::new([(0, 1), (9, 0)]),
            Err(PieceLengthPolicyError::ZeroPieceLength { threshold: 9 })
        );
        let default = PieceLengthPolicy::default();
        assert_eq!(default.piece_length_for(256 * MIB), 512 * KIB);
        for size in [16 * MIB, 64 * MIB, 256 * MIB, GIB, 4 * GIB] {
            let pieces = size / default.piece_length_for(size);
            assert!((256..=2048).contains(&pieces), "{size}: {pieces} pieces");
        }
    }
}
