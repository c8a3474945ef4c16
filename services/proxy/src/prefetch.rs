//! `kraken.proxy.v1.ProxyService/Prefetch`: warms the origins for every blob of an image, so a
//! rollout's first pulls do not wait on the storage backend.

use std::collections::HashSet;

use futures::StreamExt;
use kraken_core::{Digest, Namespace};
use kraken_oci::{MAX_MANIFEST_SIZE, Manifest, TaggedName};
use kraken_originclient::{OriginClusterClient, OriginsError};
use kraken_proto::proxy::v1::proxy_service_server::ProxyService;
use kraken_proto::proxy::v1::{PrefetchRequest, PrefetchResponse};
use kraken_tagclient::TagClient;
use tonic::{Request, Response, Status};
use tracing::field::{Empty, display};

use crate::metrics as m;

/// Concurrent origin `Prefetch` calls for one image.
const PREFETCH_CONCURRENCY: usize = 8;
/// Indexes nest at most this deep.
const MAX_DEPTH: usize = 4;
/// More blobs than this in one image is abuse or a loop.
const MAX_BLOBS: usize = 10_000;

#[derive(Debug, Clone)]
pub(crate) struct ProxyServiceImpl {
    pub(crate) origins: OriginClusterClient,
    pub(crate) tags: TagClient,
}

/// Every blob of an image, manifests first.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct ImageBlobs {
    pub(crate) manifests: Vec<Digest>,
    pub(crate) layers: Vec<Digest>,
    pub(crate) total_bytes: u64,
}

/// Walks the image at `root`: the manifest, for an index every child manifest, and every
/// config and layer. Manifests are fetched (which already warms their owners).
pub(crate) async fn image_blobs(
    origins: &OriginClusterClient,
    namespace: &Namespace,
    root: Digest,
) -> Result<ImageBlobs, Status> {
    let mut blobs = ImageBlobs::default();
    let mut seen = HashSet::from([root]);
    let mut pending = vec![(root, 0usize)];
    while let Some((digest, depth)) = pending.pop() {
        let body = origins
            .fetch(namespace, &digest, MAX_MANIFEST_SIZE)
            .await
            .map_err(|error| status_of(&error, digest))?;
        blobs.manifests.push(digest);
        blobs.total_bytes += body.len() as u64;
        let manifest = Manifest::parse(None, &body).map_err(|error| {
            Status::failed_precondition(format!("{digest} is not a manifest: {error}"))
        })?;
        let is_index = manifest.is_index();
        for descriptor in manifest.descriptors() {
            if descriptor.is_foreign() || !seen.insert(descriptor.digest) {
                continue;
            }
            if seen.len() > MAX_BLOBS {
                return Err(Status::failed_precondition(format!(
                    "the image has more than {MAX_BLOBS} blobs"
                )));
            }
            if is_index {
                if depth >= MAX_DEPTH {
                    return Err(Status::failed_precondition(format!(
                        "indexes nest deeper than {MAX_DEPTH} levels under {digest}"
                    )));
                }
                pending.push((descriptor.digest, depth + 1));
            } else {
                blobs.layers.push(descriptor.digest);
                blobs.total_bytes += descriptor.size;
            }
        }
    }
    Ok(blobs)
}

fn status_of(error: &OriginsError, digest: Digest) -> Status {
    match error {
        OriginsError::NotFound { .. } => {
            Status::failed_precondition(format!("{digest} is not on the origins"))
        }
        other => {
            let mut message = other.to_string();
            let mut source = std::error::Error::source(other);
            while let Some(cause) = source {
                message.push_str(": ");
                message.push_str(&cause.to_string());
                source = cause.source();
            }
            Status::unavailable(message)
        }
    }
}

#[tonic::async_trait]
impl ProxyService for ProxyServiceImpl {
    #[tracing::instrument(skip_all, fields(tag = Empty))]
    async fn prefetch(
        &self,
        request: Request<PrefetchRequest>,
    ) -> Result<Response<PrefetchResponse>, Status> {
        let tag: TaggedName = request
            .get_ref()
            .tag
            .parse()
            .map_err(|error| Status::invalid_argument(format!("field `tag`: {error}")))?;
        tracing::Span::current().record("tag", display(&tag));
        let root = self
            .tags
            .get(&tag)
            .await
            .map_err(|error| Status::unavailable(error.to_string()))?
            .ok_or_else(|| Status::not_found(format!("tag {tag} is not known")))?;
        let namespace = &tag.repository;
        let blobs = image_blobs(&self.origins, namespace, root).await?;
        // Manifests too: fetching them warmed one owner each, the RPC warms all of them.
        let every_blob: Vec<Digest> = blobs
            .manifests
            .iter()
            .chain(blobs.layers.iter())
            .copied()
            .collect();
        let results: Vec<(Digest, Result<bool, OriginsError>)> = futures::stream::iter(every_blob)
            .map(|digest| async move { (digest, self.origins.prefetch(namespace, &digest).await) })
            .buffered(PREFETCH_CONCURRENCY)
            .collect()
            .await;
        for (digest, result) in results {
            if let Err(error) = result {
                return Err(status_of(&error, digest));
            }
        }
        let count = blobs.manifests.len() + blobs.layers.len();
        metrics::counter!(m::PREFETCHED_BLOBS).increment(count as u64);
        tracing::info!(blobs = count, bytes = blobs.total_bytes, "image prefetched");
        Ok(Response::new(PrefetchResponse {
            digests: blobs
                .manifests
                .iter()
                .chain(blobs.layers.iter())
                .map(Digest::to_string)
                .collect(),
            total_bytes: blobs.total_bytes,
        }))
    }
}
