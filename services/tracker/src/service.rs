//! `kraken.tracker.v1.TrackerService` over a peer store and the origin directory.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use ipnet::IpNet;
use kraken_config::TrackerConfig;
use kraken_core::{Digest, Namespace, NamespaceError, PeerId, PeerInfo, WireError, parse_digest};
use kraken_proto::common::v1 as pb;
use kraken_proto::tracker::v1::tracker_service_server::{TrackerService, TrackerServiceServer};
use kraken_proto::tracker::v1::{
    AnnounceRequest, AnnounceResponse, GetMetaInfoRequest, GetMetaInfoResponse,
};
use tonic::{Request, Response, Status};
use tracing::field;

use crate::cache::CoalescingCache;
use crate::handout::HandoutPolicy;
use kraken_core::error_chain;
use kraken_transport::health::unavailable_retry_after;

use crate::origin::{OriginDirectory, OriginError};
use crate::peerstore::{
    CertIdentity, MAX_REPORTED_PEERS, PeerEntry, PeerLimits, PeerReport, PeerStore, PeerStoreError,
};

/// What agents are told to wait before asking again when the origins gave no hint.
pub const DEFAULT_RETRY_AFTER: Duration = Duration::from_millis(1000);

/// Metainfo entries cached at once. One is ~32 bytes per piece (a 10 GB blob in 4 MiB pieces
/// is 80 KB), so this bounds the cache to a few hundred MB in the worst case.
const METAINFO_CACHE_CAPACITY: usize = 4_096;

/// The knobs of [`Tracker`], usually from [`TrackerConfig`].
#[derive(Debug, Clone)]
pub struct TrackerSettings {
    pub policy: HandoutPolicy,
    pub announce_interval: Duration,
    pub metainfo_cache_ttl: Duration,
    /// Sources whose announces may name their own IP (`trust_claimed_address_from`).
    pub trust_claimed_address_from: Vec<IpNet>,
    /// Caps on new peers per blob and per address.
    pub limits: PeerLimits,
}

impl TrackerSettings {
    pub fn from_config(config: &TrackerConfig) -> Self {
        Self {
            policy: HandoutPolicy::new(config.peerhandoutpolicy.priority, config.announce_limit),
            announce_interval: config.announce_interval,
            metainfo_cache_ttl: config.metainfo_cache_ttl,
            trust_claimed_address_from: config.trust_claimed_address_from.clone(),
            limits: PeerLimits {
                per_blob: config.max_peers_per_blob,
                per_address: config.max_peers_per_address,
            },
        }
    }
}

impl Default for TrackerSettings {
    /// The settings of a default [`TrackerConfig`].
    fn default() -> Self {
        Self::from_config(&TrackerConfig::default())
    }
}

/// What the connection says about a caller, as opposed to what its request claims.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Connection {
    /// The TCP source IP (an IPv4-mapped IPv6 address as IPv4); unknown in-process.
    pub(crate) source: Option<IpAddr>,
    /// Hash of the client's leaf certificate; none without one (in-process calls).
    pub(crate) identity: Option<CertIdentity>,
}

impl Connection {
    fn of<T>(request: &Request<T>) -> Self {
        Self {
            source: request.remote_addr().map(|addr| addr.ip().to_canonical()),
            identity: request
                .peer_certs()
                .and_then(|chain| chain.first().map(|leaf| CertIdentity::of_certificate(leaf))),
        }
    }
}

/// Which address of an announce is unusable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AddressKind {
    /// The one the announce names.
    Claimed,
    /// The one the tracker would record (the connection's source IP with the claimed port).
    Recorded,
}

impl std::fmt::Display for AddressKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Claimed => "claimed",
            Self::Recorded => "recorded",
        })
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
    #[error("{kind} peer address {addr} cannot be dialled: {problem}")]
    UnusableAddress {
        kind: AddressKind,
        addr: SocketAddr,
        problem: &'static str,
    },
    #[error(
        "peer id {peer_id} is announced by another certificate: every agent and origin needs \
         its own peer id"
    )]
    PeerIdTaken { peer_id: PeerId },
    #[error(transparent)]
    PeerStore(#[from] PeerStoreError),
    #[error(transparent)]
    Origin(#[from] OriginError),
}

impl ServiceError {
    /// Whether the tracker turned the announce down to protect the swarm (as opposed to a
    /// malformed request or a failure).
    fn is_refusal(&self) -> bool {
        matches!(
            self,
            Self::UnusableAddress { .. }
                | Self::PeerIdTaken { .. }
                | Self::PeerStore(PeerStoreError::Full(_))
        )
    }

    fn label(&self) -> &'static str {
        match self {
            Self::Namespace(_) | Self::Digest(_) | Self::MissingPeer | Self::Peer(_) => "invalid",
            Self::UnusableAddress { .. } => "unusable_address",
            Self::PeerIdTaken { .. } => "peer_id_taken",
            Self::PeerStore(PeerStoreError::Full(exceeded)) => exceeded.label(),
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
            | ServiceError::Peer(_)
            | ServiceError::UnusableAddress { .. } => return Status::invalid_argument(message),
            ServiceError::PeerIdTaken { .. } => return Status::permission_denied(message),
            // A cap, not an outage: retrying soon will not help, so no retry-after pace.
            ServiceError::PeerStore(PeerStoreError::Full(_)) => {
                return Status::resource_exhausted(message);
            }
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
            metainfo: CoalescingCache::new(settings.metainfo_cache_ttl, METAINFO_CACHE_CAPACITY),
            settings,
        }
    }

    /// The tonic service, to add to a [`kraken_transport::grpc::GrpcServer`].
    pub fn into_server(self) -> TrackerServiceServer<Self> {
        TrackerServiceServer::new(self)
    }

    async fn handle_announce(
        &self,
        request: AnnounceRequest,
        connection: Connection,
    ) -> Result<AnnounceResponse, ServiceError> {
        // The namespace routes nothing here, but a malformed one is a broken client worth
        // refusing early rather than a swarm entry.
        let _namespace: Namespace = request.namespace.parse().map_err(ServiceError::Namespace)?;
        let digest = parse_digest("digest", &request.digest).map_err(ServiceError::Digest)?;
        tracing::Span::current().record("digest", field::display(&digest));
        let wire_peer = request.peer.as_ref().ok_or(ServiceError::MissingPeer)?;
        let caller = PeerInfo::try_from(wire_peer).map_err(ServiceError::Peer)?;
        tracing::Span::current().record("peer", field::display(&caller.peer_id));

        // Other peers will dial what is recorded here, so a caller must not be able to send
        // them to another host, nor to an address no packet can reach.
        check_usable(AddressKind::Claimed, caller.addr)?;
        let addr = recorded_address(
            caller.addr,
            connection.source,
            &self.settings.trust_claimed_address_from,
        );
        if addr.ip() != caller.addr.ip().to_canonical() {
            metrics::counter!(crate::metrics::ANNOUNCE_ADDRESS_REWRITES).increment(1);
            tracing::debug!(claimed = %caller.addr, recorded = %addr, "recording the source address");
        }
        check_usable(AddressKind::Recorded, addr)?;
        // The hand-out leaves out the caller's own address too (an agent restarted under a
        // new id): that is the address it was recorded at, not the one it claimed.
        let caller = PeerInfo { addr, ..caller };

        // Before anything is written: otherwise announcing a live peer's id would overwrite
        // its address.
        if let Some(identity) = connection.identity
            && !self.store.bind_identity(&caller.peer_id, &identity).await?
        {
            tracing::info!(
                peer = %caller.peer_id,
                certificate = %identity,
                source = ?connection.source,
                "refusing an announce under a peer id another certificate holds"
            );
            return Err(ServiceError::PeerIdTaken {
                peer_id: caller.peer_id,
            });
        }

        // The `origin` flag a caller sends is not stored: being handed out as an origin is
        // decided by the ring (`owners`), not by what a peer claims.
        let entry = PeerEntry::new(caller.peer_id, addr, caller.complete);
        if let Err(error) = self
            .store
            .update(&digest, &entry, self.settings.limits)
            .await
        {
            if let PeerStoreError::Full(exceeded) = &error {
                tracing::info!(%addr, %exceeded, "refusing a new peer");
            }
            return Err(error.into());
        }
        // Only from a caller the store just recorded, so reports come from swarm members.
        self.apply_reports(&digest, &caller, &request).await;

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

    /// Applies the caller's reports about other peers of `digest`. Never fails the announce:
    /// the reports are advice, and older clients send none. The recorded IP stands for the
    /// reporter, the address the reported peers are compared with was recorded the same way.
    async fn apply_reports(&self, digest: &Digest, caller: &PeerInfo, request: &AnnounceRequest) {
        let served_by = reported_ids(&request.served_by, caller.peer_id, "served");
        let failed = reported_ids(&request.failed_peers, caller.peer_id, "failed");
        if served_by.is_empty() && failed.is_empty() {
            return;
        }
        let report = PeerReport {
            reporter_ip: caller.addr.ip(),
            served_by: &served_by,
            failed: &failed,
        };
        match self.store.report(digest, &report).await {
            Ok(outcome) => {
                if outcome.proven > 0 {
                    metrics::counter!(crate::metrics::PEERS_PROVEN)
                        .increment(outcome.proven as u64);
                }
                if outcome.demoted > 0 {
                    metrics::counter!(crate::metrics::PEERS_DEMOTED)
                        .increment(outcome.demoted as u64);
                    tracing::debug!(
                        demoted = outcome.demoted,
                        "peers reported failing, handed out last"
                    );
                }
            }
            Err(error) => {
                tracing::warn!(error = %error_chain(&error), "could not record peer reports");
            }
        }
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
        let connection = Connection::of(&request);
        let result = self.handle_announce(request.into_inner(), connection).await;
        let label = result.as_ref().map_or_else(ServiceError::label, |_| "ok");
        if let Err(error) = &result
            && error.is_refusal()
        {
            metrics::counter!(crate::metrics::ANNOUNCE_REFUSALS, "reason" => label).increment(1);
        }
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
        let result = self.handle_get_metainfo(request.into_inner()).await;
        let label = result.as_ref().map_or_else(ServiceError::label, |_| "ok");
        metrics::counter!(crate::metrics::METAINFO_REQUESTS, "result" => label).increment(1);
        if let Err(error) = &result {
            tracing::debug!(error = %error_chain(error), "metainfo request failed");
        }
        result.map(Response::new).map_err(Status::from)
    }
}

/// Where other peers will dial a caller that claims `claimed`: the connection's `source` IP
/// with the claimed port, unless the source is in `trusted` (a NAT or sidecar speaking for
/// others) or unknown (an in-process call), when the claimed address stands.
fn recorded_address(claimed: SocketAddr, source: Option<IpAddr>, trusted: &[IpNet]) -> SocketAddr {
    let claimed = SocketAddr::new(claimed.ip().to_canonical(), claimed.port());
    match source.map(|ip| ip.to_canonical()) {
        Some(source) if !trusted.iter().any(|net| net.contains(&source)) => {
            SocketAddr::new(source, claimed.port())
        }
        _ => claimed,
    }
}

/// Why no peer could ever dial `addr`, if so.
fn unusable(addr: SocketAddr) -> Option<&'static str> {
    let ip = addr.ip().to_canonical();
    if ip.is_unspecified() {
        Some("the IP is unspecified (0.0.0.0 or ::)")
    } else if matches!(ip, IpAddr::V4(v4) if v4.is_broadcast()) {
        Some("the IP is the broadcast address")
    } else if ip.is_multicast() {
        Some("the IP is a multicast address")
    } else if addr.port() == 0 {
        Some("the port is 0")
    } else {
        None
    }
}

fn check_usable(kind: AddressKind, addr: SocketAddr) -> Result<(), ServiceError> {
    match unusable(addr) {
        Some(problem) => Err(ServiceError::UnusableAddress {
            kind,
            addr,
            problem,
        }),
        None => Ok(()),
    }
}

/// The first [`MAX_REPORTED_PEERS`] well-formed, distinct peer ids of a report list other than
/// the caller's own; the rest are counted and dropped, never an error (older or buggy clients
/// must still be able to announce).
fn reported_ids<B: AsRef<[u8]>>(wire: &[B], caller: PeerId, kind: &'static str) -> Vec<PeerId> {
    let mut ids: Vec<PeerId> = Vec::with_capacity(wire.len().min(MAX_REPORTED_PEERS));
    let (mut malformed, mut over_cap) = (0u64, 0u64);
    for (index, raw) in wire.iter().enumerate() {
        if ids.len() >= MAX_REPORTED_PEERS {
            over_cap = (wire.len() - index) as u64;
            break;
        }
        match PeerId::from_slice(raw.as_ref()) {
            Ok(id) if id != caller && !ids.contains(&id) => ids.push(id),
            Ok(_) => {}
            Err(_) => malformed += 1,
        }
    }
    let counter = |result: &'static str, n: u64| {
        if n > 0 {
            metrics::counter!(crate::metrics::PEER_REPORTS, "kind" => kind, "result" => result)
                .increment(n);
        }
    };
    counter("ok", ids.len() as u64);
    counter("malformed", malformed);
    counter("over_cap", over_cap);
    ids
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

    #[test]
    fn the_source_ip_is_recorded_unless_trusted_or_unknown() {
        let claimed: SocketAddr = "10.9.9.9:16001".parse().unwrap();
        let trusted: Vec<IpNet> = vec!["192.168.0.0/16".parse().unwrap()];
        let ip = |text: &str| Some(text.parse::<IpAddr>().unwrap());
        assert_eq!(
            recorded_address(claimed, ip("10.0.0.5"), &trusted),
            "10.0.0.5:16001".parse().unwrap()
        );
        // A dual-stack listener sees IPv4 callers as IPv4-mapped IPv6.
        assert_eq!(
            recorded_address(claimed, ip("::ffff:10.0.0.5"), &trusted),
            "10.0.0.5:16001".parse().unwrap()
        );
        assert_eq!(
            recorded_address(claimed, ip("2001:db8::5"), &trusted),
            "[2001:db8::5]:16001".parse().unwrap()
        );
        assert_eq!(
            recorded_address(claimed, ip("192.168.3.4"), &trusted),
            claimed
        );
        assert_eq!(
            recorded_address(claimed, ip("::ffff:192.168.3.4"), &trusted),
            claimed
        );
        assert_eq!(recorded_address(claimed, None, &[]), claimed);
        assert_eq!(
            recorded_address("[::ffff:10.1.1.1]:5".parse().unwrap(), None, &[]),
            "10.1.1.1:5".parse().unwrap()
        );
    }

    #[test]
    fn addresses_no_peer_can_dial_are_unusable() {
        for (addr, problem) in [
            ("0.0.0.0:16001", "unspecified"),
            ("[::]:16001", "unspecified"),
            ("[::ffff:0.0.0.0]:16001", "unspecified"),
            ("255.255.255.255:16001", "broadcast"),
            ("224.0.0.1:16001", "multicast"),
            ("239.1.2.3:16001", "multicast"),
            ("[ff02::1]:16001", "multicast"),
            ("10.0.0.1:0", "port is 0"),
        ] {
            let found = unusable(addr.parse().unwrap());
            assert!(
                found.is_some_and(|p| p.contains(problem)),
                "{addr}: {found:?}"
            );
        }
        for addr in ["10.0.0.1:16001", "127.0.0.1:1", "[2001:db8::1]:443"] {
            assert_eq!(unusable(addr.parse().unwrap()), None, "{addr}");
        }
    }

    #[test]
    fn refusals_map_to_their_status_codes() {
        let status = Status::from(ServiceError::UnusableAddress {
            kind: AddressKind::Claimed,
            addr: "0.0.0.0:1".parse().unwrap(),
            problem: "the IP is unspecified (0.0.0.0 or ::)",
        });
        assert_eq!(status.code(), tonic::Code::InvalidArgument);
        assert!(
            status.message().contains("claimed peer address 0.0.0.0:1"),
            "{status:?}"
        );
        let peer_id = PeerId::from_array([7; 20]);
        let error = ServiceError::PeerIdTaken { peer_id };
        assert!(error.is_refusal());
        assert_eq!(error.label(), "peer_id_taken");
        let status = Status::from(error);
        assert_eq!(status.code(), tonic::Code::PermissionDenied);
        assert!(
            status.message().contains(&peer_id.to_string()),
            "{status:?}"
        );
        let error = ServiceError::PeerStore(PeerStoreError::Full(
            crate::peerstore::CapExceeded::Address {
                ip: "10.0.0.1".parse().unwrap(),
                limit: 32,
            },
        ));
        assert_eq!(error.label(), "address_full");
        let status = Status::from(error);
        assert_eq!(status.code(), tonic::Code::ResourceExhausted);
        assert!(
            status.message().contains("32 peers at 10.0.0.1"),
            "{status:?}"
        );
        assert!(status.metadata().get(RETRY_AFTER_MS).is_none());
    }

    #[derive(Debug)]
    struct NoOrigins;

    #[async_trait::async_trait]
    impl OriginDirectory for NoOrigins {
        async fn owners(&self, _digest: &Digest) -> Result<Vec<PeerInfo>, OriginError> {
            Ok(Vec::new())
        }

        async fn metainfo(
            &self,
            _namespace: &Namespace,
            digest: &Digest,
        ) -> Result<kraken_core::MetaInfo, OriginError> {
            Err(OriginError::NoOwners { digest: *digest })
        }
    }

    fn tracker(settings: TrackerSettings) -> Tracker {
        Tracker::new(
            Arc::new(crate::MemoryPeerStore::new(Duration::from_secs(60))),
            Arc::new(NoOrigins),
            settings,
        )
    }

    fn announce_of(digest: &Digest, n: u8, addr: &str) -> AnnounceRequest {
        AnnounceRequest {
            namespace: "library/ubuntu".into(),
            digest: digest.to_string(),
            peer: Some(pb::PeerInfo::from(&PeerInfo {
                peer_id: PeerId::from_array([n; 20]),
                addr: addr.parse().unwrap(),
                complete: false,
                origin: false,
            })),
            ..AnnounceRequest::default()
        }
    }

    fn from(source: &str, certificate: &[u8]) -> Connection {
        Connection {
            source: Some(source.parse().unwrap()),
            identity: Some(CertIdentity::of_certificate(certificate)),
        }
    }

    /// What the store holds for `digest`: what other peers would be handed.
    async fn recorded(tracker: &Tracker, digest: &Digest) -> Vec<(PeerId, SocketAddr)> {
        let mut peers: Vec<_> = tracker
            .store
            .get_peers(digest, 100)
            .await
            .unwrap()
            .iter()
            .map(|p| (p.peer_id, p.addr))
            .collect();
        peers.sort();
        peers
    }

    #[tokio::test]
    async fn announces_are_recorded_at_their_source_under_their_owner() {
        let tracker = tracker(TrackerSettings::default());
        let blob = Digest::of(b"blob");
        let one = PeerId::from_array([1; 20]);

        // Claims another host: recorded at the connection's source, with the claimed port.
        tracker
            .handle_announce(
                announce_of(&blob, 1, "10.9.9.9:16001"),
                from("10.0.0.1", b"a"),
            )
            .await
            .unwrap();
        assert_eq!(
            recorded(&tracker, &blob).await,
            vec![(one, "10.0.0.1:16001".parse().unwrap())]
        );

        // Another certificate cannot take the id over, and the address stays.
        let error = tracker
            .handle_announce(
                announce_of(&blob, 1, "10.0.0.66:16001"),
                from("10.0.0.66", b"b"),
            )
            .await
            .unwrap_err();
        assert!(matches!(error, ServiceError::PeerIdTaken { peer_id } if peer_id == one));
        assert_eq!(
            recorded(&tracker, &blob).await,
            vec![(one, "10.0.0.1:16001".parse().unwrap())]
        );
        // The owner moves freely.
        tracker
            .handle_announce(
                announce_of(&blob, 1, "10.0.0.2:16002"),
                from("10.0.0.2", b"a"),
            )
            .await
            .unwrap();
        assert_eq!(
            recorded(&tracker, &blob).await,
            vec![(one, "10.0.0.2:16002".parse().unwrap())]
        );

        // Unusable addresses are refused whether claimed or recorded.
        for (claimed, source) in [
            ("0.0.0.0:16003", "10.0.0.3"),
            ("255.255.255.255:16003", "10.0.0.3"),
            ("10.0.0.3:16003", "224.0.0.9"),
        ] {
            let error = tracker
                .handle_announce(announce_of(&blob, 3, claimed), from(source, b"c"))
                .await
                .unwrap_err();
            assert!(
                matches!(error, ServiceError::UnusableAddress { .. }),
                "{claimed} from {source}: {error:?}"
            );
        }
        assert_eq!(recorded(&tracker, &blob).await.len(), 1);
    }

    #[tokio::test]
    async fn trusted_sources_name_their_address_and_caps_apply() {
        let tracker = tracker(TrackerSettings {
            trust_claimed_address_from: vec!["10.1.0.0/16".parse().unwrap()],
            limits: PeerLimits {
                per_blob: 3,
                per_address: 2,
            },
            ..TrackerSettings::default()
        });
        let blob = Digest::of(b"blob");
        tracker
            .handle_announce(
                announce_of(&blob, 1, "10.7.7.7:16001"),
                from("10.1.0.1", b"nat"),
            )
            .await
            .unwrap();
        assert_eq!(
            recorded(&tracker, &blob).await,
            vec![(
                PeerId::from_array([1; 20]),
                "10.7.7.7:16001".parse().unwrap()
            )]
        );

        tracker
            .handle_announce(
                announce_of(&blob, 2, "10.7.7.7:16002"),
                from("10.1.0.1", b"nat"),
            )
            .await
            .unwrap();
        let error = tracker
            .handle_announce(
                announce_of(&blob, 3, "10.7.7.7:16003"),
                from("10.1.0.1", b"nat"),
            )
            .await
            .unwrap_err();
        assert_eq!(error.label(), "address_full", "{error:?}");
        tracker
            .handle_announce(
                announce_of(&blob, 1, "10.7.7.7:16001"),
                from("10.1.0.1", b"nat"),
            )
            .await
            .expect("a known peer refreshes at the cap");
    }

    #[tokio::test]
    async fn the_caller_is_left_out_at_the_address_it_was_recorded_at() {
        let tracker = tracker(TrackerSettings::default());
        let blob = Digest::of(b"blob");
        tracker
            .handle_announce(
                announce_of(&blob, 1, "10.9.9.9:16001"),
                from("10.0.0.1", b"a"),
            )
            .await
            .unwrap();
        // The same agent restarted under a new id, still claiming the same wrong address.
        let reply = tracker
            .handle_announce(
                announce_of(&blob, 2, "10.9.9.9:16001"),
                from("10.0.0.1", b"a"),
            )
            .await
            .unwrap();
        assert!(reply.peers.is_empty(), "{:?}", reply.peers);
        // Another host is handed it.
        let reply = tracker
            .handle_announce(
                announce_of(&blob, 3, "10.0.0.3:16001"),
                from("10.0.0.3", b"c"),
            )
            .await
            .unwrap();
        assert_eq!(reply.peers.len(), 2);
    }

    /// Origins owning every blob, for the hand-out tests.
    #[derive(Debug)]
    struct Origins(Vec<PeerInfo>);

    #[async_trait::async_trait]
    impl OriginDirectory for Origins {
        async fn owners(&self, _digest: &Digest) -> Result<Vec<PeerInfo>, OriginError> {
            Ok(self.0.clone())
        }

        async fn metainfo(
            &self,
            _namespace: &Namespace,
            digest: &Digest,
        ) -> Result<kraken_core::MetaInfo, OriginError> {
            Err(OriginError::NoOwners { digest: *digest })
        }
    }

    /// Peer `n`'s announce from 10.0.0.`ip` (its own host unless a sybil shares one).
    fn announce_at(
        digest: &Digest,
        n: u8,
        ip: u8,
        complete: bool,
    ) -> (AnnounceRequest, Connection) {
        let mut request = announce_of(digest, n, &format!("10.0.0.{ip}:16001"));
        if let Some(peer) = request.peer.as_mut() {
            peer.complete = complete;
        }
        (request, from(&format!("10.0.0.{ip}"), &[n]))
    }

    fn id_bytes(n: u8) -> bytes::Bytes {
        bytes::Bytes::copy_from_slice(PeerId::from_array([n; 20]).as_bytes())
    }

    /// The peer ids of a hand-out, origins as 0.
    fn handed(reply: &AnnounceResponse) -> Vec<u8> {
        reply
            .peers
            .iter()
            .map(|p| if p.origin { 0 } else { p.peer_id[0] })
            .collect()
    }

    #[tokio::test]
    async fn a_complete_claim_earns_priority_only_once_another_host_reports_it_served() {
        let origin = PeerInfo {
            peer_id: PeerId::from_array([200; 20]),
            addr: "10.0.1.1:15001".parse().unwrap(),
            complete: true,
            origin: true,
        };
        let tracker = Tracker::new(
            Arc::new(crate::MemoryPeerStore::new(Duration::from_secs(60))),
            Arc::new(Origins(vec![origin])),
            TrackerSettings {
                policy: HandoutPolicy::new(
                    kraken_config::tracker::HandoutPriority::Completeness,
                    50,
                ),
                ..TrackerSettings::default()
            },
        );
        let blob = Digest::of(b"blob");
        let announce = |n: u8, ip: u8, complete: bool, served: &[u8], failed: &[u8]| {
            let (mut request, connection) = announce_at(&blob, n, ip, complete);
            request.served_by = served.iter().map(|n| id_bytes(*n)).collect();
            request.failed_peers = failed.iter().map(|n| id_bytes(*n)).collect();
            let tracker = &tracker;
            async move { tracker.handle_announce(request, connection).await.unwrap() }
        };

        // A certificate holder announces a fake seeder (9) and a sybil (8) on its host; an
        // honest leecher (4) is downloading.
        announce(9, 9, true, &[], &[]).await;
        announce(4, 4, false, &[], &[]).await;
        // The sybil vouches for the fake from the same IP: ignored.
        announce(8, 9, false, &[9], &[]).await;
        let reply = announce(2, 2, false, &[], &[]).await;
        assert_eq!(handed(&reply)[0], 0, "the origin before an unproven claim");
        assert_eq!(handed(&reply).len(), 4);

        // Another host got verified pieces from 9: now it goes first.
        announce(2, 2, false, &[9], &[]).await;
        let reply = announce(3, 3, false, &[], &[]).await;
        assert_eq!(handed(&reply)[..2], [9, 0], "{:?}", handed(&reply));

        // Another host could not reach it: demoted, last, and no longer proven.
        announce(3, 3, false, &[], &[9]).await;
        let reply = announce(5, 5, false, &[], &[]).await;
        let order = handed(&reply);
        assert_eq!(order[0], 0, "{order:?}");
        assert_eq!(order.last(), Some(&9), "{order:?}");
        // A served report during the demotion does not lift it.
        announce(2, 2, false, &[9], &[]).await;
        let reply = announce(5, 5, false, &[], &[]).await;
        assert_eq!(handed(&reply).last(), Some(&9));
    }

    #[tokio::test]
    async fn malformed_and_excess_reports_never_fail_an_announce() {
        let tracker = tracker(TrackerSettings::default());
        let blob = Digest::of(b"blob");
        let (mut request, connection) = announce_at(&blob, 1, 1, false);
        request.served_by = vec![
            bytes::Bytes::from_static(b"short"),
            bytes::Bytes::new(),
            id_bytes(1),
        ];
        request.failed_peers = (0..=255u8).map(id_bytes).collect();
        tracker.handle_announce(request, connection).await.unwrap();

        let ids = reported_ids(
            &(0..100u8).map(id_bytes).collect::<Vec<_>>(),
            PeerId::from_array([0; 20]),
            "served",
        );
        assert_eq!(
            ids.len(),
            MAX_REPORTED_PEERS,
            "the caller itself is skipped, the rest capped"
        );
        assert_eq!(ids[0], PeerId::from_array([1; 20]));
        let ids = reported_ids(
            &[id_bytes(3), id_bytes(3), bytes::Bytes::from_static(b"x")],
            PeerId::from_array([0; 20]),
            "failed",
        );
        assert_eq!(ids, vec![PeerId::from_array([3; 20])]);
    }
}
