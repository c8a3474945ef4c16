//! Core types every Kraken component shares: content digests, namespaces, peer ids, piece
//! bitfields and the metainfo that describes how a blob is cut into verifiable pieces; and the
//! few small helpers every layer needs once: [`error_chain`], poison-tolerant locks
//! ([`sync`]), an injectable wall [`clock`], and retry [`backoff`].
//!
//! This crate is pure data and validation. It must never do I/O beyond reading from a caller's
//! `Read`, never block on a lock and never panic on input that came from a peer, a file or a user:
//! every parser returns a typed error that names what was wrong.

pub mod backoff;
mod bitfield;
pub mod clock;
mod digest;
mod error_chain;
mod metainfo;
mod namespace;
mod peer;
pub mod sync;
mod wire;

pub use bitfield::{Bitfield, BitfieldError};
pub use digest::{Digest, DigestError, Sha256Hasher};
pub use error_chain::error_chain;
pub use metainfo::{
    MetaInfo, MetaInfoError, MetaInfoGenerator, PIECE_HASH_LEN, PieceError, PieceHash,
    PieceHashAlgorithm, PieceLengthPolicy, PieceLengthPolicyError,
};
pub use namespace::{Namespace, NamespaceError};
pub use peer::{PeerId, PeerIdError};
pub use wire::{PeerInfo, WireError, parse_digest};

/// Shortens untrusted input before it is echoed in an error message, so a hostile peer
/// cannot make us log megabytes.
pub(crate) fn clip(input: &str) -> String {
    const MAX: usize = 80;
    if input.len() <= MAX {
        return input.to_owned();
    }
    let mut end = MAX;
    while !input.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &input[..end])
}
