//! Cross-cluster replication: the durable queue of tasks ([`queue`], [`task`]), the
//! [`executor`] that works it against the remotes' build-indexes ([`remote`]) through our
//! origins, and `kraken.buildindex.v1.ReplicationService`: what another cluster asks this one while it
//! replicates here (`ListOrigins`), and what operators ask about our pending tasks
//! (`ListTasks`).

pub(crate) mod error;
pub(crate) mod executor;
pub(crate) mod peers;
pub(crate) mod queue;
pub(crate) mod remote;
pub(crate) mod task;

use std::sync::Arc;
use std::time::Duration;

use kraken_core::parse_digest;
use kraken_oci::TaggedName;
use kraken_proto::buildindex::v1::replication_service_server::ReplicationService;
use kraken_proto::buildindex::v1::{
    DuplicatePutRequest, DuplicatePutResponse, ListOriginsRequest, ListOriginsResponse,
    ListTasksRequest, ListTasksResponse, ReplicationTask as TaskMessage,
};
use tonic::{Request, Response, Status};

use self::queue::TaskStatus;
use self::task::Kind;
use crate::error::TagError;
use crate::service::page_size;
use crate::store::PutOutcome;
use crate::store::now_ms;
use crate::tags::Tags;

#[derive(Debug, Clone)]
pub(crate) struct ReplicationServiceImpl {
    tags: Arc<Tags>,
}

impl ReplicationServiceImpl {
    pub(crate) fn new(tags: Arc<Tags>) -> Self {
        Self { tags }
    }
}

#[tonic::async_trait]
impl ReplicationService for ReplicationServiceImpl {
    /// The origins this build-index knows (`origin.hosts`), healthy ones first: a remote
    /// cluster's origin uploads a replicated blob to them.
    #[tracing::instrument(skip_all)]
    async fn list_origins(
        &self,
        _request: Request<ListOriginsRequest>,
    ) -> Result<Response<ListOriginsResponse>, Status> {
        let mut hosts = self.tags.origins.hosts();
        // Stable: the configured order stays within each group.
        hosts.sort_by_key(|host| !host.healthy);
        Ok(Response::new(ListOriginsResponse {
            origins: hosts.into_iter().map(|host| host.host).collect(),
        }))
    }

    /// The pending tasks matching the filters, in (tag, remote) order, one page at a time;
    /// `pending` and `oldest_age_ms` cover every page.
    #[tracing::instrument(skip_all)]
    async fn list_tasks(
        &self,
        request: Request<ListTasksRequest>,
    ) -> Result<Response<ListTasksResponse>, Status> {
        let request = request.into_inner();
        let matching: Vec<TaskStatus> = self
            .tags
            .queue
            .snapshot()
            .into_iter()
            .filter(|status| request.remote.is_empty() || status.task.remote == request.remote)
            .filter(|status| status.task.tag.to_string().starts_with(&request.tag_prefix))
            .collect();
        let now = now_ms();
        let oldest_age_ms = matching
            .iter()
            .map(|status| now.saturating_sub(status.task.created_unix_ms))
            .max()
            .unwrap_or(0);
        let pending = u32::try_from(matching.len()).unwrap_or(u32::MAX);
        let limit = page_size(request.page_size);
        // The token is the last key returned: opaque to clients, stable across changes.
        let mut page: Vec<TaskStatus> = matching
            .into_iter()
            .filter(|status| {
                request.page_token.is_empty() || status.key.as_str() > request.page_token.as_str()
            })
            .take(limit.saturating_add(1))
            .collect();
        let more = page.len() > limit;
        page.truncate(limit);
        let next_page_token = match (more, page.last()) {
            (true, Some(last)) => last.key.as_str().to_owned(),
            _ => String::new(),
        };
        Ok(Response::new(ListTasksResponse {
            tasks: page.into_iter().map(task_message).collect(),
            next_page_token,
            pending,
            oldest_age_ms,
        }))
    }

    /// A tag write copied from a cluster peer: stored without a dependency check or backend
    /// write (the peer did both), the replication tasks held (see `Tags::duplicate_put`).
    #[tracing::instrument(skip_all, fields(tag = %request.get_ref().tag))]
    async fn duplicate_put(
        &self,
        request: Request<DuplicatePutRequest>,
    ) -> Result<Response<DuplicatePutResponse>, Status> {
        let request = request.into_inner();
        let name = request
            .tag
            .parse::<TaggedName>()
            .map_err(|source| TagError::InvalidName {
                field: "tag",
                source,
            })?;
        let digest = parse_digest("digest", &request.digest).map_err(TagError::from)?;
        if request.version == 0 {
            return Err(Status::invalid_argument(
                "field `version`: required (the version the first build-index assigned)",
            ));
        }
        let hold = Duration::from_millis(request.hold_ms);
        if hold > MAX_HOLD {
            return Err(Status::invalid_argument(format!(
                "field `hold_ms`: {} is more than a day",
                request.hold_ms
            )));
        }
        let outcome = self
            .tags
            .duplicate_put(&name, digest, request.version, request.replicate, hold)
            .await?;
        Ok(Response::new(DuplicatePutResponse {
            stored: matches!(outcome, PutOutcome::Stored(_)),
            version: outcome.record().version,
        }))
    }
}

/// The longest a peer's copy of a replication task may be held: a day is far beyond any
/// sensible `peer_delay`; more is a bug or an attack on the queue.
const MAX_HOLD: Duration = Duration::from_secs(24 * 3600);

fn task_message(status: TaskStatus) -> TaskMessage {
    let TaskStatus {
        task,
        running,
        progress,
        ..
    } = status;
    TaskMessage {
        tag: task.tag.to_string(),
        digest: task.digest.to_string(),
        remote: task.remote,
        version: task.version,
        attempts: task.attempts,
        last_error: task.last_error.unwrap_or_default(),
        cause: task
            .cause
            .map(|c| c.as_str().to_owned())
            .unwrap_or_default(),
        created_unix_ms: task.created_unix_ms,
        next_attempt_unix_ms: task.not_before_unix_ms,
        running,
        held_for_peer: task.held_for_peer,
        blobs_done: progress.blobs_done,
        blobs_total: progress.blobs_total,
        bytes_sent: progress.bytes_sent,
        peer: match task.kind {
            Kind::Remote => String::new(),
            Kind::PeerCopy { peer, .. } => peer,
        },
    }
}
