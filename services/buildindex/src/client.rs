//! A typed client of `TagService` over one or more build-index hosts, for the proxy, the agent,
//! tools and tests. A call goes to the first host and falls over to the next when a host cannot
//! answer (`UNAVAILABLE`, a broken connection, a deadline): any build-index can serve any tag.

use std::time::Duration;

use kraken_core::{Digest, parse_digest};
use kraken_oci::TaggedName;
use kraken_proto::buildindex::v1::tag_service_client::TagServiceClient;
use kraken_proto::buildindex::v1::{
    GetRequest, HasRequest, ListRepositoryRequest, ListRequest, PutRequest, ReplicateRequest,
};
use kraken_tls::TlsMaterial;
use kraken_transport::grpc::{GrpcError, channel};
use tonic::transport::Channel;
use tonic::{Code, Status};

/// Deadline of one call to one host. A `Put` checks dependencies on the origins, so it gets
/// longer.
const READ_TIMEOUT: Duration = Duration::from_secs(15);
const PUT_TIMEOUT: Duration = Duration::from_secs(120);

/// Why a tag call failed.
#[derive(Debug, thiserror::Error)]
pub enum TagClientError {
    #[error("no build-index hosts configured")]
    NoHosts,
    #[error("cannot set up a channel to build-index {address}")]
    Channel {
        address: String,
        #[source]
        source: GrpcError,
    },
    /// The build-index's answer (`FAILED_PRECONDITION` names a missing dependency).
    #[error("build-index answered {:?}: {}", .0.code(), .0.message())]
    Status(Status),
    #[error("build-index sent an invalid digest")]
    InvalidDigest(#[source] kraken_core::WireError),
}

impl TagClientError {
    pub fn code(&self) -> Option<Code> {
        match self {
            Self::Status(status) => Some(status.code()),
            _ => None,
        }
    }
}

/// One page of a listing; `next_page_token` is `None` on the last page.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TagPage {
    pub tags: Vec<String>,
    pub next_page_token: Option<String>,
}

/// A client of the build-index hosts. Cheap to clone.
#[derive(Debug, Clone)]
pub struct TagClient {
    hosts: Vec<(String, TagServiceClient<Channel>)>,
}

impl TagClient {
    /// Lazily connecting mTLS clients of `hosts` (`host:port`), tried in order.
    pub fn connect(tls: &TlsMaterial, hosts: &[String]) -> Result<Self, TagClientError> {
        if hosts.is_empty() {
            return Err(TagClientError::NoHosts);
        }
        let hosts = hosts
            .iter()
            .map(|address| {
                channel(tls, address, None)
                    .map(|channel| (address.clone(), TagServiceClient::new(channel)))
                    .map_err(|source| TagClientError::Channel {
                        address: address.clone(),
                        source,
                    })
            })
            .collect::<Result<_, _>>()?;
        Ok(Self { hosts })
    }

    /// Points `name` at `digest`. `FAILED_PRECONDITION` when a dependency is missing.
    pub async fn put(
        &self,
        name: &TaggedName,
        digest: &Digest,
        replicate: bool,
    ) -> Result<(), TagClientError> {
        let request = PutRequest {
            tag: name.to_string(),
            digest: digest.to_string(),
            replicate,
        };
        self.call(PUT_TIMEOUT, |mut client| {
            let request = request.clone();
            async move { client.put(request).await }
        })
        .await
        .map(drop)
    }

    /// The tag's digest, `None` if the tag is unknown.
    pub async fn get(&self, name: &TaggedName) -> Result<Option<Digest>, TagClientError> {
        let request = GetRequest {
            tag: name.to_string(),
        };
        match self
            .call(READ_TIMEOUT, |mut client| {
                let request = request.clone();
                async move { client.get(request).await }
            })
            .await
        {
            Ok(response) => parse_digest("digest", &response.digest)
                .map(Some)
                .map_err(TagClientError::InvalidDigest),
            Err(error) if error.code() == Some(Code::NotFound) => Ok(None),
            Err(error) => Err(error),
        }
    }

    pub async fn has(&self, name: &TaggedName) -> Result<bool, TagClientError> {
        let request = HasRequest {
            tag: name.to_string(),
        };
        self.call(READ_TIMEOUT, |mut client| {
            let request = request.clone();
            async move { client.has(request).await }
        })
        .await
        .map(|response| response.exists)
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
        Ok(TagPage {
            tags: response.tags,
            next_page_token: Some(response.next_page_token).filter(|t| !t.is_empty()),
        })
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
        Ok(TagPage {
            tags: response.tags,
            next_page_token: Some(response.next_page_token).filter(|t| !t.is_empty()),
        })
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
        F: Fn(TagServiceClient<Channel>) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, Status>>,
    {
        let mut last = None;
        for (address, client) in &self.hosts {
            let status = match tokio::time::timeout(timeout, call(client.clone())).await {
                Ok(Ok(response)) => return Ok(response.into_inner()),
                Ok(Err(status)) => status,
                Err(_) => Status::deadline_exceeded(format!("no answer within {timeout:?}")),
            };
            if !matches!(
                status.code(),
                Code::Unavailable | Code::DeadlineExceeded | Code::Unknown | Code::Cancelled
            ) {
                return Err(TagClientError::Status(status));
            }
            tracing::debug!(build_index = %address, %status, "build-index unavailable; next host");
            last = Some(status);
        }
        Err(TagClientError::Status(last.unwrap_or_else(|| {
            Status::unavailable("no build-index host answered")
        })))
    }
}
