//! Starting and stopping the proxy: the registry API (plain HTTP, for `docker push` to an
//! insecure registry on loopback or behind a TLS-terminating load balancer) and
//! `ProxyService` gRPC with mutual TLS.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use kraken_config::proxy::ProxyConfig;
use kraken_originclient::OriginClusterClient;
use kraken_proto::proxy::v1::proxy_service_server::ProxyServiceServer;
use kraken_tagclient::TagClient;
use kraken_tls::TlsMaterial;
use kraken_transport::grpc::{GrpcError, GrpcServer, GrpcServerLimits};
use kraken_transport::http::HttpServerLimits;
use kraken_transport::lifecycle::{SHUTDOWN_GRACE, drain};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;

use crate::auth::RegistryAuth;
use crate::error::{ProxyError, StagingErrorSource};
use crate::prefetch::ProxyServiceImpl;
use crate::registry::{Registry, router};
use crate::staging::Staging;

/// Registry requests in flight at once; more are shed with 429.
const MAX_REGISTRY_REQUESTS: usize = 1024;
/// Bounds on how often idle upload sessions are swept: often enough for short test timeouts,
/// rarely enough that a sweep over many sessions stays cheap.
const MIN_SWEEP_INTERVAL: Duration = Duration::from_millis(50);
const MAX_SWEEP_INTERVAL: Duration = Duration::from_secs(30);

/// A running proxy. Stop it with [`Proxy::shutdown`]; dropping it only signals it to stop.
#[derive(Debug)]
pub struct Proxy {
    registry_addr: SocketAddr,
    grpc_addr: SocketAddr,
    origins: OriginClusterClient,
    health: HealthReporter,
    shutdown: CancellationToken,
    registry: Option<JoinHandle<std::io::Result<()>>>,
    grpc: Option<JoinHandle<Result<(), GrpcError>>>,
    sweeper: Option<JoinHandle<()>>,
}

impl Proxy {
    /// Clears and prepares the staging directory (`<store.dir>/uploads`), then serves the
    /// registry API on `registry_listener` and `ProxyService` (with health and reflection) on
    /// `grpc_listener`. Origins are reached by `origin.hosts` (with passive health checks),
    /// build-index by `build_index.hosts`, both with mutual TLS from `tls`.
    pub async fn start(
        config: ProxyConfig,
        tls: TlsMaterial,
        registry_listener: TcpListener,
        grpc_listener: TcpListener,
    ) -> Result<Proxy, ProxyError> {
        kraken_tls::install_crypto_provider();
        let registry_addr =
            registry_listener
                .local_addr()
                .map_err(|source| ProxyError::Listener {
                    what: "registry",
                    source,
                })?;
        let grpc_addr = grpc_listener
            .local_addr()
            .map_err(|source| ProxyError::Listener {
                what: "gRPC",
                source,
            })?;
        let origins = OriginClusterClient::from_config(&tls, &config.origin, &config.hashring)?;
        let tags = TagClient::new(&config.build_index, &tls)?;
        let staging = Staging::open(config.store.dir.join("uploads"), config.uploads.clone())
            .await
            .map_err(|error| ProxyError::Staging(StagingErrorSource(error)))?;
        let auth = RegistryAuth::from_config(&config)?;
        let registry_tls = kraken_transport::http::registry_tls(&config.registry_tls)
            .map_err(ProxyError::RegistryTls)?;
        let registry = Arc::new(Registry {
            origins: origins.clone(),
            tags: tags.clone(),
            staging,
            permits: Semaphore::new(MAX_REGISTRY_REQUESTS),
            auth,
        });
        let shutdown = CancellationToken::new();

        let app = router(registry.clone());
        let stop = shutdown.clone();
        let registry_task = tokio::spawn(kraken_transport::http::serve(
            registry_listener,
            app,
            HttpServerLimits::from(&config.limits.registry),
            registry_tls,
            stop.cancelled_owned(),
        ));

        let server = GrpcServer::new(&tls, GrpcServerLimits::from(&config.limits.grpc))?
            .add_service(ProxyServiceServer::new(ProxyServiceImpl { origins, tags }));
        let health = server.health();
        let grpc_task =
            tokio::spawn(server.serve(grpc_listener, shutdown.clone().cancelled_owned()));

        // Sessions expire after `uploads.idle_timeout` (not `store.upload_cleanup`, whose
        // hours suit an origin's store, not sessions clients open at will). Swept a few times
        // per timeout, so a session outlives it by a fraction at most.
        let idle_timeout = config.uploads.idle_timeout;
        let sweep_every = (idle_timeout / 4).clamp(MIN_SWEEP_INTERVAL, MAX_SWEEP_INTERVAL);
        let sweeper = {
            let stop = shutdown.clone();
            let registry = registry.clone();
            Some(tokio::spawn(async move {
                let mut tick = tokio::time::interval(sweep_every);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    tokio::select! {
                        _ = stop.cancelled() => break,
                        _ = tick.tick() => {
                            let removed = registry.staging.sweep_idle(idle_timeout).await;
                            if removed > 0 {
                                tracing::info!(removed, "idle uploads expired");
                            }
                        }
                    }
                }
            }))
        };
        tracing::info!(%registry_addr, %grpc_addr, "proxy started");
        Ok(Proxy {
            registry_addr,
            grpc_addr,
            origins: registry.origins.clone(),
            health,
            shutdown,
            registry: Some(registry_task),
            grpc: Some(grpc_task),
            sweeper,
        })
    }

    /// Where the Docker/OCI registry API listens (plain HTTP).
    pub fn registry_addr(&self) -> SocketAddr {
        self.registry_addr
    }

    /// Where `ProxyService` listens (gRPC, mutual TLS).
    pub fn grpc_addr(&self) -> SocketAddr {
        self.grpc_addr
    }

    /// Every configured origin with its health as the proxy's passive checks see it.
    pub fn origin_hosts(&self) -> Vec<kraken_transport::cluster::HostStatus> {
        self.origins.hosts()
    }

    /// Stops gracefully: NOT_SERVING, no new requests, in-flight ones get a grace period.
    pub async fn shutdown(mut self) -> Result<(), ProxyError> {
        self.health
            .set_service_status("", ServingStatus::NotServing)
            .await;
        self.health
            .set_not_serving::<ProxyServiceServer<ProxyServiceImpl>>()
            .await;
        self.shutdown.cancel();
        let mut result = Ok(());
        if let Some(task) = self.registry.take() {
            result = drain("proxy registry", task, SHUTDOWN_GRACE)
                .await
                .into_result(ProxyError::Serve, ProxyError::Task);
        }
        if let Some(task) = self.grpc.take() {
            let grpc = drain("proxy gRPC", task, SHUTDOWN_GRACE)
                .await
                .into_result(ProxyError::Grpc, ProxyError::Task);
            result = result.and(grpc);
        }
        if let Some(task) = self.sweeper.take() {
            let _ = task.await;
        }
        tracing::info!(registry = %self.registry_addr, grpc = %self.grpc_addr, "proxy stopped");
        result
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}
