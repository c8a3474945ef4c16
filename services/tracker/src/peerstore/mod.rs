//! Where announces are kept: which peers hold (part of) which blob, and where to dial them.

mod memory;
mod redis_store;

use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;

use kraken_config::tracker::{PeerStoreBackend, PeerStoreConfig};
use kraken_core::{Digest, PeerId};

pub use self::memory::MemoryPeerStore;
pub use self::redis_store::{Clock, RedisPeerStore, SystemClock};

/// One peer's latest announce for a blob.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PeerEntry {
    pub peer_id: PeerId,
    /// Where other peers dial it (QUIC).
    pub addr: SocketAddr,
    /// Whether it holds the whole blob.
    pub complete: bool,
}

/// Why the peer store could not answer.
#[derive(Debug, thiserror::Error)]
pub enum PeerStoreError {
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
    /// to true: a late incomplete announce never hides a seeder.
    async fn update(&self, digest: &Digest, peer: &PeerEntry) -> Result<(), PeerStoreError>;

    /// Up to `limit` distinct peers (by peer id) announced recently for `digest`, in random
    /// order, so that every caller gets a different sample and the swarm forms a random graph.
    async fn get_peers(
        &self,
        digest: &Digest,
        limit: usize,
    ) -> Result<Vec<PeerEntry>, PeerStoreError>;
}

/// Builds the store `config` selects. Redis is connected to right away, so a wrong address or
/// password fails start-up instead of the first announce.
pub async fn build_peer_store(
    config: &PeerStoreConfig,
) -> Result<Arc<dyn PeerStore>, PeerStoreError> {
    Ok(match config.backend {
        PeerStoreBackend::Memory => Arc::new(MemoryPeerStore::new(config.memory.ttl)),
        PeerStoreBackend::Redis => Arc::new(RedisPeerStore::connect(&config.redis).await?),
    })
}
