//! `gcs:` — a Google Cloud Storage bucket through the JSON API, with OAuth2 access tokens
//! from `gcp_auth`: a service account key from `auth.gcs[username]` (`access_blob` inline or
//! `access_blob_file`), or application-default credentials without a `username`.
//!
//! Uploads are single streaming media uploads: GCS makes an object visible only once all of
//! its bytes arrived, so an interrupted upload leaves nothing behind, and nothing is buffered
//! here. Downloads stream the `alt=media` body.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use gcp_auth::{CustomServiceAccount, TokenProvider};
use kraken_config::Secret;
use kraken_config::backend::{AuthConfig, GcsBackendConfig};
use kraken_core::{Digest, Namespace};
use reqwest::header::{CONTENT_LENGTH, CONTENT_TYPE};
use reqwest::{RequestBuilder, StatusCode, Url};
use serde::Deserialize;
use tokio::sync::OnceCell;
use tokio_util::io::ReaderStream;

use super::layout::ObjectLayout;
use super::request::{
    blob_download, build_client, client_builder, json_body, parse_url, status_error,
    transport_error,
};
use super::stream::ExactReader;
use super::{
    Backend, BackendBlob, BackendError, SetupError, StoredBlob, UploadSource, auth_secret,
};

const KIND: &str = "gcs";
const DEFAULT_ENDPOINT: &str = "https://storage.googleapis.com";
const SCOPES: &[&str] = &["https://www.googleapis.com/auth/devstorage.read_write"];
/// Longest silence from the server (headers, or between body chunks) before a request fails.
const READ_TIMEOUT: Duration = Duration::from_secs(60);
/// JSON metadata responses (one object, one page of a listing) stay far below this.
const METADATA_LIMIT: usize = 16 << 20;

/// Where the bearer tokens of GCS requests come from.
#[derive(Clone)]
pub struct GcsAuth(AuthSource);

#[derive(Clone)]
enum AuthSource {
    Provider(Arc<dyn TokenProvider>),
    /// Discovered on first use: discovery probes the metadata server and gcloud, which takes
    /// seconds when they are absent, so it must not delay start-up.
    ApplicationDefault(Arc<OnceCell<Arc<dyn TokenProvider>>>),
    Static(Secret),
    Anonymous,
}

impl GcsAuth {
    /// A service account key (the JSON Google hands out).
    pub fn service_account_key(json: &Secret) -> Result<Self, SetupError> {
        kraken_tls::install_crypto_provider();
        let account = CustomServiceAccount::from_json(json.expose())
            .map_err(SetupError::ServiceAccountKey)?;
        Ok(Self(AuthSource::Provider(Arc::new(account))))
    }

    /// Application-default credentials (`GOOGLE_APPLICATION_CREDENTIALS`, the metadata
    /// server, gcloud), found at the first request.
    pub fn application_default() -> Self {
        Self(AuthSource::ApplicationDefault(Arc::new(OnceCell::new())))
    }

    /// A token obtained elsewhere, sent as is.
    pub fn static_token(token: Secret) -> Self {
        Self(AuthSource::Static(token))
    }

    /// No credentials (an emulator, a public bucket).
    pub fn anonymous() -> Self {
        Self(AuthSource::Anonymous)
    }

    async fn authorize(&self, request: RequestBuilder) -> Result<RequestBuilder, BackendError> {
        let provider = match &self.0 {
            AuthSource::Anonymous => return Ok(request),
            AuthSource::Static(token) => return Ok(request.bearer_auth(token.expose())),
            AuthSource::Provider(provider) => provider.clone(),
            AuthSource::ApplicationDefault(cell) => cell
                .get_or_try_init(|| async {
                    kraken_tls::install_crypto_provider();
                    gcp_auth::provider().await
                })
                .await
                .map_err(|error| {
                    BackendError::unavailable(KIND, "find application-default credentials", error)
                })?
                .clone(),
        };
        // gcp_auth caches tokens until shortly before they expire.
        let token = provider
            .token(SCOPES)
            .await
            .map_err(|error| BackendError::unavailable(KIND, "get an access token", error))?;
        Ok(request.bearer_auth(token.as_str()))
    }
}

impl fmt::Debug for GcsAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self.0 {
            AuthSource::Provider(_) => "GcsAuth::ServiceAccount",
            AuthSource::ApplicationDefault(_) => "GcsAuth::ApplicationDefault",
            AuthSource::Static(_) => "GcsAuth::Static",
            AuthSource::Anonymous => "GcsAuth::Anonymous",
        })
    }
}

/// Blobs as objects of one GCS bucket.
#[derive(Debug, Clone)]
pub struct GcsBackend {
    http: reqwest::Client,
    endpoint: Url,
    bucket: String,
    layout: ObjectLayout,
    auth: GcsAuth,
}

#[derive(Deserialize)]
struct ObjectMetadata {
    /// The JSON API sends 64-bit numbers as strings.
    size: SizeField,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum SizeField {
    Text(String),
    Number(u64),
}

impl SizeField {
    fn bytes(&self) -> Option<u64> {
        match self {
            Self::Text(text) => text.parse().ok(),
            Self::Number(number) => Some(*number),
        }
    }
}

#[derive(Deserialize)]
struct ObjectList {
    #[serde(default)]
    items: Vec<ListedObject>,
    #[serde(default, rename = "nextPageToken")]
    next_page_token: Option<String>,
}

#[derive(Deserialize)]
struct ListedObject {
    name: String,
}

impl GcsBackend {
    /// Credentials from `auth.gcs[username]`, or application-default ones without a
    /// `username`.
    pub fn from_config(config: &GcsBackendConfig, auth: &AuthConfig) -> Result<Self, SetupError> {
        let gcs_auth = if config.username.is_empty() {
            GcsAuth::application_default()
        } else {
            let (_, key) = auth_secret(&auth.gcs, KIND, &config.username, "access_blob", |user| {
                user.access_blob()
            })?;
            GcsAuth::service_account_key(&key)?
        };
        Self::new(config, gcs_auth)
    }

    /// With explicit credentials (tests inject a static token or none: the emulator ignores
    /// them, and application-default discovery would retry for seconds offline).
    pub fn new(config: &GcsBackendConfig, auth: GcsAuth) -> Result<Self, SetupError> {
        let endpoint = parse_url(config.endpoint.as_deref().unwrap_or(DEFAULT_ENDPOINT))?;
        Ok(Self {
            http: build_client(client_builder().read_timeout(READ_TIMEOUT))?,
            endpoint,
            bucket: config.bucket.clone(),
            layout: ObjectLayout::object_keys(&config.root_directory, config.name_path),
            auth,
        })
    }

    pub fn layout(&self) -> &ObjectLayout {
        &self.layout
    }

    /// `<endpoint>/<segments…>`, each segment percent-encoded (object names contain `/`).
    fn url(&self, segments: &[&str]) -> Result<Url, BackendError> {
        let mut url = self.endpoint.clone();
        url.path_segments_mut()
            .map_err(|()| {
                BackendError::other(
                    KIND,
                    "build a URL",
                    format!("`{}` cannot have a path", self.endpoint),
                )
            })?
            .pop_if_empty()
            .extend(segments);
        Ok(url)
    }

    fn object_url(&self, name: &str) -> Result<Url, BackendError> {
        self.url(&["storage", "v1", "b", &self.bucket, "o", name])
    }

    async fn send(
        &self,
        request: RequestBuilder,
        operation: &str,
    ) -> Result<reqwest::Response, BackendError> {
        self.auth
            .authorize(request)
            .await?
            .send()
            .await
            .map_err(|error| transport_error(KIND, operation.to_owned(), error))
    }
}

#[async_trait]
impl Backend for GcsBackend {
    fn kind(&self) -> &'static str {
        KIND
    }

    async fn stat(
        &self,
        _namespace: &Namespace,
        digest: &Digest,
    ) -> Result<Option<u64>, BackendError> {
        let name = self.layout.blob_name(digest);
        let operation = format!("stat {name}");
        let response = self
            .send(self.http.get(self.object_url(&name)?), &operation)
            .await?;
        match response.status() {
            StatusCode::NOT_FOUND => Ok(None),
            status if status.is_success() => {
                let metadata: ObjectMetadata =
                    json_body(KIND, &operation, response, METADATA_LIMIT).await?;
                metadata.size.bytes().map(Some).ok_or_else(|| {
                    BackendError::other(KIND, operation, "the object's size is not a number")
                })
            }
            _ => Err(status_error(KIND, operation, response).await),
        }
    }

    async fn upload(
        &self,
        _namespace: &Namespace,
        digest: &Digest,
        source: UploadSource,
        size: u64,
    ) -> Result<(), BackendError> {
        let name = self.layout.blob_name(digest);
        let operation = format!("upload {name}");
        let mut url = self.url(&["upload", "storage", "v1", "b", &self.bucket, "o"])?;
        url.query_pairs_mut()
            .append_pair("uploadType", "media")
            .append_pair("name", &name);
        let body = ReaderStream::new(ExactReader::new(source.into_reader(), size));
        let request = self
            .http
            .post(url)
            .header(CONTENT_TYPE, "application/octet-stream")
            .header(CONTENT_LENGTH, size)
            .body(reqwest::Body::wrap_stream(body));
        tracing::debug!(%digest, name, size, bucket = %self.bucket, "uploading to GCS");
        let response = self.send(request, &operation).await?;
        if !response.status().is_success() {
            return Err(status_error(KIND, operation, response).await);
        }
        let stored: ObjectMetadata = json_body(KIND, &operation, response, METADATA_LIMIT).await?;
        match stored.size.bytes() {
            Some(stored) if stored == size => Ok(()),
            stored => Err(BackendError::other(
                KIND,
                operation,
                format!("the server stored {stored:?} bytes of the {size} sent"),
            )),
        }
    }

    async fn download(
        &self,
        namespace: &Namespace,
        digest: &Digest,
    ) -> Result<BackendBlob, BackendError> {
        let name = self.layout.blob_name(digest);
        let operation = format!("download {name}");
        let mut url = self.object_url(&name)?;
        url.query_pairs_mut().append_pair("alt", "media");
        let response = self.send(self.http.get(url), &operation).await?;
        blob_download(KIND, namespace, digest, operation, response, || {
            self.stat(namespace, digest)
        })
        .await
    }

    async fn list(&self, _namespace_prefix: &str) -> Result<Vec<StoredBlob>, BackendError> {
        let prefix = self.layout.list_prefix();
        let operation = format!("list {prefix}");
        let mut found = Vec::new();
        let mut page_token: Option<String> = None;
        loop {
            let mut url = self.url(&["storage", "v1", "b", &self.bucket, "o"])?;
            {
                let mut query = url.query_pairs_mut();
                query.append_pair("prefix", &prefix);
                query.append_pair("fields", "items(name),nextPageToken");
                if let Some(token) = &page_token {
                    query.append_pair("pageToken", token);
                }
            }
            let response = self.send(self.http.get(url), &operation).await?;
            if !response.status().is_success() {
                return Err(status_error(KIND, operation, response).await);
            }
            let page: ObjectList = json_body(KIND, &operation, response, METADATA_LIMIT).await?;
            found.extend(
                page.items
                    .iter()
                    .filter_map(|object| self.layout.digest_of(&object.name))
                    .map(|digest| StoredBlob {
                        namespace: None,
                        digest,
                    }),
            );
            match page.next_page_token {
                Some(token) if !token.is_empty() => page_token = Some(token),
                _ => break,
            }
        }
        found.sort();
        Ok(found)
    }
}
