//! `ReplicateToRemote`: sending a blob this cluster holds to another cluster's origins.
//!
//! A remote is a name under `remotes:`, with its own TLS (its CA, our certificate) and an
//! egress cap. For each call the origin reads the blob from its store (fetching it from the
//! backend first if need be: the caller is told to retry meanwhile), learns the remote's
//! origins from the remote build-index (`ReplicationService/ListOrigins`, cached for a minute
//! and asked again after a failure), skips a blob a remote owner already holds (`Stat`), and
//! otherwise uploads it resumably to the first healthy remote owner (`Locations`). A transfer
//! cut mid-way resumes at the remote's offset, within the call and across calls: the upload's
//! cursor is kept in memory per (remote, digest) until the blob is committed there.

use std::collections::{BTreeMap, HashMap};
use std::io::SeekFrom;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use kraken_config::cluster::UpstreamConfig;
use kraken_config::origin::{OriginConfig, OriginRemote};
use kraken_core::sync::lock;
use kraken_core::{Digest, Namespace};
use kraken_originclient::{ClientError, OriginClusterClient, UploadCursor, upload_resumable};
use kraken_proto::origin::v1::ReplicateToRemoteResponse;
use kraken_store::StoreError;
use kraken_tagclient::{TagClient, TagClientError};
use kraken_tls::TlsMaterial;
use kraken_transport::bandwidth::BandwidthLimiter;
use tokio::io::{AsyncRead, AsyncSeekExt, ReadBuf};
use tokio::time::Instant;

use crate::error::OriginError;
use crate::metrics as m;
use crate::service::Shared;

/// How long the remote's origin list is used before it is asked for again.
const ORIGINS_TTL: Duration = Duration::from_secs(60);

/// The remote clusters of `remotes:`, by name.
#[derive(Debug, Default)]
pub(crate) struct Remotes {
    clusters: BTreeMap<String, Arc<RemoteCluster>>,
}

impl Remotes {
    /// Clients of every remote in `config.remotes`: TLS material from `remotes.<name>.tls`
    /// (the remote's CA, our certificate unless another is set there) and this origin's share
    /// of the cluster-wide egress cap (divided by the origins in `cluster.hosts`).
    pub(crate) fn from_config(config: &OriginConfig) -> Result<Self, OriginError> {
        let origins = config.cluster.hosts.static_hosts.len().max(1) as u64;
        let mut clusters = BTreeMap::new();
        for (name, remote) in &config.remotes {
            let cluster = RemoteCluster::new(name, remote, config, origins)?;
            clusters.insert(name.clone(), Arc::new(cluster));
        }
        Ok(Self { clusters })
    }

    /// Sends `digest` to the remote named `remote`; [`OriginError::UnknownRemote`] for a name
    /// not under `remotes:` (nothing is dialed).
    pub(crate) async fn replicate(
        &self,
        shared: &Shared,
        remote: &str,
        namespace: &Namespace,
        digest: &Digest,
    ) -> Result<ReplicateToRemoteResponse, OriginError> {
        let Some(cluster) = self.clusters.get(remote) else {
            let configured: Vec<&str> = self.clusters.keys().map(String::as_str).collect();
            return Err(OriginError::UnknownRemote {
                name: remote.to_owned(),
                configured: if configured.is_empty() {
                    "none".to_owned()
                } else {
                    configured.join(", ")
                },
            });
        };
        let outcome = cluster.replicate(shared, namespace, digest).await;
        let label = match &outcome {
            Ok(response) if response.already_present => "skipped",
            Ok(response) if response.resumed_at > 0 => "resumed",
            Ok(_) => "sent",
            // The caller retries a blob its origin is still fetching: not a failure.
            Err(OriginError::Fetching { .. }) => return outcome,
            Err(_) => "failed",
        };
        metrics::counter!(m::REMOTE_BLOBS, "remote" => remote.to_owned(), "outcome" => label)
            .increment(1);
        outcome
    }
}

/// One remote cluster: its build-index, its origins as last listed, the egress cap and the
/// cursors of transfers cut before they were committed.
struct RemoteCluster {
    name: Arc<str>,
    build_index: TagClient,
    tls: TlsMaterial,
    server_name: Option<String>,
    origins: Mutex<Option<(Instant, OriginClusterClient)>>,
    pace: Option<BandwidthLimiter>,
    cursors: Mutex<HashMap<Digest, UploadCursor>>,
}

impl std::fmt::Debug for RemoteCluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RemoteCluster")
            .field("name", &self.name)
            .field("build_index", &self.build_index)
            .field("capped", &self.pace.is_some())
            .finish_non_exhaustive()
    }
}

impl RemoteCluster {
    fn new(
        name: &str,
        remote: &OriginRemote,
        config: &OriginConfig,
        origins: u64,
    ) -> Result<Self, OriginError> {
        let setup = |reason: String| OriginError::Config(format!("remotes.{name}: {reason}"));
        let (build_index, tls) =
            TagClient::for_remote_config(&remote.build_index, &remote.tls, &config.tls)
                .map_err(|error| setup(error.to_string()))?;
        let server_name = remote.tls.server_name.clone();
        let pace = remote.bandwidth.enable.then(|| {
            // At least 1 bit/s: a cap divided down to 0 must not turn into "unlimited".
            let share = (remote.bandwidth.egress_bits_per_sec / origins).max(1);
            BandwidthLimiter::new(Some(share), None)
        });
        Ok(Self {
            name: name.into(),
            build_index,
            tls,
            server_name,
            origins: Mutex::new(None),
            pace,
            cursors: Mutex::new(HashMap::new()),
        })
    }

    async fn replicate(
        &self,
        shared: &Shared,
        namespace: &Namespace,
        digest: &Digest,
    ) -> Result<ReplicateToRemoteResponse, OriginError> {
        let size = local_size(shared, namespace, digest).await?;
        let origins = self.origins().await?;
        match origins.stat(namespace, digest).await {
            Ok(Some(stat)) if stat.size == size => {
                tracing::info!(remote = %self.name, %digest, "the remote holds the blob already");
                return Ok(ReplicateToRemoteResponse {
                    already_present: true,
                    size,
                    ..ReplicateToRemoteResponse::default()
                });
            }
            Ok(_) => {}
            Err(error) => {
                self.forget_origins();
                return Err(self.failed(&error));
            }
        }
        let owners = origins.owners_of(digest).await.map_err(|error| {
            self.forget_origins();
            self.failed(&error)
        })?;
        let mut last = None;
        for owner in self.preferred_order(digest, owners) {
            let client = origins
                .client(&owner)
                .map_err(|error| self.failed(&error))?;
            let mut cursor = self.cursor(digest, &owner);
            let sent = Arc::new(AtomicU64::new(0));
            let store = shared.store.clone();
            let progress = Progress::new(self.name.clone(), *digest, size);
            let open_at = |offset: u64| {
                let (store, progress) = (store.clone(), progress.clone());
                async move {
                    let reader = store
                        .open_blob(digest)
                        .await
                        .map_err(std::io::Error::other)?;
                    let mut file = tokio::fs::File::from_std(reader.into_file());
                    file.seek(SeekFrom::Start(offset)).await?;
                    Ok::<_, std::io::Error>(progress.reading(file, offset))
                }
            };
            tracing::info!(
                remote = %self.name, %digest, size, origin = %owner, offset = cursor.offset,
                "replicating to the remote"
            );
            let outcome = upload_resumable(
                &client,
                &mut cursor,
                namespace,
                digest,
                size,
                open_at,
                self.pace.as_ref(),
                &sent,
            )
            .await;
            origins.record(&owner, &outcome);
            let sent = sent.load(Ordering::Relaxed);
            metrics::counter!(m::REMOTE_BYTES, "remote" => self.name.to_string()).increment(sent);
            match outcome {
                Ok(done) => {
                    tracing::info!(
                        remote = %self.name, %digest, size, origin = %owner, sent,
                        resumed_at = done.resumed_at, "replicated to the remote"
                    );
                    return Ok(ReplicateToRemoteResponse {
                        already_present: false,
                        size,
                        bytes_sent: sent,
                        resumed_at: done.resumed_at,
                        remote_origin: owner,
                    });
                }
                Err(error) => {
                    // Kept (if the upload was started) so that the next call goes on from it.
                    if !cursor.upload_id.is_empty() {
                        lock(&self.cursors).insert(*digest, cursor);
                    }
                    if !error.is_network_error() {
                        return Err(self.failed(&error));
                    }
                    tracing::warn!(
                        remote = %self.name, %digest, origin = %owner, %error,
                        "remote origin unreachable; trying the next owner"
                    );
                    last = Some(error);
                }
            }
        }
        self.forget_origins();
        Err(self.failed(&last.unwrap_or(ClientError::Missing("owner on the remote's ring"))))
    }

    /// A client of the remote's origins, from the remote build-index's list (cached).
    async fn origins(&self) -> Result<OriginClusterClient, OriginError> {
        if let Some((listed, client)) = lock(&self.origins).as_ref()
            && listed.elapsed() < ORIGINS_TTL
        {
            return Ok(client.clone());
        }
        let addresses = self
            .build_index
            .list_origins()
            .await
            .map_err(|error| self.failed(&error))?;
        if addresses.is_empty() {
            return Err(OriginError::Remote {
                remote: self.name.to_string(),
                reason: "its build-index lists no origin".to_owned(),
            });
        }
        let upstream = UpstreamConfig::of(addresses);
        let client =
            OriginClusterClient::for_remote(&upstream, &self.tls, self.server_name.as_deref())
                .map_err(|error| self.failed(&error))?;
        *lock(&self.origins) = Some((Instant::now(), client.clone()));
        Ok(client)
    }

    fn forget_origins(&self) {
        lock(&self.origins).take();
    }

    /// `owners` (healthy first), the one holding a cut transfer of `digest` moved to the front.
    fn preferred_order(&self, digest: &Digest, mut owners: Vec<String>) -> Vec<String> {
        if let Some(cursor) = lock(&self.cursors).get(digest)
            && let Some(at) = owners.iter().position(|owner| *owner == cursor.origin)
        {
            let owner = owners.remove(at);
            owners.insert(0, owner);
        }
        owners
    }

    /// The cursor of a transfer of `digest` to `owner` cut before, or a fresh one.
    fn cursor(&self, digest: &Digest, owner: &str) -> UploadCursor {
        let mut cursors = lock(&self.cursors);
        match cursors.remove(digest) {
            Some(cursor) if cursor.origin == owner => cursor,
            _ => UploadCursor::new(owner),
        }
    }

    /// A failure talking to the remote, a refused TLS handshake named as such (the usual
    /// cause: the remote does not list our CA under `trusted_remotes`).
    fn failed(&self, error: &(dyn std::error::Error + 'static)) -> OriginError {
        let chain = kraken_core::error_chain(error);
        let reason = match tls_failure(error, &self.name) {
            Some(failure) => format!("{failure}: {chain}"),
            None => chain,
        };
        OriginError::Remote {
            remote: self.name.to_string(),
            reason,
        }
    }
}

/// The TLS failure behind `error`, looking inside the gRPC statuses our clients' errors carry
/// as values rather than sources.
fn tls_failure(
    error: &(dyn std::error::Error + 'static),
    remote: &str,
) -> Option<kraken_tls::HandshakeFailure> {
    let mut next = Some(error);
    while let Some(error) = next {
        let status = match error.downcast_ref::<ClientError>() {
            Some(ClientError::Status(status)) => Some(status),
            Some(ClientError::Unreachable { last, .. }) => match last.as_ref() {
                ClientError::Status(status) => Some(status),
                _ => None,
            },
            _ => match error.downcast_ref::<TagClientError>() {
                Some(
                    TagClientError::Unreachable { status, .. }
                    | TagClientError::Rejected { status, .. },
                ) => Some(status),
                _ => error.downcast_ref::<tonic::Status>(),
            },
        };
        if let Some(failure) = status
            .and_then(|status| kraken_tls::handshake_failure(status, remote))
            .or_else(|| kraken_tls::handshake_failure(error, remote))
        {
            return Some(failure);
        }
        next = error.source();
    }
    None
}

/// The blob's size on this origin; [`OriginError::Fetching`] while it comes from the backend.
async fn local_size(
    shared: &Shared,
    namespace: &Namespace,
    digest: &Digest,
) -> Result<u64, OriginError> {
    match shared.store.open_blob(digest).await {
        Ok(reader) => Ok(reader.size()),
        Err(StoreError::NotFound(_)) => {
            shared.fetcher.require(namespace, digest).await?;
            Ok(shared.store.open_blob(digest).await?.size())
        }
        Err(error) => Err(error.into()),
    }
}

/// Logs a transfer's progress every tenth of the blob read (the bytes handed to the upload).
#[derive(Debug, Clone)]
struct Progress {
    remote: Arc<str>,
    digest: Digest,
    size: u64,
}

impl Progress {
    fn new(remote: Arc<str>, digest: Digest, size: u64) -> Self {
        Self {
            remote,
            digest,
            size,
        }
    }

    fn reading<R>(self, inner: R, offset: u64) -> ProgressReader<R> {
        let step = (self.size / 10).max(1);
        ProgressReader {
            inner,
            at: offset,
            next_log: (offset / step + 1) * step,
            step,
            progress: self,
        }
    }
}

struct ProgressReader<R> {
    inner: R,
    at: u64,
    next_log: u64,
    step: u64,
    progress: Progress,
}

impl<R: AsyncRead + Unpin> AsyncRead for ProgressReader<R> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        let read = (buf.filled().len() - before) as u64;
        let this = &mut *self;
        this.at += read;
        if read > 0 && this.at >= this.next_log.min(this.progress.size) {
            let Progress {
                remote,
                digest,
                size,
            } = &this.progress;
            tracing::info!(
                remote = %remote, %digest,
                "replicating {digest} to {remote}: {} / {} MiB",
                this.at >> 20, size >> 20
            );
            this.next_log = (this.at / this.step + 1) * this.step;
        }
        polled
    }
}
