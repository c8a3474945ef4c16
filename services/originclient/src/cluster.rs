//! A client of the whole origin cluster, for the proxy, the build-index, the tracker and tools:
//! it finds a blob's owners, sends each request to the highest-scoring healthy one and fails
//! over to the next on network errors, with passive health checks (`fails` network errors
//! within `fail_timeout` take an origin out of rotation for `fail_timeout`). Calls that must
//! wait while an owner fetches a blob from its backend retry as told (`retry-after-ms`), up to
//! a minute.
//!
//! Owners come from the cluster itself (`Locations`, answered from the origins' own ring with
//! their weights and active health checks), so a client needs no ring settings of its own and
//! never disagrees with the origins about placement. Only when no origin answers does it fall
//! back to ranking the configured hosts itself.

use std::future::Future;
use std::io;
use std::path::Path;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use kraken_config::cluster::{HashRingConfig, UpstreamConfig};
use kraken_core::{Digest, MetaInfo, Namespace};
use kraken_proto::origin::v1::PrefetchRequest;
use kraken_tls::{Role, TlsMaterial};
use kraken_transport::cluster::{HostPool, HostStatus, PoolOptions};
use tokio::io::AsyncRead;
use tonic::Code;

use crate::client::{
    BlobStat, ByteStream, ClientError, Location, OriginClient, Replicated, Uploaded,
};

/// How long the first call waits for a DNS host list to resolve.
const READY_PATIENCE: Duration = Duration::from_secs(10);
/// Longest a `Locations` call may take: it is answered from memory.
const LOCATIONS_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest a `Stat` or `GetMetaInfo` may take before the next origin is asked.
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a call keeps retrying while an origin fetches a blob from its backend.
const BACKEND_FETCH_PATIENCE: Duration = Duration::from_secs(60);
/// Longest single wait between such retries, whatever the origin suggests.
const MAX_RETRY_WAIT: Duration = Duration::from_secs(2);
/// Deadline of a unary call to one origin (stat, prefetch).
const UNARY_TIMEOUT: Duration = Duration::from_secs(15);

/// Why a call to the origin cluster failed.
#[derive(Debug, thiserror::Error)]
pub enum OriginsError {
    /// No owner has the blob (nor its storage backend).
    #[error("{digest} is not on the origins (namespace {namespace})")]
    NotFound {
        namespace: Namespace,
        digest: Digest,
    },
    /// No owner could answer; the last failure is attached.
    #[error("no origin owning {digest} could answer")]
    Unavailable {
        digest: Digest,
        #[source]
        source: ClientError,
    },
    #[error("{digest} is larger than the {max} bytes allowed here")]
    TooLarge { digest: Digest, max: usize },
    #[error("an origin sent content for {digest} that hashes to {actual}")]
    Corrupt { digest: Digest, actual: Digest },
}

impl OriginsError {
    pub fn is_not_found(&self) -> bool {
        matches!(self, Self::NotFound { .. })
    }
}

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
        Self::build(upstream, hashring, tls, None)
    }

    /// A client of another cluster's origins (`upstream`, as its build-index names them),
    /// dialed with `tls` (material for that remote: its CA, our certificate) and each
    /// certificate checked against `server_name` when given (`remotes.<name>.tls.server_name`).
    pub fn for_remote(
        upstream: &UpstreamConfig,
        tls: &TlsMaterial,
        server_name: Option<&str>,
    ) -> Result<Self, ClientError> {
        if upstream.hosts.is_empty() {
            return Err(ClientError::NoHosts);
        }
        Self::build(
            upstream,
            &HashRingConfig::default(),
            tls,
            server_name.map(str::to_owned),
        )
    }

    fn build(
        upstream: &UpstreamConfig,
        hashring: &HashRingConfig,
        tls: &TlsMaterial,
        server_name: Option<String>,
    ) -> Result<Self, ClientError> {
        let options = PoolOptions {
            passive: Some(upstream.healthcheck.clone()),
            server_name,
            ..PoolOptions::ring(Role::Origin, hashring)
        };
        let pool = HostPool::new(&upstream.hosts, tls, options).map_err(ClientError::Cluster)?;
        Ok(Self {
            pool,
            replicas: hashring.max_replica.max(1),
        })
    }

    /// From a component's `origin:` (hosts, passive checks) and `hashring:` (weights and
    /// `max_replica`, used only when no origin can name a blob's owners) sections; an empty
    /// host list is refused.
    pub fn from_config(
        tls: &TlsMaterial,
        upstream: &UpstreamConfig,
        hashring: &HashRingConfig,
    ) -> Result<Self, ClientError> {
        if upstream.hosts.is_empty() {
            return Err(ClientError::NoHosts);
        }
        Self::with_ring(upstream, hashring, tls)
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

    /// `hosts` reordered healthy ones first, as this client's passive checks see them (stable
    /// otherwise).
    pub fn healthy_first(&self, hosts: impl IntoIterator<Item = String>) -> Vec<String> {
        self.pool.order_hosts(hosts)
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

    /// The owners the cluster reports for `digest` (its own order, healthy ones first), from
    /// the first origin that answers; empty if none does.
    async fn owners(&self, digest: &Digest) -> Vec<String> {
        match self.locations(digest).await {
            Ok(locations) => {
                let (mut healthy, unhealthy): (Vec<_>, Vec<_>) =
                    locations.into_iter().partition(|l| l.healthy);
                healthy.extend(unhealthy);
                healthy.into_iter().map(|l| l.address).collect()
            }
            Err(_) => Vec::new(),
        }
    }

    /// `Locations` of `digest` (its owners on the origins' own ring, with their health), asked
    /// of the members in ring order for the digest until one answers. The last failure when
    /// none does.
    pub async fn locations(&self, digest: &Digest) -> Result<Vec<Location>, ClientError> {
        self.pool
            .ready(READY_PATIENCE)
            .await
            .map_err(ClientError::Cluster)?;
        let order = self.pool.order(digest);
        let tried = order.len();
        let mut last = None;
        for origin in order {
            let client = match self.pool.channel(&origin) {
                Ok(channel) => OriginClient::new(channel),
                Err(error) => {
                    last = Some((origin, ClientError::Cluster(error)));
                    continue;
                }
            };
            let answer = tokio::time::timeout(LOCATIONS_TIMEOUT, client.locations(digest)).await;
            let error = match answer {
                Ok(Ok(locations)) => {
                    self.pool.record_success(&origin);
                    return Ok(locations);
                }
                Ok(Err(error)) if !error.is_network_error() => {
                    self.pool.record_success(&origin);
                    tracing::debug!(%origin, %error, "Locations refused; asking another origin");
                    error
                }
                Ok(Err(error)) => {
                    self.pool.record_network_error(&origin);
                    tracing::debug!(%origin, %error, "Locations failed; asking another origin");
                    error
                }
                Err(_) => {
                    self.pool.record_network_error(&origin);
                    tracing::debug!(%origin, "Locations timed out; asking another origin");
                    ClientError::Status(tonic::Status::deadline_exceeded(format!(
                        "no answer within {LOCATIONS_TIMEOUT:?}"
                    )))
                }
            };
            last = Some((origin, error));
        }
        Err(unreachable(tried, last))
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
        Err(unreachable(tried, last))
    }

    /// The owners of `digest`, healthy first, with a client each.
    async fn owner_clients(
        &self,
        digest: &Digest,
    ) -> Result<Vec<(String, OriginClient)>, OriginsError> {
        let owners = self.owners_of(digest).await;
        self.with_clients(digest, owners)
    }

    /// The owners, then every other member as a last resort (a member that is not an owner
    /// still accepts an upload and copies it to the owners).
    async fn candidate_clients(
        &self,
        digest: &Digest,
    ) -> Result<Vec<(String, OriginClient)>, OriginsError> {
        let candidates = self.candidates(digest).await;
        self.with_clients(digest, candidates)
    }

    fn with_clients(
        &self,
        digest: &Digest,
        labels: Result<Vec<String>, ClientError>,
    ) -> Result<Vec<(String, OriginClient)>, OriginsError> {
        let unavailable = |source| OriginsError::Unavailable {
            digest: *digest,
            source,
        };
        let mut clients = Vec::new();
        let mut last = None;
        for label in labels.map_err(unavailable)? {
            match self.client(&label) {
                Ok(client) => clients.push((label, client)),
                Err(error) => {
                    tracing::warn!(origin = %label, %error, "no channel to this origin; skipped");
                    last = Some(error);
                }
            }
        }
        match last {
            Some(error) if clients.is_empty() => Err(unavailable(error)),
            _ => Ok(clients),
        }
    }

    /// What the owners know about a blob: the first owner that has it answers. `None` when
    /// every owner that answered lacks it (each also asks its storage backend); an error only
    /// when no owner answered at all.
    pub async fn stat(
        &self,
        namespace: &Namespace,
        digest: &Digest,
    ) -> Result<Option<BlobStat>, OriginsError> {
        let mut answered = false;
        let mut last = None;
        for (address, client) in self.owner_clients(digest).await? {
            let outcome = timed(client.stat(namespace, digest)).await;
            self.record(&address, &outcome);
            match outcome {
                Ok(Some(stat)) => return Ok(Some(stat)),
                Ok(None) => answered = true,
                Err(error) => {
                    tracing::debug!(origin = %address, %digest, %error, "stat failed; next owner");
                    last = Some(error);
                }
            }
        }
        match last {
            Some(source) if !answered => Err(OriginsError::Unavailable {
                digest: *digest,
                source,
            }),
            _ => Ok(None),
        }
    }

    /// Streams a blob from the first owner that can serve it, waiting (up to a minute) while
    /// an owner fetches it from its backend.
    pub async fn download(
        &self,
        namespace: &Namespace,
        digest: &Digest,
    ) -> Result<ByteStream, OriginsError> {
        self.download_range(namespace, digest, 0, None).await
    }

    /// [`download`](Self::download) of `length` bytes (`None`: to the end) from `offset`.
    pub async fn download_range(
        &self,
        namespace: &Namespace,
        digest: &Digest,
        offset: u64,
        length: Option<u64>,
    ) -> Result<ByteStream, OriginsError> {
        let mut last = None;
        let mut not_found = false;
        for (address, client) in self.owner_clients(digest).await? {
            let outcome = retrying_while_fetching(|| {
                client.download_range(namespace, digest, offset, length)
            })
            .await;
            self.record(&address, &outcome);
            match outcome {
                Ok(stream) => return Ok(stream),
                Err(error) if error.code() == Some(Code::NotFound) => not_found = true,
                Err(error) => {
                    tracing::debug!(origin = %address, %digest, %error, "download failed");
                    last = Some(error);
                }
            }
        }
        Err(none_served(namespace, digest, last, not_found))
    }

    /// Has a local origin send a blob to the remote cluster `remote_cluster`: its owners
    /// first (they hold it), then the other members (which fetch it from the backend). Waits
    /// while an origin fetches the blob from its backend, as [`download`](Self::download)
    /// does, and moves on to the next origin on a network error; any other answer is final.
    /// No deadline: a large blob takes long to send.
    pub async fn replicate_to_remote(
        &self,
        namespace: &Namespace,
        digest: &Digest,
        remote_cluster: &str,
    ) -> Result<Replicated, OriginsError> {
        let mut last = None;
        let mut not_found = false;
        for (address, client) in self.candidate_clients(digest).await? {
            let outcome = retrying_while_fetching(|| {
                client.replicate_to_remote(namespace, digest, remote_cluster)
            })
            .await;
            self.record(&address, &outcome);
            match outcome {
                Ok(replicated) => return Ok(replicated),
                Err(error) if error.code() == Some(Code::NotFound) => not_found = true,
                Err(error)
                    if error.is_network_error() || matches!(error, ClientError::Retry(_)) =>
                {
                    tracing::debug!(origin = %address, %digest, %error, "replicate failed; next origin");
                    last = Some(error);
                }
                Err(source) => {
                    return Err(OriginsError::Unavailable {
                        digest: *digest,
                        source,
                    });
                }
            }
        }
        Err(none_served(namespace, digest, last, not_found))
    }

    /// Uploads the blob in the file at `path` (`size` bytes) to its first owner that accepts
    /// it, falling over to the next owner when one cannot be reached. The origin verifies the
    /// content against `digest`; a mismatch is final (`INVALID_ARGUMENT`), not retried.
    pub async fn upload_file(
        &self,
        namespace: &Namespace,
        digest: &Digest,
        path: &Path,
        size: u64,
    ) -> Result<Uploaded, OriginsError> {
        self.upload_to_owners(digest, |client| async move {
            let file = tokio::fs::File::open(path)
                .await
                .map_err(ClientError::Source)?;
            client.upload(namespace, digest, file, Some(size)).await
        })
        .await
    }

    /// Uploads a small blob held in memory (a manifest), falling over between owners like
    /// [`upload_file`](Self::upload_file).
    pub async fn upload_bytes(
        &self,
        namespace: &Namespace,
        digest: &Digest,
        data: Bytes,
    ) -> Result<Uploaded, OriginsError> {
        let size = data.len() as u64;
        self.upload_to_owners(digest, |client| {
            let chunks = futures::stream::iter([Ok::<_, std::io::Error>(data.clone())]);
            async move {
                client
                    .upload_stream(namespace, digest, chunks, Some(size))
                    .await
            }
        })
        .await
    }

    /// Runs `upload` against the candidates in turn until one stores the blob: a transient
    /// failure (down, overloaded, cut off) moves on to the next; any other answer, a content
    /// mismatch above all, is final. A source that cannot be read is final too.
    async fn upload_to_owners<F, Fut>(
        &self,
        digest: &Digest,
        upload: F,
    ) -> Result<Uploaded, OriginsError>
    where
        F: Fn(OriginClient) -> Fut,
        Fut: Future<Output = Result<Uploaded, ClientError>>,
    {
        let mut last = None;
        for (address, client) in self.candidate_clients(digest).await? {
            let outcome = upload(client).await;
            self.record(&address, &outcome);
            match outcome {
                Ok(uploaded) => return Ok(uploaded),
                Err(error) if is_transient(&error) => {
                    tracing::warn!(origin = %address, %digest, %error, "upload failed; next owner");
                    last = Some(error);
                }
                Err(error) => {
                    return Err(OriginsError::Unavailable {
                        digest: *digest,
                        source: error,
                    });
                }
            }
        }
        Err(OriginsError::Unavailable {
            digest: *digest,
            source: last.unwrap_or(ClientError::Missing("owner on the origin ring")),
        })
    }

    /// Uploads a blob given as a stream to its first owner (a stream cannot be replayed to
    /// another owner: on failure the caller starts over).
    pub async fn upload_stream<S>(
        &self,
        namespace: &Namespace,
        digest: &Digest,
        chunks: S,
        size: Option<u64>,
    ) -> Result<Uploaded, OriginsError>
    where
        S: futures::Stream<Item = std::io::Result<Bytes>> + Send + 'static,
    {
        let Some((address, client)) = self.candidate_clients(digest).await?.into_iter().next()
        else {
            return Err(OriginsError::Unavailable {
                digest: *digest,
                source: ClientError::Missing("owner on the origin ring"),
            });
        };
        let outcome = client.upload_stream(namespace, digest, chunks, size).await;
        self.record(&address, &outcome);
        outcome.map_err(|source| OriginsError::Unavailable {
            digest: *digest,
            source,
        })
    }

    /// Downloads a small blob (a manifest) whole, refusing more than `max` bytes, and checks
    /// it against its digest.
    pub async fn fetch(
        &self,
        namespace: &Namespace,
        digest: &Digest,
        max: usize,
    ) -> Result<Bytes, OriginsError> {
        let mut stream = self.download(namespace, digest).await?;
        let mut data = BytesMut::new();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|source| OriginsError::Unavailable {
                digest: *digest,
                source,
            })?;
            if data.len() + chunk.len() > max {
                return Err(OriginsError::TooLarge {
                    digest: *digest,
                    max,
                });
            }
            data.extend_from_slice(&chunk);
        }
        let actual = Digest::of(&data);
        if actual != *digest {
            return Err(OriginsError::Corrupt {
                digest: *digest,
                actual,
            });
        }
        Ok(data.freeze())
    }

    /// Asks every owner to make sure it holds the blob (fetching it from its backend if not).
    /// Returns whether at least one owner already held it; fails only if no owner accepted.
    pub async fn prefetch(
        &self,
        namespace: &Namespace,
        digest: &Digest,
    ) -> Result<bool, OriginsError> {
        let calls = self
            .owner_clients(digest)
            .await?
            .into_iter()
            .map(|(address, client)| {
                let request = PrefetchRequest {
                    namespace: namespace.to_string(),
                    digest: digest.to_string(),
                };
                let mut raw = client.raw();
                async move {
                    let result = tokio::time::timeout(UNARY_TIMEOUT, raw.prefetch(request)).await;
                    (address, result)
                }
            });
        let mut cached = false;
        let mut accepted = false;
        let mut not_found = false;
        let mut last = None;
        for (address, result) in futures::future::join_all(calls).await {
            let outcome = match result {
                Ok(Ok(response)) => Ok(response.into_inner().cached),
                Ok(Err(status)) => Err(ClientError::from_status(status)),
                Err(_) => Err(ClientError::Status(tonic::Status::deadline_exceeded(
                    format!("prefetch took longer than {UNARY_TIMEOUT:?}"),
                ))),
            };
            self.record(&address, &outcome);
            match outcome {
                Ok(was_cached) => {
                    accepted = true;
                    cached |= was_cached;
                }
                Err(error) => {
                    tracing::debug!(origin = %address, %digest, %error, "prefetch refused");
                    not_found |= error.code() == Some(Code::NotFound);
                    last = Some(error);
                }
            }
        }
        match last {
            _ if accepted => Ok(cached),
            _ if not_found => Err(OriginsError::NotFound {
                namespace: namespace.clone(),
                digest: *digest,
            }),
            Some(source) => Err(OriginsError::Unavailable {
                digest: *digest,
                source,
            }),
            None => Ok(cached),
        }
    }
}

/// Why no origin served a blob: unavailable with the last failure, unless one said it does not
/// have it (or none failed).
fn none_served(
    namespace: &Namespace,
    digest: &Digest,
    last: Option<ClientError>,
    not_found: bool,
) -> OriginsError {
    match last {
        Some(source) if !not_found => OriginsError::Unavailable {
            digest: *digest,
            source,
        },
        _ => OriginsError::NotFound {
            namespace: namespace.clone(),
            digest: *digest,
        },
    }
}

/// Runs `call` again as long as the origin answers [`ClientError::Retry`] (it is fetching the
/// blob from its backend), waiting as told (at most [`MAX_RETRY_WAIT`] at a time) for up to
/// [`BACKEND_FETCH_PATIENCE`]; then the last answer.
async fn retrying_while_fetching<T, F, Fut>(call: F) -> Result<T, ClientError>
where
    F: Fn() -> Fut,
    Fut: Future<Output = Result<T, ClientError>>,
{
    let deadline = tokio::time::Instant::now() + BACKEND_FETCH_PATIENCE;
    loop {
        match call().await {
            Err(ClientError::Retry(after))
                if tokio::time::Instant::now() + after.min(MAX_RETRY_WAIT) < deadline =>
            {
                tokio::time::sleep(after.min(MAX_RETRY_WAIT)).await;
            }
            outcome => return outcome,
        }
    }
}

/// [`ClientError::Unreachable`] after `tried` origins, with the last one's failure.
fn unreachable(tried: usize, last: Option<(String, ClientError)>) -> ClientError {
    let (host, last) = last.unwrap_or_else(|| {
        (
            String::new(),
            ClientError::Status(tonic::Status::unavailable("no origin is configured")),
        )
    });
    ClientError::Unreachable {
        tried,
        host,
        last: Box::new(last),
    }
}

/// Failures another owner may not have: the origin is down, overloaded or cut off.
fn is_transient(error: &ClientError) -> bool {
    match error {
        ClientError::Retry(_) | ClientError::Channel(_) => true,
        ClientError::Status(status) => matches!(
            status.code(),
            Code::Unavailable
                | Code::Unknown
                | Code::DeadlineExceeded
                | Code::Cancelled
                | Code::ResourceExhausted
                | Code::Internal
        ),
        _ => false,
    }
}

async fn timed<T>(call: impl Future<Output = Result<T, ClientError>>) -> Result<T, ClientError> {
    match tokio::time::timeout(UNARY_TIMEOUT, call).await {
        Ok(result) => result,
        Err(_) => Err(ClientError::Status(tonic::Status::deadline_exceeded(
            format!("no answer within {UNARY_TIMEOUT:?}"),
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tls() -> TlsMaterial {
        let ca = kraken_tls::DevCa::new().unwrap();
        let leaf = ca
            .issue(kraken_tls::Role::BuildIndex, &Default::default())
            .unwrap();
        TlsMaterial::from_pem(ca.cert_pem(), &leaf.cert_pem, &leaf.key_pem).unwrap()
    }

    #[tokio::test]
    async fn an_empty_host_list_is_refused_and_dns_is_accepted() {
        kraken_tls::install_crypto_provider();
        let mut upstream = UpstreamConfig::default();
        let error = OriginClusterClient::from_config(&tls(), &upstream, &HashRingConfig::default())
            .unwrap_err();
        assert!(matches!(error, ClientError::NoHosts), "{error}");
        assert!(error.to_string().contains("origin.hosts"), "{error}");
        upstream.hosts.dns = Some("origin.invalid:15002".into());
        OriginClusterClient::from_config(&tls(), &upstream, &HashRingConfig::default()).unwrap();
    }
}
