//! The agent's tracker client: announces (the scheduler's [`Announcer`]) and metainfo lookups.
//!
//! Each blob has a home tracker, the first by rendezvous hash of the digest over the configured
//! hosts (a static list, or a DNS name re-resolved periodically), so with in-memory peer stores
//! every announce of a blob meets the others at the same tracker. A network error fails over to
//! the next host in rank order, and passive health checks (the cluster-wide
//! [`HostPool`](kraken_transport::cluster::HostPool)) keep a dead tracker from costing every
//! request a timeout.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use kraken_config::agent::AgentConfig;
use kraken_config::cluster::UpstreamConfig;
use kraken_core::{Digest, MetaInfo, Namespace, PeerId, PeerInfo, WireError, error_chain};
use kraken_proto::tracker::v1::{self as pb, tracker_service_client::TrackerServiceClient};
use kraken_scheduler::{AnnounceError, AnnounceReply, Announcer, PeerReports};
use kraken_tls::{Role, TlsMaterial};
use kraken_transport::cluster::{ClusterError, HostPool, PoolOptions};
use kraken_transport::grpc::GrpcError;
use kraken_transport::health::{is_network_error, retry_after};
use kraken_transport::observe::ObservedChannel;
use tokio::time::Instant;
use tonic::{Code, Status};

use crate::metrics as m;

pub use kraken_transport::cluster::HostStatus;

/// A hint above this is treated as this: a misconfigured tracker must not park requests.
const MAX_RETRY_HINT: Duration = Duration::from_secs(60);
/// Announce interval when the tracker's reply carries none.
const DEFAULT_ANNOUNCE_INTERVAL: Duration = Duration::from_secs(3);

/// Why a tracker request failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum TrackerError {
    #[error("no tracker is configured: set `tracker.hosts`")]
    NoHosts,
    #[error("cannot set up a channel to tracker {host}")]
    Channel {
        host: String,
        #[source]
        source: Arc<GrpcError>,
    },
    #[error("the tracker hosts are unusable")]
    Cluster(#[source] Arc<ClusterError>),
    #[error("no peer, origin or storage backend has blob {digest}")]
    NotFound { digest: Digest },
    #[error(
        "metainfo of {digest} still unavailable after {}s (the origin is still fetching it)",
        waited.as_secs()
    )]
    MetaInfoTimeout { digest: Digest, waited: Duration },
    #[error("no tracker reachable ({tried} tried); last error from {host}")]
    Unreachable {
        tried: usize,
        host: String,
        #[source]
        source: Status,
    },
    #[error("tracker {host} refused the request")]
    Rejected {
        host: String,
        #[source]
        source: Status,
    },
    #[error("tracker {host} answered with invalid data: {reason}")]
    BadResponse { host: String, reason: String },
    #[error("the metainfo lookup stopped before it finished (the agent is shutting down)")]
    LookupAborted,
}

/// Delays between metainfo attempts when the tracker gives no hint.
pub type RetryPolicy = kraken_core::backoff::Backoff;

/// Kraken's agent: 1 s, ×1.3, at most 5 s.
pub const DEFAULT_RETRY: RetryPolicy = RetryPolicy {
    initial: Duration::from_secs(1),
    max: Duration::from_secs(5),
    factor: 1.3,
};

/// How the client talks to trackers.
#[derive(Debug, Clone, PartialEq)]
pub struct TrackerClientOptions {
    /// Time allowed for one request to one tracker before it counts as a network error.
    pub request_timeout: Duration,
    /// How long `get_metainfo` keeps retrying while the tracker answers `UNAVAILABLE`.
    pub metainfo_timeout: Duration,
    pub retry: RetryPolicy,
}

impl Default for TrackerClientOptions {
    fn default() -> Self {
        Self {
            request_timeout: Duration::from_secs(10),
            metainfo_timeout: Duration::from_secs(15 * 60),
            retry: DEFAULT_RETRY,
        }
    }
}

impl TrackerClientOptions {
    /// From an agent's configuration.
    pub fn from_config(config: &AgentConfig) -> Self {
        Self {
            metainfo_timeout: config.metainfo_timeout,
            ..Self::default()
        }
    }
}

/// Client of the tracker ring. Cheap to clone; clones share channels and health state.
#[derive(Clone)]
pub struct TrackerClient {
    inner: Arc<Inner>,
}

struct Inner {
    trackers: HostPool,
    options: TrackerClientOptions,
}

impl std::fmt::Debug for TrackerClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TrackerClient")
            .field("hosts", &self.hosts())
            .finish_non_exhaustive()
    }
}

/// An error from one round over the hosts.
enum CallError {
    /// A tracker answered with this status (it is up).
    Answered {
        host: String,
        status: Status,
    },
    Unreachable(TrackerError),
}

impl TrackerClient {
    /// Channels to every host of `upstream` (connected lazily). A `dns` host list is
    /// resolved in the background (now and every ring refresh; this needs a tokio runtime):
    /// each address is a member, its certificate checked against the name.
    pub fn new(
        upstream: &UpstreamConfig,
        tls: &TlsMaterial,
        options: TrackerClientOptions,
    ) -> Result<Self, TrackerError> {
        let trackers = HostPool::new(
            &upstream.hosts,
            tls,
            PoolOptions::upstream(Role::Tracker, &upstream.healthcheck),
        )
        .map_err(|error| match error {
            ClusterError::NoHosts => TrackerError::NoHosts,
            other => TrackerError::Cluster(Arc::new(other)),
        })?;
        Ok(Self {
            inner: Arc::new(Inner { trackers, options }),
        })
    }

    /// Every host with its health, in configuration (or resolution) order.
    pub fn hosts(&self) -> Vec<HostStatus> {
        self.inner.trackers.statuses()
    }

    /// The tracker a blob's requests go to while it is healthy (empty until a DNS host list
    /// resolved).
    pub fn home_of(&self, digest: &Digest) -> String {
        self.inner
            .trackers
            .ranked(digest)
            .into_iter()
            .next()
            .map_or_else(String::new, |host| host.label)
    }

    /// Records `me` as a peer of the blob and returns the peers to dial.
    pub async fn announce(
        &self,
        namespace: &Namespace,
        digest: &Digest,
        me: &PeerInfo,
    ) -> Result<AnnounceReply, TrackerError> {
        self.announce_reporting(namespace, digest, me, &PeerReports::default())
            .await
    }

    /// [`TrackerClient::announce`], telling the tracker which peers failed us and which
    /// served us verified pieces since the last announce (at most [`PeerReports::MAX`] each).
    #[tracing::instrument(skip_all, fields(digest = %digest))]
    pub async fn announce_reporting(
        &self,
        namespace: &Namespace,
        digest: &Digest,
        me: &PeerInfo,
        reports: &PeerReports,
    ) -> Result<AnnounceReply, TrackerError> {
        let ids = |peers: &[PeerId]| -> Vec<bytes::Bytes> {
            peers
                .iter()
                .take(PeerReports::MAX)
                .map(|peer| bytes::Bytes::copy_from_slice(peer.as_bytes()))
                .collect()
        };
        let request = pb::AnnounceRequest {
            namespace: namespace.to_string(),
            digest: digest.to_string(),
            peer: Some(me.into()),
            failed_peers: ids(&reports.failed),
            served_by: ids(&reports.served),
        };
        let (host, reply) = match self
            .call(digest, "announce", |mut client| {
                let request = request.clone();
                async move { client.announce(request).await }
            })
            .await
        {
            Ok(answer) => answer,
            Err(CallError::Answered { host, status }) => {
                return Err(TrackerError::Rejected {
                    host,
                    source: status,
                });
            }
            Err(CallError::Unreachable(error)) => return Err(error),
        };
        let mut peers = Vec::with_capacity(reply.peers.len());
        for wire in &reply.peers {
            match PeerInfo::try_from(wire) {
                Ok(peer) => peers.push(peer),
                // One bad entry should not cost the swarm the others.
                Err(error) => tracing::debug!(%host, %error, "tracker handed out an invalid peer"),
            }
        }
        let interval = reply
            .interval
            .and_then(|d| Duration::try_from(d).ok())
            .filter(|d| !d.is_zero())
            .unwrap_or(DEFAULT_ANNOUNCE_INTERVAL);
        Ok(AnnounceReply { peers, interval })
    }

    /// The blob's metainfo. While the tracker answers `UNAVAILABLE` (the origin is fetching the
    /// blob from its backend) this waits as told and asks again, for up to
    /// [`TrackerClientOptions::metainfo_timeout`]; `NOT_FOUND` returns at once.
    #[tracing::instrument(skip_all, fields(digest = %digest))]
    pub async fn get_metainfo(
        &self,
        namespace: &Namespace,
        digest: &Digest,
    ) -> Result<MetaInfo, TrackerError> {
        let options = &self.inner.options;
        let started = Instant::now();
        let deadline = started + options.metainfo_timeout;
        let mut delays = Backoff::new(options.retry);
        let request = pb::GetMetaInfoRequest {
            namespace: namespace.to_string(),
            digest: digest.to_string(),
        };
        loop {
            let answer = self
                .call(digest, "get_metainfo", |mut client| {
                    let request = request.clone();
                    async move { client.get_meta_info(request).await }
                })
                .await;
            let (host, status) = match answer {
                Ok((host, reply)) => {
                    let waited = started.elapsed();
                    if waited > Duration::from_millis(1) {
                        metrics::histogram!(m::METAINFO_WAIT_SECONDS).record(waited.as_secs_f64());
                    }
                    return parse_metainfo(&host, digest, reply);
                }
                Err(CallError::Unreachable(error)) => return Err(error),
                Err(CallError::Answered { host, status }) => (host, status),
            };
            match status.code() {
                Code::NotFound => return Err(TrackerError::NotFound { digest: *digest }),
                Code::Unavailable => {
                    let delay = delays.next(retry_hint(&status));
                    let now = Instant::now();
                    if now + delay >= deadline {
                        return Err(TrackerError::MetaInfoTimeout {
                            digest: *digest,
                            waited: now - started,
                        });
                    }
                    tracing::debug!(%host, delay_ms = delay.as_millis() as u64, "metainfo pending");
                    tokio::time::sleep(delay).await;
                }
                _ => {
                    return Err(TrackerError::Rejected {
                        host,
                        source: status,
                    });
                }
            }
        }
    }

    /// One request, tried on each host in turn (home first, unhealthy ones last) until one
    /// answers. Network errors count against the host's health; any answer clears it.
    async fn call<T, F, Fut>(
        &self,
        digest: &Digest,
        method: &'static str,
        call: F,
    ) -> Result<(String, T), CallError>
    where
        F: Fn(TrackerServiceClient<ObservedChannel>) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, Status>>,
    {
        let trackers = &self.inner.trackers;
        if !trackers.members().is_resolved() {
            // DNS has not answered yet: as unreachable as a tracker can be.
            trackers
                .ready(self.inner.options.request_timeout)
                .await
                .map_err(|error| {
                    CallError::Unreachable(TrackerError::Unreachable {
                        tried: 0,
                        host: trackers.name().to_owned(),
                        source: Status::unavailable(error_chain(&error)),
                    })
                })?;
        }
        let order = trackers.order(digest);
        let mut last_error = None;
        for host in &order {
            let client = match trackers.channel(host) {
                Ok(channel) => TrackerServiceClient::new(channel),
                Err(ClusterError::Channel { host, source }) => {
                    return Err(CallError::Unreachable(TrackerError::Channel {
                        host,
                        source: Arc::new(source),
                    }));
                }
                Err(other) => {
                    return Err(CallError::Unreachable(TrackerError::Cluster(Arc::new(
                        other,
                    ))));
                }
            };
            let outcome =
                tokio::time::timeout(self.inner.options.request_timeout, call(client)).await;
            let status = match outcome {
                Ok(Ok(response)) => {
                    trackers.record_success(host);
                    record(method, "ok");
                    return Ok((host.clone(), response.into_inner()));
                }
                Ok(Err(status)) if !is_network_error(&status) => {
                    trackers.record_success(host);
                    record(method, answer_label(&status));
                    return Err(CallError::Answered {
                        host: host.clone(),
                        status,
                    });
                }
                Ok(Err(status)) => status,
                Err(_) => Status::deadline_exceeded(format!(
                    "no answer within {:?}",
                    self.inner.options.request_timeout
                )),
            };
            record(method, "network_error");
            tracing::debug!(%host, method, error = %status, "tracker request failed; trying the next");
            if trackers.record_network_error(host) {
                metrics::counter!(m::TRACKER_MARKED_UNHEALTHY).increment(1);
                tracing::warn!(%host, "tracker marked unhealthy after repeated network errors");
            }
            last_error = Some((host.clone(), status));
        }
        let (host, source) = last_error
            .unwrap_or_else(|| (String::new(), Status::unavailable("no tracker configured")));
        Err(CallError::Unreachable(TrackerError::Unreachable {
            tried: order.len(),
            host,
            source,
        }))
    }
}

#[async_trait]
impl Announcer for TrackerClient {
    async fn announce(
        &self,
        namespace: &Namespace,
        digest: &Digest,
        me: &PeerInfo,
    ) -> Result<AnnounceReply, AnnounceError> {
        TrackerClient::announce(self, namespace, digest, me)
            .await
            .map_err(AnnounceError::new)
    }

    async fn announce_reporting(
        &self,
        namespace: &Namespace,
        digest: &Digest,
        me: &PeerInfo,
        reports: &PeerReports,
    ) -> Result<AnnounceReply, AnnounceError> {
        TrackerClient::announce_reporting(self, namespace, digest, me, reports)
            .await
            .map_err(AnnounceError::new)
    }
}

fn parse_metainfo(
    host: &str,
    digest: &Digest,
    reply: pb::GetMetaInfoResponse,
) -> Result<MetaInfo, TrackerError> {
    let bad = |reason: String| TrackerError::BadResponse {
        host: host.to_owned(),
        reason,
    };
    let wire = reply
        .metainfo
        .ok_or_else(|| bad(WireError::Missing { field: "metainfo" }.to_string()))?;
    let metainfo = MetaInfo::try_from(&wire).map_err(|e| bad(e.to_string()))?;
    if metainfo.digest() != digest {
        return Err(bad(format!(
            "asked for the metainfo of {digest}, got {}",
            metainfo.digest()
        )));
    }
    Ok(metainfo)
}

fn answer_label(status: &Status) -> &'static str {
    match status.code() {
        Code::NotFound => "not_found",
        Code::Unavailable => "pending",
        _ => "rejected",
    }
}

fn record(method: &'static str, result: &'static str) {
    metrics::counter!(m::TRACKER_REQUESTS, "method" => method, "result" => result).increment(1);
}

/// The tracker's retry hint on `UNAVAILABLE` from `GetMetaInfo`, capped.
fn retry_hint(status: &Status) -> Option<Duration> {
    retry_after(status).map(|hint| hint.min(MAX_RETRY_HINT))
}

/// Delays between metainfo attempts: the server's hint if given, else exponential backoff.
#[derive(Debug)]
struct Backoff {
    policy: RetryPolicy,
    attempt: u32,
}

impl Backoff {
    fn new(policy: RetryPolicy) -> Self {
        Self { policy, attempt: 0 }
    }

    fn next(&mut self, hint: Option<Duration>) -> Duration {
        self.attempt = self.attempt.saturating_add(1);
        hint.unwrap_or_else(|| self.policy.delay(self.attempt))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_by_the_factor_up_to_the_cap_and_yields_to_hints() {
        let mut backoff = Backoff::new(DEFAULT_RETRY);
        let delays: Vec<u64> = (0..9)
            .map(|_| backoff.next(None).as_millis() as u64)
            .collect();
        assert_eq!(
            delays,
            vec![1000, 1300, 1690, 2197, 2856, 3712, 4826, 5000, 5000]
        );
        assert_eq!(
            backoff.next(Some(Duration::from_millis(250))),
            Duration::from_millis(250)
        );
    }

    use kraken_proto::wire::RETRY_AFTER_MS;

    #[test]
    fn retry_hints_are_read_and_capped() {
        let mut status = Status::unavailable("fetching");
        assert_eq!(retry_hint(&status), None);
        status
            .metadata_mut()
            .insert(RETRY_AFTER_MS, "1500".parse().unwrap());
        assert_eq!(retry_hint(&status), Some(Duration::from_millis(1500)));
        status
            .metadata_mut()
            .insert(RETRY_AFTER_MS, "99999999".parse().unwrap());
        assert_eq!(retry_hint(&status), Some(MAX_RETRY_HINT));
        status
            .metadata_mut()
            .insert(RETRY_AFTER_MS, "soon".parse().unwrap());
        assert_eq!(retry_hint(&status), None);
    }
}
