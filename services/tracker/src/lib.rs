//! The tracker: every agent (and origin) announces the blobs it is downloading or seeding, and
//! the tracker answers with whom to dial, so that each blob's swarm forms a random graph of
//! peers with the owning origins as seeders of last resort. It also hands out each blob's
//! metainfo, fetched from the owning origins and cached, so agents never need to know the
//! origin ring.
//!
//! Announces live in a [`PeerStore`] (in memory, or in Redis time-window sets shared by several
//! trackers); the choice of peers is the pure [`HandoutPolicy`]; the origins are reached
//! through an [`OriginDirectory`]. [`run`] wires them from a [`TrackerConfig`] and serves
//! `kraken.tracker.v1.TrackerService` over mutual TLS.
//!
//! The tracker must never hand a peer itself (it compares peer ids, not pointers as Kraken
//! did), never cache a metainfo failure (NOT_FOUND and UNAVAILABLE are asked again; only the
//! immutable success is kept), never let a caller's claim make it an origin, and never accept
//! an announce from a certificate whose role is not a swarm member. It holds no blob bytes.
//!
//! Nor may a certificate holder poison a swarm: an announce is recorded at the IP its
//! connection comes from (unless that source is trusted to name its own, see
//! `trust_claimed_address_from`), unusable addresses are refused, a peer id belongs to the
//! certificate that announced it first for as long as it keeps announcing, and new peers are
//! capped per blob and per address.

mod cache;
mod handout;
mod metrics;
mod origin;
mod peerstore;
mod service;

use std::future::Future;
use std::sync::Arc;

use kraken_config::TrackerConfig;
use kraken_tls::TlsMaterial;
use kraken_transport::grpc::{GrpcError, GrpcServer, GrpcServerLimits};
use tokio::net::TcpListener;

pub use handout::HandoutPolicy;
pub use kraken_proto::wire::RETRY_AFTER_MS;
pub use origin::{GrpcOriginDirectory, OriginDirectory, OriginError};
pub use peerstore::{
    CapExceeded, CertIdentity, Clock, MAX_REPORTED_PEERS, MemoryPeerStore, PeerEntry, PeerLimits,
    PeerReport, PeerStore, PeerStoreError, RedisPeerStore, ReportOutcome, SystemClock,
    build_peer_store,
};
pub use service::{AddressKind, DEFAULT_RETRY_AFTER, ServiceError, Tracker, TrackerSettings};

/// Why the tracker could not start or stopped serving.
#[derive(Debug, thiserror::Error)]
pub enum TrackerError {
    #[error("cannot set up the peer store")]
    PeerStore(#[from] PeerStoreError),
    #[error("cannot set up the origin client")]
    Origin(#[from] OriginError),
    #[error("tracker gRPC server")]
    Grpc(#[from] GrpcError),
}

/// Serves the tracker on `listener` until `shutdown` completes: builds the peer store from
/// `config` (connecting to Redis if configured), the origin client from `config.origin`, and
/// a gRPC server with mutual TLS, health and reflection.
pub async fn run(
    config: TrackerConfig,
    tls: TlsMaterial,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), TrackerError> {
    // tonic builds its rustls configs from the process default provider.
    kraken_tls::install_crypto_provider();
    let store = build_peer_store(&config.peerstore).await?;
    let origins = GrpcOriginDirectory::from_config(&config, tls.clone())?;
    let tracker = Tracker::new(
        store,
        Arc::new(origins),
        TrackerSettings::from_config(&config),
    );
    tracing::info!(
        peerstore = ?config.peerstore.backend,
        policy = ?config.peerhandoutpolicy.priority,
        announce_limit = config.announce_limit,
        max_peers_per_blob = config.max_peers_per_blob,
        max_peers_per_address = config.max_peers_per_address,
        trust_claimed_address_from = ?config.trust_claimed_address_from,
        "tracker starting"
    );
    GrpcServer::new(&tls, GrpcServerLimits::from(&config.limits.grpc))?
        .add_service(tracker.into_server())
        .serve(listener, shutdown)
        .await?;
    Ok(())
}
