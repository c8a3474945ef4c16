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
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};
use futures::TryStreamExt;
use kraken_config::agent::AgentConfig;
use kraken_core::{Digest, Namespace};
use kraken_oci::response::{self, BlobResponse, ManifestResponse};
use kraken_oci::{
    ByteRange, ByteSpan, ErrorCode, Reference, RegistryError, Route, TaggedName, parse_repository,
};
use kraken_transport::http::HttpServerLimits;
use serde::Deserialize;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;

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
    tls: Option<Arc<rustls::ServerConfig>>,
    shutdown: CancellationToken,
) -> JoinHandle<io::Result<()>> {
    let limits = HttpServerLimits::from(&state.config.limits.registry);
    tokio::spawn(kraken_transport::http::serve(
        listener,
        router(state),
        limits,
        tls,
        shutdown.cancelled_owned(),
    ))
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
    response::set_api_version(response.headers_mut());
    response
}

async fn api_version() -> Response {
    response::api_base()
}

/// The query of `tags/list`.
#[derive(Debug, Default, Deserialize)]
struct TagsQuery {
    n: Option<u32>,
    last: Option<String>,
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
    // `path` is what `/v2/{*path}` captured (percent-decoded by axum); only the read subset of
    // the grammar is served here, uploads and the catalog are the proxy's.
    let route = Route::parse_tail(&path);
    let label = match route {
        Some(Route::Manifest { .. }) => "manifest",
        Some(Route::Blob { .. }) => "blob",
        Some(Route::TagsList { .. }) => "tags",
        _ => "other",
    };
    // One span per request: the root of a pull's trace (or a child of the runtime's, when it
    // sent a `traceparent`), continued by the tracker and origins the pull reaches.
    let span = tracing::info_span!(
        "registry",
        otel.kind = "server",
        otel.name = format!("registry {label}"),
        http.request.method = %method,
        route = label,
    );
    kraken_transport::observe::set_parent_from_headers(&span, &headers);
    let result = async {
        match route {
            Some(Route::Manifest { name, reference }) => {
                manifest(&state, name, reference, head).await
            }
            Some(Route::Blob { name, digest }) => blob(&state, name, digest, head, &headers).await,
            Some(Route::TagsList { name }) => tags(&state, name, query).await,
            _ => Err(RegistryError::new(
                ErrorCode::Unsupported,
                format!("`/v2/{path}` is not an API this agent serves"),
            )
            .with_status(StatusCode::NOT_FOUND)),
        }
    }
    .instrument(span)
    .await;
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
    Ok(ManifestResponse::new(&digest, manifest.media_type())
        .etag()
        .body(body, head))
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
    if head {
        // The size comes from the store or the metainfo: a HEAD never starts a download.
        let size = state
            .fetcher
            .size(&namespace, &digest)
            .await
            .map_err(blob_error)?;
        return Ok(BlobResponse::new(&digest, size).etag().body(Body::empty()));
    }
    let range = match request_headers.get(header::RANGE) {
        None => None,
        Some(value) => Some(ByteRange::parse(value.to_str().unwrap_or_default())?),
    };
    let requested = match range {
        None => None,
        Some(range) => {
            // HTTP range semantics need the size first: an end past the blob is clamped, a
            // start at or past it is unsatisfiable.
            let size = state
                .fetcher
                .size(&namespace, &digest)
                .await
                .map_err(blob_error)?;
            let span = range.resolve(size).ok_or_else(|| {
                RegistryError::range_not_satisfiable(
                    format!("range {range} is outside blob {digest} of {size} bytes"),
                    size,
                )
            })?;
            Some(span)
        }
    };
    let (offset, length) = requested.map_or((0, None), |span| (span.start(), Some(span.len())));
    let stream = state
        .fetcher
        .fetch(&namespace, &digest, offset, length, "registry")
        .await
        .map_err(blob_error)?;
    let (size, start, len) = (stream.blob_size(), stream.offset(), stream.len());
    // A failure mid-stream aborts the response: the client sees a short body, never bytes that
    // failed verification.
    let body = Body::from_stream(stream.map_err(io::Error::other));
    let response = match requested {
        None => BlobResponse::new(&digest, len),
        // The span the stream actually covers (the one asked for, unless the blob changed
        // size under us).
        Some(span) => BlobResponse::new(&digest, size)
            .span(Some(ByteSpan::with_len(start, len).unwrap_or(span))),
    };
    Ok(response.etag().body(body))
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
    let next = page
        .next_page_token
        .as_deref()
        .map(|last| response::next_link(&Route::TagsList { name }, page_size, last));
    Ok(response::tag_list(name, &page.tags, next))
}

/// An agent failure as the registry reports it.
fn agent_error(error: AgentError) -> RegistryError {
    let code = error.code();
    let message = kraken_core::error_chain(&error);
    match code {
        tonic::Code::NotFound => {
            RegistryError::new(ErrorCode::BlobUnknown, message).with_status(StatusCode::NOT_FOUND)
        }
        // A full disk on this host included: the runtime's mirror config falls back to the
        // upstream on a 503.
        tonic::Code::Unavailable
        | tonic::Code::DeadlineExceeded
        | tonic::Code::Aborted
        | tonic::Code::ResourceExhausted => RegistryError::unavailable(message),
        tonic::Code::InvalidArgument => RegistryError::digest_invalid(message),
        _ => RegistryError::internal(message),
    }
}
