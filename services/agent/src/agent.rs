//! Starting and stopping an agent: store, QUIC endpoint, scheduler, tracker client and the
//! gRPC server, wired together.

use std::net::SocketAddr;
use std::sync::Arc;

use kraken_config::agent::AgentConfig;
use kraken_core::{Digest, Namespace, PeerId, PeerInfo};
use kraken_proto::agent::v1::agent_service_server::AgentServiceServer;
use kraken_scheduler::{Announcer, DriverConfig, Scheduler, SwarmMember};
use kraken_store::BlobStore;
use kraken_tls::TlsMaterial;
use kraken_transport::advertise::{ADVERTISE_PATIENCE, advertise_ip, resolve_upstreams};
use kraken_transport::grpc::{GrpcError, GrpcServer, GrpcServerLimits};
use kraken_transport::lifecycle::{Drained, SHUTDOWN_GRACE, drain};
use kraken_transport::quic::QuicTuning;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::error::AgentError;
use crate::fetch::{BlobStream, Fetcher};
use crate::registry::{self, RegistryState};
use crate::service::AgentGrpc;
use crate::tracker::{TrackerClient, TrackerClientOptions};
use kraken_tagclient::TagClient;

/// A running agent. Dropping it without [`shutdown`](Self::shutdown) still stops its tasks,
/// without waiting for them.
#[derive(Debug)]
pub struct Agent {
    peer: PeerInfo,
    grpc_addr: SocketAddr,
    p2p_addr: SocketAddr,
    store: BlobStore,
    scheduler: Scheduler,
    tracker: TrackerClient,
    fetcher: Arc<Fetcher>,
    tags: Option<TagClient>,
    config: Arc<AgentConfig>,
    shutdown: CancellationToken,
    grpc: Option<JoinHandle<Result<(), GrpcError>>>,
    registry: Option<(SocketAddr, JoinHandle<std::io::Result<()>>)>,
    cleanup: Option<JoinHandle<()>>,
}

impl Agent {
    /// Opens the store, binds QUIC on `config.listen.p2p` (port 0 picks one), starts the
    /// scheduler announcing to the configured trackers, and serves `AgentService` (with gRPC
    /// health and reflection) on `grpc_listener`.
    ///
    /// The address announced to peers is `config.peer_ip`, else the P2P bind address when it
    /// is a specific one, else this host's address on its route to the tracker, else 127.0.0.1;
    /// with the bound port. Loopback is refused when a tracker is on another host
    /// ([`kraken_transport::advertise`]). The peer id is random per process.
    pub async fn start(
        config: AgentConfig,
        tls: TlsMaterial,
        grpc_listener: TcpListener,
    ) -> Result<Agent, AgentError> {
        let grpc_addr = grpc_listener
            .local_addr()
            .map_err(AgentError::ListenerAddr)?;
        let tracker = TrackerClient::new(
            &config.tracker,
            &tls,
            TrackerClientOptions::from_config(&config),
        )?;
        let server = GrpcServer::new(&tls, GrpcServerLimits::from(&config.limits.grpc))?;
        // No build-index: the agent still serves blobs and manifests by digest.
        let tags = if config.build_index.hosts.is_empty() {
            None
        } else {
            Some(TagClient::new(&config.build_index, &tls)?)
        };
        let trackers = resolve_upstreams(
            config.peer_ip,
            config.listen.p2p.ip(),
            &config.tracker.hosts,
            ADVERTISE_PATIENCE,
        )
        .await?;
        let advertise_ip = advertise_ip(config.peer_ip, config.listen.p2p.ip(), &trackers)?;
        let store = BlobStore::open(config.store.clone()).await?;
        // Bind before anything spawns tasks, so a port conflict leaves nothing behind.
        let member = SwarmMember {
            listen: config.listen.p2p,
            advertise_ip: Some(advertise_ip),
            peer_id: PeerId::random(),
            origin: false,
            driver: DriverConfig::from_config(&config.scheduler, false),
            bandwidth: config.scheduler.conn.bandwidth.clone(),
            quic: QuicTuning::default().with_limits(&config.limits.p2p),
        };
        let announcer: Arc<dyn Announcer> = Arc::new(tracker.clone());
        let scheduler =
            Scheduler::bind(member, &tls, store.clone(), Some(announcer)).map_err(|error| {
                AgentError::BindP2p {
                    addr: error.addr,
                    source: error.source,
                }
            })?;
        let peer = *scheduler.local();
        let p2p_addr = scheduler.p2p_addr();
        let shutdown = CancellationToken::new();
        let cleanup = store.spawn_cleanup(shutdown.child_token());

        let fetcher = Arc::new(Fetcher::new(
            store.clone(),
            scheduler.clone(),
            tracker.clone(),
            shutdown.clone(),
        ));
        // The server's timeout covers the time to the response headers; a blob still being
        // resolved by then answers in-stream instead (see `service::respond`).
        let header_wait = config.limits.grpc.request_timeout / 3;
        let server = server.add_service(AgentServiceServer::new(AgentGrpc::new(
            fetcher.clone(),
            tags.clone(),
            header_wait,
        )));
        let stop = shutdown.clone();
        let grpc = tokio::spawn(async move {
            server
                .serve(grpc_listener, async move { stop.cancelled().await })
                .await
        });
        tracing::info!(
            peer_id = %peer.peer_id,
            %grpc_addr,
            %p2p_addr,
            advertised = %peer.addr,
            trackers = ?tracker.hosts().iter().map(|h| h.host.as_str()).collect::<Vec<_>>(),
            "agent started"
        );
        Ok(Agent {
            peer,
            grpc_addr,
            p2p_addr,
            store,
            scheduler,
            tracker,
            fetcher,
            tags,
            config: Arc::new(config),
            shutdown,
            grpc: Some(grpc),
            registry: None,
            cleanup: Some(cleanup),
        })
    }

    /// Serves the read-only Docker/OCI registry API on `listener` (the config's
    /// `listen.registry` in production) until shutdown; returns the bound address.
    pub fn serve_registry(&mut self, listener: TcpListener) -> Result<SocketAddr, AgentError> {
        let addr = listener.local_addr().map_err(AgentError::ListenerAddr)?;
        let tls = kraken_transport::http::registry_tls(&self.config.registry_tls)
            .map_err(AgentError::RegistryTls)?;
        let state = RegistryState {
            fetcher: self.fetcher.clone(),
            tags: self.tags.clone(),
            config: self.config.clone(),
        };
        let https = tls.is_some();
        let server = registry::spawn(listener, state, tls, self.shutdown.child_token());
        tracing::info!(registry = %addr, https, "agent registry API serving");
        self.registry = Some((addr, server));
        Ok(addr)
    }

    /// Where the registry API listens, once [`serve_registry`](Self::serve_registry) ran.
    pub fn registry_addr(&self) -> Option<SocketAddr> {
        self.registry.as_ref().map(|(addr, _)| *addr)
    }

    /// The build-index client resolving tags, when `build_index.hosts` is set.
    pub fn tags(&self) -> Option<&TagClient> {
        self.tags.as_ref()
    }

    /// Where `AgentService` listens.
    pub fn grpc_addr(&self) -> SocketAddr {
        self.grpc_addr
    }

    /// Where the QUIC peer endpoint is bound.
    pub fn p2p_addr(&self) -> SocketAddr {
        self.p2p_addr
    }

    /// Who this agent is in the swarm (id and announced address).
    pub fn peer(&self) -> &PeerInfo {
        &self.peer
    }

    pub fn store(&self) -> &BlobStore {
        &self.store
    }

    pub fn scheduler(&self) -> &Scheduler {
        &self.scheduler
    }

    pub fn tracker(&self) -> &TrackerClient {
        &self.tracker
    }

    /// The whole blob, from the store or through the swarm: what `GetBlob` serves.
    pub async fn fetch(
        &self,
        namespace: &Namespace,
        digest: &Digest,
    ) -> Result<BlobStream, AgentError> {
        self.fetch_range(namespace, digest, 0, None).await
    }

    /// `length` bytes from `offset` (to the end when `None`); `OutOfRange` past the end.
    #[tracing::instrument(skip_all, fields(digest = %digest))]
    pub async fn fetch_range(
        &self,
        namespace: &Namespace,
        digest: &Digest,
        offset: u64,
        length: Option<u64>,
    ) -> Result<BlobStream, AgentError> {
        self.fetcher
            .fetch(namespace, digest, offset, length, "fetch")
            .await
    }

    /// Stops serving: in-flight gRPC calls get a grace period, blob streams end with
    /// `UNAVAILABLE`, peer connections close and the store's cleanup task makes its last flush.
    pub async fn shutdown(mut self) -> Result<(), AgentError> {
        self.shutdown.cancel();
        let mut result = Ok(());
        if let Some(grpc) = self.grpc.take() {
            result = drain("agent gRPC", grpc, SHUTDOWN_GRACE).await.into_result(
                AgentError::from,
                |source| AgentError::Task {
                    task: "gRPC server",
                    source,
                },
            );
        }
        if let Some((_, registry)) = self.registry.take() {
            // A registry server that failed is logged; only a panic is the agent's failure.
            match drain("agent registry", registry, SHUTDOWN_GRACE).await {
                Drained::Finished(Err(error)) => {
                    tracing::warn!(%error, "registry API server failed");
                }
                Drained::Failed(source) => {
                    result = result.and(Err(AgentError::Task {
                        task: "registry API server",
                        source,
                    }));
                }
                Drained::Finished(Ok(())) | Drained::Cut => {}
            }
        }
        self.scheduler.shutdown().await;
        if let Some(cleanup) = self.cleanup.take()
            && let Err(source) = cleanup.await
        {
            result = result.and(Err(AgentError::Task {
                task: "store cleanup",
                source,
            }));
        }
        tracing::info!(peer_id = %self.peer.peer_id, "agent stopped");
        result
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if !self.shutdown.is_cancelled() {
            self.shutdown.cancel();
            let scheduler = self.scheduler.clone();
            // Best effort: a runtime may not be there any more.
            if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                runtime.spawn(async move { scheduler.shutdown().await });
            }
        }
    }
}
