//! `kraken.buildindex.v1.TagService`.

use std::sync::Arc;

use kraken_core::parse_digest;
use kraken_oci::{TaggedName, parse_repository};
use kraken_proto::buildindex::v1::tag_service_server::TagService;
use kraken_proto::buildindex::v1::{
    GetRequest, GetResponse, HasRequest, HasResponse, ListRepositoryRequest,
    ListRepositoryResponse, ListRequest, ListResponse, PutRequest, PutResponse, ReplicateRequest,
    ReplicateResponse,
};
use tonic::{Request, Response, Status};
use tracing::field::{Empty, display};

use crate::error::TagError;
use crate::metrics as m;
use crate::tags::Tags;

use kraken_tls::{Caller, Trust};

use crate::store::PutOutcome;

use kraken_proto::wire::{
    DEFAULT_TAG_PAGE_SIZE as DEFAULT_PAGE_SIZE, MAX_TAG_PAGE_SIZE as MAX_PAGE_SIZE,
};

#[derive(Debug, Clone)]
pub(crate) struct TagServiceImpl {
    tags: Arc<Tags>,
}

impl TagServiceImpl {
    pub(crate) fn new(tags: Arc<Tags>) -> Self {
        Self { tags }
    }
}

impl TagServiceImpl {
    /// A remote cluster's build-index may put only the tags its `trusted_remotes` entry
    /// lists.
    fn check_foreign_put(&self, remote: &str, name: &TaggedName) -> Result<(), Status> {
        let tag = name.to_string();
        let allowed = self
            .tags
            .config
            .trusted_remotes
            .get(remote)
            .is_some_and(|trusted| trusted.may_put(&tag));
        if allowed {
            return Ok(());
        }
        metrics::counter!(m::PUTS, "outcome" => "denied").increment(1);
        Err(Status::permission_denied(format!(
            "remote cluster `{remote}` may not put `{tag}`: not matched by \
             trusted_remotes.{remote}.tags"
        )))
    }
}

fn parse_name(field: &'static str, text: &str) -> Result<TaggedName, TagError> {
    let name = text
        .parse::<TaggedName>()
        .map_err(|source| TagError::InvalidName { field, source })?;
    tracing::Span::current().record("tag", display(&name));
    Ok(name)
}

/// A listing's page size: the default for 0, never above the cap.
pub(crate) fn page_size(requested: u32) -> usize {
    match requested as usize {
        0 => DEFAULT_PAGE_SIZE,
        n => n.min(MAX_PAGE_SIZE),
    }
}

#[tonic::async_trait]
impl TagService for TagServiceImpl {
    #[tracing::instrument(skip_all, fields(tag = Empty, digest = Empty))]
    async fn put(&self, request: Request<PutRequest>) -> Result<Response<PutResponse>, Status> {
        let caller = request.extensions().get::<Caller>().cloned();
        let request = request.into_inner();
        let name = parse_name("tag", &request.tag)?;
        let digest = parse_digest("digest", &request.digest).map_err(TagError::from)?;
        tracing::Span::current().record("digest", display(digest));
        if let Some(Caller {
            trust: Trust::Remote(remote),
            ..
        }) = &caller
        {
            self.check_foreign_put(remote, &name)?;
        }
        let version = (request.version != 0).then_some(request.version);
        let result = self
            .tags
            .put(&name, digest, request.replicate, version)
            .await;
        let outcome = match &result {
            Ok(PutOutcome::Stored(_)) => "accepted",
            Ok(PutOutcome::Superseded(_)) => "superseded",
            Err(TagError::Missing { .. }) => "missing_dependency",
            Err(_) => "failed",
        };
        metrics::counter!(m::PUTS, "outcome" => outcome).increment(1);
        let outcome = result?;
        let superseded = matches!(outcome, PutOutcome::Superseded(_));
        let version = outcome.record().version;
        tracing::info!(
            replicate = request.replicate,
            version,
            superseded,
            "tag put"
        );
        Ok(Response::new(PutResponse {
            superseded,
            version,
        }))
    }

    #[tracing::instrument(skip_all, fields(tag = Empty))]
    async fn get(&self, request: Request<GetRequest>) -> Result<Response<GetResponse>, Status> {
        let name = parse_name("tag", &request.get_ref().tag)?;
        match self.tags.get(&name).await? {
            Some(record) => Ok(Response::new(GetResponse {
                digest: record.digest.to_string(),
            })),
            None => Err(TagError::NotFound(name.to_string()).into()),
        }
    }

    #[tracing::instrument(skip_all, fields(tag = Empty))]
    async fn has(&self, request: Request<HasRequest>) -> Result<Response<HasResponse>, Status> {
        let name = parse_name("tag", &request.get_ref().tag)?;
        Ok(Response::new(match self.tags.get(&name).await? {
            Some(record) => HasResponse {
                exists: true,
                digest: record.digest.to_string(),
                version: record.version,
            },
            None => HasResponse::default(),
        }))
    }

    #[tracing::instrument(skip_all)]
    async fn list(&self, request: Request<ListRequest>) -> Result<Response<ListResponse>, Status> {
        let request = request.into_inner();
        let after = Some(request.page_token.as_str()).filter(|token| !token.is_empty());
        let (page, more) =
            self.tags
                .store
                .page(&request.prefix, after, page_size(request.page_size));
        // The token is the last name returned: opaque to clients, stable across writes.
        let next_page_token = match (more, page.last()) {
            (true, Some((last, _))) => last.clone(),
            _ => String::new(),
        };
        Ok(Response::new(ListResponse {
            tags: page.into_iter().map(|(name, _)| name).collect(),
            next_page_token,
        }))
    }

    #[tracing::instrument(skip_all, fields(repository = %request.get_ref().repository))]
    async fn list_repository(
        &self,
        request: Request<ListRepositoryRequest>,
    ) -> Result<Response<ListRepositoryResponse>, Status> {
        let request = request.into_inner();
        let repository =
            parse_repository(&request.repository).map_err(TagError::InvalidRepository)?;
        let prefix = format!("{repository}:");
        let after =
            (!request.page_token.is_empty()).then(|| format!("{prefix}{}", request.page_token));
        let (page, more) =
            self.tags
                .store
                .page(&prefix, after.as_deref(), page_size(request.page_size));
        let tags: Vec<String> = page
            .into_iter()
            .map(|(name, _)| name[prefix.len()..].to_owned())
            .collect();
        let next_page_token = match (more, tags.last()) {
            (true, Some(last)) => last.clone(),
            _ => String::new(),
        };
        Ok(Response::new(ListRepositoryResponse {
            tags,
            next_page_token,
        }))
    }

    #[tracing::instrument(skip_all, fields(tag = Empty))]
    async fn replicate(
        &self,
        request: Request<ReplicateRequest>,
    ) -> Result<Response<ReplicateResponse>, Status> {
        let name = parse_name("tag", &request.get_ref().tag)?;
        let record = self
            .tags
            .get(&name)
            .await?
            .ok_or_else(|| TagError::NotFound(name.to_string()))?;
        let remotes = self.tags.record_replication(&name, &record, None).await?;
        Ok(Response::new(ReplicateResponse { remotes }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_sizes_default_and_cap() {
        assert_eq!(page_size(0), DEFAULT_PAGE_SIZE);
        assert_eq!(page_size(7), 7);
        assert_eq!(page_size(u32::MAX), MAX_PAGE_SIZE);
    }
}
