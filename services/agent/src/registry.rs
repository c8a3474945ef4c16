//! The agent's read-only Docker Registry v2 / OCI distribution API: what `docker pull`,
//! containerd, podman and skopeo talk to on every host.
//!
//! - `GET /v2/` — the API version check;
//! - `GET|HEAD /v2/<name>/manifests/<tag|digest>` — tags resolved by the build-index on every
//!   request (mutable tags are never served stale), bodies fetched through the swarm like any
//!   blob, served with the media type their JSON declares;
//! - `GET|HEAD /v2/<name>/blobs/<digest>` — streamed while verified pieces arrive, single
//!   `Range` requests answered with `206`;
//! - `GET /v2/<name>/tags/list` — with `n` and `last` pagination and a `Link` header.
//!
//! Only clients from `allowed_cidrs` are served (403 `DENIED` otherwise). Errors are the
//! registry's JSON (`BLOB_UNKNOWN`, `MANIFEST_UNKNOWN`, `NAME_INVALID`, …). Pushes go to the
//! proxy: every write method answers `UNSUPPORTED`.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::{ConnectInfo, Path, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};
use futures::TryStreamExt;
use kraken_config::agent::AgentConfig;
use kraken_core::{Digest, Namespace};
use kraken_oci::headers::{API_VERSION, DOCKER_CONTENT_DIGEST, DOCKER_DISTRIBUTION_API_VERSION};
use kraken_oci::{ErrorCode, Reference, RegistryError, TaggedName, parse_repository};
use serde::Deserialize;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::error::AgentError;
use crate::fetch::Fetcher;
use crate::metrics as m;
use kraken_tagclient::{TagClient, TagClientError};

/// Page size of `tags/list` when the client gives no `n`.
const DEFAULT_TAG_PAGE: u32 = 1000;

/// What the handlers share.
#[derive(Clone)]
pub(crate) struct RegistryState {
    pub(crate) fetcher: Arc<Fetcher>,
    pub(crate) tags: Option<TagClient>,
    pub(crate) config: Arc<AgentConfig>,
}

/// Serves the registry API on `listener` until `shutdown` fires.
pub(crate) fn spawn(
    listener: TcpListener,
    state: RegistryState,
    shutdown: CancellationToken,
) -> JoinHandle<io::Result<()>> {
    let app = router(state).into_make_service_with_connect_info::<SocketAddr>();
    tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(async move { shutdown.cancelled_owned().await })
            .await
    })
}

fn router(state: RegistryState) -> Router {
    Router::new()
        .route("/v2", get(api_version))
        .route("/v2/", get(api_version))
        .route("/v2/{*path}", any(dispatch))
        .fallback(|| async {
            RegistryError::new(ErrorCode::Unsupported, "not a registry API path")
                .with_status(StatusCode::NOT_FOUND)
        })
        .layer(middleware::from_fn_with_state(state.clone(), allow_cidrs))
        .with_state(state)
}

/// Rejects clients outside `allowed_cidrs` before any work is done for them.
async fn allow_cidrs(
    State(state): State<RegistryState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    request: Request,
    next: Next,
) -> Response {
    if !state.config.is_allowed(peer.ip()) {
        tracing::warn!(%peer, "registry request from outside allowed_cidrs refused");
        return RegistryError::denied(format!("{} is not in the agent's allowed_cidrs", peer.ip()))
            .into_response();
    }
    let mut response = next.run(request).await;
    response.headers_mut().insert(
        DOCKER_DISTRIBUTION_API_VERSION,
        HeaderValue::from_static(API_VERSION),
    );
    response
}

async fn api_version() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], "{}").into_response()
}

/// The query of `tags/list`.
#[derive(Debug, Default, Deserialize)]
struct TagsQuery {
    n: Option<u32>,
    last: Option<String>,
}

/// One request, as parsed from the path after `/v2/`.
#[derive(Debug, PartialEq, Eq)]
enum Route<'a> {
    Manifest { name: &'a str, reference: &'a str },
    Blob { name: &'a str, digest: &'a str },
    Tags { name: &'a str },
}

/// Splits a `/v2/` path: repository names contain slashes, so the route is found from the
/// right (`…/manifests/<ref>`, `…/blobs/<digest>`, `…/tags/list`).
fn route(path: &str) -> Option<Route<'_>> {
    if let Some(name) = path.strip_suffix("/tags/list") {
        return Some(Route::Tags { name });
    }
    if let Some((name, reference)) = path.rsplit_once("/manifests/") {
        return Some(Route::Manifest { name, reference });
    }
    if let Some((name, digest)) = path.rsplit_once("/blobs/") {
        return Some(Route::Blob { name, digest });
    }
    None
}

async fn dispatch(
    State(state): State<RegistryState>,
    Path(path): Path<String>,
    Query(query): Query<TagsQuery>,
    method: Method,
    headers: HeaderMap,
) -> Response {
    let head = method == Method::HEAD;
    if method != Method::GET && !head {
        return record(
            "write",
            RegistryError::unsupported("this is an agent's read-only registry: push to the proxy")
                .with_status(StatusCode::METHOD_NOT_ALLOWED)
                .into_response(),
        );
    }
    let (label, result) = match route(&path) {
        Some(Route::Manifest { name, reference }) => {
            ("manifest", manifest(&state, name, reference, head).await)
        }
        Some(Route::Blob { name, digest }) => {
            ("blob", blob(&state, name, digest, head, &headers).await)
        }
        Some(Route::Tags { name }) => ("tags", tags(&state, name, query).await),
        None => (
            "other",
            Err(RegistryError::new(
                ErrorCode::Unsupported,
                format!("`/v2/{path}` is not an API this agent serves"),
            )
            .with_status(StatusCode::NOT_FOUND)),
        ),
    };
    record(label, result.unwrap_or_else(IntoResponse::into_response))
}

fn record(route: &'static str, response: Response) -> Response {
    metrics::counter!(m::REGISTRY_REQUESTS, "route" => route, "status" => response.status().as_str().to_owned())
        .increment(1);
    response
}

fn repository(name: &str) -> Result<Namespace, RegistryError> {
    Ok(parse_repository(name)?)
}

async fn manifest(
    state: &RegistryState,
    name: &str,
    reference: &str,
    head: bool,
) -> Result<Response, RegistryError> {
    let namespace = repository(name)?;
    let digest = match reference.parse::<Reference>()? {
        Reference::Digest(digest) => digest,
        Reference::Tag(tag) => {
            let Some(tags) = &state.tags else {
                return Err(RegistryError::unsupported(
                    "this agent has no build-index configured (`build_index.hosts`): pull by \
                     digest, or configure one to resolve tags",
                ));
            };
            tags.resolve(&TaggedName::new(namespace.clone(), tag.clone()))
                .await
                .map_err(|error| match error {
                    TagClientError::NotFound { .. } => {
                        RegistryError::manifest_unknown(format!("{name}:{}", tag.as_str()))
                    }
                    error if error.is_unavailable() => {
                        RegistryError::unavailable(error.to_string())
                    }
                    other => RegistryError::internal(other.to_string()),
                })?
        }
    };
    let (body, manifest) = state
        .fetcher
        .manifest(&namespace, &digest)
        .await
        .map_err(|error| match error {
            AgentError::NotFound { .. } => {
                RegistryError::manifest_unknown(format!("{name}@{digest}"))
            }
            AgentError::NotAManifest { reason, .. } => {
                RegistryError::manifest_unknown(format!("{name}@{digest}"))
                    .with_detail(format!("the blob is not a manifest: {reason}"))
            }
            other => agent_error(other),
        })?;
    let media_type = manifest.media_type();
    let headers = [
        (header::CONTENT_TYPE, media_type.to_owned()),
        (DOCKER_CONTENT_DIGEST, digest.to_string()),
        (header::ETAG, format!("\"{digest}\"")),
        (header::CONTENT_LENGTH, body.len().to_string()),
    ];
    if head {
        return Ok((headers, Body::empty()).into_response());
    }
    Ok((headers, body).into_response())
}

async fn blob(
    state: &RegistryState,
    name: &str,
    digest: &str,
    head: bool,
    request_headers: &HeaderMap,
) -> Result<Response, RegistryError> {
    let namespace = repository(name)?;
    let digest: Digest = digest
        .parse()
        .map_err(|error| RegistryError::digest_invalid(format!("`{digest}`: {error}")))?;
    let blob_error = |error: AgentError| match error {
        AgentError::NotFound { .. } => RegistryError::blob_unknown(digest),
        other => agent_error(other),
    };
    let common = |length: u64| {
        [
            (header::CONTENT_TYPE, "application/octet-stream".to_owned()),
            (DOCKER_CONTENT_DIGEST, digest.to_string()),
            (header::ETAG, format!("\"{digest}\"")),
            (header::ACCEPT_RANGES, "bytes".to_owned()),
            (header::CONTENT_LENGTH, length.to_string()),
        ]
    };
    if head {
        // The size comes from the store or the metainfo: a HEAD never starts a download.
        let size = state
            .fetcher
            .size(&namespace, &digest)
            .await
            .map_err(blob_error)?;
        return Ok((common(size), Body::empty()).into_response());
    }
    let range = match request_headers.get(header::RANGE) {
        None => None,
        Some(value) => Some(ByteRange::parse(value.to_str().unwrap_or_default())?),
    };
    let (offset, length) = match range {
        None => (0, None),
        Some(range) => {
            // HTTP range semantics need the size first: an end past the blob is clamped, a
            // start at or past it is unsatisfiable.
            let size = state
                .fetcher
                .size(&namespace, &digest)
                .await
                .map_err(blob_error)?;
            match range.resolve(size) {
                Some(resolved) => resolved,
                None => {
                    return Err(RegistryError::range_invalid(format!(
                        "range {range} is outside blob {digest} of {size} bytes"
                    ))
                    .with_header(header::CONTENT_RANGE, format!("bytes */{size}")));
                }
            }
        }
    };
    let stream = state
        .fetcher
        .fetch(&namespace, &digest, offset, length, "registry")
        .await
        .map_err(blob_error)?;
    let (size, start, len) = (stream.blob_size(), stream.offset(), stream.len());
    // A failure mid-stream aborts the response: the client sees a short body, never bytes that
    // failed verification.
    let body = Body::from_stream(stream.map_err(io::Error::other));
    if range.is_none() {
        return Ok((common(len), body).into_response());
    }
    let end = (start + len).saturating_sub(1);
    let mut response = (StatusCode::PARTIAL_CONTENT, common(len), body).into_response();
    if let Ok(value) = HeaderValue::from_str(&format!("bytes {start}-{end}/{size}")) {
        response.headers_mut().insert(header::CONTENT_RANGE, value);
    }
    Ok(response)
}

async fn tags(
    state: &RegistryState,
    name: &str,
    query: TagsQuery,
) -> Result<Response, RegistryError> {
    let namespace = repository(name)?;
    let Some(tags) = &state.tags else {
        return Err(RegistryError::unsupported(
            "this agent has no build-index configured (`build_index.hosts`)",
        ));
    };
    let page_size = query
        .n
        .unwrap_or(DEFAULT_TAG_PAGE)
        .clamp(1, DEFAULT_TAG_PAGE);
    let page = tags
        .list_repository(namespace.as_str(), page_size, query.last.as_deref())
        .await
        .map_err(|error| match error {
            error if error.is_unavailable() => RegistryError::unavailable(error.to_string()),
            other => RegistryError::internal(other.to_string()),
        })?;
    if page.tags.is_empty() && query.last.is_none() {
        return Err(RegistryError::name_unknown(name));
    }
    let body = serde_json::json!({ "name": name, "tags": page.tags });
    let mut response = axum::Json(body).into_response();
    if let Some(next) = &page.next_page_token
        && let Ok(link) = HeaderValue::from_str(&format!(
            "</v2/{name}/tags/list?n={page_size}&last={next}>; rel=\"next\""
        ))
    {
        response.headers_mut().insert(header::LINK, link);
    }
    Ok(response)
}

/// An agent failure as the registry reports it.
fn agent_error(error: AgentError) -> RegistryError {
    let code = error.code();
    let message = format!("{}", ErrorChain(&error));
    match code {
        tonic::Code::NotFound => {
            RegistryError::new(ErrorCode::BlobUnknown, message).with_status(StatusCode::NOT_FOUND)
        }
        tonic::Code::Unavailable | tonic::Code::DeadlineExceeded | tonic::Code::Aborted => {
            RegistryError::unavailable(message)
        }
        tonic::Code::InvalidArgument => RegistryError::digest_invalid(message),
        _ => RegistryError::internal(message),
    }
}

/// An error with its sources, `a: b: c`.
struct ErrorChain<'a>(&'a (dyn std::error::Error + 'static));

impl std::fmt::Display for ErrorChain<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)?;
        let mut source = self.0.source();
        while let Some(error) = source {
            write!(f, ": {error}")?;
            source = error.source();
        }
        Ok(())
    }
}

/// A single byte range of a `Range` header (multipart ranges are not served).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ByteRange {
    /// `bytes=start-` or `bytes=start-end` (inclusive).
    From { start: u64, end: Option<u64> },
    /// `bytes=-n`: the last `n` bytes.
    Suffix(u64),
}

impl ByteRange {
    /// `(offset, Some(length))` within a blob of `size` bytes, `None` when unsatisfiable.
    fn resolve(self, size: u64) -> Option<(u64, Option<u64>)> {
        match self {
            Self::From { start, .. } if start >= size => None,
            Self::From { start, end } => {
                let end = end.map_or(size - 1, |end| end.min(size - 1));
                Some((start, Some(end - start + 1)))
            }
            Self::Suffix(0) => None,
            Self::Suffix(n) => {
                let n = n.min(size);
                (n > 0).then_some((size - n, Some(n)))
            }
        }
    }

    fn parse(value: &str) -> Result<Self, RegistryError> {
        let invalid = || {
            RegistryError::range_invalid(format!(
                "Range `{value}` is not a single `bytes=start-end`, `bytes=start-` or `bytes=-n`"
            ))
        };
        let spec = value.trim().strip_prefix("bytes=").ok_or_else(invalid)?;
        let (start, end) = spec.split_once('-').ok_or_else(invalid)?;
        let number = |s: &str| s.trim().parse::<u64>().map_err(|_| invalid());
        match (start.trim().is_empty(), end.trim().is_empty()) {
            (true, false) => Ok(Self::Suffix(number(end)?)),
            (false, true) => Ok(Self::From {
                start: number(start)?,
                end: None,
            }),
            (false, false) => {
                let (start, end) = (number(start)?, number(end)?);
                if end < start {
                    return Err(invalid());
                }
                Ok(Self::From {
                    start,
                    end: Some(end),
                })
            }
            (true, true) => Err(invalid()),
        }
    }
}

impl std::fmt::Display for ByteRange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::From {
                start,
                end: Some(end),
            } => write!(f, "bytes={start}-{end}"),
            Self::From { start, end: None } => write!(f, "bytes={start}-"),
            Self::Suffix(n) => write!(f, "bytes=-{n}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_are_found_from_the_right() {
        assert_eq!(
            route("library/ubuntu/manifests/latest"),
            Some(Route::Manifest {
                name: "library/ubuntu",
                reference: "latest"
            })
        );
        // A repository may itself contain `blobs` or `manifests` as a component.
        assert_eq!(
            route("team/blobs/app/blobs/sha256:ab"),
            Some(Route::Blob {
                name: "team/blobs/app",
                digest: "sha256:ab"
            })
        );
        assert_eq!(route("a/b/tags/list"), Some(Route::Tags { name: "a/b" }));
        assert_eq!(route("_catalog"), None);
    }

    #[test]
    fn byte_ranges() {
        assert_eq!(
            ByteRange::parse("bytes=0-99").ok(),
            Some(ByteRange::From {
                start: 0,
                end: Some(99)
            })
        );
        assert_eq!(
            ByteRange::parse("bytes=100-").ok(),
            Some(ByteRange::From {
                start: 100,
                end: None
            })
        );
        assert_eq!(
            ByteRange::parse("bytes=-5").ok(),
            Some(ByteRange::Suffix(5))
        );
        for bad in [
            "bytes=5-1",
            "bytes=-",
            "items=0-1",
            "bytes=a-b",
            "bytes=0-1,3-4",
        ] {
            let error = ByteRange::parse(bad).unwrap_err();
            assert_eq!(error.code(), ErrorCode::RangeInvalid, "{bad}");
            assert!(error.message().contains(bad), "{bad}: {}", error.message());
        }
    }
}
