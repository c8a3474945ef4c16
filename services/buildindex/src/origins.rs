//! The origin cluster as a client sees it: the rendezvous ring over the configured origin hosts
//! and one lazily connected mTLS client per origin. Every call goes to a digest's owners in
//! ring order and falls over to the next owner when one cannot answer, so one origin down never
//! fails a request another owner can serve.
//!
//! Build-index uses it to check a tag's dependencies; the proxy uses it to upload, read and
//! prefetch blobs.

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use kraken_config::cluster::{HashRingConfig, UpstreamConfig};
use kraken_core::{Digest, Namespace};
use kraken_origin::{BlobStat, ByteStream, ClientError, OriginClient, Uploaded};
use kraken_proto::origin::v1::PrefetchRequest;
use kraken_tls::TlsMaterial;
use kraken_transport::ring::{Member, Ring};
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
    #[error("`origin.hosts` is empty: list the origins' gRPC addresses under `static`")]
    NoHosts,
    #[error(
        "`origin.hosts.dns` ({0}) is not resolved yet: list the origins' gRPC addresses under \
         `static`"
    )]
    DnsUnsupported(String),
    #[error("cannot set up a client of origin {address}")]
    Client {
        address: String,
        #[source]
        source: ClientError,
    },
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

/// The origin ring with a client per member. Cheap to clone.
#[derive(Debug, Clone)]
pub struct OriginCluster {
    ring: Ring,
    replicas: usize,
    clients: HashMap<String, OriginClient>,
}

impl OriginCluster {
    /// A cluster over `hosts` (`host:port` gRPC addresses, also the ring labels, exactly as
    /// the origins list each other) with their weights.
    pub fn new(
        tls: &TlsMaterial,
        hosts: &[String],
        hashring: &HashRingConfig,
    ) -> Result<Self, OriginClusterError> {
        if hosts.is_empty() {
            return Err(OriginClusterError::NoHosts);
        }
        let mut clients = HashMap::new();
        for host in hosts {
            let client =
                OriginClient::connect(tls, host).map_err(|source| OriginClusterError::Client {
                    address: host.clone(),
                    source,
                })?;
            clients.insert(host.clone(), client);
        }
        let ring = Ring::new(
            hosts
                .iter()
                .map(|host| Member::new(host.clone(), hashring.weight_of(host))),
        );
        Ok(Self {
            ring,
            replicas: hashring.max_replica.max(1),
            clients,
        })
    }

    /// From a component's `origin:` and `hashring:` sections.
    pub fn from_config(
        tls: &TlsMaterial,
        upstream: &UpstreamConfig,
        hashring: &HashRingConfig,
    ) -> Result<Self, OriginClusterError> {
        if let Some(dns) = &upstream.hosts.dns {
            return Err(OriginClusterError::DnsUnsupported(dns.clone()));
        }
        Self::new(tls, &upstream.hosts.static_hosts, hashring)
    }

    /// The owners of `digest`, highest rendezvous score first, with their clients. Owned
    /// (clients are cheap clones) so the futures holding them borrow nothing.
    pub fn owners(&self, digest: &Digest) -> Vec<(String, OriginClient)> {
        self.ring
            .owners(digest, self.replicas)
            .into_iter()
            .filter_map(|member| {
                self.clients
                    .get(&member.label)
                    .map(|client| (member.label.clone(), client.clone()))
            })
            .collect()
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
        for (address, client) in self.owners(digest) {
            match timed(client.stat(namespace, digest)).await {
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
        for (address, client) in self.owners(digest) {
            let deadline = tokio::time::Instant::now() + BACKEND_FETCH_PATIENCE;
            loop {
                match client
                    .download_range(namespace, digest, offset, length)
                    .await
                {
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
        for (address, client) in self.owners(digest) {
            let file =
                tokio::fs::File::open(path)
                    .await
                    .map_err(|source| OriginsError::Unavailable {
                        digest: *digest,
                        source: ClientError::Source(source),
                    })?;
            match client.upload(namespace, digest, file, Some(size)).await {
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
        for (address, client) in self.owners(digest) {
            let chunks = futures::stream::iter([Ok::<_, std::io::Error>(data.clone())]);
            match client
                .upload_stream(namespace, digest, chunks, Some(size))
                .await
            {
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
        let Some((_, client)) = self.owners(digest).into_iter().next() else {
            return Err(OriginsError::Unavailable {
                digest: *digest,
                source: ClientError::Missing("owner on the origin ring"),
            });
        };
        client
            .upload_stream(namespace, digest, chunks, size)
            .await
            .map_err(|source| OriginsError::Unavailable {
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
        let calls = self.owners(digest).into_iter().map(|(address, client)| {
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
            match result {
                Ok(Ok(response)) => {
                    accepted = true;
                    cached |= response.into_inner().cached;
                }
                Ok(Err(status)) => {
                    tracing::debug!(origin = %address, %digest, %status, "prefetch refused");
                    not_found |= status.code() == Code::NotFound;
                    last = Some(ClientError::from_status(status));
                }
                Err(_) => {
                    last = Some(ClientError::Status(tonic::Status::deadline_exceeded(
                        format!("prefetch took longer than {UNARY_TIMEOUT:?}"),
                    )));
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
    async fn owners_follow_the_ring_and_the_replica_count() {
        kraken_tls::install_crypto_provider();
        let hosts: Vec<String> = (0..4).map(|i| format!("127.0.0.1:{}", 15002 + i)).collect();
        let hashring = HashRingConfig {
            max_replica: 2,
            ..HashRingConfig::default()
        };
        let cluster = OriginCluster::new(&tls(), &hosts, &hashring).unwrap();
        let digest = Digest::of(b"blob");
        let owners: Vec<String> = cluster
            .owners(&digest)
            .into_iter()
            .map(|(a, _)| a)
            .collect();
        let ring = Ring::new(hosts.iter().map(|h| Member::new(h.clone(), 100)));
        let expected: Vec<String> = ring
            .owners(&digest, 2)
            .into_iter()
            .map(|m| m.label.clone())
            .collect();
        assert_eq!(owners, expected);
    }

    #[test]
    fn dns_and_empty_host_lists_are_refused() {
        kraken_tls::install_crypto_provider();
        let mut upstream = UpstreamConfig::default();
        assert!(matches!(
            OriginCluster::from_config(&tls(), &upstream, &HashRingConfig::default()),
            Err(OriginClusterError::NoHosts)
        ));
        upstream.hosts.dns = Some("origin.example:15002".into());
        let error =
            OriginCluster::from_config(&tls(), &upstream, &HashRingConfig::default()).unwrap_err();
        assert!(error.to_string().contains("static"), "{error}");
    }
}
