//! The other build-index hosts of this cluster (`cluster:`). Every tag write is copied to each
//! of them before it is acknowledged (`ReplicationService/DuplicatePut`), so a tag written to
//! one host is read from any other at once, and each peer holds its own copy of the write's
//! replication tasks for a while: if the host that took the push dies before finishing them,
//! its peers do. A peer that cannot take its copy within `replication.peer_timeout` gets a
//! durable task in the queue instead, retried like any other until it has it.

use std::time::Duration;

use kraken_config::build_index::BuildIndexConfig;
use kraken_config::cluster::PassiveHealthCheckConfig;
use kraken_oci::TaggedName;
use kraken_proto::buildindex::v1::DuplicatePutRequest;
use kraken_proto::buildindex::v1::replication_service_client::ReplicationServiceClient;
use kraken_tls::{Role, TlsMaterial};
use kraken_transport::cluster::{ClusterError, HostPool, PoolOptions};
use tonic::Status;

use crate::error::BuildIndexError;
use crate::store::TagRecord;

/// How long a copy waits for a DNS peer list to resolve.
const READY_PATIENCE: Duration = Duration::from_secs(5);

/// The cluster peers, or none.
#[derive(Debug)]
pub(crate) struct ClusterPeers {
    pool: Option<HostPool>,
    delay: Duration,
    timeout: Duration,
}

/// Why a peer did not take its copy.
#[derive(Debug, thiserror::Error)]
pub(crate) enum PeerError {
    #[error("cannot reach build-index peer {peer}")]
    Channel {
        peer: String,
        #[source]
        source: ClusterError,
    },
    #[error("build-index peer {peer} answered {:?}: {}", .status.code(), .status.message())]
    Refused { peer: String, status: Status },
    #[error("build-index peer {peer} did not answer within {} ms", .timeout.as_millis())]
    TimedOut { peer: String, timeout: Duration },
}

/// A tag write, as copied to a peer.
#[derive(Debug, Clone, Copy)]
pub(crate) struct TagWrite<'a> {
    pub(crate) name: &'a TaggedName,
    pub(crate) record: &'a TagRecord,
}

impl ClusterPeers {
    /// The peers of `config.cluster` (static or DNS), dialed with our own certificate.
    pub(crate) fn from_config(
        config: &BuildIndexConfig,
        tls: &TlsMaterial,
    ) -> Result<Self, BuildIndexError> {
        let pool = if config.cluster.is_empty() {
            None
        } else {
            let options =
                PoolOptions::upstream(Role::BuildIndex, &PassiveHealthCheckConfig::default());
            Some(
                HostPool::new(&config.cluster, tls, options)
                    .map_err(|e| BuildIndexError::Peers(Box::new(e)))?,
            )
        };
        Ok(Self {
            pool,
            delay: config.replication.peer_delay,
            timeout: config.replication.peer_timeout,
        })
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.pool.is_none()
    }

    /// Copies `copy` to every peer at once; returns the peers that did not take it (each
    /// waited for at most `peer_timeout`).
    pub(crate) async fn copy_to_all(&self, copy: TagWrite<'_>) -> Vec<(String, PeerError)> {
        let peers = self.peers().await;
        let copies = peers.iter().enumerate().map(|(i, peer)| async move {
            let hold = self
                .delay
                .saturating_mul(u32::try_from(i + 1).unwrap_or(u32::MAX));
            self.copy_to(peer, copy, hold)
                .await
                .err()
                .map(|error| (peer.clone(), error))
        });
        futures::future::join_all(copies)
            .await
            .into_iter()
            .flatten()
            .collect()
    }

    /// Copies `copy` to `peer` (a queued retry), its replication tasks held as the peer's
    /// place in the list says.
    pub(crate) async fn retry_copy(&self, peer: &str, copy: TagWrite<'_>) -> Result<(), PeerError> {
        let place = self
            .peers()
            .await
            .iter()
            .position(|p| p == peer)
            .unwrap_or(0);
        let hold = self
            .delay
            .saturating_mul(u32::try_from(place + 1).unwrap_or(u32::MAX));
        self.copy_to(peer, copy, hold).await
    }

    /// The peers' addresses, in the configured (or resolved) order.
    async fn peers(&self) -> Vec<String> {
        let Some(pool) = &self.pool else {
            return Vec::new();
        };
        match pool.ready(READY_PATIENCE).await {
            Ok(members) => members.labels().map(str::to_owned).collect(),
            Err(error) => {
                tracing::warn!(%error, "cannot list the build-index peers; tag writes are not copied to them");
                Vec::new()
            }
        }
    }

    async fn copy_to(
        &self,
        peer: &str,
        copy: TagWrite<'_>,
        hold: Duration,
    ) -> Result<(), PeerError> {
        let Some(pool) = &self.pool else {
            return Ok(());
        };
        let channel = pool.channel(peer).map_err(|source| PeerError::Channel {
            peer: peer.to_owned(),
            source,
        })?;
        let request = DuplicatePutRequest {
            tag: copy.name.to_string(),
            digest: copy.record.digest.to_string(),
            version: copy.record.version,
            replicate: copy.record.replicate,
            hold_ms: u64::try_from(hold.as_millis()).unwrap_or(u64::MAX),
        };
        let mut client = ReplicationServiceClient::new(channel);
        match tokio::time::timeout(self.timeout, client.duplicate_put(request)).await {
            Err(_) => {
                pool.record_network_error(peer);
                Err(PeerError::TimedOut {
                    peer: peer.to_owned(),
                    timeout: self.timeout,
                })
            }
            Ok(Err(status)) => {
                pool.record_status(peer, &status);
                Err(PeerError::Refused {
                    peer: peer.to_owned(),
                    status,
                })
            }
            Ok(Ok(response)) => {
                pool.record_success(peer);
                let response = response.into_inner();
                tracing::debug!(
                    peer,
                    stored = response.stored,
                    version = response.version,
                    "tag write copied to a peer"
                );
                Ok(())
            }
        }
    }
}
