//! Test fixtures: a dev CA, an in-test tracker (the real one is another crate), a real seeder
//! (an origin-role scheduler over QUIC holding the blob) and agents on ephemeral ports.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use kraken_agent::Agent;
use kraken_config::agent::{AgentConfig, AgentListenConfig};
use kraken_config::cluster::UpstreamConfig;
use kraken_config::store::StoreConfig;
use kraken_core::{Digest, MetaInfo, PeerId, PeerInfo};
use kraken_proto::agent::v1::{GetBlobRequest, agent_service_client::AgentServiceClient};
use kraken_proto::tracker::v1::{
    AnnounceRequest, AnnounceResponse, GetMetaInfoRequest, GetMetaInfoResponse,
    tracker_service_server::{TrackerService, TrackerServiceServer},
};
use kraken_scheduler::{BlobState, DriverConfig, Scheduler};
use kraken_store::{BlobStore, CommitOptions};
use kraken_tls::{DevCa, LeafOptions, Role, TlsMaterial};
use kraken_transport::bandwidth::BandwidthLimiter;
use kraken_transport::grpc::{GrpcServer, GrpcServerLimits};
use kraken_transport::observe::ObservedChannel;
use kraken_transport::quic::{PeerEndpoint, QuicTuning};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};

/// The cluster CA of one test, issuing certificates by role.
pub(crate) struct Pki {
    ca: DevCa,
}

impl Pki {
    pub(crate) fn new() -> Self {
        kraken_tls::install_crypto_provider();
        Self {
            ca: DevCa::new().unwrap(),
        }
    }

    pub(crate) fn tls(&self, role: Role) -> TlsMaterial {
        let issued = self.ca.issue(role, &LeafOptions::default()).unwrap();
        TlsMaterial::from_pem(self.ca.cert_pem(), &issued.cert_pem, &issued.key_pem).unwrap()
    }

    /// An `AgentService` client presenting a certificate of `role`.
    pub(crate) fn client(&self, role: Role, agent: &Agent) -> AgentServiceClient<ObservedChannel> {
        let channel = kraken_transport::grpc::channel(
            &self.tls(role),
            &agent.grpc_addr().to_string(),
            None,
            Role::Agent,
        )
        .unwrap();
        AgentServiceClient::new(channel)
    }
}

/// What the fake tracker knows and saw.
#[derive(Default)]
pub(crate) struct TrackerState {
    pub(crate) metainfo: HashMap<Digest, MetaInfo>,
    /// Handed out on every announce (origins).
    pub(crate) seeders: Vec<PeerInfo>,
    pub(crate) announces: Vec<(Digest, PeerInfo)>,
    /// Each announce's `failed_peers` and `served_by`, as sent.
    pub(crate) reports: Vec<(Vec<bytes::Bytes>, Vec<bytes::Bytes>)>,
    pub(crate) metainfo_calls: HashMap<Digest, u32>,
    /// `UNAVAILABLE` answers to `GetMetaInfo` before the metainfo, per digest (an origin
    /// fetching from its backend).
    pub(crate) pending_answers: u32,
    pub(crate) retry_after_ms: u64,
}

/// An in-test `TrackerService`: records announces, hands out the seeders and every other
/// announcer, and serves registered metainfo (after `pending_answers` UNAVAILABLEs).
#[derive(Clone, Default)]
pub(crate) struct FakeTracker {
    pub(crate) state: Arc<Mutex<TrackerState>>,
}

impl FakeTracker {
    pub(crate) fn metainfo_calls(&self, digest: &Digest) -> u32 {
        self.state
            .lock()
            .unwrap()
            .metainfo_calls
            .get(digest)
            .copied()
            .unwrap_or(0)
    }

    pub(crate) fn announcers(&self, digest: &Digest) -> HashSet<PeerId> {
        self.state
            .lock()
            .unwrap()
            .announces
            .iter()
            .filter(|(d, _)| d == digest)
            .map(|(_, p)| p.peer_id)
            .collect()
    }

    pub(crate) fn announce_count(&self) -> usize {
        self.state.lock().unwrap().announces.len()
    }
}

#[tonic::async_trait]
impl TrackerService for FakeTracker {
    async fn announce(
        &self,
        request: Request<AnnounceRequest>,
    ) -> Result<Response<AnnounceResponse>, Status> {
        kraken_tls::require_role(&request, &[Role::Agent])?;
        let request = request.into_inner();
        let digest: Digest = request
            .digest
            .parse()
            .map_err(|e| Status::invalid_argument(format!("{e}")))?;
        let me = PeerInfo::try_from(
            request
                .peer
                .as_ref()
                .ok_or_else(|| Status::invalid_argument("peer missing"))?,
        )
        .map_err(|e| Status::invalid_argument(e.to_string()))?;
        let mut state = self.state.lock().unwrap();
        state.announces.push((digest, me));
        state
            .reports
            .push((request.failed_peers.clone(), request.served_by.clone()));
        let mut peers: Vec<kraken_proto::common::v1::PeerInfo> =
            state.seeders.iter().map(Into::into).collect();
        let mut seen = HashSet::from([me.peer_id]);
        for (d, peer) in state.announces.iter().rev() {
            if *d == digest && seen.insert(peer.peer_id) {
                peers.push(peer.into());
            }
        }
        Ok(Response::new(AnnounceResponse {
            peers,
            interval: Some(prost_types::Duration {
                seconds: 1,
                nanos: 0,
            }),
        }))
    }

    async fn get_meta_info(
        &self,
        request: Request<GetMetaInfoRequest>,
    ) -> Result<Response<GetMetaInfoResponse>, Status> {
        let digest: Digest = request
            .get_ref()
            .digest
            .parse()
            .map_err(|e| Status::invalid_argument(format!("{e}")))?;
        let mut state = self.state.lock().unwrap();
        let pending = state.pending_answers;
        let retry_after = state.retry_after_ms;
        let calls = state.metainfo_calls.entry(digest).or_default();
        *calls += 1;
        let calls = *calls;
        let Some(metainfo) = state.metainfo.get(&digest) else {
            return Err(Status::not_found(format!("no origin has {digest}")));
        };
        if calls <= pending {
            let mut status = Status::unavailable("the origin is fetching the blob");
            status
                .metadata_mut()
                .insert("retry-after-ms", retry_after.to_string().parse().unwrap());
            return Err(status);
        }
        Ok(Response::new(GetMetaInfoResponse {
            metainfo: Some(metainfo.into()),
        }))
    }
}

/// A fake tracker served over mTLS on an ephemeral port.
pub(crate) struct RunningTracker {
    pub(crate) addr: SocketAddr,
    pub(crate) fake: FakeTracker,
    stop: CancellationToken,
    task: Option<JoinHandle<()>>,
}

impl RunningTracker {
    pub(crate) async fn start(pki: &Pki, fake: FakeTracker) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = GrpcServer::new(&pki.tls(Role::Tracker), GrpcServerLimits::default())
            .unwrap()
            .add_service(TrackerServiceServer::new(fake.clone()));
        let stop = CancellationToken::new();
        let shutdown = stop.clone().cancelled_owned();
        let task = tokio::spawn(async move {
            server.serve(listener, shutdown).await.unwrap();
        });
        Self {
            addr,
            fake,
            stop,
            task: Some(task),
        }
    }

    pub(crate) async fn stop(mut self) {
        self.stop.cancel();
        if let Some(task) = self.task.take() {
            let _ = tokio::time::timeout(Duration::from_secs(5), task).await;
        }
    }
}

impl RunningTracker {
    /// Hands `seeder` out with every announce from now on.
    pub(crate) fn add_seeder(&self, seeder: &Seeder) {
        self.fake.state.lock().unwrap().seeders.push(seeder.peer());
    }
}

impl Drop for RunningTracker {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// A port nothing listens on (connections are refused).
pub(crate) async fn dead_addr() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    listener.local_addr().unwrap()
}

/// A real seeder: an origin-role scheduler over QUIC with its own store.
pub(crate) struct Seeder {
    pub(crate) scheduler: Scheduler,
    pub(crate) store: BlobStore,
    _dir: tempfile::TempDir,
}

impl Seeder {
    pub(crate) async fn start(pki: &Pki) -> Self {
        let tls = pki.tls(Role::Origin);
        let endpoint =
            PeerEndpoint::bind("127.0.0.1:0".parse().unwrap(), &tls, &QuicTuning::default())
                .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::open(StoreConfig {
            dir: dir.path().to_owned(),
            ..StoreConfig::default()
        })
        .await
        .unwrap();
        let local = PeerInfo {
            peer_id: PeerId::random(),
            addr: endpoint.local_addr().unwrap(),
            complete: true,
            origin: true,
        };
        let config = DriverConfig::from_config(&Default::default(), true);
        let scheduler = Scheduler::start(
            local,
            config,
            endpoint,
            store.clone(),
            BandwidthLimiter::unlimited(),
            None,
        );
        Self {
            scheduler,
            store,
            _dir: dir,
        }
    }

    pub(crate) fn peer(&self) -> PeerInfo {
        *self.scheduler.local()
    }

    /// Stores `data` and returns its metainfo.
    pub(crate) async fn seed(&self, data: &Bytes) -> MetaInfo {
        let digest = Digest::of(data);
        self.store
            .put_bytes(&digest, data.clone(), &CommitOptions::default())
            .await
            .unwrap()
            .metainfo()
            .clone()
    }

    /// Holds only the first `pieces` pieces of the blob `data`: a download in progress that
    /// nobody completes, whose pieces it serves like a stored blob's. An agent pulling through
    /// it gets those and then waits, however slow or loaded the machine, until the test hands
    /// out a seeder of the whole blob ([`RunningTracker::add_seeder`]): what a test sees
    /// before that is mid-transfer by construction, not because the transfer was slow.
    pub(crate) async fn hold_first(&self, metainfo: &MetaInfo, data: &Bytes, pieces: u32) {
        assert!(pieces < metainfo.num_pieces(), "a part, not the whole");
        let namespace = "library/partial".parse().unwrap();
        let BlobState::Downloading(download) =
            self.scheduler.download(&namespace, metainfo).await.unwrap()
        else {
            panic!("an empty store holds the blob");
        };
        for piece in 0..pieces {
            let start = metainfo.piece_offset(piece) as usize;
            let len = metainfo.piece_len(piece).unwrap() as usize;
            let verified = download
                .handle
                .write_piece(piece, data.slice(start..start + len))
                .await
                .unwrap();
            assert!(verified, "piece {piece} is new");
        }
    }

    pub(crate) async fn stop(self) {
        self.scheduler.shutdown().await;
    }
}

/// A tracker that knows `seeder` and one blob it seeds.
pub(crate) async fn tracker_for(pki: &Pki, seeder: &Seeder, metainfo: &MetaInfo) -> RunningTracker {
    let fake = FakeTracker::default();
    {
        let mut state = fake.state.lock().unwrap();
        state.seeders.push(seeder.peer());
        state.metainfo.insert(*metainfo.digest(), metainfo.clone());
        state.retry_after_ms = 50;
    }
    RunningTracker::start(pki, fake).await
}

/// An agent and the directory of its store.
pub(crate) struct TestAgent {
    pub(crate) agent: Agent,
    _dir: tempfile::TempDir,
}

impl std::ops::Deref for TestAgent {
    type Target = Agent;
    fn deref(&self) -> &Agent {
        &self.agent
    }
}

impl TestAgent {
    pub(crate) async fn start(pki: &Pki, trackers: &[SocketAddr]) -> Self {
        Self::start_with(pki, trackers, |_| {}).await
    }

    pub(crate) async fn start_with(
        pki: &Pki,
        trackers: &[SocketAddr],
        tweak: impl FnOnce(&mut AgentConfig),
    ) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mut config = AgentConfig {
            peer_ip: Some("127.0.0.1".parse().unwrap()),
            listen: AgentListenConfig {
                p2p: "127.0.0.1:0".parse().unwrap(),
                ..AgentListenConfig::default()
            },
            tracker: UpstreamConfig::of(trackers.iter().map(ToString::to_string)),
            store: StoreConfig {
                dir: dir.path().to_owned(),
                ..StoreConfig::default()
            },
            ..AgentConfig::default()
        };
        tweak(&mut config);
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let agent = Agent::start(config, pki.tls(Role::Agent), listener)
            .await
            .unwrap();
        Self { agent, _dir: dir }
    }

    pub(crate) async fn stop(self) {
        self.agent.shutdown().await.unwrap();
    }
}

/// Deterministic pseudo-random bytes (incompressible, no repeating pieces).
pub(crate) fn blob(len: usize, seed: u32) -> Bytes {
    let mut state = 0x9e37_79b9_u32 ^ seed.wrapping_mul(0x85eb_ca6b) | 1;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 17;
            state ^= state << 5;
            state as u8
        })
        .collect::<Vec<_>>()
        .into()
}

pub(crate) fn get_blob(namespace: &str, digest: &Digest) -> GetBlobRequest {
    GetBlobRequest {
        namespace: namespace.into(),
        digest: digest.to_string(),
        offset: 0,
        length: None,
    }
}

/// Reads a GetBlob stream to its end; the error if it ends with one.
pub(crate) async fn read_all(
    client: &mut AgentServiceClient<ObservedChannel>,
    request: GetBlobRequest,
) -> Result<Vec<u8>, Status> {
    let mut stream = client.get_blob(request).await?.into_inner();
    let mut data = Vec::new();
    while let Some(message) = stream.message().await? {
        assert!(
            message.chunk.len() <= kraken_agent::STREAM_CHUNK,
            "chunk of {} bytes",
            message.chunk.len()
        );
        data.extend_from_slice(&message.chunk);
    }
    Ok(data)
}

/// Fails the test if `future` does not finish within `secs` seconds.
pub(crate) async fn within<T>(secs: u64, future: impl Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(secs), future)
        .await
        .expect("timed out")
}
