//! `registry_blob` and `registry_tag` against a real Docker registry: Debian's
//! `docker-registry` (distribution 2.8; `apt-get install docker-registry`, which tests/run.sh
//! does), with htpasswd basic auth on (bcrypt, generated here), over plain HTTP and over TLS
//! with a private CA. Blobs and manifests are pushed with the registry's own HTTP API, then
//! pulled through the backends.
//!
//! distribution cannot issue tokens itself (it only verifies them), so Docker's token flow runs
//! against the real registry configured for token auth with an in-test token service whose
//! certificate is the registry's `rootcertbundle`, and against an in-test registry front (token
//! caching, OAuth2-style answers).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use common::{ServerProcess, blob, digest, file_with, ns, read_all, system_program};
use kraken_backend::{
    Backend, BackendError, Backends, RegistryBlobBackend, RegistryTagBackend, UploadSource,
};
use kraken_config::Pattern;
use kraken_config::backend::{
    AuthConfig, BackendBandwidthConfig, BackendConfig, BackendKind, BasicAuthConfig,
    RegistryBackendConfig, RegistrySecurityConfig, RegistryTlsClientConfig, RegistryTlsConfig,
};
use kraken_core::{Digest, Namespace};

const USER: &str = "puller";
const PASSWORD: &str = "s3cret-pass";

/// A running `docker-registry`: with basic auth for [`USER`], or wanting tokens of a
/// [`TokenIssuer`].
struct Registry {
    server: ServerProcess,
    dir: tempfile::TempDir,
    /// The CA that signed the registry's certificate, when it serves TLS.
    ca_pem: Option<PathBuf>,
    client: reqwest::Client,
    /// Signs the tokens the test pushes with, when the registry wants tokens.
    issuer: Option<Arc<TokenIssuer>>,
}

impl Registry {
    /// With htpasswd basic auth for [`USER`].
    fn start(tls: bool) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let hash = bcrypt::hash_with_result(PASSWORD, 4)
            .unwrap()
            .format_for_version(bcrypt::Version::TwoY);
        let htpasswd = dir.path().join("htpasswd");
        std::fs::write(&htpasswd, format!("{USER}:{hash}\n")).unwrap();
        let auth = format!(
            "auth:\n  htpasswd:\n    realm: kraken-test\n    path: {}\n",
            htpasswd.display()
        );
        Self::start_with(dir, tls, &auth, None)
    }

    /// Wanting tokens `issuer` signs, from its endpoint at `realm` (token auth: the registry
    /// only verifies tokens, against the certificate in its `rootcertbundle`).
    fn start_with_tokens(issuer: Arc<TokenIssuer>, realm: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let bundle = dir.path().join("token-issuer.pem");
        std::fs::write(&bundle, &issuer.cert_pem).unwrap();
        let auth = format!(
            "auth:\n  token:\n    realm: {realm}\n    service: {TOKEN_SERVICE}\n    \
             issuer: {TOKEN_ISSUER}\n    rootcertbundle: {}\n",
            bundle.display()
        );
        Self::start_with(dir, false, &auth, Some(issuer))
    }

    fn start_with(
        dir: tempfile::TempDir,
        tls: bool,
        auth: &str,
        issuer: Option<Arc<TokenIssuer>>,
    ) -> Self {
        let program = system_program("docker-registry", "apt-get install -y docker-registry");
        let mut tls_section = String::new();
        let mut ca_pem = None;
        kraken_tls::install_crypto_provider();
        let mut client = reqwest::Client::builder();
        if tls {
            let ca = kraken_tls::DevCa::new().unwrap();
            let leaf = ca
                .issue(
                    kraken_tls::Role::Origin,
                    &kraken_tls::LeafOptions::default(),
                )
                .unwrap();
            let (cert, key, ca_path) = (
                dir.path().join("registry.pem"),
                dir.path().join("registry.key"),
                dir.path().join("ca.pem"),
            );
            std::fs::write(&cert, &leaf.cert_pem).unwrap();
            std::fs::write(&key, &leaf.key_pem).unwrap();
            std::fs::write(&ca_path, ca.cert_pem()).unwrap();
            tls_section = format!(
                "  tls:\n    certificate: {}\n    key: {}\n",
                cert.display(),
                key.display()
            );
            client = client.tls_certs_merge(
                reqwest::Certificate::from_pem_bundle(ca.cert_pem().as_bytes()).unwrap(),
            );
            ca_pem = Some(ca_path);
        }
        let root = dir.path().join("data");
        let config_path = dir.path().join("config.yml");
        let server = ServerProcess::start_on_free_port(
            "docker-registry",
            |port| {
                let config = format!(
                    "version: 0.1\n\
                     log:\n  level: error\n  accesslog:\n    disabled: true\n\
                     storage:\n  filesystem:\n    rootdirectory: {root}\n  \
                     maintenance:\n    uploadpurging:\n      enabled: false\n\
                     http:\n  addr: 127.0.0.1:{port}\n  secret: kraken-test\n{tls_section}{auth}",
                    root = root.display(),
                );
                std::fs::write(&config_path, config).unwrap();
                let mut command = Command::new(&program);
                command.arg("serve").arg(&config_path);
                command
            },
            &dir.path().join("registry.log"),
        );
        Self {
            server,
            dir,
            ca_pem,
            client: client.build().unwrap(),
            issuer,
        }
    }

    /// What the test's own pushes to `repository` authenticate with.
    fn push_auth(
        &self,
        request: reqwest::RequestBuilder,
        repository: &str,
    ) -> reqwest::RequestBuilder {
        match &self.issuer {
            Some(issuer) => request.bearer_auth(issuer.token(repository, &["pull", "push"])),
            None => request.basic_auth(USER, Some(PASSWORD)),
        }
    }

    fn address(&self) -> String {
        self.server.addr.to_string()
    }

    fn base(&self) -> String {
        let scheme = if self.ca_pem.is_some() {
            "https"
        } else {
            "http"
        };
        format!("{scheme}://{}", self.server.addr)
    }

    /// Pushes a blob with the registry API (monolithic upload), as `docker push` would.
    async fn push_blob(&self, repository: &str, data: &[u8]) -> Digest {
        let digest = digest(data);
        let started = format!("{}/v2/{repository}/blobs/uploads/", self.base());
        let started = self
            .push_auth(self.client.post(started), repository)
            .send()
            .await
            .unwrap();
        assert_eq!(
            started.status(),
            StatusCode::ACCEPTED,
            "{}",
            self.server.log_text()
        );
        let location = started.headers()[header::LOCATION].to_str().unwrap();
        let mut url = reqwest::Url::parse(&self.base())
            .unwrap()
            .join(location)
            .unwrap();
        url.query_pairs_mut()
            .append_pair("digest", &digest.to_string());
        let finished = self
            .push_auth(self.client.put(url), repository)
            .header(header::CONTENT_TYPE, "application/octet-stream")
            .body(data.to_vec())
            .send()
            .await
            .unwrap();
        assert_eq!(finished.status(), StatusCode::CREATED);
        digest
    }

    /// Pushes a schema 2 image manifest (config + one layer) under `tag`; returns its bytes.
    async fn push_image(&self, repository: &str, tag: &str) -> Vec<u8> {
        let config =
            br#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}"#;
        let layer = blob(10_000, 42);
        let config_digest = self.push_blob(repository, config).await;
        let layer_digest = self.push_blob(repository, &layer).await;
        let manifest = serde_json::to_vec_pretty(&serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
            "config": {
                "mediaType": "application/vnd.docker.container.image.v1+json",
                "size": config.len(),
                "digest": config_digest.to_string(),
            },
            "layers": [{
                "mediaType": "application/vnd.docker.image.rootfs.diff.tar.gzip",
                "size": layer.len(),
                "digest": layer_digest.to_string(),
            }],
        }))
        .unwrap();
        let pushed = format!("{}/v2/{repository}/manifests/{tag}", self.base());
        let pushed = self
            .push_auth(self.client.put(pushed), repository)
            .header(
                header::CONTENT_TYPE,
                "application/vnd.docker.distribution.manifest.v2+json",
            )
            .body(manifest.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(
            pushed.status(),
            StatusCode::CREATED,
            "{}",
            self.server.log_text()
        );
        manifest
    }

    /// The backend settings an operator would write for this registry.
    fn backend_config(&self, username: &str, password: &str) -> RegistryBackendConfig {
        let password_file = self.dir.path().join(format!("password-{username}"));
        std::fs::write(&password_file, format!("{password}\n")).unwrap();
        RegistryBackendConfig {
            address: self.address(),
            timeout: Duration::from_secs(30),
            security: RegistrySecurityConfig {
                tls: RegistryTlsConfig {
                    client: RegistryTlsClientConfig {
                        disabled: self.ca_pem.is_none(),
                    },
                    ca: self.ca_pem.clone(),
                },
                basic: BasicAuthConfig {
                    username: username.to_owned(),
                    password: None,
                    password_file: (!username.is_empty()).then_some(password_file),
                },
                docker_config: None,
            },
        }
    }
}

/// Routes `namespace` to a `registry_blob` backend built from config, as an origin does.
fn pull_through(config: RegistryBackendConfig, namespace: &Namespace) -> Arc<dyn Backend> {
    let rules = [BackendConfig {
        namespace: Pattern::new("^library/").unwrap(),
        backend: BackendKind::RegistryBlob(config),
        bandwidth: BackendBandwidthConfig::default(),
    }];
    let backends = Backends::from_config(&rules, &AuthConfig::default(), 1).unwrap();
    backends.backend_for(namespace).unwrap().clone()
}

#[tokio::test]
async fn registry_blob_pulls_through_from_docker_registry_with_basic_auth() {
    let registry = Registry::start(false);
    let namespace = ns("library/app");
    let data = blob(3 << 20, 7);
    let digest = registry.push_blob(namespace.as_str(), &data).await;

    let backend = pull_through(registry.backend_config(USER, PASSWORD), &namespace);
    assert_eq!(backend.kind(), "registry_blob");
    assert_eq!(
        backend.stat(&namespace, &digest).await.unwrap(),
        Some(data.len() as u64)
    );
    let downloaded = backend.download(&namespace, &digest).await.unwrap();
    assert_eq!(downloaded.size, data.len() as u64);
    let bytes = read_all(downloaded).await;
    assert_eq!(
        Digest::of(&bytes),
        digest,
        "the pulled bytes hash to the digest"
    );

    let missing = common::digest(b"never pushed");
    assert_eq!(backend.stat(&namespace, &missing).await.unwrap(), None);
    let error = backend.download(&namespace, &missing).await.unwrap_err();
    assert!(matches!(error, BackendError::NotFound { .. }), "{error}");
    // The blob is in `library/app` only: registries scope blobs by repository.
    assert_eq!(
        backend.stat(&ns("library/other"), &digest).await.unwrap(),
        None
    );

    let error = backend
        .upload(&namespace, &digest, UploadSource::File(file_with(&data)), 1)
        .await
        .unwrap_err();
    assert!(matches!(error, BackendError::ReadOnly { .. }), "{error}");
}

#[tokio::test]
async fn credentials_come_from_a_docker_config_json_entry_for_that_registry_only() {
    use base64::Engine as _;
    let registry = Registry::start(false);
    let namespace = ns("library/app");
    let data = blob(1 << 20, 9);
    let digest = registry.push_blob(namespace.as_str(), &data).await;

    // As `docker login` writes it: this registry's entry, and another host's.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("config.json");
    let auth = |user: &str, password: &str| {
        base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
    };
    std::fs::write(
        &file,
        serde_json::json!({"auths": {
            format!("http://{}/v2/", registry.address()): {"auth": auth(USER, PASSWORD)},
            "https://index.docker.io/v1/": {"auth": auth("someone", "else")},
        }})
        .to_string(),
    )
    .unwrap();
    let mut config = registry.backend_config("", "");
    config.security.docker_config = Some(file.clone());
    let backend = pull_through(config.clone(), &namespace);
    let bytes = read_all(backend.download(&namespace, &digest).await.unwrap()).await;
    assert!(bytes == data, "pulled with the entry's credentials");

    // A registry the file has no entry for is a setup error naming the file and the host.
    let mut elsewhere = config.clone();
    elsewhere.address = "registry.example.com:5000".to_owned();
    let error = RegistryBlobBackend::new(&elsewhere).unwrap_err();
    let message = chain(&error);
    assert!(
        message.contains("config.json")
            && message.contains("no `auths` entry for registry.example.com:5000"),
        "{message}"
    );
    // Docker Hub's entry answers to its other names.
    let mut hub = config;
    hub.address = "registry-1.docker.io".to_owned();
    assert!(RegistryBlobBackend::new(&hub).is_ok());
    // A file that is not a Docker config is named as such.
    std::fs::write(&file, "not json").unwrap();
    let error = RegistryBlobBackend::new(&elsewhere).unwrap_err();
    assert!(
        chain(&error).contains("not a Docker config.json"),
        "{}",
        chain(&error)
    );
}

#[tokio::test]
async fn wrong_or_missing_credentials_are_reported_as_such() {
    let registry = Registry::start(false);
    let namespace = ns("library/app");
    let digest = registry.push_blob(namespace.as_str(), b"layer").await;

    let wrong = RegistryBlobBackend::new(&registry.backend_config(USER, "wrong")).unwrap();
    let error = wrong.stat(&namespace, &digest).await.unwrap_err();
    assert!(matches!(error, BackendError::Other { .. }), "{error}");
    assert!(
        chain(&error).contains("rejected the credentials"),
        "{}",
        chain(&error)
    );

    let anonymous = RegistryBlobBackend::new(&registry.backend_config("", "")).unwrap();
    let error = anonymous.download(&namespace, &digest).await.unwrap_err();
    assert!(
        chain(&error).contains("requires credentials"),
        "{}",
        chain(&error)
    );
}

#[tokio::test]
async fn manifests_are_blobs_and_tags_resolve_to_their_digest() {
    let registry = Registry::start(false);
    let namespace = ns("library/app");
    let manifest = registry.push_image(namespace.as_str(), "v1").await;
    let manifest_digest = Digest::of(&manifest);

    // A manifest by digest through registry_blob: the registry serves it under /manifests/.
    let blobs = RegistryBlobBackend::new(&registry.backend_config(USER, PASSWORD)).unwrap();
    assert_eq!(
        blobs.stat(&namespace, &manifest_digest).await.unwrap(),
        Some(manifest.len() as u64)
    );
    let downloaded = read_all(blobs.download(&namespace, &manifest_digest).await.unwrap()).await;
    assert_eq!(downloaded, manifest, "byte for byte, as pushed");

    let tags = RegistryTagBackend::new(&registry.backend_config(USER, PASSWORD)).unwrap();
    assert_eq!(tags.kind(), "registry_tag");
    assert_eq!(
        tags.resolve(&"library/app:v1".parse().unwrap())
            .await
            .unwrap(),
        Some(manifest_digest)
    );
    assert_eq!(
        tags.resolve(&"library/app:v2".parse().unwrap())
            .await
            .unwrap(),
        None
    );
    assert_eq!(
        tags.resolve(&"library/nothing:v1".parse().unwrap())
            .await
            .unwrap(),
        None
    );
}

#[tokio::test]
async fn tls_with_a_private_ca() {
    let registry = Registry::start(true);
    let namespace = ns("library/app");
    let data = blob(50_000, 9);
    let digest = registry.push_blob(namespace.as_str(), &data).await;

    let backend = pull_through(registry.backend_config(USER, PASSWORD), &namespace);
    let bytes = read_all(backend.download(&namespace, &digest).await.unwrap()).await;
    assert_eq!(Digest::of(&bytes), digest);

    // Without the CA the registry's certificate is not trusted, and that is not transient.
    let mut untrusted = registry.backend_config(USER, PASSWORD);
    untrusted.security.tls.ca = None;
    let error = RegistryBlobBackend::new(&untrusted)
        .unwrap()
        .stat(&namespace, &digest)
        .await
        .unwrap_err();
    assert!(
        matches!(error, BackendError::Other { .. }),
        "{}",
        chain(&error)
    );
    assert!(
        chain(&error).to_lowercase().contains("certificate"),
        "{}",
        chain(&error)
    );
}

/// An in-test registry that wants bearer tokens (Docker Hub's scheme) from its own token
/// endpoint, which wants basic credentials.
#[derive(Default)]
struct TokenRegistry {
    addr: Option<SocketAddr>,
    blob: Vec<u8>,
    token_requests: Vec<String>,
    issued: usize,
}

type SharedTokenRegistry = Arc<Mutex<TokenRegistry>>;

async fn token_registry_blob(
    State(state): State<SharedTokenRegistry>,
    headers: HeaderMap,
) -> Response {
    let state = state.lock().unwrap();
    let authorized = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("Bearer token-"));
    if !authorized {
        let addr = state.addr.unwrap();
        let challenge = format!(
            r#"Bearer realm="http://{addr}/token",service="test-registry",scope="repository:library/app:pull""#
        );
        return (
            StatusCode::UNAUTHORIZED,
            [(header::WWW_AUTHENTICATE, challenge)],
            r#"{"errors":[{"code":"UNAUTHORIZED"}]}"#,
        )
            .into_response();
    }
    state.blob.clone().into_response()
}

async fn token_endpoint(
    State(state): State<SharedTokenRegistry>,
    Query(query): Query<std::collections::HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    let mut state = state.lock().unwrap();
    let basic = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    state.token_requests.push(format!(
        "service={} scope={} auth={basic}",
        query.get("service").cloned().unwrap_or_default(),
        query.get("scope").cloned().unwrap_or_default()
    ));
    if !basic.starts_with("Basic ") {
        return StatusCode::UNAUTHORIZED.into_response();
    }
    state.issued += 1;
    axum::Json(serde_json::json!({"token": format!("token-{}", state.issued), "expires_in": 300}))
        .into_response()
}

#[tokio::test]
async fn bearer_tokens_are_fetched_with_basic_credentials_and_cached() {
    let data = blob(20_000, 11);
    let digest = digest(&data);
    let state: SharedTokenRegistry = Arc::new(Mutex::new(TokenRegistry {
        blob: data.clone(),
        ..TokenRegistry::default()
    }));
    let app = Router::new()
        .route("/v2/library/app/blobs/{digest}", get(token_registry_blob))
        .route("/token", get(token_endpoint))
        .with_state(state.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    state.lock().unwrap().addr = Some(addr);
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

    let dir = tempfile::tempdir().unwrap();
    let password_file = dir.path().join("password");
    std::fs::write(&password_file, PASSWORD).unwrap();
    let config = RegistryBackendConfig {
        address: addr.to_string(),
        timeout: Duration::from_secs(10),
        security: RegistrySecurityConfig {
            tls: RegistryTlsConfig {
                client: RegistryTlsClientConfig { disabled: true },
                ca: None,
            },
            basic: BasicAuthConfig {
                username: USER.to_owned(),
                password: None,
                password_file: Some(password_file),
            },
            docker_config: None,
        },
    };
    let backend = RegistryBlobBackend::new(&config).unwrap();
    let namespace = ns("library/app");
    for _ in 0..3 {
        let bytes = read_all(backend.download(&namespace, &digest).await.unwrap()).await;
        assert_eq!(bytes, data);
    }
    assert_eq!(
        backend.stat(&namespace, &digest).await.unwrap(),
        Some(data.len() as u64)
    );

    let state = state.lock().unwrap();
    assert_eq!(
        state.issued, 1,
        "one token serves every request until it expires"
    );
    assert_eq!(state.token_requests.len(), 1);
    let request = &state.token_requests[0];
    assert!(
        request.starts_with("service=test-registry scope=repository:library/app:pull auth=Basic "),
        "{request}"
    );
}

const TOKEN_SERVICE: &str = "kraken-test-registry";
const TOKEN_ISSUER: &str = "kraken-test-token-issuer";

/// A token service for a registry configured with `auth: token`: an ES256 key whose
/// self-signed certificate is the registry's `rootcertbundle`, and the tokens it signs
/// (Docker's token spec, as distribution verifies them: the certificate in the `x5c` header,
/// issuer, audience, lifetime and the granted `access`).
struct TokenIssuer {
    cert_pem: String,
    cert_der: Vec<u8>,
    key: jsonwebtoken::EncodingKey,
}

impl TokenIssuer {
    fn new() -> Self {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let cert = rcgen::CertificateParams::new(vec![TOKEN_ISSUER.to_owned()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        Self {
            cert_pem: cert.pem(),
            cert_der: cert.der().to_vec(),
            key: jsonwebtoken::EncodingKey::from_ec_der(&key.serialize_der()),
        }
    }

    /// A token granting `actions` on `repository`, valid for five minutes.
    fn token(&self, repository: &str, actions: &[&str]) -> String {
        use base64::Engine as _;
        let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256);
        header.x5c = Some(vec![
            base64::engine::general_purpose::STANDARD.encode(&self.cert_der),
        ]);
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let claims = serde_json::json!({
            "iss": TOKEN_ISSUER,
            "sub": USER,
            "aud": TOKEN_SERVICE,
            "iat": now,
            "nbf": now - 10,
            "exp": now + 300,
            "jti": format!("{now}-{repository}"),
            "access": [{"type": "repository", "name": repository, "actions": actions}],
        });
        jsonwebtoken::encode(&header, &claims, &self.key).unwrap()
    }
}

/// What the token endpoint was asked, and the issuer it signs with.
struct TokenEndpoint {
    issuer: Arc<TokenIssuer>,
    /// `service scope` of every request.
    requests: Mutex<Vec<String>>,
}

/// `GET /token?service=…&scope=repository:<name>:<actions>` with basic credentials: a token
/// granting what the scope asks (pulls only), or 401 for other credentials.
async fn issue_token(
    State(endpoint): State<Arc<TokenEndpoint>>,
    Query(query): Query<std::collections::HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    use base64::Engine as _;
    let (service, scope) = (
        query.get("service").cloned().unwrap_or_default(),
        query.get("scope").cloned().unwrap_or_default(),
    );
    endpoint
        .requests
        .lock()
        .unwrap()
        .push(format!("{service} {scope}"));
    let expected = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{USER}:{PASSWORD}"))
    );
    let authorized = headers
        .get(header::AUTHORIZATION)
        .is_some_and(|value| value.as_bytes() == expected.as_bytes());
    if !authorized {
        return (
            StatusCode::UNAUTHORIZED,
            r#"{"errors":[{"code":"UNAUTHORIZED","message":"bad credentials"}]}"#,
        )
            .into_response();
    }
    let repository = scope
        .strip_prefix("repository:")
        .and_then(|rest| rest.strip_suffix(":pull"))
        .unwrap_or_default();
    let token = endpoint.issuer.token(repository, &["pull"]);
    axum::Json(serde_json::json!({"token": token, "expires_in": 300})).into_response()
}

#[tokio::test]
async fn registry_blob_pulls_from_docker_registry_with_token_auth() {
    let issuer = Arc::new(TokenIssuer::new());
    let endpoint = Arc::new(TokenEndpoint {
        issuer: issuer.clone(),
        requests: Mutex::new(Vec::new()),
    });
    // Bound before the registry starts: its config names the realm.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let realm = format!("http://{}/token", listener.local_addr().unwrap());
    let app = Router::new()
        .route("/token", get(issue_token))
        .with_state(endpoint.clone());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let registry = Registry::start_with_tokens(issuer, &realm);
    let namespace = ns("library/app");
    let data = blob(1 << 20, 12);
    let digest = registry.push_blob(namespace.as_str(), &data).await;

    // The registry answers the backend with a challenge naming the realm; the backend fetches
    // a token there with its basic credentials, and the registry accepts the token.
    let backend = pull_through(registry.backend_config(USER, PASSWORD), &namespace);
    assert_eq!(
        backend.stat(&namespace, &digest).await.unwrap(),
        Some(data.len() as u64)
    );
    let bytes = read_all(backend.download(&namespace, &digest).await.unwrap()).await;
    assert!(bytes == data, "the pulled bytes are the pushed ones");
    assert_eq!(
        *endpoint.requests.lock().unwrap(),
        [format!("{TOKEN_SERVICE} repository:library/app:pull")],
        "one token, for what the registry's challenge asked, serves both requests"
    );

    // Other credentials get no token: the token endpoint's refusal is the backend's error.
    let wrong = RegistryBlobBackend::new(&registry.backend_config(USER, "wrong")).unwrap();
    let error = wrong.download(&namespace, &digest).await.unwrap_err();
    assert!(matches!(error, BackendError::Other { .. }), "{error}");
    assert!(
        chain(&error).contains("get a token for repository:library/app:pull"),
        "{}",
        chain(&error)
    );
    assert!(chain(&error).contains("401"), "{}", chain(&error));

    // A token the registry's bundle does not vouch for is refused by the registry itself.
    let stranger = TokenIssuer::new().token(namespace.as_str(), &["pull"]);
    let refused = registry
        .client
        .get(format!("{}/v2/library/app/blobs/{digest}", registry.base()))
        .bearer_auth(stranger)
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), StatusCode::UNAUTHORIZED);
}

fn chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[tokio::test]
async fn keeps_the_backend_contract() {
    let registry = Registry::start(false);
    let namespace = ns("library/contract");
    let data = blob(200_000, 11);
    registry.push_blob(namespace.as_str(), &data).await;
    let backend = pull_through(registry.backend_config(USER, PASSWORD), &namespace);
    common::contract::read_only(backend.as_ref(), &namespace, &data, &digest(b"absent")).await;
}
