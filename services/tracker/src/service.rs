//! `kraken.tracker.v1.TrackerService` over a peer store and the origin directory.

use std::sync::Arc;
use std::time::Duration;

use kraken_config::TrackerConfig;
use kraken_core::{Digest, Namespace, NamespaceError, PeerInfo, WireError, parse_digest};
use kraken_proto::common::v1 as pb;
use kraken_proto::tracker::v1::tracker_service_server::{TrackerService, TrackerServiceServer};
use kraken_proto::tracker::v1::{
    AnnounceRequest, AnnounceResponse, GetMetaInfoRequest, GetMetaInfoResponse,
};
use kraken_tls::{Role, require_role};
use tonic::{Request, Response, Status};
use tracing::field;

use crate::cache::CoalescingCache;
use crate::handout::HandoutPolicy;
use kraken_core::error_chain;
use kraken_transport::health::unavailable_retry_after;

use crate::origin::{OriginDirectory, OriginError};
use crate::peerstore::{PeerEntry, PeerStore, PeerStoreError};

/// What agents are told to wait before asking again when the origins gave no hint.
pub const DEFAULT_RETRY_AFTER: Duration = Duration::from_millis(1000);

/// Roles that may announce: the peers of the swarm. Anyone else (a proxy, a CLI client) would
/// only add a peer that serves nothing.
const ANNOUNCE_ROLES: &[Role] = &[Role::Agent, Role::Origin];
/// Roles that may read metainfo: swarm peers, and the proxy and CLI tools, which warm origins
/// and inspect blobs through it. Metainfo is derived from content the caller names by digest.
const METAINFO_ROLES: &[Role] = &[Role::Agent, Role::Origin, Role::Proxy, Role::Client];

/// Metainfo entries cached at once. One is ~32 bytes per piece (a 10 GB blob in 4 MiB pieces
/// is 80 KB), so this bounds the cache to a few hundred MB in the worst case.
const METAINFO_CACHE_CAPACITY: usize = 4_096;

/// The knobs of [`Tracker`], usually from [`TrackerConfig`].
#[derive(Debug, Clone, Copy)]
pub struct TrackerSettings {
    pub policy: HandoutPolicy,
    pub announce_interval: Duration,
    pub metainfo_cache_ttl: Duration,
}

impl TrackerSettings {
    pub fn from_config(config: &TrackerConfig) -> Self {
        Self {
            policy: HandoutPolicy::new(config.peerhandoutpolicy.priority, config.announce_limit),
            announce_interval: config.announce_interval,
            metainfo_cache_ttl: config.metainfo_cache_ttl,
        }
    }
}

/// Why a tracker request failed. The one mapping to gRPC status codes is its `From` impl.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error("invalid `namespace`: {0}")]
    Namespace(#[source] NamespaceError),
    #[error("{0}")]
    Digest(#[source] WireError),
    #[error("field `peer` is missing")]
    MissingPeer,
    #[error("invalid `peer`: {0}")]
    Peer(#[source] WireError),
    #[error(transparent)]
    PeerStore(#[from] PeerStoreError),
    #[error(transparent)]
    Origin(#[from] OriginError),
}

impl ServiceError {
    fn label(&self) -> &'static str {
        match self {
            Self::Namespace(_) | Self::Digest(_) | Self::MissingPeer | Self::Peer(_) => "invalid",
            Self::PeerStore(_) => "peer_store_error",
            Self::Origin(OriginError::NotFound { .. }) => "not_found",
            Self::Origin(OriginError::Fetching { .. }) => "fetching",
            Self::Origin(_) => "origin_error",
        }
    }
}

impl From<ServiceError> for Status {
    fn from(error: ServiceError) -> Self {
        let message = error_chain(&error);
        let retry_after = match &error {
            ServiceError::Namespace(_)
            | ServiceError::Digest(_)
            | ServiceError::MissingPeer
            | ServiceError::Peer(_) => return Status::invalid_argument(message),
            ServiceError::Origin(OriginError::NotFound { .. }) => {
                return Status::not_found(message);
            }
            ServiceError::PeerStore(_) => return Status::unavailable(message),
            ServiceError::Origin(OriginError::Fetching { retry_after, .. }) => *retry_after,
            // The origins are unreachable or misbehaving: agents poll on UNAVAILABLE, so
            // give them a pace.
            ServiceError::Origin(_) => DEFAULT_RETRY_AFTER,
        };
        unavailable_retry_after(message, retry_after)
    }
}

/// The tracker service: serve it with [`Tracker::into_server`].
pub struct Tracker {
    store: Arc<dyn PeerStore>,
    origins: Arc<dyn OriginDirectory>,
    settings: TrackerSettings,
    metainfo: CoalescingCache<Digest, pb::MetaInfo, OriginError>,
}

impl std::fmt::Debug for Tracker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tracker")
            .field("store", &self.store)
            .field("origins", &self.origins)
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

impl Tracker {
    pub fn new(
        store: Arc<dyn PeerStore>,
        origins: Arc<dyn OriginDirectory>,
        settings: TrackerSettings,
    ) -> Self {
        Self {
            store,
            origins,
            settings,
            metainfo: CoalescingCache::new(settings.metainfo_cache_ttl, METAINFO_CACHE_CAPACITY),
        }
    }

    /// The tonic service, to add to a [`kraken_transport::grpc::GrpcServer`].
    pub fn into_server(self) -> TrackerServiceServer<Self> {
        TrackerServiceServer::new(self)
    }

    async fn handle_announce(
        &self,
        request: AnnounceRequest,
    ) -> Result<AnnounceResponse, ServiceError> {
        // The namespace routes nothing here, but a malformed one is a broken client worth
        // refusing early rather than a swarm entry.
        let _namespace: Namespace = request.namespace.parse().map_err(ServiceError::Namespace)?;
        let digest = parse_digest("digest", &request.digest).map_err(ServiceError::Digest)?;
        tracing::Span::current().record("digest", field::display(&digest));
        let wire_peer = request.peer.as_ref().ok_or(ServiceError::MissingPeer)?;
        let caller = PeerInfo::try_from(wire_peer).map_err(ServiceError::Peer)?;
        tracing::Span::current().record("peer", field::display(&caller.peer_id));

        // The `origin` flag a caller sends is not stored: being handed out as an origin is
        // decided by the ring (`owners`), not by what a peer claims.
        let entry = PeerEntry {
            peer_id: caller.peer_id,
            addr: caller.addr,
            complete: caller.complete,
        };
        self.store.update(&digest, &entry).await?;

        let interval = prost_duration(self.settings.announce_interval);
        if caller.complete {
            metrics::histogram!(crate::metrics::HANDOUT_PEERS).record(0.0);
            return Ok(AnnounceResponse {
                peers: Vec::new(),
                interval: Some(interval),
            });
        }

        // One more than the limit: the caller itself may be in the sample.
        let limit = self.settings.policy.limit().saturating_add(1);
        let (peers, owners) = tokio::join!(
            self.store.get_peers(&digest, limit),
            self.origins.owners(&digest)
        );
        let peers = peers?;
        let owners = owners.unwrap_or_else(|error| {
            // Peers can still help each other; the origins come back on the next announce.
            metrics::counter!(crate::metrics::ORIGIN_LOOKUP_FAILURES).increment(1);
            tracing::warn!(error = %error_chain(&error), "announcing without origins");
            Vec::new()
        });
        let handout = self
            .settings
            .policy
            .select(&caller, &peers, &owners, &mut rand::rng());
        metrics::histogram!(crate::metrics::HANDOUT_PEERS).record(handout.len() as f64);
        Ok(AnnounceResponse {
            peers: handout.iter().map(pb::PeerInfo::from).collect(),
            interval: Some(interval),
        })
    }

    async fn handle_get_metainfo(
        &self,
        request: GetMetaInfoRequest,
    ) -> Result<GetMetaInfoResponse, ServiceError> {
        let namespace: Namespace = request.namespace.parse().map_err(ServiceError::Namespace)?;
        let digest = parse_digest("digest", &request.digest).map_err(ServiceError::Digest)?;
        tracing::Span::current().record("digest", field::display(&digest));

        // Keyed by digest alone: metainfo is a function of the content, whichever namespace
        // asks. Unlike Kraken's nginx cache, only successes are kept, so a blob that was
        // missing or still being fetched is asked for again.
        let origins = Arc::clone(&self.origins);
        let (result, lookup) = self
            .metainfo
            .get_or_fetch(digest, move || async move {
                origins
                    .metainfo(&namespace, &digest)
                    .await
                    .map(|metainfo| pb::MetaInfo::from(&metainfo))
            })
            .await;
        metrics::counter!(crate::metrics::METAINFO_CACHE_REQUESTS, "result" => lookup.label())
            .increment(1);
        Ok(GetMetaInfoResponse {
            metainfo: Some(result?),
        })
    }
}

#[tonic::async_trait]
impl TrackerService for Tracker {
    #[tracing::instrument(skip_all, fields(digest = field::Empty, peer = field::Empty))]
    async fn announce(
        &self,
        request: Request<AnnounceRequest>,
    ) -> Result<Response<AnnounceResponse>, Status> {
        let started = tokio::time::Instant::now();
        if let Err(status) = require_role(&request, ANNOUNCE_ROLES) {
            metrics::counter!(crate::metrics::ANNOUNCES, "result" => "denied").increment(1);
            return Err(status);
        }
        let result = self.handle_announce(request.into_inner()).await;
        let label = result.as_ref().map_or_else(ServiceError::label, |_| "ok");
        metrics::counter!(crate::metrics::ANNOUNCES, "result" => label).increment(1);
        metrics::histogram!(crate::metrics::ANNOUNCE_DURATION_SECONDS)
            .record(started.elapsed().as_secs_f64());
        if let Err(error) = &result {
            tracing::debug!(error = %error_chain(error), "announce failed");
        }
        result.map(Response::new).map_err(Status::from)
    }

    #[tracing::instrument(skip_all, fields(digest = field::Empty))]
    async fn get_meta_info(
        &self,
        request: Request<GetMetaInfoRequest>,
    ) -> Result<Response<GetMetaInfoResponse>, Status> {
        require_role(&request, METAINFO_ROLES)?;
        let result = self.handle_get_metainfo(request.into_inner()).await;
        let label = result.as_ref().map_or_else(ServiceError::label, |_| "ok");
        metrics::counter!(crate::metrics::METAINFO_REQUESTS, "result" => label).increment(1);
        if let Err(error) = &result {
            tracing::debug!(error = %error_chain(error), "metainfo request failed");
        }
        result.map(Response::new).map_err(Status::from)
    }
}

fn prost_duration(duration: Duration) -> prost_types::Duration {
    prost_types::Duration {
        seconds: i64::try_from(duration.as_secs()).unwrap_or(i64::MAX),
        // Always below 10^9.
        nanos: i32::try_from(duration.subsec_nanos()).unwrap_or(0),
    }
}

#[cfg(test)]
mod tests {
    use kraken_proto::wire::RETRY_AFTER_MS;

    use super::*;

    #[test]
    fn errors_map_to_meaningful_status_codes() {
        let digest = Digest::of(b"x");
        let status = Status::from(ServiceError::Namespace(
            "".parse::<Namespace>().unwrap_err(),
        ));
        assert_eq!(status.code(), tonic::Code::InvalidArgument);
        assert!(status.message().contains("`namespace`"), "{status:?}");

        let status = Status::from(ServiceError::Origin(OriginError::NotFound {
            digest,
            origin: "o1:1".into(),
            message: "no backend has it".into(),
        }));
        assert_eq!(status.code(), tonic::Code::NotFound);
        assert!(status.message().contains("no backend has it"));
        assert!(status.metadata().get(RETRY_AFTER_MS).is_none());

        let status = Status::from(ServiceError::Origin(OriginError::Fetching {
            digest,
            origin: "o1:1".into(),
            retry_after: Duration::from_millis(2500),
        }));
        assert_eq!(status.code(), tonic::Code::Unavailable);
        assert_eq!(status.metadata().get(RETRY_AFTER_MS).unwrap(), "2500");

        let status = Status::from(ServiceError::Origin(OriginError::Call {
            origin: "o2:1".into(),
            status: Status::unavailable("connection refused"),
        }));
        assert_eq!(status.code(), tonic::Code::Unavailable);
        assert!(status.message().contains("o2:1"), "{status:?}");
        assert!(
            status.message().contains("connection refused"),
            "{status:?}"
        );
        assert_eq!(status.metadata().get(RETRY_AFTER_MS).unwrap(), "1000");

        let status = Status::from(ServiceError::PeerStore(PeerStoreError::RedisAddress {
            addr: "nope".into(),
        }));
        assert_eq!(status.code(), tonic::Code::Unavailable);
        assert!(status.message().contains("Redis"));
    }

    #[test]
    fn converts_the_interval() {
        assert_eq!(
            prost_duration(Duration::from_millis(3500)),
            prost_types::Duration {
                seconds: 3,
                nanos: 500_000_000
            }
        );
    }
}
