//! The read-only `http` backend against a real HTTP file server (CPython's `http.server`), and
//! against a local one (in-test, axum) that can be told to fail its next requests with 503 to
//! exercise `download_backoff`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use common::{ServerProcess, blob, digest, file_with, ns, read_all, refusing_addr};
use kraken_backend::{Backend, BackendError, HttpBackend, UploadSource};
use kraken_config::backend::{BackoffConfig, HttpBackendConfig};

#[derive(Default)]
struct Files {
    by_hex: HashMap<String, Vec<u8>>,
    /// Requests still to answer with 503.
    fail_next: usize,
    requests: usize,
}

type Shared = Arc<Mutex<Files>>;

/// `GET`/`HEAD /blobs/<hex>` (axum answers HEAD with the GET handler's headers).
async fn serve_blob(State(files): State<Shared>, Path(hex): Path<String>) -> Response {
    let mut files = files.lock().unwrap();
    files.requests += 1;
    if files.fail_next > 0 {
        files.fail_next -= 1;
        return (StatusCode::SERVICE_UNAVAILABLE, "busy").into_response();
    }
    match files.by_hex.get(&hex) {
        Some(data) => data.clone().into_response(),
        None => StatusCode::NOT_FOUND.into_response(),
    }
}

async fn start() -> (Shared, SocketAddr) {
    let files: Shared = Arc::default();
    let app = Router::new()
        .route("/blobs/{hex}", get(serve_blob))
        .with_state(files.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (files, addr)
}

fn config(addr: SocketAddr, backoff: bool) -> HttpBackendConfig {
    HttpBackendConfig {
        download_url: format!("http://{addr}/blobs/%s"),
        download_backoff: BackoffConfig {
            enabled: backoff,
            initial: Duration::from_millis(10),
            max: Duration::from_millis(40),
            max_retries: 3,
        },
        timeout: Duration::from_secs(30),
    }
}

/// `data` (held by the server) is stat'ed and downloaded whole; a blob it lacks is absent
/// and its download `NotFound`.
async fn serves_what_it_holds(
    backend: &HttpBackend,
    namespace: &kraken_core::Namespace,
    data: &[u8],
) {
    let digest = digest(data);
    assert_eq!(
        backend.stat(namespace, &digest).await.unwrap(),
        Some(data.len() as u64)
    );
    let downloaded = backend.download(namespace, &digest).await.unwrap();
    assert_eq!(downloaded.size, data.len() as u64);
    assert_eq!(read_all(downloaded).await, data);
    let missing = common::digest(b"absent");
    assert_eq!(backend.stat(namespace, &missing).await.unwrap(), None);
    let error = backend.download(namespace, &missing).await.unwrap_err();
    assert!(matches!(error, BackendError::NotFound { .. }), "{error}");
}

#[tokio::test]
async fn downloads_and_stats_by_digest_and_refuses_uploads() {
    let (files, addr) = start().await;
    let data = blob(2 << 20, 1);
    let digest = digest(&data);
    files
        .lock()
        .unwrap()
        .by_hex
        .insert(digest.hex(), data.clone());
    let backend = HttpBackend::new(&config(addr, false)).unwrap();
    let namespace = ns("build/artifacts");
    serves_what_it_holds(&backend, &namespace, &data).await;

    let error = backend
        .upload(&namespace, &digest, UploadSource::File(file_with(&data)), 1)
        .await
        .unwrap_err();
    assert!(
        matches!(error, BackendError::ReadOnly { backend: "http" }),
        "{error}"
    );
    assert_eq!(
        error.to_string(),
        "the http backend is read-only: blobs cannot be uploaded to it"
    );
    let error = backend.list("").await.unwrap_err();
    assert!(matches!(error, BackendError::Unsupported { .. }), "{error}");
}

#[tokio::test]
async fn transient_failures_are_retried_with_backoff_when_enabled() {
    let (files, addr) = start().await;
    let data = blob(1000, 2);
    let digest = digest(&data);
    let namespace = ns("build/artifacts");
    {
        let mut files = files.lock().unwrap();
        files.by_hex.insert(digest.hex(), data.clone());
        files.fail_next = 2;
    }
    let backend = HttpBackend::new(&config(addr, true)).unwrap();
    let downloaded = backend.download(&namespace, &digest).await.unwrap();
    assert_eq!(read_all(downloaded).await, data);
    assert_eq!(files.lock().unwrap().requests, 3, "two 503s, then the blob");

    // More failures than retries: the last error is reported, as transient.
    files.lock().unwrap().fail_next = 10;
    let error = backend.download(&namespace, &digest).await.unwrap_err();
    assert!(matches!(error, BackendError::Unavailable { .. }), "{error}");
    assert_eq!(
        files.lock().unwrap().requests,
        3 + 4,
        "one try and three retries"
    );

    // A 404 is an answer, not a failure: never retried.
    let before = files.lock().unwrap().requests;
    files.lock().unwrap().fail_next = 0;
    let absent = common::digest(b"absent");
    assert!(matches!(
        backend.download(&namespace, &absent).await,
        Err(BackendError::NotFound { .. })
    ));
    assert_eq!(files.lock().unwrap().requests, before + 1);
}

#[tokio::test]
async fn without_backoff_a_failure_is_reported_at_once() {
    let (files, addr) = start().await;
    files.lock().unwrap().fail_next = 1;
    let backend = HttpBackend::new(&config(addr, false)).unwrap();
    let error = backend
        .download(&ns("a/b"), &digest(b"x"))
        .await
        .unwrap_err();
    assert!(matches!(error, BackendError::Unavailable { .. }), "{error}");
    assert!(format!("{:?}", error).contains("503"), "{error:?}");
    assert_eq!(files.lock().unwrap().requests, 1);
}

#[tokio::test]
async fn a_server_that_is_down_is_unavailable() {
    let (addr, _held) = refusing_addr();
    let backend = HttpBackend::new(&config(addr, false)).unwrap();
    let error = backend.stat(&ns("a/b"), &digest(b"x")).await.unwrap_err();
    assert!(
        matches!(
            error,
            BackendError::Unavailable {
                backend: "http",
                ..
            }
        ),
        "{error}"
    );
}

#[tokio::test]
async fn keeps_the_backend_contract() {
    let (files, addr) = start().await;
    let data = blob(100_000, 9);
    files
        .lock()
        .unwrap()
        .by_hex
        .insert(digest(&data).hex(), data.clone());
    let backend = HttpBackend::new(&config(addr, false)).unwrap();
    common::contract::read_only(&backend, &ns("build/artifacts"), &data, &digest(b"absent")).await;
}

/// CPython's `http.server` serving a directory: a real, independent HTTP server (HTTP/1.0,
/// `Content-Length` from the file, its own `HEAD`), killed on drop.
struct PythonFileServer {
    server: ServerProcess,
    _root: tempfile::TempDir,
}

impl PythonFileServer {
    fn start(files: &[(&str, &[u8])]) -> Self {
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir(root.path().join("blobs")).unwrap();
        for (name, data) in files {
            std::fs::write(root.path().join("blobs").join(name), data).unwrap();
        }
        // tests/run.sh's machines have CPython.
        let server = ServerProcess::start_on_free_port(
            "python3 -m http.server",
            |port| {
                let mut command = std::process::Command::new("python3");
                command
                    .args(["-m", "http.server", "--bind", "127.0.0.1"])
                    .arg(port.to_string())
                    .arg("--directory")
                    .arg(root.path());
                command
            },
            &root.path().join("http.server.log"),
        );
        Self {
            server,
            _root: root,
        }
    }
}

#[tokio::test]
async fn works_against_a_real_http_file_server() {
    let data = blob(3 << 20, 5);
    let digest = digest(&data);
    let files = PythonFileServer::start(&[(&digest.hex(), &data)]);
    let backend = HttpBackend::new(&config(files.server.addr, false)).unwrap();
    let namespace = ns("build/artifacts");
    serves_what_it_holds(&backend, &namespace, &data).await;
    common::contract::read_only(&backend, &namespace, &data, &common::digest(b"absent")).await;
}
