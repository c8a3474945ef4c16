//! Starting and stopping an origin: QUIC endpoint, store, scheduler, `BlobService`.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use kraken_config::origin::OriginConfig;
use kraken_core::{Digest, Namespace};
use kraken_core::{PeerId, PeerInfo};
use kraken_proto::origin::v1::blob_service_server::BlobServiceServer;
use kraken_scheduler::core::RevealOrder;
use kraken_scheduler::{DriverConfig, RevealPolicy, Scheduler, SwarmMember};
use kraken_store::{BlobStore, CommitOptions};
use kraken_tls::{Role, TlsMaterial, TrustDomains};
use kraken_transport::advertise::{ADVERTISE_PATIENCE, advertise_ip, resolve_upstreams};
use kraken_transport::cluster::{HostPool, PoolOptions};
use kraken_transport::grpc::{GrpcError, GrpcServer, GrpcServerLimits, host_of};
use kraken_transport::lifecycle::{SHUTDOWN_GRACE, drain};
use kraken_transport::quic::QuicTuning;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;

use crate::error::OriginError;
use crate::fetch::BackendFetcher;
use crate::remote::Remotes;
use crate::replicate::{Persistence, Replicator};
use crate::service::{OriginService, Shared};
use crate::writeback::{TaskSource, WriteBackQueue};
use kraken_backend::Backends;

/// What [`Origin::kill`] leaves the gRPC server to tell open connections to go away.
const KILL_GRACE: Duration = Duration::from_millis(100);

/// A running origin. Stop it with [`Origin::shutdown`]; dropping it only signals its tasks to
/// stop.
#[derive(Debug)]
pub struct Origin {
    grpc_addr: SocketAddr,
    p2p_addr: SocketAddr,
    peer: PeerInfo,
    store: BlobStore,
    scheduler: Scheduler,
    shared: Arc<Shared>,
    health: HealthReporter,
    shutdown: CancellationToken,
    server: Option<JoinHandle<Result<(), GrpcError>>>,
    cleanup: Option<JoinHandle<()>>,
    health_checks: Option<JoinHandle<()>>,
}

impl Origin {
    /// Binds the QUIC endpoint on `config.listen.p2p` (port 0 allowed), opens the store,
    /// starts the scheduler (seeding only: origins never announce) and serves `BlobService`,
    /// gRPC health and reflection on `grpc_listener` with mutual TLS from `tls`.
    ///
    /// Fails on a configuration it cannot serve, e.g. a backend kind not built yet.
    pub async fn start(
        config: OriginConfig,
        tls: TlsMaterial,
        grpc_listener: TcpListener,
    ) -> Result<Origin, OriginError> {
        let backends = Backends::from_config(
            &config.backends,
            &config.auth,
            config.cluster.hosts.static_hosts.len(),
        )?;
        Self::start_with_backends(config, tls, grpc_listener, backends).await
    }

    /// [`start`](Self::start) with backends built by the caller instead of from
    /// `config.backends` (kinds built outside this crate, and fault injection in tests).
    pub async fn start_with_backends(
        config: OriginConfig,
        tls: TlsMaterial,
        grpc_listener: TcpListener,
        backends: Backends,
    ) -> Result<Origin, OriginError> {
        kraken_tls::install_crypto_provider();
        let piece_lengths = config
            .metainfogen
            .piece_length_policy()
            .map_err(|e| OriginError::Config(format!("metainfogen.piece_lengths: {e}")))?;
        if backends.is_empty() {
            tracing::warn!(
                "no storage backends are configured: uploaded blobs stay pinned on this origin \
                 and blobs it lacks cannot be fetched"
            );
        }
        let grpc_addr = grpc_listener
            .local_addr()
            .map_err(|source| OriginError::Listener {
                what: "gRPC",
                source,
            })?;
        // Remote clusters' origins upload here when they replicate; their certificates are
        // held to the foreign access table.
        let domains = TrustDomains::load(&tls, &config.trusted_remote_cas())
            .map_err(|e| OriginError::Trust(Box::new(e)))?;
        let server =
            GrpcServer::with_trust(&tls, domains, GrpcServerLimits::from(&config.limits.grpc))
                .map_err(OriginError::Grpc)?;

        let remotes = Remotes::from_config(&config)?;

        let store = BlobStore::open(config.store.clone())
            .await
            .map_err(OriginError::OpenStore)?;
        let cluster = cluster(&config, &tls)?;
        // Agents get this address from the trackers, which ask the origins: loopback is no
        // use to them once the ring spans hosts.
        let members = resolve_upstreams(
            advertised_ip(&config),
            config.listen.p2p.ip(),
            &config.cluster.hosts,
            ADVERTISE_PATIENCE,
        )
        .await
        .map_err(OriginError::Advertise)?;
        let advertise = advertise_ip(advertised_ip(&config), config.listen.p2p.ip(), &members)
            .map_err(OriginError::Advertise)?;
        // Seeding only: origins never announce.
        let member = SwarmMember {
            listen: config.listen.p2p,
            advertise_ip: Some(advertise),
            peer_id: PeerId::from_name(&config.name),
            origin: true,
            driver: DriverConfig {
                reveal: reveal_policy(&cluster, &config.name, config.hashring.max_replica),
                ..DriverConfig::from_config(&config.scheduler, true)
            },
            bandwidth: config.scheduler.conn.bandwidth.clone(),
            quic: QuicTuning::default().with_limits(&config.limits.p2p),
        };
        let scheduler = Scheduler::bind(member, &tls, store.clone(), None)
            .map_err(|error| OriginError::Transport(*error.source))?;
        let peer = *scheduler.local();
        let p2p_addr = scheduler.p2p_addr();

        let shutdown = CancellationToken::new();
        let cleanup = store.spawn_cleanup(shutdown.child_token());
        let commit = CommitOptions {
            piece_lengths,
            piece_hash: config.metainfogen.piece_hash,
            persist: true,
        };
        let health_checks = (!config.cluster.hosts.is_empty()).then(|| {
            cluster.spawn_active_checks(
                &config.cluster.healthcheck,
                Some(config.name.clone()),
                shutdown.child_token(),
            )
        });
        let replicator = Replicator::start(
            config.name.clone(),
            store.clone(),
            cluster.clone(),
            config.hashring.max_replica,
            config.writeback.replica_delay,
            shutdown.child_token(),
        );
        let (writeback, replayed) = WriteBackQueue::open(
            config.writeback.dir_or_default(&config.store.dir),
            store.clone(),
            backends.clone(),
            &config.writeback,
            shutdown.child_token(),
        )
        .await?;
        // An upload acknowledged just before the last stop may not have reached the other
        // owners: copy it again (owners holding it already are skipped after a Stat).
        for task in replayed.iter().filter(|t| t.source == TaskSource::Upload) {
            replicator.replicate(&task.namespace, &task.digest, Persistence::Pending);
        }
        let shared = Arc::new(Shared {
            name: config.name.clone(),
            store: store.clone(),
            fetcher: BackendFetcher::new(
                store.clone(),
                backends.clone(),
                commit.clone(),
                shutdown.child_token(),
            )
            .with_replicator(replicator.clone()),
            writeback,
            replicator,
            backends,
            commit,
            cluster,
            max_replica: config.hashring.max_replica,
            scheduler: scheduler.clone(),
            remotes,
        });
        let server = server.add_service(BlobServiceServer::new(OriginService::new(shared.clone())));
        let health = server.health();
        let stop = shutdown.clone();
        let server = tokio::spawn(server.serve(grpc_listener, stop.cancelled_owned()));
        tracing::info!(
            name = %config.name,
            %grpc_addr,
            %p2p_addr,
            peer = %peer.addr,
            peer_id = %peer.peer_id,
            "origin started"
        );
        Ok(Origin {
            grpc_addr,
            p2p_addr,
            peer,
            store,
            scheduler,
            shared,
            health,
            shutdown,
            server: Some(server),
            cleanup: Some(cleanup),
            health_checks,
        })
    }

    /// Where `BlobService` listens.
    pub fn grpc_addr(&self) -> SocketAddr {
        self.grpc_addr
    }

    /// Where the QUIC peer endpoint is bound.
    pub fn p2p_addr(&self) -> SocketAddr {
        self.p2p_addr
    }

    /// This origin as a swarm member: stable peer id and the address peers dial.
    pub fn peer(&self) -> &PeerInfo {
        &self.peer
    }

    /// The local blob store (tests and tooling).
    pub fn store(&self) -> &BlobStore {
        &self.store
    }

    /// The P2P scheduler seeding this origin's blobs.
    pub fn scheduler(&self) -> &Scheduler {
        &self.scheduler
    }

    /// The storage backends by namespace.
    pub fn backends(&self) -> &Backends {
        &self.shared.backends
    }

    /// The origin ring as this origin sees it: members, owners and their health.
    pub fn cluster(&self) -> &HostPool {
        &self.shared.cluster
    }

    /// The write-backs still to do, oldest namespace first (tests and tooling).
    pub fn pending_write_backs(&self) -> Vec<(Namespace, Digest)> {
        self.shared.writeback.pending()
    }

    /// Stops gracefully: reports NOT_SERVING, stops accepting gRPC requests and lets in-flight
    /// ones finish (up to a grace period), then stops the scheduler, backend fetches,
    /// replication, write-backs (pending ones stay queued on disk) and the store's cleanup task
    /// (which flushes access times on the way out).
    pub async fn shutdown(mut self) -> Result<(), OriginError> {
        self.health
            .set_service_status("", ServingStatus::NotServing)
            .await;
        self.health
            .set_not_serving::<BlobServiceServer<OriginService>>()
            .await;
        self.shutdown.cancel();
        let served = self.stop_server(SHUTDOWN_GRACE).await;
        self.scheduler.shutdown().await;
        self.stop_background().await?;
        tracing::info!(grpc_addr = %self.grpc_addr, "origin stopped");
        served
    }

    /// Stops at once, as close to a crash as an in-process origin gets (failure tests): the
    /// swarm's QUIC connections are closed first, open gRPC connections are told to go away
    /// and the server is cut after a moment, and background work stops where it is. What a
    /// crash keeps, this keeps: committed blobs and the write-back tasks on disk.
    pub async fn kill(mut self) {
        self.shutdown.cancel();
        self.scheduler.shutdown().await;
        let _ = self.stop_server(KILL_GRACE).await;
        let _ = self.stop_background().await;
        tracing::info!(grpc_addr = %self.grpc_addr, "origin killed");
    }

    async fn stop_server(&mut self, grace: Duration) -> Result<(), OriginError> {
        let Some(server) = self.server.take() else {
            return Ok(());
        };
        drain("origin gRPC", server, grace)
            .await
            .into_result(OriginError::Grpc, OriginError::Task)
    }

    async fn stop_background(&mut self) -> Result<(), OriginError> {
        self.shared.fetcher.wait().await;
        self.shared.replicator.wait().await;
        self.shared.writeback.wait().await;
        if let Some(checks) = self.health_checks.take() {
            let _ = checks.await;
        }
        if let Some(cleanup) = self.cleanup.take() {
            cleanup.await.map_err(OriginError::Task)?;
        }
        Ok(())
    }
}

impl Drop for Origin {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// The ring of origins (`cluster.hosts`, static or DNS, with `hashring.weights`), health
/// checked actively. Without hosts the origin is a ring of one: itself.
fn cluster(config: &OriginConfig, tls: &TlsMaterial) -> Result<HostPool, OriginError> {
    let hosts = if config.cluster.hosts.is_empty() {
        kraken_config::cluster::HostList::of([config.name.clone()])
    } else {
        config.cluster.hosts.clone()
    };
    HostPool::new(
        &hosts,
        tls,
        PoolOptions::ring(Role::Origin, &config.hashring),
    )
    .map_err(OriginError::Cluster)
}

/// Super-seeding order per blob: this origin's place among the blob's owners picks the stripe
/// of pieces it reveals first, so the owners seed disjoint pieces (see
/// [`kraken_scheduler::core::RevealOrder`]). A non-owner standing in takes its ring position.
fn reveal_policy(cluster: &HostPool, name: &str, max_replica: usize) -> RevealPolicy {
    let cluster = cluster.clone();
    let name = name.to_owned();
    let owners = max_replica.max(1);
    RevealPolicy::new(move |digest| {
        // Placement only: health does not change which stripe is this origin's.
        let members = cluster.members();
        let ranked = members.ring().ranked(digest);
        let rank = ranked.iter().position(|m| m.label == name).unwrap_or(0);
        RevealOrder::striped(rank, owners.min(ranked.len().max(1)))
    })
}

/// The IP asked for: `peer_ip`; else the host of `name` if it is an IP literal; else `None`,
/// and [`advertise_ip`] picks the bound IP or this host's route to the other origins (never
/// loopback when they are on other hosts).
fn advertised_ip(config: &OriginConfig) -> Option<IpAddr> {
    config
        .peer_ip
        .or_else(|| host_of(&config.name).parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(name: &str, peer_ip: Option<&str>) -> OriginConfig {
        OriginConfig {
            name: name.to_owned(),
            peer_ip: peer_ip.map(|ip| ip.parse().unwrap()),
            ..OriginConfig::default()
        }
    }

    #[test]
    fn the_advertised_ip_prefers_peer_ip_then_the_name() {
        let ip = |name, peer_ip| advertised_ip(&config(name, peer_ip)).map(|ip| ip.to_string());
        assert_eq!(
            ip("origin1:15002", Some("10.0.0.9")).as_deref(),
            Some("10.0.0.9")
        );
        assert_eq!(ip("10.1.2.3:15002", None).as_deref(), Some("10.1.2.3"));
        assert_eq!(ip("[fd00::7]:15002", None).as_deref(), Some("fd00::7"));
        // Else the scheduler's rule: the bound IP, else loopback.
        assert_eq!(ip("origin1:15002", None), None);
    }

    #[tokio::test]
    async fn the_ring_uses_the_cluster_hosts_and_weights_or_just_this_origin() {
        kraken_tls::install_crypto_provider();
        let dir = tempfile::tempdir().unwrap();
        let pki = kraken_tls::generate_dev_pki(dir.path(), &Default::default()).unwrap();
        let tls = TlsMaterial::load(&pki.tls_config(kraken_tls::Role::Origin)).unwrap();
        let mut config = config("a:1", None);
        let alone = cluster(&config, &tls).unwrap();
        assert_eq!(alone.members().labels().collect::<Vec<_>>(), ["a:1"]);

        config.cluster.hosts.static_hosts = vec!["a:1".into(), "b:1".into()];
        config.hashring.weights.insert("b:1".into(), 300);
        let ring = cluster(&config, &tls).unwrap();
        assert_eq!(
            ring.members().ring().members(),
            &[
                kraken_transport::ring::Member::new("a:1", 100),
                kraken_transport::ring::Member::new("b:1", 300)
            ]
        );
    }
}
