//! Starting and stopping an origin: QUIC endpoint, store, scheduler, `BlobService`.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use kraken_config::origin::OriginConfig;
use kraken_core::{PeerId, PeerInfo};
use kraken_proto::origin::v1::blob_service_server::BlobServiceServer;
use kraken_scheduler::{DriverConfig, Scheduler};
use kraken_store::{BlobStore, CommitOptions};
use kraken_tls::TlsMaterial;
use kraken_transport::bandwidth::BandwidthLimiter;
use kraken_transport::grpc::{GrpcError, GrpcServer, GrpcServerLimits};
use kraken_transport::quic::{PeerEndpoint, QuicTuning};
use kraken_transport::ring::{Member, Ring};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;

use crate::backend::Backends;
use crate::error::OriginError;
use crate::fetch::BackendFetcher;
use crate::service::{OriginService, Shared};
use crate::writeback::WriteBack;

/// How long a gRPC request may take before tonic cancels it. Generous because an `Upload`'s
/// response future spans the whole transfer of a blob of any size; client streams are bounded
/// by an idle timeout instead, and backend calls in unary handlers by their own timeouts.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(6 * 3600);
/// How long shutdown waits for in-flight requests (e.g. long downloads) before cutting them.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

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
        kraken_tls::install_crypto_provider();
        let piece_lengths = config
            .metainfogen
            .piece_length_policy()
            .map_err(|e| OriginError::Config(format!("metainfogen.piece_lengths: {e}")))?;
        let backends = Backends::from_config(&config.backends)?;
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
        let limits = GrpcServerLimits {
            request_timeout: REQUEST_TIMEOUT,
            ..GrpcServerLimits::default()
        };
        let server = GrpcServer::new(&tls, limits).map_err(OriginError::Grpc)?;

        let endpoint = PeerEndpoint::bind(config.listen.p2p, &tls, &QuicTuning::default())
            .map_err(OriginError::Transport)?;
        let p2p_addr = endpoint.local_addr().map_err(OriginError::Transport)?;
        let peer = PeerInfo {
            peer_id: PeerId::from_name(&config.name),
            addr: SocketAddr::new(advertised_ip(&config, p2p_addr), p2p_addr.port()),
            complete: false,
            origin: true,
        };
        let store = BlobStore::open(config.store.clone())
            .await
            .map_err(OriginError::OpenStore)?;
        let bandwidth = &config.scheduler.conn.bandwidth;
        let limiter = if bandwidth.enable {
            BandwidthLimiter::new(
                Some(bandwidth.egress_bits_per_sec),
                Some(bandwidth.ingress_bits_per_sec),
            )
        } else {
            BandwidthLimiter::unlimited()
        };
        let scheduler = Scheduler::start(
            peer,
            DriverConfig::from_config(&config.scheduler, true),
            endpoint,
            store.clone(),
            limiter,
            None,
        );

        let shutdown = CancellationToken::new();
        let cleanup = store.spawn_cleanup(shutdown.child_token());
        let commit = CommitOptions {
            piece_lengths,
            piece_hash: config.metainfogen.piece_hash,
            persist: true,
        };
        let shared = Arc::new(Shared {
            name: config.name.clone(),
            store: store.clone(),
            fetcher: BackendFetcher::new(
                store.clone(),
                backends.clone(),
                commit.clone(),
                shutdown.child_token(),
            ),
            writeback: WriteBack::new(store.clone(), backends.clone()),
            backends,
            commit,
            ring: ring(&config),
            max_replica: config.hashring.max_replica,
            scheduler: scheduler.clone(),
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

    /// Stops gracefully: reports NOT_SERVING, stops accepting gRPC requests and lets in-flight
    /// ones finish (up to a grace period), then stops the scheduler, backend fetches and the
    /// store's cleanup task (which flushes access times on the way out).
    pub async fn shutdown(mut self) -> Result<(), OriginError> {
        self.health
            .set_service_status("", ServingStatus::NotServing)
            .await;
        self.health
            .set_not_serving::<BlobServiceServer<OriginService>>()
            .await;
        self.shutdown.cancel();
        let served = match self.server.take() {
            Some(mut server) => match tokio::time::timeout(SHUTDOWN_GRACE, &mut server).await {
                Ok(Ok(result)) => result.map_err(OriginError::Grpc),
                Ok(Err(join)) => Err(OriginError::Task(join)),
                Err(_) => {
                    tracing::warn!(
                        grace = ?SHUTDOWN_GRACE,
                        "gRPC requests still running after the grace period; cutting them"
                    );
                    server.abort();
                    Ok(())
                }
            },
            None => Ok(()),
        };
        self.scheduler.shutdown().await;
        self.shared.fetcher.wait().await;
        if let Some(cleanup) = self.cleanup.take() {
            cleanup.await.map_err(OriginError::Task)?;
        }
        tracing::info!(grpc_addr = %self.grpc_addr, "origin stopped");
        served
    }
}

impl Drop for Origin {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// The ring of origins: `cluster.hosts.static` with their `hashring.weights`. Members given by
/// DNS are not resolved yet; such an origin reports itself as the only owner.
fn ring(config: &OriginConfig) -> Ring {
    if config.cluster.hosts.dns.is_some() {
        tracing::warn!("cluster.hosts.dns is not resolved yet: Locations reports only this origin");
    }
    Ring::new(
        config
            .cluster
            .hosts
            .static_hosts
            .iter()
            .map(|host| Member::new(host.clone(), config.hashring.weight_of(host))),
    )
}

/// The IP peers dial: `peer_ip`; else the host of `name` if it is an IP literal; else the IP
/// the peer endpoint is bound to if it is a specific one; else loopback (fine for a
/// single-host cluster, wrong anywhere else: set `peer_ip`).
fn advertised_ip(config: &OriginConfig, bound: SocketAddr) -> IpAddr {
    if let Some(ip) = config.peer_ip {
        return ip;
    }
    if let Ok(ip) = host_of(&config.name).parse() {
        return ip;
    }
    if !bound.ip().is_unspecified() {
        return bound.ip();
    }
    tracing::warn!(
        name = %config.name,
        "advertising 127.0.0.1 to peers: set `peer_ip` unless the whole cluster is on this host"
    );
    IpAddr::V4(Ipv4Addr::LOCALHOST)
}

/// The host part of `host:port` (IPv6 literals in brackets).
fn host_of(address: &str) -> &str {
    let host = address.rsplit_once(':').map_or(address, |(host, _)| host);
    host.trim_start_matches('[').trim_end_matches(']')
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
        let any: SocketAddr = "0.0.0.0:15001".parse().unwrap();
        let ip = |name, peer_ip, bound| advertised_ip(&config(name, peer_ip), bound).to_string();
        assert_eq!(ip("origin1:15002", Some("10.0.0.9"), any), "10.0.0.9");
        assert_eq!(ip("10.1.2.3:15002", None, any), "10.1.2.3");
        assert_eq!(ip("[fd00::7]:15002", None, any), "fd00::7");
        assert_eq!(
            ip("origin1:15002", None, "10.4.4.4:15001".parse().unwrap()),
            "10.4.4.4"
        );
        assert_eq!(ip("origin1:15002", None, any), "127.0.0.1");
    }

    #[test]
    fn the_ring_uses_static_hosts_and_weights() {
        let mut config = config("a:1", None);
        config.cluster.hosts.static_hosts = vec!["a:1".into(), "b:1".into()];
        config.hashring.weights.insert("b:1".into(), 300);
        let ring = ring(&config);
        assert_eq!(
            ring.members(),
            &[Member::new("a:1", 100), Member::new("b:1", 300)]
        );
    }
}
