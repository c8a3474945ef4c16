//! The real origin client against gRPC `BlobService` test doubles, and the whole tracker
//! started with `run` in front of them.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::stream::BoxStream;
use kraken_config::TrackerConfig;
use kraken_config::cluster::UpstreamConfig;
use kraken_config::tracker::PeerStoreBackend;
use kraken_core::{Digest, MetaInfo, Namespace, PeerId, PeerInfo};
use kraken_proto::common::v1 as pb;
use kraken_proto::origin::v1::blob_service_server::{BlobService, BlobServiceServer};
use kraken_proto::origin::v1::*;
use kraken_proto::tracker::v1::{AnnounceRequest, GetMetaInfoRequest as TrackerMetaInfoRequest};
use kraken_tls::Role;
use kraken_tracker::{GrpcOriginDirectory, OriginDirectory, OriginError, RETRY_AFTER_MS};
use kraken_transport::grpc::{GrpcServer, GrpcServerLimits};
use tonic::{Request, Response, Status, Streaming};

use crate::support::{
    Pki, RedisServer, ServerGuard, metainfo_of, peer, refusing_addr, tracker_client, wire,
};

/// What a double answers to `GetMetaInfo` for one digest.
#[derive(Debug, Clone)]
enum Answer {
    Found(pb::MetaInfo),
    NotFound,
    Fetching { retry_after_ms: u64 },
}

/// A `BlobService` implementing only what the tracker calls; the rest is UNIMPLEMENTED.
#[derive(Debug, Clone, Default)]
struct OriginDouble {
    state: Arc<DoubleState>,
}

#[derive(Debug, Default)]
struct DoubleState {
    me: Mutex<Option<PeerInfo>>,
    owners: Mutex<Vec<OriginLocation>>,
    answers: Mutex<HashMap<String, Answer>>,
    locations_calls: AtomicUsize,
    peer_context_calls: AtomicUsize,
    metainfo_calls: AtomicUsize,
}

impl OriginDouble {
    fn answer(&self, digest: &Digest, answer: Answer) {
        self.state
            .answers
            .lock()
            .unwrap()
            .insert(digest.to_string(), answer);
    }

    fn calls(&self) -> (usize, usize, usize) {
        (
            self.state.locations_calls.load(Ordering::SeqCst),
            self.state.peer_context_calls.load(Ordering::SeqCst),
            self.state.metainfo_calls.load(Ordering::SeqCst),
        )
    }
}

fn unimplemented<T>() -> Result<T, Status> {
    Err(Status::unimplemented("not part of the test double"))
}

#[tonic::async_trait]
impl BlobService for OriginDouble {
    async fn upload(
        &self,
        _: Request<Streaming<UploadRequest>>,
    ) -> Result<Response<UploadResponse>, Status> {
        unimplemented()
    }
    async fn start_upload(
        &self,
        _: Request<StartUploadRequest>,
    ) -> Result<Response<StartUploadResponse>, Status> {
        unimplemented()
    }
    async fn upload_chunks(
        &self,
        _: Request<Streaming<UploadChunksRequest>>,
    ) -> Result<Response<UploadChunksResponse>, Status> {
        unimplemented()
    }
    async fn get_upload_status(
        &self,
        _: Request<GetUploadStatusRequest>,
    ) -> Result<Response<GetUploadStatusResponse>, Status> {
        unimplemented()
    }
    async fn commit_upload(
        &self,
        _: Request<CommitUploadRequest>,
    ) -> Result<Response<CommitUploadResponse>, Status> {
        unimplemented()
    }
    async fn abort_upload(
        &self,
        _: Request<AbortUploadRequest>,
    ) -> Result<Response<AbortUploadResponse>, Status> {
        unimplemented()
    }
    type DownloadStream = BoxStream<'static, Result<DownloadResponse, Status>>;
    async fn download(
        &self,
        _: Request<DownloadRequest>,
    ) -> Result<Response<Self::DownloadStream>, Status> {
        unimplemented()
    }
    async fn stat(&self, _: Request<StatRequest>) -> Result<Response<StatResponse>, Status> {
        unimplemented()
    }
    async fn get_meta_info(
        &self,
        request: Request<GetMetaInfoRequest>,
    ) -> Result<Response<GetMetaInfoResponse>, Status> {
        self.state.metainfo_calls.fetch_add(1, Ordering::SeqCst);
        let request = request.into_inner();
        assert_eq!(request.namespace, "library/ubuntu");
        let answer = self
            .state
            .answers
            .lock()
            .unwrap()
            .get(&request.digest)
            .cloned();
        match answer.unwrap_or(Answer::NotFound) {
            Answer::Found(metainfo) => Ok(Response::new(GetMetaInfoResponse {
                metainfo: Some(metainfo),
            })),
            Answer::NotFound => Err(Status::not_found(format!(
                "blob {} is in no backend",
                request.digest
            ))),
            Answer::Fetching { retry_after_ms } => {
                let mut status = Status::unavailable("fetching from the backend");
                status.metadata_mut().insert(
                    RETRY_AFTER_MS,
                    tonic::metadata::MetadataValue::from(retry_after_ms),
                );
                Err(status)
            }
        }
    }
    async fn locations(
        &self,
        request: Request<LocationsRequest>,
    ) -> Result<Response<LocationsResponse>, Status> {
        self.state.locations_calls.fetch_add(1, Ordering::SeqCst);
        request.into_inner().digest.parse::<Digest>().unwrap();
        Ok(Response::new(LocationsResponse {
            origins: self.state.owners.lock().unwrap().clone(),
        }))
    }
    async fn get_peer_context(
        &self,
        _: Request<GetPeerContextRequest>,
    ) -> Result<Response<GetPeerContextResponse>, Status> {
        self.state.peer_context_calls.fetch_add(1, Ordering::SeqCst);
        let me = self.state.me.lock().unwrap().unwrap();
        Ok(Response::new(GetPeerContextResponse {
            peer: Some(wire(&me)),
            name: "double".into(),
        }))
    }
    async fn replicate_to_remote(
        &self,
        _: Request<ReplicateToRemoteRequest>,
    ) -> Result<Response<ReplicateToRemoteResponse>, Status> {
        unimplemented()
    }
    async fn duplicate(
        &self,
        _: Request<Streaming<DuplicateRequest>>,
    ) -> Result<Response<DuplicateResponse>, Status> {
        unimplemented()
    }
    async fn delete(&self, _: Request<DeleteRequest>) -> Result<Response<DeleteResponse>, Status> {
        unimplemented()
    }
    async fn prefetch(
        &self,
        _: Request<PrefetchRequest>,
    ) -> Result<Response<PrefetchResponse>, Status> {
        unimplemented()
    }
}

/// Two origin doubles owning every blob (`a` first on the ring), plus an unhealthy third
/// owner at an address nothing listens on.
struct Cluster {
    pki: Pki,
    a: OriginDouble,
    b: OriginDouble,
    a_server: ServerGuard,
    _b_server: ServerGuard,
    a_peer: PeerInfo,
    b_peer: PeerInfo,
    /// Where a dead origin is: connections are refused while the socket is held.
    dead: std::net::SocketAddr,
    _dead_held: tokio::net::TcpSocket,
}

impl Cluster {
    async fn start() -> Self {
        let pki = Pki::new();
        let (a, b) = (OriginDouble::default(), OriginDouble::default());
        let a_server = serve_double(&pki, a.clone()).await;
        let b_server = serve_double(&pki, b.clone()).await;
        let (dead, dead_held) = refusing_addr();
        let owners = vec![
            OriginLocation {
                address: a_server.addr.to_string(),
                healthy: true,
            },
            OriginLocation {
                address: b_server.addr.to_string(),
                healthy: true,
            },
            OriginLocation {
                address: dead.to_string(),
                healthy: false,
            },
        ];
        let a_peer = PeerInfo {
            origin: true,
            ..peer(101, 15001, true)
        };
        // An origin that does not set `origin` itself is still handed out as one.
        let b_peer = peer(102, 15011, true);
        for (double, me) in [(&a, a_peer), (&b, b_peer)] {
            *double.state.me.lock().unwrap() = Some(me);
            *double.state.owners.lock().unwrap() = owners.clone();
        }
        Self {
            pki,
            a,
            b,
            a_server,
            _b_server: b_server,
            a_peer,
            b_peer,
            dead,
            _dead_held: dead_held,
        }
    }

    /// A tracker config whose seed list starts with a dead origin.
    fn tracker_config(&self) -> TrackerConfig {
        TrackerConfig {
            origin: UpstreamConfig::of([self.dead.to_string(), self.a_server.addr.to_string()]),
            ..TrackerConfig::default()
        }
    }
}

async fn serve_double(pki: &Pki, double: OriginDouble) -> ServerGuard {
    let tls = pki.tls(Role::Origin);
    ServerGuard::spawn(move |listener, shutdown| async move {
        GrpcServer::new(&tls, GrpcServerLimits::default())?
            .add_service(BlobServiceServer::new(double))
            .serve(listener, shutdown)
            .await
    })
    .await
}

fn namespace() -> Namespace {
    "library/ubuntu".parse().unwrap()
}

#[tokio::test]
async fn finds_the_owners_past_a_dead_origin_and_caches_them() {
    let cluster = Cluster::start().await;
    let directory =
        GrpcOriginDirectory::from_config(&cluster.tracker_config(), cluster.pki.tls(Role::Tracker))
            .unwrap();
    let blob = Digest::of(b"layer");

    let owners = directory.owners(&blob).await.unwrap();
    assert_eq!(
        owners,
        vec![
            cluster.a_peer,
            PeerInfo {
                origin: true,
                ..cluster.b_peer
            }
        ],
        "ring order, unhealthy owner left out, all marked as origins"
    );
    assert_eq!(cluster.a.calls(), (1, 1, 0));
    assert_eq!(cluster.b.calls(), (0, 1, 0));

    // Cached: locations per digest, peer contexts per origin.
    directory.owners(&blob).await.unwrap();
    assert_eq!(cluster.a.calls(), (1, 1, 0));
    directory.owners(&Digest::of(b"another")).await.unwrap();
    assert_eq!(
        cluster.a.calls(),
        (2, 1, 0),
        "a new digest needs Locations only"
    );
    assert_eq!(cluster.b.calls(), (0, 1, 0));
}

#[tokio::test]
async fn fetches_metainfo_from_the_owners_in_order() {
    let cluster = Cluster::start().await;
    let directory =
        GrpcOriginDirectory::from_config(&cluster.tracker_config(), cluster.pki.tls(Role::Tracker))
            .unwrap();

    // Held only by the second owner (the first lost it and its backend never had it).
    let replica = metainfo_of(&[1u8; 4000]);
    cluster.b.answer(
        replica.digest(),
        Answer::Found(pb::MetaInfo::from(&replica)),
    );
    let got = directory
        .metainfo(&namespace(), replica.digest())
        .await
        .unwrap();
    assert_eq!(got, replica);

    // The first owner is fetching it: that answer stands, the second is not asked.
    let fetching = Digest::of(b"fetching");
    cluster.a.answer(
        &fetching,
        Answer::Fetching {
            retry_after_ms: 1500,
        },
    );
    let before = cluster.b.calls().2;
    let error = directory
        .metainfo(&namespace(), &fetching)
        .await
        .unwrap_err();
    match error {
        OriginError::Fetching { retry_after, .. } => {
            assert_eq!(retry_after, Duration::from_millis(1500));
        }
        other => panic!("expected Fetching, got {other:?}"),
    }
    assert_eq!(cluster.b.calls().2, before);

    // Nobody has it.
    let missing = Digest::of(b"missing");
    let error = directory
        .metainfo(&namespace(), &missing)
        .await
        .unwrap_err();
    assert!(matches!(error, OriginError::NotFound { .. }), "{error:?}");
    assert!(error.to_string().contains("is in no backend"), "{error}");

    // A wrong answer from the first owner is not trusted; the second has the right one.
    let right = metainfo_of(&[2u8; 4000]);
    let wrong = metainfo_of(&[3u8; 4000]);
    cluster
        .a
        .answer(right.digest(), Answer::Found(pb::MetaInfo::from(&wrong)));
    cluster
        .b
        .answer(right.digest(), Answer::Found(pb::MetaInfo::from(&right)));
    assert_eq!(
        directory
            .metainfo(&namespace(), right.digest())
            .await
            .unwrap(),
        right
    );
}

#[tokio::test]
async fn reports_unreachable_origins() {
    let pki = Pki::new();
    let (dead, _held) = refusing_addr();
    let dead = dead.to_string();
    let config = TrackerConfig {
        origin: UpstreamConfig::of([dead.clone()]),
        ..TrackerConfig::default()
    };
    let directory = GrpcOriginDirectory::from_config(&config, pki.tls(Role::Tracker)).unwrap();
    let error = directory.owners(&Digest::of(b"x")).await.unwrap_err();
    assert!(
        matches!(error, OriginError::Unreachable { .. }),
        "{error:?}"
    );
    assert!(error.to_string().contains(&dead), "{error}");

    let empty = TrackerConfig::default();
    assert!(matches!(
        GrpcOriginDirectory::from_config(&empty, pki.tls(Role::Tracker)),
        Err(OriginError::NotConfigured)
    ));
}

async fn start_tracker(config: TrackerConfig, pki: &Pki) -> ServerGuard {
    let tls = pki.tls(Role::Tracker);
    ServerGuard::spawn(move |listener, shutdown| {
        kraken_tracker::run(config, tls, listener, shutdown)
    })
    .await
}

fn announce(digest: &Digest, me: &PeerInfo) -> AnnounceRequest {
    AnnounceRequest {
        namespace: "library/ubuntu".into(),
        digest: digest.to_string(),
        peer: Some(wire(me)),
        ..AnnounceRequest::default()
    }
}

#[tokio::test]
async fn run_serves_the_tracker_in_front_of_real_origins() {
    let cluster = Cluster::start().await;
    let tracker = start_tracker(cluster.tracker_config(), &cluster.pki).await;
    let mut client = tracker_client(&cluster.pki, Role::Agent, tracker.addr);
    let blob = Digest::of(b"layer");

    let reply = client
        .announce(announce(&blob, &peer(1, 16001, false)))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        reply.interval,
        Some(prost_types::Duration {
            seconds: 3,
            nanos: 0
        })
    );
    let mut handed: Vec<(PeerId, String, u32, bool)> = reply
        .peers
        .iter()
        .map(|p| {
            (
                PeerId::from_slice(&p.peer_id).unwrap(),
                p.ip.clone(),
                p.port,
                p.origin,
            )
        })
        .collect();
    handed.sort();
    let mut expected: Vec<_> = [cluster.a_peer, cluster.b_peer]
        .iter()
        .map(|p| {
            (
                p.peer_id,
                p.addr.ip().to_string(),
                u32::from(p.addr.port()),
                true,
            )
        })
        .collect();
    expected.sort();
    assert_eq!(handed, expected);

    let metainfo = metainfo_of(&[9u8; 2048]);
    cluster.a.answer(
        metainfo.digest(),
        Answer::Found(pb::MetaInfo::from(&metainfo)),
    );
    let fetching = Digest::of(b"fetching");
    cluster.a.answer(
        &fetching,
        Answer::Fetching {
            retry_after_ms: 1500,
        },
    );
    let ask = |digest: &Digest| TrackerMetaInfoRequest {
        namespace: "library/ubuntu".into(),
        digest: digest.to_string(),
    };

    let reply = client.get_meta_info(ask(metainfo.digest())).await.unwrap();
    let got = MetaInfo::try_from(&reply.into_inner().metainfo.unwrap()).unwrap();
    assert_eq!(got, metainfo);

    let status = client.get_meta_info(ask(&fetching)).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unavailable);
    assert_eq!(status.metadata().get(RETRY_AFTER_MS).unwrap(), "1500");

    let status = client
        .get_meta_info(ask(&Digest::of(b"nope")))
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::NotFound);

    tracker.shutdown().await;
}

#[tokio::test]
async fn trackers_sharing_redis_see_each_others_announces() {
    let cluster = Cluster::start().await;
    let redis = RedisServer::start().await;
    let mut config = cluster.tracker_config();
    config.peerstore.backend = PeerStoreBackend::Redis;
    config.peerstore.redis.addr = redis.addr();
    let first = start_tracker(config.clone(), &cluster.pki).await;
    let second = start_tracker(config, &cluster.pki).await;
    let blob = Digest::of(b"layer");
    let (p1, p2) = (peer(1, 16001, false), peer(2, 16002, false));

    tracker_client(&cluster.pki, Role::Agent, first.addr)
        .announce(announce(&blob, &p1))
        .await
        .unwrap();
    let reply = tracker_client(&cluster.pki, Role::Agent, second.addr)
        .announce(announce(&blob, &p2))
        .await
        .unwrap()
        .into_inner();
    let agents: Vec<PeerId> = reply
        .peers
        .iter()
        .filter(|p| !p.origin)
        .map(|p| PeerId::from_slice(&p.peer_id).unwrap())
        .collect();
    assert_eq!(agents, vec![p1.peer_id]);

    first.shutdown().await;
    second.shutdown().await;
}
