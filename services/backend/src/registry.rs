//! `registry_blob:` and `registry_tag:` — another Docker registry (Docker Hub, a private
//! distribution registry, ECR with static credentials) read through its v2 HTTP API, for
//! pull-through: the origin fetches what its cluster lacks and serves it P2P from then on.
//!
//! Both are read-only: images reach that registry by `docker push` to it, never through us.
//!
//! **Authentication** follows the registry's `WWW-Authenticate` challenge on the first 401:
//! `Basic` sends `security.basic`'s credentials; `Bearer` fetches a token for
//! `repository:<repo>:pull` from the challenge's realm (with the basic credentials, or
//! anonymously) as in Docker's token spec. The challenge and the tokens are cached (per
//! repository, until shortly before `expires_in`), so later requests carry their credentials
//! up front instead of paying a 401 round trip each (Kraken issue #235).
//!
//! **TLS** is on unless `security.tls.client.disabled`, with `security.tls.ca` trusted besides
//! the system roots. There is no silent fallback from HTTPS to HTTP.
//!
//! **Tags are not blobs.** `registry_tag` answers "which manifest does `repo:tag` name?", which
//! does not fit [`Backend`]'s digest-keyed interface (Kraken squeezed it in by downloading a
//! "blob" named `repo:tag` whose content was the digest as text). [`RegistryTagBackend`]
//! therefore has its own typed method, [`RegistryTagBackend::resolve`], for the build-index.

use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use kraken_config::Secret;
use kraken_config::backend::RegistryBackendConfig;
use kraken_core::{Digest, Namespace};
use reqwest::header::{ACCEPT, HeaderMap, WWW_AUTHENTICATE};
use reqwest::{Method, RequestBuilder, Response, StatusCode};
use serde::Deserialize;

use super::request::{
    build_client, client_builder, content_length, json_body, parse_url, status_error,
    transport_error,
};
use super::stream::body_reader;
use super::{Backend, BackendBlob, BackendError, SetupError, StoredBlob, UploadSource};

const BLOB_KIND: &str = "registry_blob";
const TAG_KIND: &str = "registry_tag";

/// Every manifest media type we can serve, so the registry returns a manifest as it was pushed
/// (and so with the digest it was pushed under) instead of converting it for an old client.
const MANIFEST_TYPES: &str = "application/vnd.oci.image.index.v1+json, \
    application/vnd.oci.image.manifest.v1+json, \
    application/vnd.docker.distribution.manifest.list.v2+json, \
    application/vnd.docker.distribution.manifest.v2+json, \
    application/vnd.docker.distribution.manifest.v1+prettyjws";
/// Manifests are small (distribution caps them at 4 MiB); anything larger is not one.
const MANIFEST_LIMIT: usize = 4 << 20;
/// Token responses are a few KiB.
const TOKEN_LIMIT: usize = 1 << 20;
/// Tokens are renewed this long before they expire, so none runs out mid-request.
const TOKEN_EXPIRY_MARGIN: Duration = Duration::from_secs(10);
/// What the token spec says to assume when a token server gives no `expires_in`.
const DEFAULT_TOKEN_LIFETIME: Duration = Duration::from_secs(60);

/// Blobs (and manifests by digest) of a remote registry; the namespace is the repository.
#[derive(Debug)]
pub struct RegistryBlobBackend {
    client: RegistryClient,
}

impl RegistryBlobBackend {
    pub fn new(config: &RegistryBackendConfig) -> Result<Self, SetupError> {
        Ok(Self {
            client: RegistryClient::new(BLOB_KIND, config)?,
        })
    }

    /// HEAD (or GET) of a blob, then of a manifest with that digest: a registry serves
    /// manifests only under `/manifests/`, and image manifests are blobs to us.
    async fn fetch(
        &self,
        method: Method,
        namespace: &Namespace,
        digest: &Digest,
    ) -> Result<Option<Response>, BackendError> {
        for (path, accept) in [("blobs", None), ("manifests", Some(MANIFEST_TYPES))] {
            let url_path = format!("/v2/{namespace}/{path}/{digest}");
            let operation = format!("{method} {url_path}");
            let response = self
                .client
                .send(method.clone(), &url_path, namespace, accept, &operation)
                .await?;
            match response.status() {
                StatusCode::NOT_FOUND => continue,
                status if status.is_success() => return Ok(Some(response)),
                _ => return Err(self.client.failure(&operation, response).await),
            }
        }
        Ok(None)
    }
}

#[async_trait]
impl Backend for RegistryBlobBackend {
    fn kind(&self) -> &'static str {
        BLOB_KIND
    }

    async fn stat(
        &self,
        namespace: &Namespace,
        digest: &Digest,
    ) -> Result<Option<u64>, BackendError> {
        let Some(response) = self.fetch(Method::HEAD, namespace, digest).await? else {
            return Ok(None);
        };
        content_length(&response).map(Some).ok_or_else(|| {
            BackendError::other(
                BLOB_KIND,
                format!("HEAD blob {digest}"),
                "the registry reported no Content-Length",
            )
        })
    }

    async fn upload(
        &self,
        _namespace: &Namespace,
        _digest: &Digest,
        _source: UploadSource,
        _size: u64,
    ) -> Result<(), BackendError> {
        Err(BackendError::ReadOnly { backend: BLOB_KIND })
    }

    async fn download(
        &self,
        namespace: &Namespace,
        digest: &Digest,
    ) -> Result<BackendBlob, BackendError> {
        let Some(response) = self.fetch(Method::GET, namespace, digest).await? else {
            return Err(BackendError::not_found(BLOB_KIND, namespace, digest));
        };
        let size = content_length(&response).ok_or_else(|| {
            BackendError::other(
                BLOB_KIND,
                format!("GET blob {digest}"),
                "the registry reported no Content-Length",
            )
        })?;
        Ok(BackendBlob {
            size,
            reader: body_reader(response),
        })
    }

    async fn list(&self, _namespace_prefix: &str) -> Result<Vec<StoredBlob>, BackendError> {
        Err(BackendError::Unsupported {
            backend: BLOB_KIND,
            operation: "list blobs (the registry API lists repositories and tags, not blobs)",
        })
    }
}

/// `repo:tag`, the way the build-index names a tag.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TagReference {
    pub repository: Namespace,
    pub tag: String,
}

/// Why a string is not `repo:tag`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{input}` is not `repository:tag`: {reason}")]
pub struct TagReferenceError {
    input: String,
    reason: String,
}

impl FromStr for TagReference {
    type Err = TagReferenceError;

    fn from_str(input: &str) -> Result<Self, Self::Err> {
        let error = |reason: String| TagReferenceError {
            input: input.chars().take(300).collect(),
            reason,
        };
        // The tag follows the last `:` (a repository never contains one).
        let (repository, tag) = input
            .rsplit_once(':')
            .ok_or_else(|| error("no `:` before the tag".to_owned()))?;
        let repository = repository
            .parse()
            .map_err(|e: kraken_core::NamespaceError| error(e.to_string()))?;
        // The distribution spec's tag grammar: `[A-Za-z0-9_][A-Za-z0-9._-]{0,127}`.
        let valid = !tag.is_empty()
            && tag.len() <= 128
            && !tag.starts_with(['.', '-'])
            && tag
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
        if !valid {
            return Err(error(format!(
                "`{tag}` is not a tag (letters, digits, `_`, `.`, `-`, at most 128, not \
                 starting with `.` or `-`)"
            )));
        }
        Ok(Self {
            repository,
            tag: tag.to_owned(),
        })
    }
}

impl fmt::Display for TagReference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.repository, self.tag)
    }
}

/// Tags of a remote registry: `repo:tag` → manifest digest. Read-only, like the registry's
/// blobs; the build-index uses it to resolve tags it has never been told about.
#[derive(Debug)]
pub struct RegistryTagBackend {
    client: RegistryClient,
}

impl RegistryTagBackend {
    pub fn new(config: &RegistryBackendConfig) -> Result<Self, SetupError> {
        Ok(Self {
            client: RegistryClient::new(TAG_KIND, config)?,
        })
    }

    pub fn kind(&self) -> &'static str {
        TAG_KIND
    }

    /// The registry's base URL, for messages.
    pub fn address(&self) -> &str {
        self.client.base.as_str()
    }

    /// The digest of the manifest `reference` points at, `None` if the registry has no such
    /// tag. Taken from `Docker-Content-Digest` of a HEAD; a registry that omits the header
    /// gets a GET, and the manifest's bytes are hashed.
    pub async fn resolve(&self, reference: &TagReference) -> Result<Option<Digest>, BackendError> {
        let path = format!("/v2/{}/manifests/{}", reference.repository, reference.tag);
        let head = format!("HEAD {path}");
        let response = self
            .client
            .send(
                Method::HEAD,
                &path,
                &reference.repository,
                Some(MANIFEST_TYPES),
                &head,
            )
            .await?;
        match response.status() {
            StatusCode::NOT_FOUND => return Ok(None),
            status if status.is_success() => {}
            _ => return Err(self.client.failure(&head, response).await),
        }
        if let Some(digest) = header_digest(response.headers()) {
            let digest = digest.map_err(|error| BackendError::other(TAG_KIND, head, error))?;
            return Ok(Some(digest));
        }
        let get = format!("GET {path}");
        let mut response = self
            .client
            .send(
                Method::GET,
                &path,
                &reference.repository,
                Some(MANIFEST_TYPES),
                &get,
            )
            .await?;
        match response.status() {
            StatusCode::NOT_FOUND => return Ok(None),
            status if status.is_success() => {}
            _ => return Err(self.client.failure(&get, response).await),
        }
        let mut hasher = kraken_core::Sha256Hasher::new();
        let mut read = 0;
        while let Some(chunk) = response
            .chunk()
            .await
            .map_err(|error| transport_error(TAG_KIND, get.clone(), error))?
        {
            read += chunk.len();
            if read > MANIFEST_LIMIT {
                return Err(BackendError::other(
                    TAG_KIND,
                    get,
                    format!("the manifest is larger than {MANIFEST_LIMIT} bytes"),
                ));
            }
            hasher.update(&chunk);
        }
        Ok(Some(hasher.finish()))
    }
}

/// The credentials `docker login` stored in the Docker `config.json` at `path` for the
/// registry at `address` (`host[:port]`). Docker Hub's entry goes by several names
/// (`https://index.docker.io/v1/`, `docker.io`, …); any of them matches any other.
fn docker_config_credentials(
    path: &std::path::Path,
    address: &str,
) -> Result<(String, Option<Secret>), SetupError> {
    let unusable = |why: String| {
        SetupError::MissingCredentials(format!("docker_config {}: {why}", path.display()))
    };
    let text =
        std::fs::read_to_string(path).map_err(|e| unusable(format!("cannot read it: {e}")))?;
    let file: DockerConfigFile = serde_json::from_str(&text)
        .map_err(|e| unusable(format!("not a Docker config.json: {e}")))?;
    let wanted = registry_host(address);
    let entry = file
        .auths
        .iter()
        .find(|(key, _)| registry_host(key) == wanted)
        .map(|(_, entry)| entry)
        .ok_or_else(|| unusable(format!("no `auths` entry for {address}")))?;
    if let (Some(user), Some(password)) = (&entry.username, &entry.password) {
        return Ok((user.clone(), Some(Secret::new(password.clone()))));
    }
    let encoded = entry
        .auth
        .as_deref()
        .ok_or_else(|| unusable(format!("the entry for {address} has no `auth`")))?;
    use base64::Engine as _;
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()
        .and_then(|bytes| String::from_utf8(bytes).ok())
        .ok_or_else(|| {
            unusable(format!(
                "the `auth` of {address} is not base64 of user:password"
            ))
        })?;
    let (user, password) = decoded
        .split_once(':')
        .ok_or_else(|| unusable(format!("the `auth` of {address} is not user:password")))?;
    Ok((user.to_owned(), Some(Secret::new(password.to_owned()))))
}

/// A registry's host as `config.json` keys and `address` name it: no scheme, no path, Docker
/// Hub's aliases as one.
fn registry_host(key: &str) -> String {
    let rest = key
        .strip_prefix("https://")
        .or_else(|| key.strip_prefix("http://"))
        .unwrap_or(key);
    let host = rest.split('/').next().unwrap_or(rest).to_ascii_lowercase();
    match host.as_str() {
        "docker.io" | "index.docker.io" | "registry-1.docker.io" | "registry.hub.docker.com" => {
            "docker.io".to_owned()
        }
        _ => host,
    }
}

/// The part of a Docker `config.json` read here.
#[derive(Deserialize)]
struct DockerConfigFile {
    #[serde(default)]
    auths: HashMap<String, DockerAuthEntry>,
}

#[derive(Deserialize)]
struct DockerAuthEntry {
    auth: Option<String>,
    username: Option<String>,
    password: Option<String>,
}

fn header_digest(headers: &HeaderMap) -> Option<Result<Digest, String>> {
    let value = headers.get("docker-content-digest")?;
    Some(
        value
            .to_str()
            .map_err(|_| "Docker-Content-Digest is not text".to_owned())
            .and_then(|text| {
                text.trim()
                    .parse()
                    .map_err(|e: kraken_core::DigestError| e.to_string())
            }),
    )
}

/// One registry's HTTP API with its authentication state.
struct RegistryClient {
    kind: &'static str,
    base: reqwest::Url,
    http: reqwest::Client,
    username: String,
    password: Option<Secret>,
    auth: Mutex<AuthState>,
}

impl fmt::Debug for RegistryClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RegistryClient")
            .field("base", &self.base.as_str())
            .field("username", &self.username)
            .finish_non_exhaustive()
    }
}

/// What the registry asked for, and the tokens it gave.
#[derive(Default)]
struct AuthState {
    challenge: Option<Challenge>,
    /// Bearer tokens by scope.
    tokens: HashMap<String, CachedToken>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Challenge {
    Basic,
    Bearer {
        realm: String,
        service: Option<String>,
    },
}

struct CachedToken {
    token: Secret,
    renew_at: Instant,
}

#[derive(Deserialize)]
struct TokenResponse {
    #[serde(default)]
    token: Option<String>,
    /// OAuth2-compatible servers send this instead of (or besides) `token`.
    #[serde(default)]
    access_token: Option<String>,
    #[serde(default)]
    expires_in: Option<u64>,
}

impl RegistryClient {
    fn new(kind: &'static str, config: &RegistryBackendConfig) -> Result<Self, SetupError> {
        let tls = !config.security.tls.client.disabled;
        let scheme = if tls { "https" } else { "http" };
        let base = parse_url(&format!("{scheme}://{}/", config.address))?;
        // `timeout` bounds each wait for the registry (connecting, headers, every body
        // chunk), not a whole download: a multi-GB layer may take minutes while progressing.
        let mut builder = client_builder().read_timeout(config.timeout);
        if let Some(path) = &config.security.tls.ca {
            let ca_error = |source: super::BoxError| SetupError::CaCertificates {
                path: path.clone(),
                source,
            };
            let pem = std::fs::read(path).map_err(|e| ca_error(Box::new(e)))?;
            let certs =
                reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| ca_error(Box::new(e)))?;
            if certs.is_empty() {
                return Err(ca_error("no PEM certificate in the file".into()));
            }
            builder = builder.tls_certs_merge(certs);
        }
        let basic = &config.security.basic;
        let (username, password) = match &config.security.docker_config {
            Some(path) => docker_config_credentials(path, &config.address)?,
            None => (basic.username.clone(), basic.password()?),
        };
        if !tls && !username.is_empty() {
            tracing::warn!(
                registry = %config.address,
                "basic credentials for this registry travel over plain HTTP \
                 (security.tls.client.disabled)"
            );
        }
        Ok(Self {
            kind,
            base,
            http: build_client(builder)?,
            username,
            password,
            auth: Mutex::new(AuthState::default()),
        })
    }

    fn has_credentials(&self) -> bool {
        !self.username.is_empty()
    }

    fn with_basic(&self, request: RequestBuilder) -> RequestBuilder {
        request.basic_auth(&self.username, self.password.as_ref().map(Secret::expose))
    }

    /// Adds what the registry is known to want, from the cached challenge and tokens.
    fn authorize(&self, request: RequestBuilder, scope: &str) -> RequestBuilder {
        let state = kraken_core::sync::lock(&self.auth);
        match &state.challenge {
            Some(Challenge::Basic) if self.has_credentials() => self.with_basic(request),
            Some(Challenge::Bearer { .. }) => match state.tokens.get(scope) {
                Some(cached) if cached.renew_at > Instant::now() => {
                    request.bearer_auth(cached.token.expose())
                }
                _ => request,
            },
            _ => request,
        }
    }

    /// Sends a request for `repository`, answering one authentication challenge. The
    /// response is returned whatever its status; a 401 after the challenge was answered
    /// means the credentials are wrong.
    async fn send(
        &self,
        method: Method,
        path: &str,
        repository: &Namespace,
        accept: Option<&str>,
        operation: &str,
    ) -> Result<Response, BackendError> {
        let url = self
            .base
            .join(path.trim_start_matches('/'))
            .map_err(|error| BackendError::other(self.kind, operation.to_owned(), error))?;
        let scope = format!("repository:{repository}:pull");
        let mut answered = false;
        loop {
            let mut request = self.http.request(method.clone(), url.clone());
            if let Some(accept) = accept {
                request = request.header(ACCEPT, accept);
            }
            let request = self.authorize(request, &scope);
            let response = request
                .send()
                .await
                .map_err(|error| transport_error(self.kind, operation.to_owned(), error))?;
            if response.status() != StatusCode::UNAUTHORIZED || answered {
                return Ok(response);
            }
            let Some(challenge) = parse_challenge(response.headers()) else {
                return Ok(response);
            };
            tracing::debug!(registry = %self.base, ?challenge, "registry asks for authentication");
            match &challenge {
                Challenge::Basic if !self.has_credentials() => return Ok(response),
                Challenge::Basic => {}
                Challenge::Bearer { realm, service } => {
                    let token = self.fetch_token(realm, service.as_deref(), &scope).await?;
                    self.lock().tokens.insert(scope.clone(), token);
                }
            }
            self.lock().challenge = Some(challenge);
            answered = true;
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, AuthState> {
        kraken_core::sync::lock(&self.auth)
    }

    /// A bearer token for `scope` from the token server (Docker token authentication spec).
    async fn fetch_token(
        &self,
        realm: &str,
        service: Option<&str>,
        scope: &str,
    ) -> Result<CachedToken, BackendError> {
        let operation = format!("get a token for {scope}");
        let mut url = reqwest::Url::parse(realm).map_err(|error| {
            BackendError::other(
                self.kind,
                operation.clone(),
                format!("the registry's token realm `{realm}` is not a URL: {error}"),
            )
        })?;
        {
            let mut query = url.query_pairs_mut();
            if let Some(service) = service {
                query.append_pair("service", service);
            }
            query.append_pair("scope", scope);
        }
        let mut request = self.http.get(url);
        if self.has_credentials() {
            request = self.with_basic(request);
        }
        let requested = Instant::now();
        let response = request
            .send()
            .await
            .map_err(|error| transport_error(self.kind, operation.clone(), error))?;
        if !response.status().is_success() {
            return Err(status_error(self.kind, operation, response).await);
        }
        let body: TokenResponse = json_body(self.kind, &operation, response, TOKEN_LIMIT).await?;
        let token = body
            .token
            .or(body.access_token)
            .filter(|token| !token.is_empty())
            .ok_or_else(|| {
                BackendError::other(
                    self.kind,
                    operation.clone(),
                    "the token response has no token",
                )
            })?;
        let lifetime = body
            .expires_in
            .map_or(DEFAULT_TOKEN_LIFETIME, Duration::from_secs);
        tracing::debug!(scope, ?lifetime, "registry token issued");
        Ok(CachedToken {
            token: Secret::new(token),
            renew_at: requested + lifetime.saturating_sub(TOKEN_EXPIRY_MARGIN),
        })
    }

    /// An unexpected response as an error; 401/403 name the likely fix.
    async fn failure(&self, operation: &str, response: Response) -> BackendError {
        let status = response.status();
        if status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN {
            let hint = if self.has_credentials() {
                "the registry rejected the credentials in `security.basic`"
            } else {
                "the registry requires credentials: set `security.basic`"
            };
            let body = super::request::error_body(response).await;
            return BackendError::other(
                self.kind,
                operation.to_owned(),
                format!("HTTP {status}: {hint} ({body})"),
            );
        }
        status_error(self.kind, operation.to_owned(), response).await
    }
}

/// The first challenge of `WWW-Authenticate` we can answer.
fn parse_challenge(headers: &HeaderMap) -> Option<Challenge> {
    headers
        .get_all(WWW_AUTHENTICATE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .find_map(|value| {
            let (scheme, params) = value.trim().split_once(' ').unwrap_or((value.trim(), ""));
            if scheme.eq_ignore_ascii_case("basic") {
                return Some(Challenge::Basic);
            }
            if !scheme.eq_ignore_ascii_case("bearer") {
                return None;
            }
            let params = auth_params(params);
            let realm = params.get("realm")?.clone();
            Some(Challenge::Bearer {
                realm,
                service: params.get("service").cloned(),
            })
        })
}

/// `key="value", key2=value2` (RFC 7235 auth-params; quoted values may contain commas).
fn auth_params(text: &str) -> HashMap<String, String> {
    let mut params = HashMap::new();
    let mut rest = text.trim();
    while !rest.is_empty() {
        let Some((key, after)) = rest.split_once('=') else {
            break;
        };
        let key = key
            .trim()
            .trim_start_matches(',')
            .trim()
            .to_ascii_lowercase();
        let after = after.trim_start();
        let (value, remainder) = if let Some(quoted) = after.strip_prefix('"') {
            let mut value = String::new();
            let mut chars = quoted.char_indices();
            let mut end = quoted.len();
            while let Some((index, c)) = chars.next() {
                match c {
                    '\\' => {
                        if let Some((_, escaped)) = chars.next() {
                            value.push(escaped);
                        }
                    }
                    '"' => {
                        end = index + 1;
                        break;
                    }
                    c => value.push(c),
                }
            }
            (value, &quoted[end..])
        } else {
            let end = after.find(',').unwrap_or(after.len());
            (after[..end].trim().to_owned(), &after[end..])
        };
        params.insert(key, value);
        rest = remainder.trim_start().trim_start_matches(',').trim_start();
    }
    params
}

#[cfg(test)]
mod tests {
    use reqwest::header::HeaderValue;

    use super::*;

    fn challenge(value: &str) -> Option<Challenge> {
        let mut headers = HeaderMap::new();
        headers.insert(WWW_AUTHENTICATE, HeaderValue::from_str(value).unwrap());
        parse_challenge(&headers)
    }

    #[test]
    fn parses_bearer_and_basic_challenges() {
        assert_eq!(
            challenge(
                r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/ubuntu:pull,push""#
            ),
            Some(Challenge::Bearer {
                realm: "https://auth.docker.io/token".to_owned(),
                service: Some("registry.docker.io".to_owned()),
            })
        );
        assert_eq!(
            challenge(r#"Basic realm="kraken test""#),
            Some(Challenge::Basic)
        );
        assert_eq!(
            challenge("bearer realm=http://127.0.0.1:1/token"),
            Some(Challenge::Bearer {
                realm: "http://127.0.0.1:1/token".to_owned(),
                service: None,
            })
        );
        assert_eq!(challenge("Negotiate abc"), None);
        assert_eq!(
            challenge(r#"Bearer service="x""#),
            None,
            "a realm is required"
        );
    }

    #[test]
    fn parses_tag_references() {
        let reference: TagReference = "library/ubuntu:22.04".parse().unwrap();
        assert_eq!(reference.repository.as_str(), "library/ubuntu");
        assert_eq!(reference.tag, "22.04");
        assert_eq!(reference.to_string(), "library/ubuntu:22.04");
        for bad in [
            "library/ubuntu",
            "library/ubuntu:",
            "Library/x:1",
            "a:.hidden",
            "a:b/c",
        ] {
            assert!(bad.parse::<TagReference>().is_err(), "{bad}");
        }
    }
}
