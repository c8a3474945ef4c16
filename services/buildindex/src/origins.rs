//! The origin cluster as the build-index and the proxy see it: a thin layer over
//! [`OriginClusterClient`] (owners from the cluster's own `Locations`, static or DNS members,
//! passive health checks) that adds what these two need: waiting while an owner fetches a blob
//! from its backend, small verified fetches (manifests), prefetches to every owner, and errors
//! that say whether a blob is missing or the cluster is unreachable.
//!
//! Every call goes to a digest's owners, healthy ones first, and falls over to the next when
//! one cannot answer; network errors count against an origin's passive health, so a dead
//! origin drops out of rotation for `origin.healthcheck.fail_timeout` instead of costing every
//! request a timeout.

use std::path::Path;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use kraken_config::cluster::{HashRingConfig, UpstreamConfig};
use kraken_core::{Digest, Namespace};
use kraken_origin::{
    BlobStat, ByteStream, ClientError, OriginClient, OriginClusterClient, Uploaded,
};
use kraken_proto::origin::v1::PrefetchRequest;
use kraken_tls::TlsMaterial;
use tonic::Code;

/// How long a call keeps retrying while an origin fetches a blob from its backend.
const BACKEND_FETCH_PATIENCE: Duration = Duration::from_secs(60);
/// Longest single wait between such retries, whatever the origin suggests.
const MAX_RETRY_WAIT: Duration = Duration::from_secs(2);
/// Deadline of a unary call to one origin (stat, prefetch).
const UNARY_TIMEOUT: Duration = Duration::from_secs(15);

/// Why the origin cluster cannot be set up.
#[derive(Debug, thiserror::Error)]
pub enum OriginClusterError {
    #[error(
        "`origin.hosts` lists no origin: give their gRPC addresses under `static` or a `dns` name"
    )]
    NoHosts,
    #[error("cannot set up the origin cluster client")]
    Client(#[source] ClientError),
}

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

/// The origin cluster with health-aware failover. Cheap to clone; clones share channels and
/// health.
#[derive(Debug, Clone)]
pub struct OriginCluster {
    cluster: OriginClusterClient,
}

impl OriginCluster {
    /// From a component's `origin:` (hosts, passive checks) and `hashring:` (weights and
    /// `max_replica`, used only when no origin can name a blob's owners) sections.
    pub fn from_config(
        tls: &TlsMaterial,
        upstream: &UpstreamConfig,
        hashring: &HashRingConfig,
    ) -> Result<Self, OriginClusterError> {
        if upstream.hosts.is_empty() {
            return Err(OriginClusterError::NoHosts);
        }
        let cluster = OriginClusterClient::with_ring(upstream, hashring, tls)
            .map_err(OriginClusterError::Client)?;
        Ok(Self { cluster })
    }

    /// The client underneath, for its host health.
    pub fn client(&self) -> &OriginClusterClient {
        &self.cluster
    }

    /// The owners of `digest`, healthy first, with a client each.
    async fn owners(&self, digest: &Digest) -> Result<Vec<(String, OriginClient)>, OriginsError> {
        let owners = self.cluster.owners_of(digest).await;
        self.with_clients(digest, owners)
    }

    /// The owners, then every other member as a last resort (a member that is not an owner
    /// still accepts an upload and copies it to the owners).
    async fn candidates(
        &self,
        digest: &Digest,
    ) -> Result<Vec<(String, OriginClient)>, OriginsError> {
        let candidates = self.cluster.candidates(digest).await;
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
            match self.cluster.client(&label) {
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
        for (address, client) in self.owners(digest).await? {
            let outcome = timed(client.stat(namespace, digest)).await;
            self.cluster.record(&address, &outcome);
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
        for (address, client) in self.owners(digest).await? {
            let deadline = tokio::time::Instant::now() + BACKEND_FETCH_PATIENCE;
            loop {
                let outcome = client
                    .download_range(namespace, digest, offset, length)
                    .await;
                self.cluster.record(&address, &outcome);
                match outcome {
                    Ok(stream) => return Ok(stream),
                    Err(ClientError::Retry(after))
                        if tokio::time::Instant::now() + after.min(MAX_RETRY_WAIT) < deadline =>
                    {
                        tokio::time::sleep(after.min(MAX_RETRY_WAIT)).await;
                    }
                    Err(error) => {
                        if error.code() == Some(Code::NotFound) {
                            not_found = true;
                        } else {
                            tracing::debug!(origin = %address, %digest, %error, "download failed");
                            last = Some(error);
                        }
                        break;
                    }
                }
            }
        }
        match last {
            Some(source) if !not_found => Err(OriginsError::Unavailable {
                digest: *digest,
                source,
            }),
            _ => Err(OriginsError::NotFound {
                namespace: namespace.clone(),
                digest: *digest,
            }),
        }
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
        let mut last = None;
        for (address, client) in self.candidates(digest).await? {
            let file =
                tokio::fs::File::open(path)
                    .await
                    .map_err(|source| OriginsError::Unavailable {
                        digest: *digest,
                        source: ClientError::Source(source),
                    })?;
            let outcome = client.upload(namespace, digest, file, Some(size)).await;
            self.cluster.record(&address, &outcome);
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

    /// Uploads a small blob held in memory (a manifest), falling over between owners like
    /// [`upload_file`](Self::upload_file).
    pub async fn upload_bytes(
        &self,
        namespace: &Namespace,
        digest: &Digest,
        data: Bytes,
    ) -> Result<Uploaded, OriginsError> {
        let mut last = None;
        let size = data.len() as u64;
        for (address, client) in self.candidates(digest).await? {
            let chunks = futures::stream::iter([Ok::<_, std::io::Error>(data.clone())]);
            let outcome = client
                .upload_stream(namespace, digest, chunks, Some(size))
                .await;
            self.cluster.record(&address, &outcome);
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
        let Some((address, client)) = self.candidates(digest).await?.into_iter().next() else {
            return Err(OriginsError::Unavailable {
                digest: *digest,
                source: ClientError::Missing("owner on the origin ring"),
            });
        };
        let outcome = client.upload_stream(namespace, digest, chunks, size).await;
        self.cluster.record(&address, &outcome);
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
            .owners(digest)
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
            self.cluster.record(&address, &outcome);
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
        let error =
            OriginCluster::from_config(&tls(), &upstream, &HashRingConfig::default()).unwrap_err();
        assert!(matches!(error, OriginClusterError::NoHosts), "{error}");
        assert!(error.to_string().contains("origin.hosts"), "{error}");
        upstream.hosts.dns = Some("origin.invalid:15002".into());
        OriginCluster::from_config(&tls(), &upstream, &HashRingConfig::default()).unwrap();
    }
}
