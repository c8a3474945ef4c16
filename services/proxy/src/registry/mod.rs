//! The Docker Registry v2 / OCI distribution API: push (monolithic, chunked and streamed blob
//! uploads, cross-repository mounts, manifests with reference checks) and pull (blobs with
//! `Range`, manifests by tag or digest), tag listing and the catalog.
//!
//! Nothing is stored here for good: blobs are staged on local disk until verified, then
//! streamed to their owning origins; manifests are blobs too, stored under the repository's
//! namespace; tags go to build-index. A request the registry refuses leaves every store as it
//! was: checks run before anything is written.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{ConnectInfo, State};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Router};
use bytes::Bytes;
use futures::StreamExt;
use http::{HeaderMap, Method, StatusCode, Uri};
use kraken_core::{Digest, Namespace};
use kraken_oci::{RegistryError, Route, parse_repository, response};
use kraken_originclient::{
    ByteStream, OriginClusterClient, OriginsError, ReferenceError, check_manifest_references,
};
use kraken_tagclient::{MAX_TAG_PAGE_SIZE as MAX_PAGE_SIZE, TagClient, TagClientError};
use tokio::sync::Semaphore;
use tonic::Code;

use crate::auth::{Caller, Needs, RegistryAuth, TOKEN_PATH, request_host};
use crate::metrics as m;
use crate::staging::Staging;

mod blobs;
mod listings;
mod manifests;
mod uploads;

/// What the registry handlers share.
#[derive(Debug)]
pub(crate) struct Registry {
    pub(crate) origins: OriginClusterClient,
    pub(crate) tags: TagClient,
    pub(crate) staging: Staging,
    /// Requests in flight; beyond the limit new ones are shed with 429 instead of queued.
    pub(crate) permits: Semaphore,
    /// Who may pull and push.
    pub(crate) auth: RegistryAuth,
}

type Result<T, E = RegistryError> = std::result::Result<T, E>;

/// The registry's router: every `/v2/…` path goes to one dispatcher (repository names hold
/// `/`, which path patterns cannot express in the middle of a route).
pub(crate) fn router(registry: Arc<Registry>) -> Router {
    Router::new()
        .route("/v2", axum::routing::any(handle))
        .route("/v2/", axum::routing::any(handle))
        .route("/v2/{*rest}", axum::routing::any(handle))
        .route(TOKEN_PATH, axum::routing::get(token).post(token))
        .fallback(|| async {
            RegistryError::unsupported("not a registry API path").with_status(StatusCode::NOT_FOUND)
        })
        .with_state(registry)
}

async fn handle(
    State(registry): State<Arc<Registry>>,
    connect_info: Option<Extension<ConnectInfo<SocketAddr>>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let route = Route::parse(uri.path());
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
        // Upload sessions are budgeted per client address. The server shell always sets it;
        // a router served some other way counts every client as one.
        let client = connect_info.map_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED), |info| {
            info.0.0.ip().to_canonical()
        });
        let needs = Needs::of(&method, &route, uri.query());
        let host = request_host(&uri, &headers);
        let caller = registry.auth.caller(&headers, host).await?;
        registry.auth.permit(&caller, &needs, host)?;
        let response = dispatch(&registry, &method, route, &uri, &headers, body, client).await?;
        if needs.writes() {
            record_write(&caller, &method, &route);
        }
        Ok(response)
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
    response::set_api_version(response.headers_mut());
    metrics::counter!(
        m::REQUESTS,
        "method" => method.to_string(),
        "route" => kind,
        "status" => response.status().as_u16().to_string()
    )
    .increment(1);
    response
}

/// Every push and tag change is logged with its user and counted.
fn record_write(caller: &Caller, method: &Method, route: &Route<'_>) {
    let user = caller.name();
    metrics::counter!(m::WRITES, "user" => user.to_owned(), "route" => route.kind()).increment(1);
    if let Route::Manifest { name, reference } = route {
        tracing::info!(user, %method, repository = name, reference, "manifest pushed");
    } else {
        tracing::debug!(user, %method, route = %route, "registry write");
    }
}

/// `GET|POST /auth/token`: a bearer token for the caller (a user by HTTP basic, or anonymous)
/// covering the `scope`s it asks for and may have. POST takes the OAuth2 form
/// (`grant_type=password`, `username`, `password`, `scope`).
async fn token(
    State(registry): State<Arc<Registry>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let result = async {
        let mut scopes = Vec::new();
        let host = request_host(&uri, &headers);
        let mut caller = registry.auth.caller(&headers, host).await?;
        let mut form_user = None;
        let query = uri.query().unwrap_or_default().as_bytes().to_vec();
        let form = if method == Method::POST {
            body.to_vec()
        } else {
            Vec::new()
        };
        for (key, value) in form_urlencoded::parse(&query).chain(form_urlencoded::parse(&form)) {
            match &*key {
                "scope" => scopes.push(value.into_owned()),
                "username" => form_user = Some(value.into_owned()),
                "password" => {
                    if let Some(user) = form_user.take() {
                        caller = registry
                            .auth
                            .caller(&basic_header(&user, &value), host)
                            .await?;
                    }
                }
                _ => {}
            }
        }
        let answer = registry.auth.issue(&caller, &scopes)?;
        Ok::<_, RegistryError>(axum::Json(answer).into_response())
    }
    .await;
    result.unwrap_or_else(IntoResponse::into_response)
}

/// Headers carrying `user:password` as HTTP basic, to check form credentials the same way.
fn basic_header(user: &str, password: &str) -> HeaderMap {
    use base64::Engine;
    let encoded = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
    let mut headers = HeaderMap::new();
    if let Ok(value) = http::HeaderValue::from_str(&format!("Basic {encoded}")) {
        headers.insert(http::header::AUTHORIZATION, value);
    }
    headers
}

async fn dispatch(
    registry: &Registry,
    method: &Method,
    route: Route<'_>,
    uri: &Uri,
    headers: &HeaderMap,
    body: Body,
    client: IpAddr,
) -> Result<Response> {
    let head = method == Method::HEAD;
    match (method.clone(), route) {
        (Method::GET | Method::HEAD, Route::Base) => Ok(response::api_base()),
        (Method::GET, Route::Catalog) => registry.catalog(uri).await,
        (Method::GET, Route::TagsList { name }) => registry.tags_list(name, uri).await,
        (Method::GET | Method::HEAD, Route::Manifest { name, reference }) => {
            registry.get_manifest(name, reference, head).await
        }
        (Method::PUT, Route::Manifest { name, reference }) => {
            registry.put_manifest(name, reference, headers, body).await
        }
        (Method::GET | Method::HEAD, Route::Blob { name, digest }) => {
            registry.get_blob(name, digest, headers, head).await
        }
        (Method::POST, Route::UploadStart { name }) => {
            registry
                .start_upload(name, uri, headers, body, client)
                .await
        }
        (Method::GET | Method::HEAD, Route::Upload { name, id }) => {
            registry.upload_status(name, id).await
        }
        (Method::PATCH, Route::Upload { name, id }) => {
            registry.patch_upload(name, id, headers, body).await
        }
        (Method::PUT, Route::Upload { name, id }) => {
            registry.put_upload(name, id, uri, headers, body).await
        }
        (Method::DELETE, Route::Upload { name, id }) => registry.cancel_upload(name, id).await,
        (Method::DELETE, Route::Manifest { .. } | Route::Blob { .. }) => Err(
            RegistryError::unsupported("deletion is not supported by this registry"),
        ),
        (method, route) => Err(RegistryError::unsupported(format!(
            "{method} is not supported on the {} endpoint",
            route.kind()
        ))),
    }
}

// ---------------------------------------------------------------------------------------------
// Helpers

/// Chunks of a download re-offered as an upload source, through a task and a small bounded
/// channel (a few chunks in flight at most). The indirection also gives the upload a concrete
/// stream type: passing the boxed download stream straight through trips a compiler limit on
/// proving the handler future `Send`.
fn relay(
    mut source: ByteStream,
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

fn clip(text: &str) -> String {
    text.chars().take(80).collect()
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
