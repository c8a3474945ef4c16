//! Where announces are kept: which peers hold (part of) which blob, and where to dial them.

mod memory;
mod redis_store;

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use kraken_config::tracker::{PeerStoreBackend, PeerStoreConfig};
use kraken_core::{Digest, PeerId};
use sha2::Digest as _;

pub use self::memory::MemoryPeerStore;
pub use self::redis_store::{Clock, RedisPeerStore, SystemClock};

/// One peer's latest announce for a blob.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PeerEntry {
    pub peer_id: PeerId,
    /// Where other peers dial it (QUIC).
    pub addr: SocketAddr,
    /// Whether it holds the whole blob (its own claim).
    pub complete: bool,
    /// Whether a peer at another IP reported that it delivered verified pieces of the blob:
    /// only then does a claim of completeness earn priority. Set by [`PeerStore::report`] and
    /// ignored by [`PeerStore::update`]; like `complete`, it only goes from false to true while
    /// the entry lives, except that a demotion clears it.
    pub proven: bool,
    /// Whether a peer at another IP recently reported that it could not reach it or that it
    /// failed to deliver: handed out last. Set by [`PeerStore::report`], ignored by
    /// [`PeerStore::update`]; lapses after the lifetime of an announce.
    pub demoted: bool,
}

impl PeerEntry {
    /// An announce of `peer_id` at `addr`, neither proven nor demoted.
    pub fn new(peer_id: PeerId, addr: SocketAddr, complete: bool) -> Self {
        Self {
            peer_id,
            addr,
            complete,
            proven: false,
            demoted: false,
        }
    }
}

/// Most peer ids read from each list of an announce's reports; the rest are ignored, so a
/// report costs the store a bounded amount of work.
pub const MAX_REPORTED_PEERS: usize = 32;

/// What one announcer said about other peers of a blob since its last announce.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerReport<'a> {
    /// The IP the announcer was recorded at. Reports about peers recorded at the same IP are
    /// ignored: a certificate holder must not vouch for (nor, by mistake, demote) peers on its
    /// own host.
    pub reporter_ip: IpAddr,
    /// Peers that delivered at least one verified piece.
    pub served_by: &'a [PeerId],
    /// Peers it could not connect to, that failed the handshake or sent bad data. Applied
    /// after `served_by`, so a peer in both is demoted.
    pub failed: &'a [PeerId],
}

/// What a report changed in the store, for metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReportOutcome {
    /// Peers that became proven.
    pub proven: usize,
    /// Peers that became demoted (peers already demoted only have the demotion renewed).
    pub demoted: usize,
}

/// Caps on one blob's swarm, checked when a peer the store does not know yet announces;
/// refreshing a known peer is always allowed, so a flood of newcomers never evicts a swarm.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerLimits {
    /// Most peers per blob.
    pub per_blob: usize,
    /// Most peers per blob at one IP address.
    pub per_address: usize,
}

impl PeerLimits {
    /// No cap beyond what memory allows: for tests of other behaviour.
    pub const UNLIMITED: Self = Self {
        per_blob: usize::MAX,
        per_address: usize::MAX,
    };
}

impl Default for PeerLimits {
    /// The defaults of `max_peers_per_blob` and `max_peers_per_address`.
    fn default() -> Self {
        let config = kraken_config::TrackerConfig::default();
        Self {
            per_blob: config.max_peers_per_blob,
            per_address: config.max_peers_per_address,
        }
    }
}

/// Which cap refused a new peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum CapExceeded {
    #[error("the blob already has {limit} peers, the most the tracker records per blob")]
    Blob { limit: usize },
    #[error("{limit} peers at {ip} already announced the blob, the most per address")]
    Address { ip: IpAddr, limit: usize },
    #[error("the peer store holds {limit} entries, its capacity")]
    Store { limit: usize },
}

impl CapExceeded {
    /// A bounded label for metrics.
    pub fn label(&self) -> &'static str {
        match self {
            Self::Blob { .. } => "blob_full",
            Self::Address { .. } => "address_full",
            Self::Store { .. } => "store_full",
        }
    }
}

/// Who announced a peer id: the SHA-256 of the caller's leaf certificate (DER). Two agents
/// holding different certificates have different identities even when their subjects match.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct CertIdentity([u8; 32]);

impl CertIdentity {
    /// The identity of a certificate given as DER.
    pub fn of_certificate(der: &[u8]) -> Self {
        Self(sha2::Sha256::digest(der).into())
    }

    /// Lowercase hex, as stored in Redis.
    pub fn hex(&self) -> String {
        hex::encode(self.0)
    }
}

impl fmt::Debug for CertIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CertIdentity({})", self.hex())
    }
}

impl fmt::Display for CertIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The prefix is enough to tell certificates apart in logs.
        f.write_str(&self.hex()[..16])
    }
}

/// Why the peer store could not answer.
#[derive(Debug, thiserror::Error)]
pub enum PeerStoreError {
    /// Not a failure of the store: a cap refused a new peer.
    #[error("new peer refused")]
    Full(#[from] CapExceeded),
    #[error("cannot connect to the Redis peer store at {addr}")]
    RedisConnect {
        addr: String,
        #[source]
        source: ::redis::RedisError,
    },
    #[error("Redis peer store at {addr} failed")]
    Redis {
        addr: String,
        #[source]
        source: ::redis::RedisError,
    },
    #[error("invalid Redis address `{addr}`: expected host:port")]
    RedisAddress { addr: String },
    #[error("cannot read the Redis password")]
    Password(#[source] kraken_config::SecretError),
}

/// The peers announced for each blob. Implementations must be cheap to call concurrently:
/// every announce of every agent goes through [`PeerStore::update`] and
/// [`PeerStore::get_peers`].
#[async_trait::async_trait]
pub trait PeerStore: Send + Sync + fmt::Debug {
    /// Records (or refreshes) `peer` as holding `digest`. `complete` only ever goes from false
    /// to true: a late incomplete announce never hides a seeder. A peer id the store does not
    /// hold for `digest` is refused with [`PeerStoreError::Full`] once the blob has
    /// `limits.per_blob` peers or `limits.per_address` at `peer`'s IP (or the store is at
    /// its own capacity); a known peer id is always refreshed.
    async fn update(
        &self,
        digest: &Digest,
        peer: &PeerEntry,
        limits: PeerLimits,
    ) -> Result<(), PeerStoreError>;

    /// Up to `limit` distinct peers (by peer id) announced recently for `digest`, in random
    /// order, so that every caller gets a different sample and the swarm forms a random graph.
    async fn get_peers(
        &self,
        digest: &Digest,
        limit: usize,
    ) -> Result<Vec<PeerEntry>, PeerStoreError>;

    /// Applies `report` to the live entries of `digest`: a peer in `served_by` becomes proven
    /// unless it is demoted; a peer in `failed` is demoted for the lifetime of an announce and
    /// loses its proof. Peers the store does not hold for `digest`, or holds at
    /// `report.reporter_ip`, are left alone. At most [`MAX_REPORTED_PEERS`] of each list are
    /// read.
    async fn report(
        &self,
        digest: &Digest,
        report: &PeerReport<'_>,
    ) -> Result<ReportOutcome, PeerStoreError>;

    /// Binds `peer_id` to the certificate `identity` if no other identity holds it, and
    /// restarts the binding's expiry (the lifetime of an announce), so that nobody else can
    /// announce under a live peer's id. `Ok(false)`: another identity holds it. Kept in the
    /// store so that trackers sharing it agree.
    async fn bind_identity(
        &self,
        peer_id: &PeerId,
        identity: &CertIdentity,
    ) -> Result<bool, PeerStoreError>;
}

/// Builds the store `config` selects. Redis is connected to right away, so a wrong address or
/// password fails start-up instead of the first announce.
pub async fn build_peer_store(
    config: &PeerStoreConfig,
) -> Result<Arc<dyn PeerStore>, PeerStoreError> {
    Ok(match config.backend {
        PeerStoreBackend::Memory => Arc::new(
            MemoryPeerStore::new(config.memory.ttl).with_max_entries(config.memory.max_entries),
        ),
        PeerStoreBackend::Redis => Arc::new(RedisPeerStore::connect(&config.redis).await?),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identities_are_the_certificate_hash() {
        let a = CertIdentity::of_certificate(b"cert a");
        assert_eq!(a, CertIdentity::of_certificate(b"cert a"));
        assert_ne!(a, CertIdentity::of_certificate(b"cert b"));
        // SHA-256 of "cert a", so that Redis values written by one tracker version are read
        // the same by another.
        assert_eq!(a.hex(), hex::encode(sha2::Sha256::digest(b"cert a")));
        assert_eq!(a.to_string().len(), 16);
    }
}
