//! Starting and stopping build-index.

use std::net::SocketAddr;
use std::sync::Arc;

use kraken_backend::{BackendConfigError, TagRoutes};
use kraken_config::build_index::BuildIndexConfig;
use kraken_originclient::OriginClusterClient;
use kraken_proto::buildindex::v1::replication_service_server::ReplicationServiceServer;
use kraken_proto::buildindex::v1::tag_service_server::TagServiceServer;
use kraken_tls::{TlsMaterial, TrustDomains};
use kraken_transport::grpc::{GrpcError, GrpcServer, GrpcServerLimits};
use kraken_transport::lifecycle::{SHUTDOWN_GRACE, drain};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;

use crate::error::BuildIndexError;
use crate::metrics as m;
use crate::replication::ReplicationServiceImpl;
use crate::replication::executor::Executor;
use crate::replication::peers::ClusterPeers;
use crate::replication::queue::{GAUGE_PERIOD, ReplicationQueue};
use crate::replication::remote::RemoteBuildIndexes;
use crate::service::TagServiceImpl;
use crate::store::TagStore;
use crate::tags::{TagWriters, Tags};

/// A running build-index. Stop it with [`BuildIndex::shutdown`]; dropping it only signals its
/// server to stop.
#[derive(Debug)]
pub struct BuildIndex {
    addr: SocketAddr,
    tags: Arc<Tags>,
    health: HealthReporter,
    shutdown: CancellationToken,
    server: Option<JoinHandle<Result<(), GrpcError>>>,
    /// Refreshes the replication gauges until shutdown.
    gauges: Option<JoinHandle<()>>,
    /// Works the replication queue until shutdown.
    executor: Option<JoinHandle<()>>,
}

/// The tag routes of `backends:` (stores, and `registry_tag` upstreams for pull-through); the
/// one place build-index builds them from config.
pub fn backends_from_config(config: &BuildIndexConfig) -> Result<TagRoutes, BackendConfigError> {
    TagRoutes::from_config(&config.backends, &config.auth)
}

impl BuildIndex {
    /// Opens the tag store under `config.tag_store.dir`, builds the tag backends, serves
    /// `TagService`, `ReplicationService`, gRPC health and reflection on `listener` with mutual
    /// TLS from `tls`, and replicates queued tags to the remotes.
    pub async fn start(
        config: BuildIndexConfig,
        tls: TlsMaterial,
        listener: TcpListener,
    ) -> Result<BuildIndex, BuildIndexError> {
        let backends = backends_from_config(&config)?;
        Self::start_with_backends(config, tls, listener, backends).await
    }

    /// [`start`](Self::start) with the tag backends given (tests, and kinds built elsewhere);
    /// `config.backends` is ignored.
    pub async fn start_with_backends(
        config: BuildIndexConfig,
        tls: TlsMaterial,
        listener: TcpListener,
        backends: impl Into<TagRoutes>,
    ) -> Result<BuildIndex, BuildIndexError> {
        let routes: TagRoutes = backends.into();
        kraken_tls::install_crypto_provider();
        let addr = listener.local_addr().map_err(BuildIndexError::Listener)?;
        if routes.is_empty() {
            tracing::warn!(
                "no tag backends are configured: tags live only on this build-index's disk"
            );
        }
        let origins = OriginClusterClient::from_config(&tls, &config.origin, &config.hashring)
            .map_err(BuildIndexError::Origins)?;
        // Before anything is opened: a remote that cannot be dialed is a configuration error.
        let remotes = RemoteBuildIndexes::from_config(&config)?;
        let peers = ClusterPeers::from_config(&config, &tls)?;
        let store = TagStore::open(&config.tag_store.dir).await?;
        metrics::gauge!(m::TAGS).set(store.len() as f64);
        let queue = ReplicationQueue::open(&config.replication, config.remotes.keys().cloned())
            .await
            .map_err(BuildIndexError::Queue)?;
        let limits = GrpcServerLimits::from(&config.limits.grpc);
        let tags = Arc::new(Tags {
            store,
            routes,
            origins,
            config,
            writers: TagWriters::new(),
            queue,
            peers,
        });
        // Remote clusters' build-indexes put replicated tags here and their origins ask for
        // ours; their certificates are held to the foreign access table.
        let domains = TrustDomains::load(&tls, &tags.config.trusted_remote_cas())
            .map_err(|e| BuildIndexError::Trust(Box::new(e)))?;
        let server = GrpcServer::with_trust(&tls, domains, limits)?
            .add_service(TagServiceServer::new(TagServiceImpl::new(tags.clone())))
            .add_service(ReplicationServiceServer::new(ReplicationServiceImpl::new(
                tags.clone(),
            )));
        let health = server.health();
        let shutdown = CancellationToken::new();
        let server = tokio::spawn(server.serve(listener, shutdown.clone().cancelled_owned()));
        let gauges = {
            let (queue, shutdown) = (tags.queue.clone(), shutdown.clone());
            tokio::spawn(async move { queue.publish_gauges_until(GAUGE_PERIOD, shutdown).await })
        };
        let executor =
            tokio::spawn(Arc::new(Executor::new(tags.clone(), remotes)).run(shutdown.clone()));
        tracing::info!(
            %addr,
            tags = tags.store.len(),
            pending_replications = tags.queue.snapshot().len(),
            "build-index started"
        );
        Ok(BuildIndex {
            addr,
            tags,
            health,
            shutdown,
            server: Some(server),
            gauges: Some(gauges),
            executor: Some(executor),
        })
    }

    /// Where `TagService` listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Tags in the local store.
    pub fn tag_count(&self) -> usize {
        self.tags.store.len()
    }

    /// Stops gracefully: NOT_SERVING, then in-flight calls finish (up to a grace period).
    pub async fn shutdown(mut self) -> Result<(), BuildIndexError> {
        self.health
            .set_service_status("", ServingStatus::NotServing)
            .await;
        self.health
            .set_not_serving::<TagServiceServer<TagServiceImpl>>()
            .await;
        self.health
            .set_not_serving::<ReplicationServiceServer<ReplicationServiceImpl>>()
            .await;
        self.shutdown.cancel();
        let result = match self.server.take() {
            Some(server) => drain("build-index gRPC", server, SHUTDOWN_GRACE)
                .await
                .into_result(BuildIndexError::Grpc, BuildIndexError::Task),
            None => Ok(()),
        };
        // Both return as soon as the token fires (replication runs stop at their next
        // await; their tasks stay on disk); a panic there was already reported.
        for task in [self.gauges.take(), self.executor.take()]
            .into_iter()
            .flatten()
        {
            let _ = task.await;
        }
        tracing::info!(addr = %self.addr, "build-index stopped");
        result
    }
}

impl Drop for BuildIndex {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}
