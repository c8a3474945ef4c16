//! The Docker Registry v2 / OCI distribution API: push (monolithic, chunked and streamed blob
//! uploads, cross-repository mounts, manifests with reference checks) and pull (blobs with
//! `Range`, manifests by tag or digest), tag listing and the catalog.
//!
//! Nothing is stored here for good: blobs are staged on local disk until verified, then
//! streamed to their owning origins; manifests are blobs too, stored under the repository's
//! namespace; tags go to build-index. A request the registry refuses leaves every store as it
//! was: checks run before anything is written.

use std::collections::BTreeSet;
use std::ops::Bound;
use std::sync::Arc;
use std::time::Instant;

use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use http::header::{
    ACCEPT_RANGES, CONTENT_LENGTH, CONTENT_RANGE, CONTENT_TYPE, LINK, LOCATION, RANGE,
};
use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Uri};
use kraken_buildindex::{
    MAX_PAGE_SIZE, OriginCluster, OriginsError, TagClient, TagClientError, TagError,
    check_manifest_references,
};
use kraken_core::{Digest, Namespace};
use kraken_oci::headers::{
    API_VERSION, DOCKER_CONTENT_DIGEST, DOCKER_DISTRIBUTION_API_VERSION, DOCKER_UPLOAD_UUID,
    OCI_SUBJECT,
};
use kraken_oci::{
    MAX_MANIFEST_SIZE, Manifest, Reference, RegistryError, TaggedName, parse_repository,
};
use tokio::sync::Semaphore;
use tonic::Code;

use crate::metrics as m;
use crate::route::{self, Route};
use crate::staging::{Staging, StagingError, Upload};

/// Tags walked at most for one catalog answer (the catalog is derived from the tag list).
const MAX_CATALOG_TAGS: usize = 1_000_000;

/// What the registry handlers share.
#[derive(Debug)]
pub(crate) struct Registry {
    pub(crate) origins: OriginCluster,
    pub(crate) tags: TagClient,
    pub(crate) staging: Staging,
    /// Requests in flight; beyond the limit new ones are shed with 429 instead of queued.
    pub(crate) permits: Semaphore,
}

type Result<T, E = RegistryError> = std::result::Result<T, E>;

/// The registry's router: every `/v2/…` path goes to one dispatcher (repository names hold
/// `/`, which path patterns cannot express in the middle of a route).
pub(crate) fn router(registry: Arc<Registry>) -> Router {
    Router::new()
        .route("/v2", axum::routing::any(handle))
        .route("/v2/", axum::routing::any(handle))
        .route("/v2/{*rest}", axum::routing::any(handle))
        .fallback(|| async {
            RegistryError::unsupported("not a registry API path").with_status(StatusCode::NOT_FOUND)
        })
        .with_state(registry)
}

async fn handle(
    State(registry): State<Arc<Registry>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let route = route::parse(uri.path());
    let kind = route.as_ref().map_or("unknown", Route::kind);
    let span = tracing::debug_span!("registry", %method, path = uri.path(), route = kind);
    let _permit = match registry.permits.try_acquire() {
        Ok(permit) => permit,
        Err(_) => {
            metrics::counter!(m::SHED).increment(1);
            return RegistryError::from_code(kraken_oci::ErrorCode::TooManyRequests)
                .with_header(http::header::RETRY_AFTER, "1")
                .into_response();
        }
    };
    let result = async {
        let Some(route) = route else {
            return Err(RegistryError::unsupported(format!(
                "{} is not a registry API path",
                uri.path()
            ))
            .with_status(StatusCode::NOT_FOUND));
        };
        dispatch(&registry, &method, route, &uri, &headers, body).await
    };
    let result = tracing::Instrument::instrument(result, span).await;
    let mut response = match result {
        Ok(response) => response,
        Err(error) => {
            if error.status().is_server_error() {
                tracing::warn!(%method, path = uri.path(), %error, "registry request failed");
            } else {
                tracing::debug!(%method, path = uri.path(), %error, "registry request refused");
            }
            error.into_response()
        }
    };
    response.headers_mut().insert(
        DOCKER_DISTRIBUTION_API_VERSION,
        HeaderValue::from_static(API_VERSION),
    );
    metrics::counter!(
        m::REQUESTS,
        "method" => method.to_string(),
        "route" => kind,
        "status" => response.status().as_u16().to_string()
    )
    .increment(1);
    response
}

async fn dispatch(
    registry: &Registry,
    method: &Method,
    route: Route,
    uri: &Uri,
    headers: &HeaderMap,
    body: Body,
) -> Result<Response> {
    let head = method == Method::HEAD;
    match (method.clone(), route) {
        (Method::GET | Method::HEAD, Route::Base) => Ok(json(StatusCode::OK, "{}".into())),
        (Method::GET, Route::Catalog) => registry.catalog(uri).await,
        (Method::GET, Route::TagsList { name }) => registry.tags_list(&name, uri).await,
        (Method::GET | Method::HEAD, Route::Manifest { name, reference }) => {
            registry.get_manifest(&name, &reference, head).await
        }
        (Method::PUT, Route::Manifest { name, reference }) => {
            registry
                .put_manifest(&name, &reference, headers, body)
                .await
        }
        (Method::GET | Method::HEAD, Route::Blob { name, digest }) => {
            registry.get_blob(&name, &digest, headers, head).await
        }
        (Method::POST, Route::UploadStart { name }) => {
            registry.start_upload(&name, uri, headers, body).await
        }
        (Method::GET | Method::HEAD, Route::Upload { name, id }) => {
            registry.upload_status(&name, &id).await
        }
        (Method::PATCH, Route::Upload { name, id }) => {
            registry.patch_upload(&name, &id, headers, body).await
        }
        (Method::PUT, Route::Upload { name, id }) => {
            registry.put_upload(&name, &id, uri, headers, body).await
        }
        (Method::DELETE, Route::Upload { name, id }) => registry.cancel_upload(&name, &id).await,
        (Method::DELETE, Route::Manifest { .. } | Route::Blob { .. }) => Err(
            RegistryError::unsupported("deletion is not supported by this registry"),
        ),
        (method, route) => Err(RegistryError::unsupported(format!(
            "{method} is not supported on the {} endpoint",
            route.kind()
        ))),
    }
}

impl Registry {
    // -----------------------------------------------------------------------------------------
    // Blobs

    async fn get_blob(
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
        let mut response_headers = vec![
            (DOCKER_CONTENT_DIGEST, digest.to_string()),
            (ACCEPT_RANGES, "bytes".to_owned()),
            (CONTENT_TYPE, "application/octet-stream".to_owned()),
        ];
        let range = match headers.get(RANGE).and_then(|v| v.to_str().ok()) {
            None => None,
            Some(text) => Some(parse_range(text, size).ok_or_else(|| {
                RegistryError::range_invalid(format!(
                    "range {text:?} cannot be served from a blob of {size} bytes"
                ))
                .with_header(CONTENT_RANGE, format!("bytes */{size}"))
            })?),
        };
        let (status, offset, length) = match range {
            None => (StatusCode::OK, 0, size),
            Some((start, end)) => {
                response_headers.push((CONTENT_RANGE, format!("bytes {start}-{end}/{size}")));
                (StatusCode::PARTIAL_CONTENT, start, end - start + 1)
            }
        };
        response_headers.push((CONTENT_LENGTH, length.to_string()));
        if head {
            return Ok(with_headers(status, response_headers, Body::empty()));
        }
        let stream = self
            .origins
            .download_range(&repository, &digest, offset, range.map(|_| length))
            .await
            .map_err(|error| match error {
                OriginsError::NotFound { .. } => RegistryError::blob_unknown(digest),
                other => origins_error(other),
            })?;
        let body = Body::from_stream(stream.map_err(std::io::Error::other));
        Ok(with_headers(status, response_headers, body))
    }

    // -----------------------------------------------------------------------------------------
    // Uploads

    async fn start_upload(
        &self,
        name: &str,
        uri: &Uri,
        headers: &HeaderMap,
        body: Body,
    ) -> Result<Response> {
        let repository = repository(name)?;
        let query = route::query(uri);
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
        let upload = self
            .staging
            .create(repository.clone())
            .await
            .map_err(staging_error)?;
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

    async fn upload_status(&self, name: &str, id: &str) -> Result<Response> {
        let repository = repository(name)?;
        let upload = self.upload(&repository, id)?;
        Ok(upload_response(StatusCode::NO_CONTENT, &upload))
    }

    async fn patch_upload(
        &self,
        name: &str,
        id: &str,
        headers: &HeaderMap,
        body: Body,
    ) -> Result<Response> {
        let repository = repository(name)?;
        let upload = self.upload(&repository, id)?;
        let (start, expected) = chunk_bounds(headers, &upload)?;
        upload
            .append(start, expected, body)
            .await
            .map_err(|error| append_error(&upload, error))?;
        Ok(upload_response(StatusCode::ACCEPTED, &upload))
    }

    async fn put_upload(
        &self,
        name: &str,
        id: &str,
        uri: &Uri,
        headers: &HeaderMap,
        body: Body,
    ) -> Result<Response> {
        let repository = repository(name)?;
        let upload = self.upload(&repository, id)?;
        let query = route::query(uri);
        let digest = digest_param(query.get("digest").map(String::as_str).unwrap_or_default())?;
        // The last chunk may come with the commit.
        let (start, expected) = chunk_bounds(headers, &upload)?;
        upload
            .append(start, expected, body)
            .await
            .map_err(|error| append_error(&upload, error))?;
        self.commit(&repository, &upload, digest).await
    }

    async fn cancel_upload(&self, name: &str, id: &str) -> Result<Response> {
        let repository = repository(name)?;
        let upload = self.upload(&repository, id)?;
        self.staging.cancel(&upload).await;
        Ok(with_headers(
            StatusCode::NO_CONTENT,
            vec![(CONTENT_LENGTH, "0".to_owned())],
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

    fn upload(&self, repository: &Namespace, id: &str) -> Result<Arc<Upload>> {
        self.staging
            .get(repository, id)
            .map_err(|_| RegistryError::blob_upload_unknown(clip(id)))
    }

    // -----------------------------------------------------------------------------------------
    // Manifests

    async fn get_manifest(&self, name: &str, reference: &str, head: bool) -> Result<Response> {
        let repository = repository(name)?;
        let reference: Reference = reference.parse().map_err(|error| match error {
            kraken_oci::ReferenceError::Tag(_) => RegistryError::manifest_unknown(clip(reference)),
            other => other.into(),
        })?;
        let digest = match &reference {
            Reference::Digest(digest) => *digest,
            Reference::Tag(tag) => {
                let tagged = TaggedName::new(repository.clone(), tag.clone());
                match self.tags.get(&tagged).await.map_err(tag_error)? {
                    Some(digest) => digest,
                    None => return Err(self.unknown_manifest(&repository, &reference).await),
                }
            }
        };
        let body = match self
            .origins
            .fetch(&repository, &digest, MAX_MANIFEST_SIZE)
            .await
        {
            Ok(body) => body,
            Err(OriginsError::NotFound { .. } | OriginsError::TooLarge { .. }) => {
                return Err(RegistryError::manifest_unknown(&reference));
            }
            Err(error) => return Err(origins_error(error)),
        };
        let manifest = Manifest::parse(None, &body)
            .map_err(|_| RegistryError::manifest_unknown(&reference))?;
        let headers = vec![
            (CONTENT_TYPE, manifest.media_type().to_owned()),
            (DOCKER_CONTENT_DIGEST, digest.to_string()),
            (CONTENT_LENGTH, body.len().to_string()),
        ];
        let body = if head {
            Body::empty()
        } else {
            Body::from(body)
        };
        Ok(with_headers(StatusCode::OK, headers, body))
    }

    /// `NAME_UNKNOWN` when the repository has no tags at all, else `MANIFEST_UNKNOWN`.
    async fn unknown_manifest(
        &self,
        repository: &Namespace,
        reference: &Reference,
    ) -> RegistryError {
        match self
            .tags
            .list_repository(repository.as_str(), 1, None)
            .await
        {
            Ok(page) if page.tags.is_empty() => RegistryError::name_unknown(repository),
            _ => RegistryError::manifest_unknown(reference),
        }
    }

    async fn put_manifest(
        &self,
        name: &str,
        reference: &str,
        headers: &HeaderMap,
        body: Body,
    ) -> Result<Response> {
        let result = self.store_manifest(name, reference, headers, body).await;
        let outcome = match &result {
            Ok(_) => "stored",
            Err(error) => match error.code() {
                kraken_oci::ErrorCode::ManifestInvalid | kraken_oci::ErrorCode::DigestInvalid => {
                    "invalid"
                }
                kraken_oci::ErrorCode::ManifestBlobUnknown => "blob_unknown",
                _ => "failed",
            },
        };
        metrics::counter!(m::MANIFEST_PUTS, "outcome" => outcome).increment(1);
        result
    }

    async fn store_manifest(
        &self,
        name: &str,
        reference: &str,
        headers: &HeaderMap,
        body: Body,
    ) -> Result<Response> {
        let repository = repository(name)?;
        let reference: Reference = reference.parse()?;
        let body = axum::body::to_bytes(body, MAX_MANIFEST_SIZE)
            .await
            .map_err(|error| {
                RegistryError::manifest_invalid(format!(
                    "cannot read a manifest of at most {MAX_MANIFEST_SIZE} bytes: {error}"
                ))
                .with_status(StatusCode::PAYLOAD_TOO_LARGE)
            })?;
        let content_type = headers.get(CONTENT_TYPE).and_then(|v| v.to_str().ok());
        let manifest = Manifest::parse(content_type, &body)?;
        let digest = Digest::of(&body);
        if let Reference::Digest(named) = &reference
            && *named != digest
        {
            return Err(RegistryError::digest_invalid(format!(
                "the manifest hashes to {digest}, not {named}"
            )));
        }
        self.check_references(&repository, &digest, &manifest)
            .await?;
        self.origins
            .upload_bytes(&repository, &digest, body.clone())
            .await
            .map_err(origins_error)?;
        if let Reference::Tag(tag) = &reference {
            let tagged = TaggedName::new(repository.clone(), tag.clone());
            // Replication rules on build-index decide whether this goes anywhere.
            self.tags
                .put(&tagged, &digest, true)
                .await
                .map_err(|error| match error.code() {
                    Some(Code::FailedPrecondition) => RegistryError::new(
                        kraken_oci::ErrorCode::ManifestBlobUnknown,
                        error.to_string(),
                    ),
                    _ => tag_error(error),
                })?;
            tracing::info!(tag = %tagged, %digest, media_type = manifest.media_type(), "tag pushed");
        }
        let mut response_headers = vec![
            (LOCATION, format!("/v2/{repository}/manifests/{digest}")),
            (DOCKER_CONTENT_DIGEST, digest.to_string()),
            (CONTENT_LENGTH, "0".to_owned()),
        ];
        if let Some(subject) = manifest.subject() {
            response_headers.push((OCI_SUBJECT, subject.digest.to_string()));
        }
        Ok(with_headers(
            StatusCode::CREATED,
            response_headers,
            Body::empty(),
        ))
    }

    /// `MANIFEST_BLOB_UNKNOWN` naming the first blob (in manifest order) the origins lack:
    /// for an index, a child manifest or any config or layer of a child. The same walk
    /// build-index makes before it accepts the tag, done first so a refused push stores
    /// nothing.
    async fn check_references(
        &self,
        repository: &Namespace,
        digest: &Digest,
        manifest: &Manifest,
    ) -> Result<()> {
        match check_manifest_references(&self.origins, repository, digest, manifest).await {
            Ok(_) => Ok(()),
            Err(TagError::Missing { digest, what }) => Err(RegistryError::new(
                kraken_oci::ErrorCode::ManifestBlobUnknown,
                format!("{what} {digest} is not in the registry: push it first"),
            )
            .with_detail(serde_json::json!({ "digest": digest.to_string() }))),
            Err(TagError::Origins(error)) => Err(origins_error(error)),
            Err(other) => Err(RegistryError::manifest_invalid(other.to_string())),
        }
    }

    // -----------------------------------------------------------------------------------------
    // Listings

    async fn tags_list(&self, name: &str, uri: &Uri) -> Result<Response> {
        let repository = repository(name)?;
        let query = route::query(uri);
        let n = query.get("n").and_then(|n| n.parse::<usize>().ok());
        let last = query.get("last").filter(|last| !last.is_empty()).cloned();
        let mut tags = Vec::new();
        let mut next = None;
        match n {
            Some(0) => {}
            Some(n) => {
                let page = self
                    .tags
                    .list_repository(repository.as_str(), page_size(n), last.as_deref())
                    .await
                    .map_err(tag_error)?;
                tags = page.tags;
                next = page.next_page_token.map(|token| (n, token));
            }
            None => {
                let mut token = last.clone();
                loop {
                    let page = self
                        .tags
                        .list_repository(
                            repository.as_str(),
                            MAX_PAGE_SIZE as u32,
                            token.as_deref(),
                        )
                        .await
                        .map_err(tag_error)?;
                    tags.extend(page.tags);
                    match page.next_page_token {
                        Some(next) => token = Some(next),
                        None => break,
                    }
                }
            }
        }
        if tags.is_empty() && last.is_none() && n != Some(0) {
            return Err(RegistryError::name_unknown(&repository));
        }
        let body = serde_json::json!({ "name": repository.as_str(), "tags": tags });
        let mut response = json(StatusCode::OK, body.to_string());
        if let Some((n, token)) = next {
            insert(
                response.headers_mut(),
                LINK,
                &format!("</v2/{repository}/tags/list?n={n}&last={token}>; rel=\"next\""),
            );
        }
        Ok(response)
    }

    async fn catalog(&self, uri: &Uri) -> Result<Response> {
        let query = route::query(uri);
        let n = query.get("n").and_then(|n| n.parse::<usize>().ok());
        let last = query.get("last").filter(|last| !last.is_empty()).cloned();
        // Repositories are the distinct prefixes of the tag names (no repository index exists
        // apart from them), so the whole tag list is walked: the catalog is an admin call.
        let mut repositories = BTreeSet::new();
        let mut token: Option<String> = None;
        let mut walked = 0usize;
        loop {
            let page = self
                .tags
                .list("", MAX_PAGE_SIZE as u32, token.as_deref())
                .await
                .map_err(tag_error)?;
            walked += page.tags.len();
            for tag in &page.tags {
                if let Some((repository, _)) = tag.rsplit_once(':') {
                    repositories.insert(repository.to_owned());
                }
            }
            match page.next_page_token {
                Some(next) if walked < MAX_CATALOG_TAGS => token = Some(next),
                _ => break,
            }
        }
        let start = match &last {
            Some(last) => Bound::Excluded(last.clone()),
            None => Bound::Unbounded,
        };
        let mut listed: Vec<String> = repositories
            .range((start, Bound::Unbounded))
            .take(n.map_or(usize::MAX, |n| n.saturating_add(1)))
            .cloned()
            .collect();
        let more = n.is_some_and(|n| listed.len() > n);
        if let Some(n) = n {
            listed.truncate(n);
        }
        let body = serde_json::json!({ "repositories": listed });
        let mut response = json(StatusCode::OK, body.to_string());
        if let (true, Some(n), Some(last)) = (more, n, listed.last()) {
            insert(
                response.headers_mut(),
                LINK,
                &format!("</v2/_catalog?n={n}&last={last}>; rel=\"next\""),
            );
        }
        Ok(response)
    }
}

// ---------------------------------------------------------------------------------------------
// Helpers

/// Chunks of a download re-offered as an upload source, through a task and a small bounded
/// channel (a few chunks in flight at most). The indirection also gives the upload a concrete
/// stream type: passing the boxed download stream straight through trips a compiler limit on
/// proving the handler future `Send`.
fn relay(
    mut source: kraken_origin::ByteStream,
) -> impl futures::Stream<Item = std::io::Result<Bytes>> + Send + 'static {
    let (sender, receiver) = tokio::sync::mpsc::channel::<std::io::Result<Bytes>>(4);
    tokio::spawn(async move {
        while let Some(chunk) = source.next().await {
            let failed = chunk.is_err();
            if sender
                .send(chunk.map_err(std::io::Error::other))
                .await
                .is_err()
                || failed
            {
                break;
            }
        }
    });
    futures::stream::unfold(receiver, |mut receiver| async move {
        receiver.recv().await.map(|item| (item, receiver))
    })
}

fn repository(name: &str) -> Result<Namespace> {
    Ok(parse_repository(name)?)
}

fn digest_param(text: &str) -> Result<Digest> {
    text.parse::<Digest>().map_err(|error| {
        RegistryError::digest_invalid(format!("invalid digest {:?}: {error}", clip(text)))
    })
}

fn page_size(n: usize) -> u32 {
    n.min(MAX_PAGE_SIZE) as u32
}

fn clip(text: &str) -> String {
    text.chars().take(80).collect()
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
    let (start, end) = range
        .to_str()
        .ok()
        .and_then(parse_content_range)
        .ok_or_else(|| {
            range_error(
                upload,
                format!("Content-Range {range:?} is not <start>-<end>"),
            )
        })?;
    let chunk = end - start + 1;
    if length.is_some_and(|length| length != chunk) {
        return Err(range_error(
            upload,
            format!("Content-Range covers {chunk} bytes but Content-Length is {length:?}"),
        ));
    }
    Ok((Some(start), Some(chunk)))
}

fn parse_content_range(text: &str) -> Option<(u64, u64)> {
    let text = text.trim();
    let text = text.strip_prefix("bytes").map_or(text, str::trim_start);
    let text = text.split('/').next()?.trim();
    let (start, end) = text.split_once('-')?;
    let (start, end) = (start.trim().parse().ok()?, end.trim().parse().ok()?);
    (start <= end).then_some((start, end))
}

/// A single `Range: bytes=…` of a blob of `size` bytes, as an inclusive pair.
fn parse_range(text: &str, size: u64) -> Option<(u64, u64)> {
    let spec = text.trim().strip_prefix("bytes=")?;
    if spec.contains(',') || size == 0 {
        return None;
    }
    let (start, end) = spec.split_once('-')?;
    let (start, end) = (start.trim(), end.trim());
    if start.is_empty() {
        let suffix: u64 = end.parse().ok()?;
        if suffix == 0 {
            return None;
        }
        return Some((size.saturating_sub(suffix), size - 1));
    }
    let start: u64 = start.parse().ok()?;
    let end = if end.is_empty() {
        size - 1
    } else {
        end.parse::<u64>().ok()?.min(size - 1)
    };
    (start <= end).then_some((start, end))
}

/// 416 `BLOB_UPLOAD_INVALID` with the session's current `Range`, so the client can resume.
fn range_error(upload: &Upload, message: String) -> RegistryError {
    RegistryError::blob_upload_invalid(message)
        .with_status(StatusCode::RANGE_NOT_SATISFIABLE)
        .with_header(RANGE, range_value(upload.size()))
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

fn staging_error(error: StagingError) -> RegistryError {
    match error {
        StagingError::UnknownUpload(id) => RegistryError::blob_upload_unknown(id),
        other => {
            tracing::error!(error = %other, "staging failed");
            RegistryError::internal(format!("staging the upload failed: {other}"))
        }
    }
}

fn origins_error(error: OriginsError) -> RegistryError {
    let mut message = error.to_string();
    let mut source = std::error::Error::source(&error);
    while let Some(cause) = source {
        message.push_str(": ");
        message.push_str(&cause.to_string());
        source = cause.source();
    }
    match error {
        OriginsError::NotFound { digest, .. } => RegistryError::blob_unknown(digest),
        OriginsError::Unavailable { .. } => RegistryError::unavailable(message),
        OriginsError::TooLarge { .. } | OriginsError::Corrupt { .. } => {
            RegistryError::internal(message)
        }
    }
}

fn tag_error(error: TagClientError) -> RegistryError {
    match error.code() {
        Some(Code::InvalidArgument) => RegistryError::name_invalid(error.to_string()),
        _ => RegistryError::unavailable(format!("build-index: {error}")),
    }
}

fn range_value(size: u64) -> String {
    format!("0-{}", size.saturating_sub(1))
}

fn upload_location(upload: &Upload) -> String {
    format!("/v2/{}/blobs/uploads/{}", upload.repository, upload.id)
}

fn upload_response(status: StatusCode, upload: &Upload) -> Response {
    with_headers(
        status,
        vec![
            (LOCATION, upload_location(upload)),
            (RANGE, range_value(upload.size())),
            (DOCKER_UPLOAD_UUID, upload.id.clone()),
            (CONTENT_LENGTH, "0".to_owned()),
        ],
        Body::empty(),
    )
}

fn blob_created(repository: &Namespace, digest: &Digest) -> Response {
    with_headers(
        StatusCode::CREATED,
        vec![
            (LOCATION, format!("/v2/{repository}/blobs/{digest}")),
            (DOCKER_CONTENT_DIGEST, digest.to_string()),
            (CONTENT_LENGTH, "0".to_owned()),
        ],
        Body::empty(),
    )
}

fn json(status: StatusCode, body: String) -> Response {
    with_headers(
        status,
        vec![(CONTENT_TYPE, "application/json".to_owned())],
        Body::from(Bytes::from(body)),
    )
}

fn with_headers(status: StatusCode, headers: Vec<(HeaderName, String)>, body: Body) -> Response {
    let mut response = Response::new(body);
    *response.status_mut() = status;
    for (name, value) in headers {
        insert(response.headers_mut(), name, &value);
    }
    response
}

/// Sets a header; values here are built from validated names and digests, so an invalid one
/// is a bug that drops the header rather than fail the response.
fn insert(headers: &mut HeaderMap, name: HeaderName, value: &str) {
    match HeaderValue::from_str(value) {
        Ok(value) => {
            headers.insert(name, value);
        }
        Err(_) => tracing::warn!(header = %name, "dropping an invalid header value"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_ranges_in_docker_and_http_forms() {
        assert_eq!(parse_content_range("0-99"), Some((0, 99)));
        assert_eq!(parse_content_range("bytes 100-199/*"), Some((100, 199)));
        assert_eq!(parse_content_range("bytes=5-5"), None);
        assert_eq!(parse_content_range("9-1"), None);
        assert_eq!(parse_content_range("a-b"), None);
        assert_eq!(parse_content_range("10"), None);
    }

    #[test]
    fn blob_ranges_are_clamped_or_refused() {
        assert_eq!(parse_range("bytes=0-9", 100), Some((0, 9)));
        assert_eq!(parse_range("bytes=90-", 100), Some((90, 99)));
        assert_eq!(parse_range("bytes=90-500", 100), Some((90, 99)));
        assert_eq!(parse_range("bytes=-10", 100), Some((90, 99)));
        assert_eq!(parse_range("bytes=-500", 100), Some((0, 99)));
        assert_eq!(parse_range("bytes=100-", 100), None);
        assert_eq!(parse_range("bytes=0-1,5-6", 100), None);
        assert_eq!(parse_range("bytes=0-0", 0), None);
        assert_eq!(parse_range("items=0-1", 100), None);
        assert_eq!(parse_range("bytes=-0", 100), None);
    }

    #[test]
    fn upload_ranges_name_the_last_byte() {
        assert_eq!(range_value(0), "0-0");
        assert_eq!(range_value(1), "0-0");
        assert_eq!(range_value(100), "0-99");
    }
}
