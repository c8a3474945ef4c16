//! Blob pulls: `GET` and `HEAD /v2/<name>/blobs/<digest>`, whole or one `Range`, streamed from
//! the owning origins.

use axum::body::Body;
use axum::response::Response;
use futures::TryStreamExt;
use http::HeaderMap;
use http::header::RANGE;
use kraken_oci::response::BlobResponse;
use kraken_oci::{ByteRange, RegistryError};

use super::{OriginsError, Registry, Result, digest_param, origins_error, repository};

impl Registry {
    pub(super) async fn get_blob(
        &self,
        name: &str,
        digest: &str,
        headers: &HeaderMap,
        head: bool,
    ) -> Result<Response> {
        let repository = repository(name)?;
        let digest = digest_param(digest)?;
        let size = match self.origins.stat(&repository, &digest).await {
            Ok(Some(stat)) => stat.size,
            Ok(None) => return Err(RegistryError::blob_unknown(digest)),
            Err(error) => return Err(origins_error(error)),
        };
        // A `Range` that does not parse (not UTF-8 either) or selects nothing of this blob is
        // refused with the blob's size, so the client can ask again.
        let span = match headers.get(RANGE) {
            None => None,
            Some(value) => {
                let text = value.to_str().unwrap_or_default();
                let unsatisfiable = |reason: String| {
                    RegistryError::range_not_satisfiable(
                        format!(
                            "range {text:?} cannot be served from a blob of {size} bytes: {reason}"
                        ),
                        size,
                    )
                };
                let range =
                    ByteRange::parse(text).map_err(|error| unsatisfiable(error.to_string()))?;
                Some(
                    range.resolve(size).ok_or_else(|| {
                        unsatisfiable("it selects no byte of the blob".to_owned())
                    })?,
                )
            }
        };
        let response = BlobResponse::new(&digest, size).span(span);
        if head {
            return Ok(response.body(Body::empty()));
        }
        let stream = self
            .origins
            .download_range(
                &repository,
                &digest,
                span.map_or(0, |span| span.start()),
                span.map(|span| span.len()),
            )
            .await
            .map_err(|error| match error {
                OriginsError::NotFound { .. } => RegistryError::blob_unknown(digest),
                other => origins_error(other),
            })?;
        Ok(response.body(Body::from_stream(stream.map_err(std::io::Error::other))))
    }
}
