//! Test harness for whole clusters: every component runs in-process on ephemeral loopback ports
//! with a freshly generated PKI and real mutual TLS, the way they run in production, minus the
//! separate processes.
//!
//! ```no_run
//! # async fn example() {
//! let cluster = kraken_tests::Cluster::builder().origins(1).agents(3).start().await;
//! let digest = cluster.push("library/app", b"hello".to_vec().into()).await;
//! let bytes = cluster.pull(0, "library/app", &digest).await.unwrap();
//! cluster.shutdown().await;
//! # }
//! ```
//!
//! The harness never fakes a component: the tracker, origins and agents are the real ones. Test
//! doubles belong in the tests that need them.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use kraken_agent::Agent;
use kraken_config::agent::AgentConfig;
use kraken_config::backend::{BackendConfig, BackendKind, FsBackendConfig};
use kraken_config::cluster::{HostList, UpstreamConfig};
use kraken_config::origin::OriginConfig;
use kraken_config::Pattern;
use kraken_config::store::StoreConfig;
use kraken_config::tls::TlsSection;
use kraken_config::tracker::TrackerConfig;
use kraken_core::{Digest, Namespace};
use kraken_origin::{Origin, OriginClient};
use kraken_proto::agent::v1::GetBlobRequest;
use kraken_proto::agent::v1::agent_service_client::AgentServiceClient;
use kraken_tls::{DevPki, DevPkiOptions, Role, TlsMaterial, generate_dev_pki};
use kraken_transport::ring::{Member, Ring};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Describes the cluster to start.
#[derive(Debug, Clone)]
pub struct ClusterBuilder {
    origins: usize,
    agents: usize,
    max_replica: usize,
}

/// A running cluster. Dropping it stops everything; [`Cluster::shutdown`] does so gracefully.
#[derive(Debug)]
pub struct Cluster {
    pub dir: tempfile::TempDir,
    pub pki: DevPki,
    pub tracker_addr: SocketAddr,
    pub origins: Vec<Origin>,
    pub agents: Vec<Agent>,
    origin_labels: Vec<String>,
    max_replica: usize,
    tracker_stop: CancellationToken,
    tracker_task: JoinHandle<()>,
}

impl Cluster {
    pub fn builder() -> ClusterBuilder {
        ClusterBuilder { origins: 1, agents: 1, max_replica: 1 }
    }
}

impl ClusterBuilder {
    pub fn origins(mut self, n: usize) -> Self {
        self.origins = n.max(1);
        self
    }

    pub fn agents(mut self, n: usize) -> Self {
        self.agents = n;
        self
    }

    pub fn max_replica(mut self, n: usize) -> Self {
        self.max_replica = n.max(1);
        self
    }

    pub async fn start(self) -> Cluster {
        kraken_tls::install_crypto_provider();
        let dir = tempfile::tempdir().expect("temp dir");
        let pki = generate_dev_pki(&dir.path().join("pki"), &DevPkiOptions::default())
            .expect("dev PKI");

        // Origins first: the ring needs every origin's address before any of them starts.
        let mut listeners = Vec::new();
        for _ in 0..self.origins {
            listeners.push(bind().await);
        }
        let origin_labels: Vec<String> = listeners
            .iter()
            .map(|l| l.local_addr().expect("bound").to_string())
            .collect();
        let backend = dir.path().join("backend");
        let mut origins = Vec::new();
        for (i, listener) in listeners.into_iter().enumerate() {
            let config = origin_config(&pki, dir.path(), &backend, &origin_labels, i, self.max_replica);
            let origin = Origin::start(config, tls(&pki, Role::Origin), listener)
                .await
                .expect("origin starts");
            origins.push(origin);
        }

        let tracker_listener = bind().await;
        let tracker_addr = tracker_listener.local_addr().expect("bound");
        let tracker_stop = CancellationToken::new();
        let tracker_config = TrackerConfig {
            listen: kraken_config::tracker::TrackerListenConfig { grpc: tracker_addr },
            origin: UpstreamConfig::of(origin_labels.clone()),
            announce_interval: Duration::from_millis(500),
            tls: tls_section(&pki, Role::Tracker),
            ..TrackerConfig::default()
        };
        let stop = tracker_stop.clone();
        let tracker_tls = tls(&pki, Role::Tracker);
        let tracker_task = tokio::spawn(async move {
            if let Err(error) =
                kraken_tracker::run(tracker_config, tracker_tls, tracker_listener, stop.cancelled_owned()).await
            {
                tracing::error!(%error, "tracker stopped with an error");
            }
        });

        let mut agents = Vec::new();
        for i in 0..self.agents {
            let listener = bind().await;
            let config = agent_config(&pki, dir.path(), tracker_addr, i);
            agents.push(Agent::start(config, tls(&pki, Role::Agent), listener).await.expect("agent starts"));
        }
        Cluster {
            dir,
            pki,
            tracker_addr,
            origins,
            agents,
            origin_labels,
            max_replica: self.max_replica,
            tracker_stop,
            tracker_task,
        }
    }
}

impl Cluster {
    /// The TLS material of a role of this cluster.
    pub fn tls(&self, role: Role) -> TlsMaterial {
        tls(&self.pki, role)
    }

    /// The origins owning `digest`, highest rendezvous score first.
    pub fn owners(&self, digest: &Digest) -> Vec<&Origin> {
        let ring = Ring::new(self.origin_labels.iter().map(|l| Member::new(l.clone(), 100)));
        ring.owners(digest, self.max_replica)
            .into_iter()
            .filter_map(|m| self.origins.iter().find(|o| o.grpc_addr().to_string() == m.label))
            .collect()
    }

    /// A client of `origin`, presenting the `client` role (what a CI uploader uses).
    pub fn origin_client(&self, origin: &Origin) -> OriginClient {
        OriginClient::connect(&self.tls(Role::Client), &origin.grpc_addr().to_string())
            .expect("origin client")
    }

    /// Uploads `data` to the blob's owning origin and returns its digest.
    pub async fn push(&self, namespace: &str, data: Bytes) -> Digest {
        let namespace: Namespace = namespace.parse().expect("namespace");
        let digest = Digest::of(&data);
        let owner = self.owners(&digest)[0];
        let size = data.len() as u64;
        let chunks = futures::stream::iter(
            data.chunks(1 << 20)
                .map(|c| Ok::<_, std::io::Error>(Bytes::copy_from_slice(c)))
                .collect::<Vec<_>>(),
        );
        self.origin_client(owner)
            .upload_stream(&namespace, &digest, chunks, Some(size))
            .await
            .expect("upload");
        digest
    }

    /// A gRPC client of agent `i`, presenting the `client` role (the host's tooling).
    pub fn agent_client(&self, i: usize) -> AgentServiceClient<tonic::transport::Channel> {
        let channel = kraken_transport::grpc::channel(
            &self.tls(Role::Client),
            &self.agents[i].grpc_addr().to_string(),
            None,
        )
        .expect("channel");
        AgentServiceClient::new(channel)
    }

    /// Downloads a blob through agent `i`'s `GetBlob`, collecting it in memory.
    pub async fn pull(&self, i: usize, namespace: &str, digest: &Digest) -> Result<Bytes, tonic::Status> {
        let request = GetBlobRequest {
            namespace: namespace.to_owned(),
            digest: digest.to_string(),
            offset: 0,
            length: None,
        };
        let mut stream = self.agent_client(i).get_blob(request).await?.into_inner();
        let mut data = Vec::new();
        while let Some(message) = stream.message().await? {
            data.extend_from_slice(&message.chunk);
        }
        Ok(data.into())
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Stops every component and waits for them.
    pub async fn shutdown(self) {
        for agent in self.agents {
            let _ = agent.shutdown().await;
        }
        for origin in self.origins {
            let _ = origin.shutdown().await;
        }
        self.tracker_stop.cancel();
        let _ = self.tracker_task.await;
    }
}

/// Deterministic pseudo-random bytes (incompressible, unlike zeros).
pub fn blob(len: usize, seed: u64) -> Bytes {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len);
    while out.len() < len {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        out.extend_from_slice(&state.to_le_bytes());
    }
    out.truncate(len);
    out.into()
}

async fn bind() -> TcpListener {
    TcpListener::bind("127.0.0.1:0").await.expect("bind an ephemeral port")
}

fn tls(pki: &DevPki, role: Role) -> TlsMaterial {
    TlsMaterial::load(&pki.tls_config(role)).expect("load TLS material")
}

fn tls_section(pki: &DevPki, role: Role) -> TlsSection {
    TlsSection {
        ca: Some(pki.ca_cert_path().to_owned()),
        cert: Some(pki.cert_path(role)),
        key: Some(pki.key_path(role)),
    }
}

fn origin_config(
    pki: &DevPki,
    dir: &Path,
    backend: &Path,
    labels: &[String],
    index: usize,
    max_replica: usize,
) -> OriginConfig {
    let mut config = OriginConfig {
        name: labels[index].clone(),
        peer_ip: Some("127.0.0.1".parse().expect("ip")),
        store: StoreConfig { dir: dir.join(format!("origin{index}")), ..StoreConfig::default() },
        backends: vec![BackendConfig {
            namespace: Pattern::new(".*").expect("regex"),
            backend: BackendKind::Fs(FsBackendConfig { root: backend.to_owned() }),
            bandwidth: Default::default(),
        }],
        tls: tls_section(pki, Role::Origin),
        ..OriginConfig::default()
    };
    config.listen.grpc = labels[index].parse().expect("address");
    config.listen.p2p = "127.0.0.1:0".parse().expect("address");
    config.cluster.hosts = HostList { static_hosts: labels.to_vec(), dns: None };
    config.hashring.max_replica = max_replica;
    config
}

fn agent_config(pki: &DevPki, dir: &Path, tracker: SocketAddr, index: usize) -> AgentConfig {
    let mut config = AgentConfig {
        peer_ip: Some("127.0.0.1".parse().expect("ip")),
        tracker: UpstreamConfig::of([tracker.to_string()]),
        build_index: UpstreamConfig::of([tracker.to_string()]),
        store: StoreConfig { dir: dir.join(format!("agent{index}")), ..StoreConfig::default() },
        tls: tls_section(pki, Role::Agent),
        ..AgentConfig::default()
    };
    config.listen.grpc = "127.0.0.1:0".parse().expect("address");
    config.listen.registry = "127.0.0.1:0".parse().expect("address");
    config.listen.p2p = "127.0.0.1:0".parse().expect("address");
    config
}
