//! What the tracker needs from the origin cluster: which origins own a blob (they are handed
//! out as seeders) and the blob's metainfo.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use kraken_config::TrackerConfig;
use kraken_core::{Digest, MetaInfo, Namespace, PeerInfo, error_chain};
use kraken_originclient::{ClientError, OriginClient, OriginClusterClient};
use kraken_tls::TlsMaterial;
use kraken_transport::cluster::ClusterError;

use crate::cache::CoalescingCache;

/// How long a `Locations` or `GetPeerContext` call may take. Both are answered from memory,
/// so anything slower means the origin is in trouble and the next one should be asked.
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(3);
/// How long a `GetMetaInfo` call may take: the origin may hash a blob it has not described
/// yet (it answers UNAVAILABLE rather than block while it fetches from a backend).
const METAINFO_TIMEOUT: Duration = Duration::from_secs(10);
/// Blobs whose owners are remembered at once. An entry is a few addresses.
const LOCATIONS_CACHE_CAPACITY: usize = 65_536;
/// Origins whose identity is remembered at once; clusters have a handful.
const PEER_CONTEXT_CACHE_CAPACITY: usize = 1_024;

/// Why the origins did not give an answer.
///
/// `Clone`, because one origin call answers every tracker request waiting for it.
#[derive(Debug, Clone, thiserror::Error)]
pub enum OriginError {
    #[error("blob {digest} not found (origin {origin}: {message})")]
    NotFound {
        digest: Digest,
        origin: String,
        message: String,
    },
    #[error("origin {origin} is fetching blob {digest} from its storage backend")]
    Fetching {
        digest: Digest,
        origin: String,
        /// How long the origin asked callers to wait.
        retry_after: Duration,
    },
    #[error("origin {origin} failed: {}", describe_status(status))]
    Call {
        origin: String,
        status: tonic::Status,
    },
    #[error("origin {origin} sent an invalid {what}: {reason}")]
    InvalidResponse {
        origin: String,
        what: &'static str,
        reason: String,
    },
    #[error("invalid origin address `{origin}`: {reason}")]
    Address { origin: String, reason: String },
    #[error("no origin is configured: set origin.hosts")]
    NotConfigured,
    #[error("no origin owns blob {digest}")]
    NoOwners { digest: Digest },
    #[error("no origin answered (tried {tried})")]
    Unreachable {
        tried: String,
        #[source]
        last: Box<OriginError>,
    },
}

/// The origin cluster as the tracker sees it. The real one is [`GrpcOriginDirectory`]; tests
/// put an in-process fake behind the same trait.
#[async_trait::async_trait]
pub trait OriginDirectory: Send + Sync + fmt::Debug {
    /// The origins owning `digest`, as seeders to hand out (`origin` set), in ring order.
    async fn owners(&self, digest: &Digest) -> Result<Vec<PeerInfo>, OriginError>;

    /// The metainfo of `digest`, from one of its owners. [`OriginError::NotFound`] when no
    /// owner and no backend has the blob; [`OriginError::Fetching`] while an owner fetches it
    /// from its backend.
    async fn metainfo(
        &self,
        namespace: &Namespace,
        digest: &Digest,
    ) -> Result<MetaInfo, OriginError>;
}

/// Asks the origins over mutual-TLS gRPC (`kraken.origin.v1.BlobService`).
///
/// The origins come from the shared cluster membership (static list, or a DNS name
/// re-resolved every ring refresh) with passive health checks. Owners come from `Locations`,
/// asked of the origins in ring order for the digest (origins that recently failed with
/// network errors last) and cached for `origin_locations_cache_ttl`; each owner's seeder
/// identity from its `GetPeerContext`, cached for `origin_peer_context_cache_ttl`. Concurrent
/// misses for the same key share one call.
#[derive(Clone)]
pub struct GrpcOriginDirectory {
    inner: Arc<Directory>,
}

struct Directory {
    origins: OriginClusterClient,
    locations: CoalescingCache<Digest, Arc<[String]>, OriginError>,
    peer_contexts: CoalescingCache<String, PeerInfo, OriginError>,
}

impl fmt::Debug for GrpcOriginDirectory {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GrpcOriginDirectory")
            .field("origins", &self.inner.origins)
            .finish_non_exhaustive()
    }
}

impl GrpcOriginDirectory {
    /// A directory of the origins in `config.origin`, reached with `tls`. A DNS host list
    /// needs a tokio runtime (it is re-resolved in the background).
    pub fn from_config(config: &TrackerConfig, tls: TlsMaterial) -> Result<Self, OriginError> {
        let origins =
            OriginClusterClient::new(&config.origin, &tls).map_err(|error| match error {
                ClientError::Cluster(ClusterError::NoHosts) => OriginError::NotConfigured,
                other => OriginError::Address {
                    origin: config
                        .origin
                        .hosts
                        .dns
                        .clone()
                        .unwrap_or_else(|| config.origin.hosts.static_hosts.join(",")),
                    reason: error_chain(&other),
                },
            })?;
        Ok(Self {
            inner: Arc::new(Directory {
                origins,
                locations: CoalescingCache::new(
                    config.origin_locations_cache_ttl,
                    LOCATIONS_CACHE_CAPACITY,
                ),
                peer_contexts: CoalescingCache::new(
                    config.origin_peer_context_cache_ttl,
                    PEER_CONTEXT_CACHE_CAPACITY,
                ),
            }),
        })
    }
}

#[async_trait::async_trait]
impl OriginDirectory for GrpcOriginDirectory {
    async fn owners(&self, digest: &Digest) -> Result<Vec<PeerInfo>, OriginError> {
        let addresses = self.inner.owner_addresses(*digest).await?;
        let lookups = addresses
            .iter()
            .map(|address| Arc::clone(&self.inner).peer_context(address.clone()));
        let mut owners = Vec::with_capacity(addresses.len());
        let mut last_error = None;
        for result in futures::future::join_all(lookups).await {
            match result {
                Ok(peer) => owners.push(peer),
                Err(error) => {
                    tracing::warn!(error = %error_chain(&error), "origin left out of the hand-out");
                    last_error = Some(error);
                }
            }
        }
        match last_error {
            Some(error) if owners.is_empty() => Err(error),
            _ => Ok(owners),
        }
    }

    async fn metainfo(
        &self,
        namespace: &Namespace,
        digest: &Digest,
    ) -> Result<MetaInfo, OriginError> {
        let inner = &self.inner;
        let owners = inner.owner_addresses(*digest).await?;
        if owners.is_empty() {
            return Err(OriginError::NoOwners { digest: *digest });
        }
        let mut not_found = None;
        let mut last_failure = None;
        for origin in inner.origins.healthy_first(owners.iter().cloned()) {
            let client = match inner.client(&origin) {
                Ok(client) => client,
                Err(error) => {
                    last_failure = Some(error);
                    continue;
                }
            };
            let reply = call(METAINFO_TIMEOUT, client.get_metainfo(namespace, digest)).await;
            inner.origins.record(&origin, &reply);
            match reply {
                Ok(metainfo) if metainfo.digest() == digest => return Ok(metainfo),
                Ok(metainfo) => {
                    last_failure = Some(OriginError::InvalidResponse {
                        origin,
                        what: "metainfo",
                        reason: format!("it describes {} instead of {digest}", metainfo.digest()),
                    });
                }
                Err(ClientError::Status(status)) if status.code() == tonic::Code::NotFound => {
                    // Keep asking: another owner may hold a replica that was never written
                    // back, e.g. after this one lost its disk.
                    not_found = Some(OriginError::NotFound {
                        digest: *digest,
                        origin,
                        message: status.message().to_owned(),
                    });
                }
                // The owner is fetching the blob from its backend: it exists, and asking the
                // others would only start more backend fetches.
                Err(ClientError::Retry(retry_after)) => {
                    return Err(OriginError::Fetching {
                        digest: *digest,
                        origin,
                        retry_after,
                    });
                }
                Err(error) => last_failure = Some(failure(origin, error)),
            }
        }
        if let Some(not_found) = not_found {
            return Err(not_found);
        }
        Err(OriginError::Unreachable {
            tried: owners.join(", "),
            last: Box::new(last_failure.unwrap_or(OriginError::NoOwners { digest: *digest })),
        })
    }
}

impl Directory {
    async fn owner_addresses(
        self: &Arc<Self>,
        digest: Digest,
    ) -> Result<Arc<[String]>, OriginError> {
        let this = Arc::clone(self);
        let (result, lookup) = self
            .locations
            .get_or_fetch(digest, move || this.fetch_locations(digest))
            .await;
        metrics::counter!(
            crate::metrics::ORIGIN_CACHE_REQUESTS,
            "cache" => "locations",
            "result" => lookup.label()
        )
        .increment(1);
        result
    }

    async fn fetch_locations(
        self: Arc<Self>,
        digest: Digest,
    ) -> Result<Arc<[String]>, OriginError> {
        // Asked of the digest's owners first: they answer from the same ring as everyone else.
        let reply = self
            .origins
            .locations(&digest)
            .await
            .map_err(|error| match error {
                ClientError::Cluster(error) => OriginError::Address {
                    origin: "origin".to_owned(),
                    reason: error_chain(&error),
                },
                ClientError::Unreachable { tried, host, last } => OriginError::Unreachable {
                    tried: format!("{tried} origins, the last {host}"),
                    last: Box::new(failure(host, *last)),
                },
                other => failure(String::new(), other),
            })?;
        // Unhealthy owners are left out unless all are, in which case trying them is better
        // than handing out no origin at all.
        let healthy: Vec<String> = reply
            .iter()
            .filter(|o| o.healthy)
            .map(|o| o.address.clone())
            .collect();
        let mut owners = if healthy.is_empty() {
            reply.into_iter().map(|o| o.address).collect()
        } else {
            healthy
        };
        let mut seen = std::collections::HashSet::new();
        owners.retain(|o| !o.is_empty() && seen.insert(o.clone()));
        Ok(owners.into())
    }

    async fn peer_context(self: Arc<Self>, origin: String) -> Result<PeerInfo, OriginError> {
        let this = Arc::clone(&self);
        let key = origin.clone();
        let (result, lookup) = self
            .peer_contexts
            .get_or_fetch(key, move || this.fetch_peer_context(origin))
            .await;
        metrics::counter!(
            crate::metrics::ORIGIN_CACHE_REQUESTS,
            "cache" => "peer_context",
            "result" => lookup.label()
        )
        .increment(1);
        result
    }

    async fn fetch_peer_context(self: Arc<Self>, origin: String) -> Result<PeerInfo, OriginError> {
        let client = self.client(&origin)?;
        let reply = call(LOOKUP_TIMEOUT, client.peer_context()).await;
        self.origins.record(&origin, &reply);
        let (peer, _name) = reply.map_err(|error| failure(origin, error))?;
        // Whatever it reports, an owner is handed out as an origin: that is what it is on the
        // ring, and agents treat origins as seeders of last resort.
        Ok(PeerInfo {
            origin: true,
            ..peer
        })
    }

    /// A client of `origin` over the cluster client's channel (one per origin, for the life of
    /// the tracker: channels connect lazily and reconnect on their own).
    fn client(&self, origin: &str) -> Result<OriginClient, OriginError> {
        self.origins
            .client(origin)
            .map_err(|e| OriginError::Address {
                origin: origin.to_owned(),
                reason: error_chain(&e),
            })
    }
}

/// A failed call to `origin` as the tracker reports it.
fn failure(origin: String, error: ClientError) -> OriginError {
    match error {
        ClientError::Status(status) => OriginError::Call { origin, status },
        ClientError::Response { what, source } => OriginError::InvalidResponse {
            origin,
            what,
            reason: source.to_string(),
        },
        ClientError::Missing(field) => OriginError::InvalidResponse {
            origin,
            what: field,
            reason: format!("field `{field}` is missing"),
        },
        other => OriginError::Call {
            origin,
            status: tonic::Status::unavailable(error_chain(&other)),
        },
    }
}

/// A unary call with a deadline enforced on our side too (tonic only forwards `grpc-timeout`).
async fn call<T>(
    timeout: Duration,
    reply: impl Future<Output = Result<T, ClientError>>,
) -> Result<T, ClientError> {
    match tokio::time::timeout(timeout, reply).await {
        Ok(reply) => reply,
        Err(_) => Err(ClientError::Status(tonic::Status::deadline_exceeded(
            format!("no answer within {timeout:?}"),
        ))),
    }
}

/// A status as `Code: message`, plus the innermost cause when there is one (for a failed
/// connection, e.g. "Connection refused"), without tonic's debug dump of the source chain.
fn describe_status(status: &tonic::Status) -> String {
    let mut text = format!("{:?}: {}", status.code(), status.message());
    let mut root = std::error::Error::source(status);
    while let Some(next) = root.and_then(std::error::Error::source) {
        root = Some(next);
    }
    if let Some(root) = root {
        let root = root.to_string();
        if !text.contains(&root) {
            text.push_str(": ");
            text.push_str(&root);
        }
    }
    text
}
