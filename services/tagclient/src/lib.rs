//! The client of the build-index's `TagService`, shared by the agent (pulls by tag, preloads),
//! the proxy (pushes and reads tags), the `kraken` CLI and the tests.
//!
//! Any build-index can answer for any tag, so a call goes to the configured hosts in order,
//! healthy ones first, and falls over to the next host when one cannot be reached. Network
//! errors feed passive health checks (`build_index.healthcheck`: `fails` within `fail_timeout`
//! take a host out of rotation for `fail_timeout`); hosts come from a static list or a DNS
//! name re-resolved in the background ([`HostPool`]).
//!
//! Tags are mutable, so nothing here caches: a re-pointed tag is seen by the next call (Kraken's
//! agent cached tags and served stale digests after a re-push).

use std::time::Duration;

use kraken_config::cluster::UpstreamConfig;
use kraken_config::remote::RemoteTlsSection;
use kraken_config::tls::TlsSection;
use kraken_core::{Digest, parse_digest};
use kraken_oci::TaggedName;
use kraken_proto::buildindex::v1::replication_service_client::ReplicationServiceClient;
use kraken_proto::buildindex::v1::tag_service_client::TagServiceClient;
use kraken_proto::buildindex::v1::{
    GetRequest, HasRequest, ListOriginsRequest, ListRepositoryRequest, ListRequest, PutRequest,
    ReplicateRequest,
};
pub use kraken_proto::wire::{DEFAULT_TAG_PAGE_SIZE, MAX_TAG_PAGE_SIZE};
use kraken_tls::{Role, TlsMaterial};
use kraken_transport::cluster::{ClusterError, HostPool, HostStatus, PoolOptions};
use kraken_transport::health::is_network_error;
use kraken_transport::observe::ObservedChannel;
use kraken_transport::remote::{RemoteTlsError, load_remote_material};
use tonic::{Code, Status};

/// Deadline of one call to one host. A `Put` checks the tag's dependencies on the origins, so
/// it gets longer.
const READ_TIMEOUT: Duration = Duration::from_secs(15);
const PUT_TIMEOUT: Duration = Duration::from_secs(120);
/// How long the first call waits for a DNS host list to resolve.
const READY_PATIENCE: Duration = Duration::from_secs(10);

/// Why a tag call failed.
#[derive(Debug, thiserror::Error)]
pub enum TagClientError {
    #[error("no build-index is configured (`build_index.hosts` is empty): tags cannot be resolved")]
    NoHosts,
    #[error("cannot reach the build-index hosts")]
    Cluster(#[source] ClusterError),
    /// `resolve` of a tag the build-index does not know.
    #[error("tag `{tag}` is not known to the build-index")]
    NotFound { tag: String },
    /// A build-index answered with an error (`FAILED_PRECONDITION` names a missing
    /// dependency, `INVALID_ARGUMENT` a malformed name).
    #[error("build-index {host} answered {:?}: {}", .status.code(), .status.message())]
    Rejected { host: String, status: Status },
    /// No host answered; the last failure is given.
    #[error("no build-index answered ({tried} tried); the last one, {host}, failed: {}", .status.message())]
    Unreachable {
        tried: usize,
        host: String,
        status: Status,
    },
    #[error("build-index {host} sent an invalid digest `{digest}`")]
    BadDigest { host: String, digest: String },
}

impl TagClientError {
    /// The gRPC code of the build-index's answer (`UNAVAILABLE` when none answered).
    pub fn code(&self) -> Option<Code> {
        match self {
            Self::Rejected { status, .. } => Some(status.code()),
            Self::NotFound { .. } => Some(Code::NotFound),
            Self::Unreachable { .. } | Self::Cluster(_) => Some(Code::Unavailable),
            Self::NoHosts | Self::BadDigest { .. } => None,
        }
    }

    /// Whether no build-index could be reached (worth retrying later), as opposed to an answer.
    pub fn is_unavailable(&self) -> bool {
        matches!(self, Self::Unreachable { .. } | Self::Cluster(_))
    }
}

/// Why the client of a remote cluster cannot be set up from its configuration; the message
/// is relative to `remotes.<name>`.
#[derive(Debug, thiserror::Error)]
pub enum RemoteSetupError {
    #[error("{}", kraken_core::error_chain(.0))]
    Tls(#[source] RemoteTlsError),
    #[error("build_index: {0}")]
    BuildIndex(#[source] TagClientError),
}

/// One page of a listing; `next_page_token` is `None` on the last page.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TagPage {
    pub tags: Vec<String>,
    pub next_page_token: Option<String>,
}

impl TagPage {
    /// From the wire, where an empty token marks the last page.
    fn new(tags: Vec<String>, next_page_token: String) -> Self {
        Self {
            tags,
            next_page_token: Some(next_page_token).filter(|t| !t.is_empty()),
        }
    }
}

/// What a versioned `Put` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PutOutcome {
    /// The tag points at the digest now, at this version.
    Stored { version: u64 },
    /// The build-index holds a newer version of the tag (this one): nothing changed.
    Superseded { version: u64 },
}

/// What a tag points at, and the version of that write (ms since the Unix epoch of the
/// original push; 0 for a tag written before versions).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TagVersion {
    pub digest: Digest,
    pub version: u64,
}

/// A client of the build-index hosts. Cheap to clone; clones share channels and health.
#[derive(Debug, Clone)]
pub struct TagClient {
    pool: HostPool,
}

impl TagClient {
    /// Lazily connecting mTLS channels to the hosts of `upstream` (static or DNS), with its
    /// passive checks; [`TagClientError::NoHosts`] when it lists none.
    pub fn new(upstream: &UpstreamConfig, tls: &TlsMaterial) -> Result<Self, TagClientError> {
        Self::with_server_name(upstream, tls, None)
    }

    /// A client of another cluster's build-index (`remotes.<name>.build_index`), dialed with
    /// `tls` (material for that remote: its CA, our certificate), each server's certificate
    /// checked against `server_name` when given (`remotes.<name>.tls.server_name`) instead of
    /// the host dialed.
    pub fn for_remote(
        upstream: &UpstreamConfig,
        tls: &TlsMaterial,
        server_name: Option<&str>,
    ) -> Result<Self, TagClientError> {
        Self::with_server_name(upstream, tls, server_name.map(str::to_owned))
    }

    /// The client of the remote cluster configured as `remotes.<name>` (its `build_index`
    /// hosts and `tls` section, `own` being this component's `tls:`), and the TLS material
    /// it dials with, for the caller's other clients of that cluster.
    pub fn for_remote_config(
        build_index: &UpstreamConfig,
        tls: &RemoteTlsSection,
        own: &TlsSection,
    ) -> Result<(Self, TlsMaterial), RemoteSetupError> {
        let material = load_remote_material(tls, own).map_err(RemoteSetupError::Tls)?;
        let client = Self::for_remote(build_index, &material, tls.server_name.as_deref())
            .map_err(RemoteSetupError::BuildIndex)?;
        Ok((client, material))
    }

    fn with_server_name(
        upstream: &UpstreamConfig,
        tls: &TlsMaterial,
        server_name: Option<String>,
    ) -> Result<Self, TagClientError> {
        if upstream.hosts.is_empty() {
            return Err(TagClientError::NoHosts);
        }
        let options = PoolOptions {
            server_name,
            ..PoolOptions::upstream(Role::BuildIndex, &upstream.healthcheck)
        };
        let pool = HostPool::new(&upstream.hosts, tls, options).map_err(TagClientError::Cluster)?;
        Ok(Self { pool })
    }

    /// Every build-index host with its health as this client sees it.
    pub fn hosts(&self) -> Vec<HostStatus> {
        self.pool.statuses()
    }

    /// Points `name` at `digest`. `FAILED_PRECONDITION` when a dependency is missing.
    pub async fn put(
        &self,
        name: &TaggedName,
        digest: &Digest,
        replicate: bool,
    ) -> Result<(), TagClientError> {
        // The build-index assigns the version of a new push.
        self.put_versioned(name, digest, replicate, 0)
            .await
            .map(drop)
    }

    /// Points `name` at `digest` as of `version` (ms since the Unix epoch of the original
    /// push; 0: the build-index assigns one), unless it holds a newer version: then
    /// [`PutOutcome::Superseded`] and nothing changes, so a replica never moves back.
    pub async fn put_versioned(
        &self,
        name: &TaggedName,
        digest: &Digest,
        replicate: bool,
        version: u64,
    ) -> Result<PutOutcome, TagClientError> {
        let request = PutRequest {
            tag: name.to_string(),
            digest: digest.to_string(),
            replicate,
            version,
        };
        let response = self
            .call(PUT_TIMEOUT, |mut client| {
                let request = request.clone();
                async move { client.put(request).await }
            })
            .await?;
        Ok(if response.superseded {
            PutOutcome::Superseded {
                version: response.version,
            }
        } else {
            PutOutcome::Stored {
                version: response.version,
            }
        })
    }

    /// The digest `name` points at now, `None` if the tag is unknown.
    pub async fn get(&self, name: &TaggedName) -> Result<Option<Digest>, TagClientError> {
        match self.resolve(name).await {
            Ok(digest) => Ok(Some(digest)),
            Err(TagClientError::NotFound { .. }) => Ok(None),
            Err(error) => Err(error),
        }
    }

    /// The digest `name` points at now; [`TagClientError::NotFound`] if the tag is unknown.
    #[tracing::instrument(skip(self), fields(tag = %name))]
    pub async fn resolve(&self, name: &TaggedName) -> Result<Digest, TagClientError> {
        let request = GetRequest {
            tag: name.to_string(),
        };
        let (host, response) = self
            .call_on(READ_TIMEOUT, |channel| {
                let request = request.clone();
                async move { TagServiceClient::new(channel).get(request).await }
            })
            .await
            .map_err(|error| match error {
                TagClientError::Rejected { status, .. } if status.code() == Code::NotFound => {
                    TagClientError::NotFound {
                        tag: name.to_string(),
                    }
                }
                other => other,
            })?;
        parse_digest("digest", &response.digest).map_err(|_| TagClientError::BadDigest {
            host,
            digest: response.digest,
        })
    }

    pub async fn has(&self, name: &TaggedName) -> Result<bool, TagClientError> {
        self.has_request(name)
            .await
            .map(|(_, response)| response.exists)
    }

    /// The digest `name` points at, `None` if the tag is unknown: what a replicating cluster
    /// asks a remote (which answers `Has`, and not `Get`, to a foreign build-index).
    pub async fn has_digest(&self, name: &TaggedName) -> Result<Option<Digest>, TagClientError> {
        Ok(self.has_version(name).await?.map(|tag| tag.digest))
    }

    /// What `name` points at and since which version, `None` if the tag is unknown.
    pub async fn has_version(
        &self,
        name: &TaggedName,
    ) -> Result<Option<TagVersion>, TagClientError> {
        let (host, response) = self.has_request(name).await?;
        if !response.exists {
            return Ok(None);
        }
        let digest =
            parse_digest("digest", &response.digest).map_err(|_| TagClientError::BadDigest {
                host,
                digest: response.digest,
            })?;
        Ok(Some(TagVersion {
            digest,
            version: response.version,
        }))
    }

    async fn has_request(
        &self,
        name: &TaggedName,
    ) -> Result<(String, kraken_proto::buildindex::v1::HasResponse), TagClientError> {
        let request = HasRequest {
            tag: name.to_string(),
        };
        self.call_on(READ_TIMEOUT, |channel| {
            let request = request.clone();
            async move { TagServiceClient::new(channel).has(request).await }
        })
        .await
    }

    /// The gRPC addresses of the cluster's origins (`ReplicationService/ListOrigins`),
    /// healthy ones first: where another cluster's origins send replicated blobs.
    pub async fn list_origins(&self) -> Result<Vec<String>, TagClientError> {
        self.call_on(READ_TIMEOUT, |channel| async move {
            ReplicationServiceClient::new(channel)
                .list_origins(ListOriginsRequest {})
                .await
        })
        .await
        .map(|(_, response)| response.origins)
    }

    /// Full `repo:tag` names starting with `prefix`, a page at a time.
    pub async fn list(
        &self,
        prefix: &str,
        page_size: u32,
        page_token: Option<&str>,
    ) -> Result<TagPage, TagClientError> {
        let request = ListRequest {
            prefix: prefix.to_owned(),
            page_size,
            page_token: page_token.unwrap_or_default().to_owned(),
        };
        let response = self
            .call(READ_TIMEOUT, |mut client| {
                let request = request.clone();
                async move { client.list(request).await }
            })
            .await?;
        Ok(TagPage::new(response.tags, response.next_page_token))
    }

    /// Tag names (without the repository) of `repository`, a page at a time. A page token is
    /// the last tag of the previous page, so Docker's `last` parameter can be passed as is.
    pub async fn list_repository(
        &self,
        repository: &str,
        page_size: u32,
        page_token: Option<&str>,
    ) -> Result<TagPage, TagClientError> {
        let request = ListRepositoryRequest {
            repository: repository.to_owned(),
            page_size,
            page_token: page_token.unwrap_or_default().to_owned(),
        };
        let response = self
            .call(READ_TIMEOUT, |mut client| {
                let request = request.clone();
                async move { client.list_repository(request).await }
            })
            .await?;
        Ok(TagPage::new(response.tags, response.next_page_token))
    }

    /// (Re)queues replication of a tag; returns the remotes it was queued for.
    pub async fn replicate(&self, name: &TaggedName) -> Result<Vec<String>, TagClientError> {
        let request = ReplicateRequest {
            tag: name.to_string(),
        };
        self.call(READ_TIMEOUT, |mut client| {
            let request = request.clone();
            async move { client.replicate(request).await }
        })
        .await
        .map(|response| response.remotes)
    }

    async fn call<T, F, Fut>(&self, timeout: Duration, call: F) -> Result<T, TagClientError>
    where
        F: Fn(TagServiceClient<ObservedChannel>) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, Status>>,
    {
        self.call_on(timeout, |channel| call(TagServiceClient::new(channel)))
            .await
            .map(|(_, answer)| answer)
    }

    /// Runs `call` against the hosts' channels, healthy ones first, until one answers;
    /// returns the host that did. An error status that is not a network error is final: the
    /// host is up and said no.
    async fn call_on<T, F, Fut>(
        &self,
        timeout: Duration,
        call: F,
    ) -> Result<(String, T), TagClientError>
    where
        F: Fn(ObservedChannel) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, Status>>,
    {
        let members = self
            .pool
            .ready(READY_PATIENCE)
            .await
            .map_err(TagClientError::Cluster)?;
        let hosts = self
            .pool
            .order_hosts(members.labels().map(str::to_owned).collect::<Vec<_>>());
        let tried = hosts.len();
        let mut last = None;
        for host in hosts {
            let channel = match self.pool.channel(&host) {
                Ok(channel) => channel,
                Err(error) => {
                    tracing::warn!(build_index = %host, %error, "no channel; next host");
                    last = Some((host, Status::unavailable(error.to_string())));
                    continue;
                }
            };
            let status = match tokio::time::timeout(timeout, call(channel)).await {
                Ok(Ok(response)) => {
                    self.pool.record_success(&host);
                    return Ok((host, response.into_inner()));
                }
                Ok(Err(status)) => status,
                Err(_) => Status::deadline_exceeded(format!("no answer within {timeout:?}")),
            };
            if !is_network_error(&status) {
                self.pool.record_success(&host);
                return Err(TagClientError::Rejected { host, status });
            }
            self.pool.record_network_error(&host);
            tracing::debug!(build_index = %host, %status, "build-index unreachable; next host");
            last = Some((host, status));
        }
        let (host, status) = last.unwrap_or_else(|| {
            (
                String::new(),
                Status::unavailable("no build-index host is known"),
            )
        });
        Err(TagClientError::Unreachable {
            tried,
            host,
            status,
        })
    }
}
