//! HTTP plumbing of the backends that speak HTTP themselves (GCS JSON API, WebHDFS, `http`,
//! `registry_*`): one way to build a client and one way to turn a failed exchange into a
//! [`BackendError`] the origin can act on (absent, retry later, or report).

use std::fmt;
use std::future::Future;
use std::time::Duration;

use kraken_core::{Digest, Namespace};
use reqwest::{Response, StatusCode};

use super::stream::body_reader;
use super::{BackendBlob, BackendError, SetupError};

/// Longest wait for a TCP (+ TLS) connection: a storage server that does not answer within
/// this is down or unreachable, which callers should learn quickly.
pub(crate) const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How much of an error response's body goes into the error message.
const ERROR_BODY_LIMIT: usize = 1024;

/// A client builder with the process-wide ring rustls provider installed (reqwest is built
/// without one of its own, so there is exactly one provider in the binary).
pub(crate) fn client_builder() -> reqwest::ClientBuilder {
    kraken_tls::install_crypto_provider();
    reqwest::Client::builder()
        .connect_timeout(CONNECT_TIMEOUT)
        .user_agent(concat!("kraken-origin/", env!("CARGO_PKG_VERSION")))
}

pub(crate) fn build_client(builder: reqwest::ClientBuilder) -> Result<reqwest::Client, SetupError> {
    builder.build().map_err(SetupError::HttpClient)
}

/// Parses a configured URL (`endpoint`, `download_url` …) once, at start-up.
pub(crate) fn parse_url(value: &str) -> Result<reqwest::Url, SetupError> {
    reqwest::Url::parse(value).map_err(|error| SetupError::Url {
        value: value.to_owned(),
        source: Box::new(error),
    })
}

/// A request that got no usable response: refused, reset, timed out, or cut off mid-body are
/// all worth retrying. A request that could not even be built, a redirect loop, or a TLS
/// handshake that failed (an untrusted or mismatched certificate) will fail the same way next
/// time: those are configuration problems to report, not outages to wait out.
pub(crate) fn transport_error(
    backend: &'static str,
    operation: impl Into<String>,
    error: reqwest::Error,
) -> BackendError {
    if error.is_builder() || error.is_redirect() || is_tls_failure(&error) {
        BackendError::other(backend, operation, error)
    } else {
        BackendError::unavailable(backend, operation, error)
    }
}

/// Whether a rustls error is somewhere in the chain. An I/O error skips its payload in
/// `source()` (and TLS errors come wrapped in two of them), so those are opened instead.
fn is_tls_failure(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut current = Some(error);
    while let Some(error) = current {
        if error.is::<rustls::Error>() {
            return true;
        }
        current = match error.downcast_ref::<std::io::Error>() {
            Some(io) => io
                .get_ref()
                .map(|inner| inner as &(dyn std::error::Error + 'static)),
            None => error.source(),
        };
    }
    false
}

/// A response with an unexpected status.
#[derive(Debug)]
pub(crate) struct StatusError {
    pub(crate) status: StatusCode,
    /// The start of the body, where servers explain themselves.
    pub(crate) body: String,
}

impl fmt::Display for StatusError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "HTTP {}", self.status)?;
        if !self.body.is_empty() {
            write!(f, ": {}", self.body)?;
        }
        Ok(())
    }
}

impl std::error::Error for StatusError {}

/// Whether a status says "try again later" rather than "this will never work".
pub(crate) fn is_transient_status(status: StatusCode) -> bool {
    status.is_server_error()
        || status == StatusCode::TOO_MANY_REQUESTS
        || status == StatusCode::REQUEST_TIMEOUT
}

/// Consumes an unexpected response into a classified error (5xx, 429 and 408 transient).
pub(crate) async fn status_error(
    backend: &'static str,
    operation: impl Into<String>,
    response: Response,
) -> BackendError {
    let status = response.status();
    let body = error_body(response).await;
    let error = StatusError { status, body };
    if is_transient_status(status) {
        BackendError::unavailable(backend, operation, error)
    } else {
        BackendError::other(backend, operation, error)
    }
}

/// The first [`ERROR_BODY_LIMIT`] bytes of a body, lossily as text; reading stops there, so a
/// large error page (or a misrouted blob) is never collected.
pub(crate) async fn error_body(mut response: Response) -> String {
    let mut body = Vec::new();
    while body.len() < ERROR_BODY_LIMIT {
        match response.chunk().await {
            Ok(Some(chunk)) => body.extend_from_slice(&chunk),
            Ok(None) | Err(_) => break,
        }
    }
    body.truncate(ERROR_BODY_LIMIT);
    String::from_utf8_lossy(&body).trim().to_owned()
}

/// Reads a small JSON response (API metadata, never blob content), at most `limit` bytes.
pub(crate) async fn json_body<T: serde::de::DeserializeOwned>(
    backend: &'static str,
    operation: &str,
    mut response: Response,
    limit: usize,
) -> Result<T, BackendError> {
    let mut body = Vec::new();
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|error| transport_error(backend, operation.to_owned(), error))?
    {
        body.extend_from_slice(&chunk);
        if body.len() > limit {
            return Err(BackendError::other(
                backend,
                operation.to_owned(),
                format!("the response is larger than {limit} bytes"),
            ));
        }
    }
    serde_json::from_slice(&body)
        .map_err(|error| BackendError::other(backend, operation.to_owned(), error))
}

/// The `Content-Length` of a response, if the server sent one.
pub(crate) fn content_length(response: &Response) -> Option<u64> {
    response
        .headers()
        .get(reqwest::header::CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse().ok())
}

/// A blob download's response as the backend contract wants it: 404 is
/// [`BackendError::NotFound`]; a success streams its body, sized by its `Content-Length` or,
/// for a chunked response, by what `size_of` then finds (`None`: the blob vanished meanwhile,
/// also NotFound); anything else is the server's error.
pub(crate) async fn blob_download<F, Fut>(
    backend: &'static str,
    namespace: &Namespace,
    digest: &Digest,
    operation: String,
    response: Response,
    size_of: F,
) -> Result<BackendBlob, BackendError>
where
    F: FnOnce() -> Fut,
    Fut: Future<Output = Result<Option<u64>, BackendError>>,
{
    match response.status() {
        StatusCode::NOT_FOUND => Err(BackendError::not_found(backend, namespace, digest)),
        status if status.is_success() => {
            let size = match content_length(&response) {
                Some(size) => size,
                None => size_of()
                    .await?
                    .ok_or_else(|| BackendError::not_found(backend, namespace, digest))?,
            };
            Ok(BackendBlob {
                size,
                reader: body_reader(response),
            })
        }
        _ => Err(status_error(backend, operation, response).await),
    }
}
