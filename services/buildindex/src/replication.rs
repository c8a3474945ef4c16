//! `kraken.buildindex.v1.ReplicationService`: what another cluster asks this one while it
//! replicates here.

use std::sync::Arc;

use kraken_proto::buildindex::v1::replication_service_server::ReplicationService;
use kraken_proto::buildindex::v1::{ListOriginsRequest, ListOriginsResponse};
use tonic::{Request, Response, Status};

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
}
