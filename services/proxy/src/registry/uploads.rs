//! Blob pushes: upload sessions (`POST`, then `PATCH` chunks with `Content-Range` or streamed,
//! `PUT` to commit, `GET` for status, `DELETE` to cancel), monolithic uploads and
//! cross-repository mounts. A blob is committed only after its digest is verified, and only
//! acknowledged once the origins hold it.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::response::Response;
use http::header::{CONTENT_LENGTH, CONTENT_RANGE, LOCATION, RANGE, RETRY_AFTER};
use http::{HeaderMap, StatusCode, Uri};
use kraken_core::{Digest, Namespace};
use kraken_oci::headers::{DOCKER_CONTENT_DIGEST, DOCKER_UPLOAD_UUID};
use kraken_oci::range::upload_range;
use kraken_oci::route::query_params;
use kraken_oci::{ByteSpan, ErrorCode, RegistryError, Route, parse_repository, response};

use super::{Registry, Result, clip, digest_param, origins_error, relay, repository};
use crate::metrics as m;
use crate::staging::{StagingError, Upload};

/// What a client refused for too many sessions is told to wait: sessions free up as pushes
/// finish, and an abandoned one within `uploads.idle_timeout`.
const SESSIONS_RETRY_AFTER: Duration = Duration::from_secs(10);

impl Registry {
    pub(super) async fn start_upload(
        &self,
        name: &str,
        uri: &Uri,
        headers: &HeaderMap,
        body: Body,
        client: IpAddr,
    ) -> Result<Response> {
        let repository = repository(name)?;
        let query = query_params(uri);
        // A mount whose parameters do not parse is ignored: the client gets an upload session.
        let mount = query
            .get("mount")
            .and_then(|digest| digest.parse::<Digest>().ok())
            .zip(
                query
                    .get("from")
                    .and_then(|from| parse_repository(from).ok()),
            );
        if let Some((digest, from)) = mount
            && let Some(response) = self.mount(&repository, digest, from).await?
        {
            return Ok(response);
        }
        // Monolithic upload: the whole blob is this request's body. Parameters are checked
        // before a session exists, so a refusal leaves nothing behind.
        let monolithic = match query.get("digest") {
            Some(digest) => Some((digest_param(digest)?, content_length(headers)?)),
            None => None,
        };
        if let Some((_, Some(length))) = monolithic
            && length > self.staging.max_blob_size()
        {
            return Err(too_large(StagingError::TooLarge {
                size: length,
                max: self.staging.max_blob_size(),
            }));
        }
        let upload = self
            .staging
            .create(repository.clone(), client)
            .await
            .map_err(|error| {
                if let StagingError::TooManySessions { cap, .. } = &error {
                    metrics::counter!(m::UPLOAD_REFUSALS, "reason" => cap.key()).increment(1);
                    tracing::info!(%client, %repository, %error, "upload session refused");
                }
                staging_error(error)
            })?;
        tracing::debug!(upload = %upload.id, %repository, "upload started");
        if let Some((digest, length)) = monolithic {
            if let Err(error) = upload.append(None, length, body).await {
                self.staging.cancel(&upload).await;
                return Err(append_error(&upload, error));
            }
            return self.commit(&repository, &upload, digest).await;
        }
        Ok(upload_response(StatusCode::ACCEPTED, &upload))
    }

    /// Cross-repository mount. `None` when the source does not hold the blob: the client then
    /// gets a fresh upload session, as the spec asks.
    async fn mount(
        &self,
        repository: &Namespace,
        digest: Digest,
        from: Namespace,
    ) -> Result<Option<Response>> {
        let Some(stat) = self
            .origins
            .stat(&from, &digest)
            .await
            .map_err(origins_error)?
        else {
            return Ok(None);
        };
        if from != *repository {
            // Copied through the origin under the target namespace, so that namespace's
            // storage backend gets its own copy (backends are namespaced); the origin keeps
            // one copy on disk whatever the namespace.
            let source = self
                .origins
                .download(&from, &digest)
                .await
                .map_err(origins_error)?;
            self.origins
                .upload_stream(repository, &digest, relay(source), Some(stat.size))
                .await
                .map_err(origins_error)?;
        }
        tracing::info!(%digest, %from, to = %repository, "blob mounted");
        Ok(Some(blob_created(repository, &digest)))
    }

    pub(super) async fn upload_status(&self, name: &str, id: &str) -> Result<Response> {
        let repository = repository(name)?;
        let upload = self.upload(&repository, id)?;
        Ok(upload_response(StatusCode::NO_CONTENT, &upload))
    }

    pub(super) async fn patch_upload(
        &self,
        name: &str,
        id: &str,
        headers: &HeaderMap,
        body: Body,
    ) -> Result<Response> {
        let repository = repository(name)?;
        let upload = self.upload(&repository, id)?;
        let (start, expected) = chunk_bounds(headers, &upload)?;
        self.append(&upload, start, expected, body).await?;
        Ok(upload_response(StatusCode::ACCEPTED, &upload))
    }

    pub(super) async fn put_upload(
        &self,
        name: &str,
        id: &str,
        uri: &Uri,
        headers: &HeaderMap,
        body: Body,
    ) -> Result<Response> {
        let repository = repository(name)?;
        let upload = self.upload(&repository, id)?;
        let query = query_params(uri);
        let digest = digest_param(query.get("digest").map(String::as_str).unwrap_or_default())?;
        // The last chunk may come with the commit.
        let (start, expected) = chunk_bounds(headers, &upload)?;
        self.append(&upload, start, expected, body).await?;
        self.commit(&repository, &upload, digest).await
    }

    pub(super) async fn cancel_upload(&self, name: &str, id: &str) -> Result<Response> {
        let repository = repository(name)?;
        let upload = self.upload(&repository, id)?;
        self.staging.cancel(&upload).await;
        Ok(response::with_headers(
            StatusCode::NO_CONTENT,
            [(CONTENT_LENGTH, "0".to_owned())],
            Body::empty(),
        ))
    }

    /// Verifies the upload against `expected` and hands it to the origins. On a mismatch the
    /// session is cancelled (as Docker's registry does) and nothing reaches the origins.
    async fn commit(
        &self,
        repository: &Namespace,
        upload: &Upload,
        expected: Digest,
    ) -> Result<Response> {
        let (actual, size) = upload.digest().await.map_err(staging_error)?;
        if actual != expected {
            self.staging.cancel(upload).await;
            metrics::counter!(m::BLOB_COMMITS, "outcome" => "digest_invalid").increment(1);
            return Err(RegistryError::digest_invalid(format!(
                "the {size} bytes uploaded hash to {actual}, not {expected}"
            ))
            .with_detail(serde_json::json!({
                "expected": expected.to_string(),
                "actual": actual.to_string(),
            })));
        }
        let staged = self
            .staging
            .finish(upload, actual)
            .await
            .map_err(staging_error)?;
        let started = Instant::now();
        let uploaded = self
            .origins
            .upload_file(repository, &staged.digest, &staged.path, staged.size)
            .await;
        if let Err(error) = uploaded {
            metrics::counter!(m::BLOB_COMMITS, "outcome" => "failed").increment(1);
            return Err(origins_error(error));
        }
        metrics::histogram!(m::ORIGIN_UPLOAD_SECONDS).record(started.elapsed().as_secs_f64());
        metrics::counter!(m::BLOB_COMMITS, "outcome" => "stored").increment(1);
        tracing::info!(digest = %actual, size, %repository, "blob stored on the origins");
        Ok(blob_created(repository, &actual))
    }

    /// Appends a chunk to a session; a chunk taking the blob past `uploads.max_blob_size`
    /// ends the session (it could never be committed), and nothing of it is stored.
    async fn append(
        &self,
        upload: &Upload,
        start: Option<u64>,
        expected: Option<u64>,
        body: Body,
    ) -> Result<u64> {
        match upload.append(start, expected, body).await {
            Ok(size) => Ok(size),
            Err(error @ StagingError::TooLarge { .. }) => {
                self.staging.cancel(upload).await;
                Err(append_error(upload, error))
            }
            Err(error) => Err(append_error(upload, error)),
        }
    }

    fn upload(&self, repository: &Namespace, id: &str) -> Result<Arc<Upload>> {
        self.staging
            .get(repository, id)
            .map_err(|_| RegistryError::blob_upload_unknown(clip(id)))
    }
}

/// `Content-Length`, if the request has one.
fn content_length(headers: &HeaderMap) -> Result<Option<u64>> {
    match headers.get(CONTENT_LENGTH) {
        None => Ok(None),
        Some(value) => value
            .to_str()
            .ok()
            .and_then(|text| text.parse().ok())
            .map(Some)
            .ok_or_else(|| RegistryError::blob_upload_invalid("Content-Length is not a number")),
    }
}

/// Where a chunk must start and how long it is, from `Content-Range` (`<start>-<end>`,
/// inclusive, optionally prefixed `bytes `) and `Content-Length`. A streamed PATCH carries
/// neither and simply continues the upload.
fn chunk_bounds(headers: &HeaderMap, upload: &Upload) -> Result<(Option<u64>, Option<u64>)> {
    let length = content_length(headers)?;
    let Some(range) = headers.get(CONTENT_RANGE) else {
        return Ok((None, length));
    };
    let span = ByteSpan::parse_content_range(range.to_str().unwrap_or_default())
        .map_err(|error| range_error(upload, error.to_string()))?;
    let chunk = span.len();
    if length.is_some_and(|length| length != chunk) {
        return Err(range_error(
            upload,
            format!("Content-Range covers {chunk} bytes but Content-Length is {length:?}"),
        ));
    }
    Ok((Some(span.start()), Some(chunk)))
}

/// 416 `BLOB_UPLOAD_INVALID` with the session's current `Range`, so the client can resume.
fn range_error(upload: &Upload, message: String) -> RegistryError {
    RegistryError::blob_upload_invalid(message)
        .with_status(StatusCode::RANGE_NOT_SATISFIABLE)
        .with_header(RANGE, upload_range(upload.size()))
        .with_header(DOCKER_UPLOAD_UUID, &upload.id)
        .with_header(LOCATION, upload_location(upload))
}

fn append_error(upload: &Upload, error: StagingError) -> RegistryError {
    match error {
        StagingError::OutOfOrder { .. } | StagingError::WrongLength { .. } => {
            range_error(upload, error.to_string())
        }
        StagingError::Body { .. } => RegistryError::blob_upload_invalid(error.to_string()),
        other => staging_error(other),
    }
}

/// 413 `SIZE_INVALID`: the distribution spec's code for a blob the registry will not take
/// at this size, with the status that says the body is too large.
fn too_large(error: StagingError) -> RegistryError {
    metrics::counter!(m::UPLOAD_REFUSALS, "reason" => "max_blob_size").increment(1);
    RegistryError::size_invalid(error.to_string()).with_status(StatusCode::PAYLOAD_TOO_LARGE)
}

fn staging_error(error: StagingError) -> RegistryError {
    match error {
        StagingError::UnknownUpload(id) => RegistryError::blob_upload_unknown(id),
        StagingError::TooManySessions { .. } => {
            RegistryError::new(ErrorCode::TooManyRequests, error.to_string())
                .with_header(RETRY_AFTER, SESSIONS_RETRY_AFTER.as_secs().to_string())
        }
        StagingError::TooLarge { .. } => too_large(error),
        other => {
            tracing::error!(error = %other, "staging failed");
            RegistryError::internal(format!("staging the upload failed: {other}"))
        }
    }
}

fn upload_location(upload: &Upload) -> String {
    Route::Upload {
        name: upload.repository.as_str(),
        id: &upload.id,
    }
    .to_string()
}

fn upload_response(status: StatusCode, upload: &Upload) -> Response {
    response::with_headers(
        status,
        [
            (LOCATION, upload_location(upload)),
            (RANGE, upload_range(upload.size())),
            (DOCKER_UPLOAD_UUID, upload.id.clone()),
            (CONTENT_LENGTH, "0".to_owned()),
        ],
        Body::empty(),
    )
}

fn blob_created(repository: &Namespace, digest: &Digest) -> Response {
    let digest_text = digest.to_string();
    let location = Route::Blob {
        name: repository.as_str(),
        digest: &digest_text,
    };
    response::with_headers(
        StatusCode::CREATED,
        [
            (LOCATION, location.to_string()),
            (DOCKER_CONTENT_DIGEST, digest_text.clone()),
            (CONTENT_LENGTH, "0".to_owned()),
        ],
        Body::empty(),
    )
}

#[cfg(test)]
mod tests {
    use http::HeaderValue;
    use kraken_oci::ErrorCode;

    use super::*;
    use crate::staging::Staging;

    fn headers(pairs: &[(http::HeaderName, &str)]) -> HeaderMap {
        pairs
            .iter()
            .map(|(name, value)| (name.clone(), HeaderValue::from_str(value).unwrap()))
            .collect()
    }

    #[tokio::test]
    async fn chunk_bounds_come_from_content_range_and_length() {
        let dir = tempfile::tempdir().unwrap();
        let staging = Staging::open(dir.path().join("uploads"), Default::default())
            .await
            .unwrap();
        let upload = staging
            .create(
                "lib/app".parse().unwrap(),
                std::net::Ipv4Addr::LOCALHOST.into(),
            )
            .await
            .unwrap();
        let bounds = |pairs: &[(http::HeaderName, &str)]| chunk_bounds(&headers(pairs), &upload);

        assert_eq!(bounds(&[]).unwrap(), (None, None));
        assert_eq!(bounds(&[(CONTENT_LENGTH, "7")]).unwrap(), (None, Some(7)));
        assert_eq!(
            bounds(&[(CONTENT_RANGE, "bytes 100-199/*")]).unwrap(),
            (Some(100), Some(100))
        );
        assert_eq!(
            bounds(&[(CONTENT_RANGE, "0-99"), (CONTENT_LENGTH, "100")]).unwrap(),
            (Some(0), Some(100))
        );
        let refusals = [
            vec![(CONTENT_RANGE, "0-99"), (CONTENT_LENGTH, "99")],
            vec![(CONTENT_RANGE, "9-1")],
            vec![(CONTENT_RANGE, "bytes=0-9")],
            // 2^64 bytes: refused, neither wrapped to 0 nor a panic.
            vec![(CONTENT_RANGE, "0-18446744073709551615")],
        ];
        for pairs in refusals {
            let error = bounds(&pairs).unwrap_err();
            assert_eq!(error.code(), ErrorCode::BlobUploadInvalid, "{pairs:?}");
            assert_eq!(
                error.status(),
                StatusCode::RANGE_NOT_SATISFIABLE,
                "{pairs:?}"
            );
            assert_eq!(error.headers()[RANGE], "0-0", "{pairs:?}");
            assert_eq!(error.headers()[DOCKER_UPLOAD_UUID], upload.id.as_str());
        }
        let error = bounds(&[(CONTENT_LENGTH, "lots")]).unwrap_err();
        assert_eq!(error.status(), StatusCode::BAD_REQUEST);
    }

    #[test]
    fn locations_are_canonical_routes() {
        let digest = Digest::of(b"x");
        let response = blob_created(&"lib/app".parse().unwrap(), &digest);
        assert_eq!(response.status(), StatusCode::CREATED);
        assert_eq!(
            response.headers()[LOCATION],
            format!("/v2/lib/app/blobs/{digest}").as_str()
        );
        assert_eq!(
            response.headers()[DOCKER_CONTENT_DIGEST],
            digest.to_string().as_str()
        );
    }
}
