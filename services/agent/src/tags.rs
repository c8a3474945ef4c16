//! Resolving `repository:tag` to a manifest digest through the build-index (`TagService`).
//!
//! Tags are mutable, so nothing here caches: a re-pointed tag is seen by the next pull (Kraken's
//! agent cached tags and served stale digests after a re-push). The hosts of `build_index:` are
//! tried in order, healthy ones first; network errors count against a host's passive health like
//! the tracker client's.

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use kraken_config::cluster::UpstreamConfig;
use kraken_core::{Digest, Namespace};
use kraken_proto::buildindex::v1 as pb;
use kraken_proto::buildindex::v1::tag_service_client::TagServiceClient;
use kraken_tls::TlsMaterial;
use kraken_transport::grpc;
use tokio::time::Instant;
use tonic::transport::Channel;
use tonic::{Code, Status};

use crate::health::PassiveHealth;

/// Why a tag could not be resolved or listed.
#[derive(Debug, thiserror::Error)]
pub enum TagError {
    #[error("no build-index is configured (`build_index.hosts` is empty): tags cannot be resolved")]
    NoHosts,
    #[error("tag `{tag}` is not known to the build-index")]
    NotFound { tag: String },
    #[error("cannot set up a channel to build-index {host}")]
    Channel {
        host: String,
        #[source]
        source: Arc<kraken_transport::grpc::GrpcError>,
    },
    #[error("no build-index answered: {last}")]
    Unreachable { last: String },
    #[error("build-index {host} refused the request: {}", source.message())]
    Rejected {
        host: String,
        #[source]
        source: Status,
    },
    #[error("build-index {host} answered with an invalid digest `{digest}`")]
    BadDigest { host: String, digest: String },
}

/// A page of tag names.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TagPage {
    /// Tag names without the repository (`latest`, not `library/app:latest`).
    pub tags: Vec<String>,
    /// Where the next page starts; empty on the last page.
    pub next_page_token: String,
}

/// A client of every build-index host, cheap to clone.
#[derive(Clone)]
pub struct TagClient {
    inner: Arc<Inner>,
}

struct Inner {
    hosts: Vec<String>,
    clients: Vec<TagServiceClient<Channel>>,
    health: Mutex<PassiveHealth>,
}

impl std::fmt::Debug for TagClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TagClient")
            .field("hosts", &self.inner.hosts)
            .finish_non_exhaustive()
    }
}

impl TagClient {
    /// Lazy channels to every host of `upstream`; [`TagError::NoHosts`] when it lists none.
    pub fn new(upstream: &UpstreamConfig, tls: &TlsMaterial) -> Result<Self, TagError> {
        let mut hosts = upstream.hosts.static_hosts.clone();
        hosts.extend(upstream.hosts.dns.clone());
        if hosts.is_empty() {
            return Err(TagError::NoHosts);
        }
        let clients = hosts
            .iter()
            .map(|host| {
                grpc::channel(tls, host, None)
                    .map(TagServiceClient::new)
                    .map_err(|source| TagError::Channel {
                        host: host.clone(),
                        source: Arc::new(source),
                    })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let health = PassiveHealth::new(
            hosts.len(),
            upstream.healthcheck.fails,
            upstream.healthcheck.fail_timeout,
        );
        Ok(Self {
            inner: Arc::new(Inner {
                hosts,
                clients,
                health: Mutex::new(health),
            }),
        })
    }

    /// The digest `repository:tag` points at now.
    #[tracing::instrument(skip(self))]
    pub async fn resolve(&self, repository: &Namespace, tag: &str) -> Result<Digest, TagError> {
        let full = format!("{repository}:{tag}");
        let request = pb::GetRequest { tag: full.clone() };
        let (host, reply) = self
            .call(|mut client| {
                let request = request.clone();
                async move { client.get(request).await }
            })
            .await
            .map_err(|error| match error {
                TagError::Rejected { source, .. } if source.code() == Code::NotFound => {
                    TagError::NotFound { tag: full.clone() }
                }
                other => other,
            })?;
        reply.digest.parse().map_err(|_| TagError::BadDigest {
            host,
            digest: reply.digest,
        })
    }

    /// One page of the tags of `repository`, sorted, starting after `page_token`.
    pub async fn list(
        &self,
        repository: &Namespace,
        page_size: u32,
        page_token: &str,
    ) -> Result<TagPage, TagError> {
        let request = pb::ListRepositoryRequest {
            repository: repository.to_string(),
            page_size,
            page_token: page_token.to_owned(),
        };
        let (_, reply) = self
            .call(|mut client| {
                let request = request.clone();
                async move { client.list_repository(request).await }
            })
            .await?;
        let prefix = format!("{repository}:");
        let tags = reply
            .tags
            .into_iter()
            // Accept both shapes: bare tag names and `repository:tag`.
            .map(|tag| tag.strip_prefix(&prefix).map(str::to_owned).unwrap_or(tag))
            .collect();
        Ok(TagPage {
            tags,
            next_page_token: reply.next_page_token,
        })
    }

    /// Runs `request` against the hosts, healthy first, until one answers. An answer that is
    /// an error status other than `UNAVAILABLE` is final: the host is up and said no.
    async fn call<T, F, Fut>(&self, request: F) -> Result<(String, T), TagError>
    where
        F: Fn(TagServiceClient<Channel>) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, Status>>,
    {
        let order = self
            .health()
            .order(0..self.inner.hosts.len(), Instant::now());
        let mut last = String::from("no host tried");
        for index in order {
            let (Some(host), Some(client)) =
                (self.inner.hosts.get(index), self.inner.clients.get(index))
            else {
                continue;
            };
            match request(client.clone()).await {
                Ok(reply) => {
                    self.health().succeeded(index);
                    return Ok((host.clone(), reply.into_inner()));
                }
                Err(status) if status.code() == Code::Unavailable => {
                    if self.health().failed(index, Instant::now()) {
                        tracing::warn!(%host, "build-index marked unhealthy");
                    }
                    last = format!("{host}: {}", status.message());
                }
                Err(status) => {
                    self.health().succeeded(index);
                    return Err(TagError::Rejected {
                        host: host.clone(),
                        source: status,
                    });
                }
            }
        }
        Err(TagError::Unreachable { last })
    }

    fn health(&self) -> MutexGuard<'_, PassiveHealth> {
        // The state is a few counters: a panic elsewhere cannot leave it unusable.
        self.inner
            .health
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}
