//! A client of the whole origin cluster, for the proxy, the build-index and tools: it finds a
//! blob's owners, sends each request to the highest-scoring healthy one and fails over to the
//! next on network errors, with passive health checks (`fails` network errors within
//! `fail_timeout` take an origin out of rotation for `fail_timeout`).
//!
//! Owners come from the cluster itself (`Locations`, answered from the origins' own ring with
//! their weights and active health checks), so a client needs no ring settings of its own and
//! never disagrees with the origins about placement. Only when no origin answers does it fall
//! back to ranking the configured hosts itself.

use std::future::Future;
use std::io;
use std::time::Duration;

use kraken_config::cluster::{HashRingConfig, UpstreamConfig};
use kraken_core::{Digest, MetaInfo, Namespace};
use kraken_tls::TlsMaterial;
use kraken_transport::cluster::{HostPool, HostStatus, PoolOptions};
use tokio::io::AsyncRead;

use crate::client::{BlobStat, ByteStream, ClientError, OriginClient, Uploaded};

/// How long the first call waits for a DNS host list to resolve.
const READY_PATIENCE: Duration = Duration::from_secs(10);
/// Longest a `Locations` call may take: it is answered from memory.
const LOCATIONS_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest a `Stat` or `GetMetaInfo` may take before the next origin is asked.
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(30);

/// Ring-aware client of the origin cluster. Cheap to clone; clones share channels and health.
#[derive(Debug, Clone)]
pub struct OriginClusterClient {
    pool: HostPool,
    /// Owners per blob when the client must rank them itself (no origin answers `Locations`).
    replicas: usize,
}

impl OriginClusterClient {
    /// A client of the origins in `upstream` (static list or DNS), with its passive checks.
    pub fn new(upstream: &UpstreamConfig, tls: &TlsMaterial) -> Result<Self, ClientError> {
        Self::with_ring(upstream, &HashRingConfig::default(), tls)
    }

    /// [`new`](Self::new) with the cluster's `hashring` (weights, `max_replica`, DNS refresh
    /// interval), used only when no origin can say who owns a blob.
    pub fn with_ring(
        upstream: &UpstreamConfig,
        hashring: &HashRingConfig,
        tls: &TlsMaterial,
    ) -> Result<Self, ClientError> {
        let options = PoolOptions {
            passive: Some(upstream.healthcheck.clone()),
            ..PoolOptions::ring("origin", hashring)
        };
        let pool = HostPool::new(&upstream.hosts, tls, options).map_err(ClientError::Cluster)?;
        Ok(Self {
            pool,
            replicas: hashring.max_replica.max(1),
        })
    }

    /// Every configured origin with its health as this client sees it.
    pub fn hosts(&self) -> Vec<HostStatus> {
        self.pool.statuses()
    }

    /// The origins to try for `digest`, in order: its owners (the cluster's ring order,
    /// healthy ones first), then the other members as a last resort. An origin that is not
    /// an owner still serves: it stores an upload and copies it to the owners, and fetches a
    /// missing blob from the backend.
    pub async fn candidates(&self, digest: &Digest) -> Result<Vec<String>, ClientError> {
        let mut candidates = self.owners_of(digest).await?;
        for member in self.pool.order(digest) {
            if !candidates.contains(&member) {
                candidates.push(member);
            }
        }
        Ok(candidates)
    }

    /// The owners of `digest` as the cluster reports them, healthy ones first: the origins a
    /// call must reach when only an owner will do (a prefetch, a lookup that should not make
    /// every member ask its backend). Ranked by this client's own ring when no origin answers.
    pub async fn owners_of(&self, digest: &Digest) -> Result<Vec<String>, ClientError> {
        self.pool
            .ready(READY_PATIENCE)
            .await
            .map_err(ClientError::Cluster)?;
        let mut owners = self.owners(digest).await;
        if owners.is_empty() {
            let ranked = self.pool.owners(digest, self.replicas);
            owners = ranked.into_iter().map(|h| h.label).collect();
        }
        Ok(self.pool.order_hosts(owners))
    }

    /// A client of origin `label` (a member, or an owner a member named), sharing the pool's
    /// channel. Report how calls through it went with [`record`](Self::record).
    pub fn client(&self, label: &str) -> Result<OriginClient, ClientError> {
        self.pool
            .channel(label)
            .map(OriginClient::new)
            .map_err(ClientError::Cluster)
    }

    /// Feeds the passive health checks with the outcome of a call to `label`: a network
    /// error counts against the origin, any answer (even a refusal) counts for it.
    pub fn record<T>(&self, label: &str, outcome: &Result<T, ClientError>) {
        match outcome {
            // The pool logs and counts the transition to unhealthy.
            Err(error) if error.is_network_error() => {
                self.pool.record_network_error(label);
            }
            _ => self.pool.record_success(label),
        }
    }

    /// Uploads a blob to the first candidate that answers. `open` gives the blob's content
    /// from its start, once per attempt: a failover re-sends it from scratch.
    pub async fn upload<F, Fut, R>(
        &self,
        namespace: &Namespace,
        digest: &Digest,
        size: Option<u64>,
        open: F,
    ) -> Result<(String, Uploaded), ClientError>
    where
        F: Fn() -> Fut,
        Fut: Future<Output = io::Result<R>>,
        R: AsyncRead + Send + 'static,
    {
        self.failover(digest, None, |client| {
            let open = &open;
            async move {
                let reader = open().await.map_err(ClientError::Source)?;
                client.upload(namespace, digest, reader, size).await
            }
        })
        .await
    }

    /// Streams a blob from the first candidate that starts sending it. A stream that breaks
    /// later is the caller's to retry.
    pub async fn download(
        &self,
        namespace: &Namespace,
        digest: &Digest,
    ) -> Result<ByteStream, ClientError> {
        self.failover(digest, None, |client| async move {
            client.download(namespace, digest).await
        })
        .await
        .map(|(_, stream)| stream)
    }

    /// Size and state of a blob on its owner or in the backend; `None` if neither has it.
    pub async fn stat(
        &self,
        namespace: &Namespace,
        digest: &Digest,
    ) -> Result<Option<BlobStat>, ClientError> {
        self.failover(digest, Some(LOOKUP_TIMEOUT), |client| async move {
            client.stat(namespace, digest).await
        })
        .await
        .map(|(_, stat)| stat)
    }

    /// The blob's metainfo; [`ClientError::Retry`] while its owner fetches it from the backend.
    pub async fn get_metainfo(
        &self,
        namespace: &Namespace,
        digest: &Digest,
    ) -> Result<MetaInfo, ClientError> {
        self.failover(digest, Some(LOOKUP_TIMEOUT), |client| async move {
            client.get_metainfo(namespace, digest).await
        })
        .await
        .map(|(_, metainfo)| metainfo)
    }

    /// The owners the cluster reports for `digest` (its own order), from the first origin
    /// that answers; empty if none does.
    async fn owners(&self, digest: &Digest) -> Vec<String> {
        for origin in self.pool.order(digest) {
            let client = match self.pool.channel(&origin) {
                Ok(channel) => OriginClient::new(channel),
                Err(_) => continue,
            };
            let answer = tokio::time::timeout(LOCATIONS_TIMEOUT, client.locations(digest)).await;
            match answer {
                Ok(Ok(locations)) => {
                    self.pool.record_success(&origin);
                    let (mut healthy, unhealthy): (Vec<_>, Vec<_>) =
                        locations.into_iter().partition(|l| l.healthy);
                    healthy.extend(unhealthy);
                    return healthy.into_iter().map(|l| l.address).collect();
                }
                Ok(Err(error)) if !error.is_network_error() => {
                    self.pool.record_success(&origin);
                    tracing::debug!(%origin, %error, "Locations refused; asking another origin");
                }
                Ok(Err(error)) => {
                    self.pool.record_network_error(&origin);
                    tracing::debug!(%origin, %error, "Locations failed; asking another origin");
                }
                Err(_) => {
                    self.pool.record_network_error(&origin);
                    tracing::debug!(%origin, "Locations timed out; asking another origin");
                }
            }
        }
        Vec::new()
    }

    /// Runs `call` against each candidate in turn until one answers (anything but a network
    /// error); network errors count against the origin's health.
    async fn failover<T, F, Fut>(
        &self,
        digest: &Digest,
        timeout: Option<Duration>,
        call: F,
    ) -> Result<(String, T), ClientError>
    where
        F: Fn(OriginClient) -> Fut,
        Fut: Future<Output = Result<T, ClientError>>,
    {
        let candidates = self.candidates(digest).await?;
        let tried = candidates.len();
        let mut last = None;
        for origin in candidates {
            let client = match self.pool.channel(&origin) {
                Ok(channel) => OriginClient::new(channel),
                Err(error) => {
                    last = Some((origin, ClientError::Cluster(error)));
                    continue;
                }
            };
            let outcome = match timeout {
                Some(limit) => match tokio::time::timeout(limit, call(client)).await {
                    Ok(outcome) => outcome,
                    Err(_) => Err(ClientError::Status(tonic::Status::deadline_exceeded(
                        format!("no answer within {} s", limit.as_secs()),
                    ))),
                },
                None => call(client).await,
            };
            match outcome {
                Ok(value) => {
                    self.pool.record_success(&origin);
                    return Ok((origin, value));
                }
                Err(error) if error.is_network_error() => {
                    self.pool.record_network_error(&origin);
                    tracing::debug!(%origin, %error, "origin unreachable; trying the next one");
                    last = Some((origin, error));
                }
                Err(error) => {
                    if matches!(error, ClientError::Status(_) | ClientError::Retry(_)) {
                        self.pool.record_success(&origin);
                    }
                    return Err(error);
                }
            }
        }
        let (host, last) = last.unwrap_or_else(|| {
            (
                String::new(),
                ClientError::Status(tonic::Status::unavailable("no origin is configured")),
            )
        });
        Err(ClientError::Unreachable {
            tried,
            host,
            last: Box::new(last),
        })
    }
}
