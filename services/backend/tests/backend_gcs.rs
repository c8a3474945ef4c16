//! The `gcs` backend against a real GCS JSON API server: `gcp-storage-emulator` from PyPI
//! (tests/run.sh installs it into its venv), in memory on a free loopback port per test.
//!
//! The emulator ignores credentials, so most tests inject a static token; one test runs the
//! real service-account path (`auth.gcs.<user>.access_blob_file` → gcp_auth signs a JWT →
//! token endpoint) against an in-test token endpoint named by the key's `token_uri`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::process::Command;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::routing::post;
use common::{
    ServerProcess, blob, digest, file_with, http, ns, read_all, refusing_addr, system_program,
    venv_program,
};
use kraken_backend::{Backend, BackendError, Backends, GcsAuth, GcsBackend, UploadSource};
use kraken_config::backend::{AuthConfig, GcsBackendConfig, GcsCredentials, NamePath};
use kraken_config::{Pattern, Secret};

const BUCKET: &str = "kraken-blobs";

struct Emulator {
    _server: ServerProcess,
    endpoint: String,
    _dir: tempfile::TempDir,
}

impl Emulator {
    fn start() -> Self {
        let program = venv_program("gcp-storage-emulator", "gcp-storage-emulator");
        let dir = tempfile::tempdir().unwrap();
        let server = ServerProcess::start_on_free_port(
            "gcp-storage-emulator",
            |port| {
                let mut command = Command::new(&program);
                command
                    .args(["start", "--host", "127.0.0.1", "--port", &port.to_string()])
                    .args(["--default-bucket", BUCKET, "--in-memory"])
                    .current_dir(dir.path());
                command
            },
            &dir.path().join("emulator.log"),
        );
        Self {
            endpoint: format!("http://{}", server.addr),
            _server: server,
            _dir: dir,
        }
    }

    fn config(&self, root: &str, name_path: NamePath) -> GcsBackendConfig {
        GcsBackendConfig {
            bucket: BUCKET.to_owned(),
            root_directory: root.to_owned(),
            name_path,
            username: String::new(),
            endpoint: Some(self.endpoint.clone()),
        }
    }

    /// The object named `name`, read through the JSON API without the backend.
    async fn raw_object(&self, name: &str) -> Option<Vec<u8>> {
        let mut url = reqwest::Url::parse(&self.endpoint).unwrap();
        url.path_segments_mut()
            .unwrap()
            .pop_if_empty()
            .extend(["storage", "v1", "b", BUCKET, "o", name]);
        url.query_pairs_mut().append_pair("alt", "media");
        let response = http().get(url).send().await.unwrap();
        if response.status() == reqwest::StatusCode::NOT_FOUND {
            return None;
        }
        assert!(response.status().is_success(), "{response:?}");
        Some(response.bytes().await.unwrap().to_vec())
    }
}

#[tokio::test]
async fn blobs_round_trip_in_the_docker_registry_layout() {
    let emulator = Emulator::start();
    let backend = GcsBackend::new(
        &emulator.config("/kraken/default/", NamePath::ShardedDockerBlob),
        GcsAuth::static_token(Secret::new("test-token")),
    )
    .unwrap();
    let namespace = ns("library/ubuntu");
    let small = blob(10_000, 1);
    let large = blob(5 << 20, 2);
    let (small_digest, large_digest) = (digest(&small), digest(&large));
    assert_eq!(backend.stat(&namespace, &small_digest).await.unwrap(), None);

    let expected = common::contract::round_trip(&backend, &namespace, &[&small, &large]).await;
    for (data, digest) in [(&small, small_digest), (&large, large_digest)] {
        let hex = digest.hex();
        let name = format!(
            "kraken/default/docker/registry/v2/blobs/sha256/{}/{hex}/data",
            &hex[..2]
        );
        assert_eq!(emulator.raw_object(&name).await.as_ref(), Some(data));
    }
    let listed = backend.list("").await.unwrap();
    assert_eq!(
        listed.iter().map(|b| b.digest).collect::<Vec<_>>(),
        expected
    );
}

#[tokio::test]
async fn a_missing_blob_is_not_found_and_a_short_source_stores_nothing() {
    let emulator = Emulator::start();
    let backend = GcsBackend::new(
        &emulator.config("", NamePath::Identity),
        GcsAuth::anonymous(),
    )
    .unwrap();
    let namespace = ns("team/app");
    let missing = digest(b"never uploaded");
    assert_eq!(backend.stat(&namespace, &missing).await.unwrap(), None);
    let error = backend.download(&namespace, &missing).await.unwrap_err();
    assert!(matches!(error, BackendError::NotFound { .. }), "{error}");

    let data = blob(1000, 3);
    let short = digest(&data);
    let error = backend
        .upload(
            &namespace,
            &short,
            UploadSource::Reader(Box::pin(std::io::Cursor::new(data))),
            2000,
        )
        .await
        .unwrap_err();
    assert!(error.to_string().contains("upload"), "{error}");
    assert_eq!(backend.stat(&namespace, &short).await.unwrap(), None);
    assert!(backend.list("").await.unwrap().is_empty());
}

/// A token endpoint that hands out tokens for JWT-bearer grants and counts them.
async fn token_endpoint(grants: Arc<Mutex<Vec<String>>>) -> String {
    let app = Router::new().route(
        "/token",
        post(move |body: String| {
            let grants = grants.clone();
            async move {
                grants.lock().unwrap().push(body);
                axum::Json(serde_json::json!({
                    "access_token": "issued-token",
                    "expires_in": 3600,
                    "token_type": "Bearer",
                }))
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    format!("http://{addr}/token")
}

#[tokio::test]
async fn a_service_account_key_file_from_auth_yields_tokens() {
    let emulator = Emulator::start();
    let grants = Arc::new(Mutex::new(Vec::new()));
    let token_uri = token_endpoint(grants.clone()).await;

    // A real service-account key: an RSA key (PKCS#8), as Google issues them.
    let dir = tempfile::tempdir().unwrap();
    let key_path = dir.path().join("key.pem");
    let openssl = system_program("openssl", "apt-get install -y openssl");
    let status = Command::new(openssl)
        .args([
            "genpkey",
            "-algorithm",
            "RSA",
            "-pkeyopt",
            "rsa_keygen_bits:2048",
            "-out",
        ])
        .arg(&key_path)
        .stderr(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(status.success());
    let key = serde_json::json!({
        "type": "service_account",
        "project_id": "kraken-test",
        "private_key_id": "1",
        "private_key": std::fs::read_to_string(&key_path).unwrap(),
        "client_email": "kraken@kraken-test.iam.gserviceaccount.com",
        "client_id": "1",
        "token_uri": token_uri,
    });
    let key_file = dir.path().join("service-account.json");
    std::fs::write(&key_file, key.to_string()).unwrap();

    let mut auth = AuthConfig::default();
    auth.gcs.insert(
        "kraken".to_owned(),
        GcsCredentials {
            access_blob: None,
            access_blob_file: Some(key_file),
        },
    );
    let mut config = emulator.config("/", NamePath::ShardedDockerBlob);
    config.username = "kraken".to_owned();
    let backends = Backends::from_config(
        &[kraken_config::backend::BackendConfig {
            namespace: Pattern::new(".*").unwrap(),
            backend: kraken_config::backend::BackendKind::Gcs(config),
            bandwidth: Default::default(),
        }],
        &auth,
        1,
    )
    .unwrap();
    let namespace = ns("library/debian");
    let backend = backends.backend_for(&namespace).unwrap();
    let data = blob(4096, 4);
    let digest = digest(&data);
    backend
        .upload(
            &namespace,
            &digest,
            UploadSource::File(file_with(&data)),
            data.len() as u64,
        )
        .await
        .unwrap();
    assert_eq!(
        read_all(backend.download(&namespace, &digest).await.unwrap()).await,
        data
    );

    // One token for both requests (cached until it nears expiry), obtained with a signed JWT.
    let grants = grants.lock().unwrap();
    assert_eq!(grants.len(), 1, "{grants:?}");
    assert!(
        grants[0].contains("grant_type=urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Ajwt-bearer"),
        "{}",
        grants[0]
    );
    assert!(grants[0].contains("assertion=ey"), "a JWT: {}", grants[0]);
}

#[tokio::test]
async fn an_unreachable_server_is_unavailable() {
    let (refusing, _held) = refusing_addr();
    let config = GcsBackendConfig {
        bucket: BUCKET.to_owned(),
        endpoint: Some(format!("http://{refusing}")),
        ..GcsBackendConfig::default()
    };
    let backend = GcsBackend::new(&config, GcsAuth::anonymous()).unwrap();
    let error = backend.stat(&ns("a/b"), &digest(b"x")).await.unwrap_err();
    assert!(
        matches!(error, BackendError::Unavailable { backend: "gcs", .. }),
        "{error}"
    );
}

#[tokio::test]
async fn keeps_the_backend_contract() {
    let emulator = Emulator::start();
    let backend = GcsBackend::new(
        &emulator.config("/contract/", NamePath::Identity),
        GcsAuth::static_token(Secret::new("test-token")),
    )
    .unwrap();
    common::contract::writable(&backend, &ns("library/contract"), 100).await;
}
