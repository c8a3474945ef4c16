//! `http:` — read-only blobs from a URL template (`download_url` with `%s` for the digest's
//! hex), e.g. a build system's artifact server. Transient failures (refused connections,
//! timeouts, 5xx, 429) are retried with exponential backoff when `download_backoff` is enabled;
//! a 404 is an answer, never retried.

use std::future::Future;

use async_trait::async_trait;
use kraken_config::backend::{BackoffConfig, HttpBackendConfig};
use kraken_core::{Digest, Namespace};
use reqwest::StatusCode;

use super::request::{
    blob_download, build_client, client_builder, content_length, parse_url, status_error,
    transport_error,
};
use super::{Backend, BackendBlob, BackendError, SetupError, StoredBlob, UploadSource};

const KIND: &str = "http";

/// Downloads by digest from an HTTP server.
#[derive(Debug, Clone)]
pub struct HttpBackend {
    client: reqwest::Client,
    download_url: String,
    backoff: BackoffConfig,
}

impl HttpBackend {
    pub fn new(config: &HttpBackendConfig) -> Result<Self, SetupError> {
        // A URL that does not parse with a digest in it never will: fail at start-up.
        parse_url(&config.download_url.replacen("%s", &"0".repeat(64), 1))?;
        Ok(Self {
            client: build_client(client_builder().timeout(config.timeout))?,
            download_url: config.download_url.clone(),
            backoff: config.download_backoff.clone(),
        })
    }

    fn url(&self, digest: &Digest) -> String {
        self.download_url.replacen("%s", &digest.hex(), 1)
    }

    /// Runs `attempt` until it succeeds, fails for good, or the retries are spent.
    async fn with_backoff<T, F, Fut>(
        &self,
        digest: &Digest,
        mut attempt: F,
    ) -> Result<T, BackendError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, BackendError>>,
    {
        let mut delay = self.backoff.initial;
        let mut retries = 0;
        loop {
            match attempt().await {
                Err(error)
                    if error.is_transient()
                        && self.backoff.enabled
                        && retries < self.backoff.max_retries =>
                {
                    retries += 1;
                    tracing::warn!(
                        %digest,
                        retry = retries,
                        max_retries = self.backoff.max_retries,
                        delay = ?delay,
                        error = %error,
                        "http backend request failed; retrying"
                    );
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(self.backoff.max);
                }
                result => return result,
            }
        }
    }

    async fn head(&self, digest: &Digest) -> Result<Option<u64>, BackendError> {
        let operation = format!("HEAD blob {digest}");
        let response = self
            .client
            .head(self.url(digest))
            .send()
            .await
            .map_err(|error| transport_error(KIND, operation.clone(), error))?;
        match response.status() {
            StatusCode::NOT_FOUND => Ok(None),
            status if status.is_success() => content_length(&response).map(Some).ok_or_else(|| {
                BackendError::other(KIND, operation, "the response has no Content-Length")
            }),
            _ => Err(status_error(KIND, operation, response).await),
        }
    }

    async fn get(
        &self,
        namespace: &Namespace,
        digest: &Digest,
    ) -> Result<BackendBlob, BackendError> {
        let operation = format!("GET blob {digest}");
        let response = self
            .client
            .get(self.url(digest))
            .send()
            .await
            .map_err(|error| transport_error(KIND, operation.clone(), error))?;
        // A chunked response: the size is asked for separately.
        blob_download(KIND, namespace, digest, operation, response, || {
            self.head(digest)
        })
        .await
    }
}

#[async_trait]
impl Backend for HttpBackend {
    fn kind(&self) -> &'static str {
        KIND
    }

    async fn stat(
        &self,
        _namespace: &Namespace,
        digest: &Digest,
    ) -> Result<Option<u64>, BackendError> {
        self.with_backoff(digest, || self.head(digest)).await
    }

    async fn upload(
        &self,
        _namespace: &Namespace,
        _digest: &Digest,
        _source: UploadSource,
        _size: u64,
    ) -> Result<(), BackendError> {
        Err(BackendError::ReadOnly { backend: KIND })
    }

    async fn download(
        &self,
        namespace: &Namespace,
        digest: &Digest,
    ) -> Result<BackendBlob, BackendError> {
        self.with_backoff(digest, || self.get(namespace, digest))
            .await
    }

    async fn list(&self, _namespace_prefix: &str) -> Result<Vec<StoredBlob>, BackendError> {
        Err(BackendError::Unsupported {
            backend: KIND,
            operation: "list blobs (a URL template cannot be enumerated)",
        })
    }
}
