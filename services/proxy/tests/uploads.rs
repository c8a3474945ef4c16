//! Upload budgets (`uploads:` of the proxy config) against a real proxy in front of a dev
//! cluster, driven over HTTP from several client addresses: session caps (429
//! `TOOMANYREQUESTS` with `Retry-After`, per client and in total, slots freed by cancel and
//! commit), thousands of sessions opened at once, oversized blobs (413 `SIZE_INVALID`, the
//! session dropped, nothing stored) and idle sessions expiring — with the staging directory's
//! files and the process's descriptors into it counted throughout.

// Test code: a failed step is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use bytes::Bytes;
use bytesize::ByteSize;
use futures::StreamExt;
use kraken_config::cluster::UpstreamConfig;
use kraken_config::proxy::{ProxyConfig, UploadLimits};
use kraken_core::Digest;
use kraken_devcluster::DevCluster;
use kraken_oci::{ErrorBody, ErrorCode};
use kraken_proxy::Proxy;
use kraken_tls::Role;
use reqwest::StatusCode;
use tokio::net::TcpListener;

struct Fixture {
    cluster: DevCluster,
    proxy: Proxy,
    dir: tempfile::TempDir,
}

impl Fixture {
    async fn start(limits: UploadLimits) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let cluster = DevCluster::builder(dir.path().join("cluster"))
            .origins(1)
            .max_replica(1)
            .agents(0)
            .start()
            .await
            .unwrap();
        let hosts: Vec<String> = cluster
            .origins
            .iter()
            .map(|o| o.grpc_addr().to_string())
            .collect();
        let mut config = ProxyConfig {
            origin: UpstreamConfig::of(hosts),
            build_index: UpstreamConfig::of([cluster.build_index_addr().to_string()]),
            uploads: limits,
            ..ProxyConfig::default()
        };
        config.hashring.max_replica = 1;
        config.store.dir = dir.path().join("proxy");
        // These tests are about the registry API, not its authentication (tests/auth.rs).
        config.auth.anonymous_push = true;
        let proxy = Proxy::start(
            config,
            cluster.tls(Role::Proxy).unwrap(),
            TcpListener::bind("127.0.0.1:0").await.unwrap(),
            TcpListener::bind("127.0.0.1:0").await.unwrap(),
        )
        .await
        .unwrap();
        Self {
            cluster,
            proxy,
            dir,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.proxy.registry_addr())
    }

    /// `POST /v2/<repository>/blobs/uploads/` from `client`.
    async fn open(&self, client: &reqwest::Client, repository: &str) -> reqwest::Response {
        client
            .post(self.url(&format!("/v2/{repository}/blobs/uploads/")))
            .send()
            .await
            .unwrap()
    }

    /// Opens a session that must be accepted; returns its location.
    async fn open_ok(&self, client: &reqwest::Client, repository: &str) -> String {
        let response = self.open(client, repository).await;
        assert_eq!(response.status(), StatusCode::ACCEPTED);
        header(&response, "location")
    }

    fn staging_dir(&self) -> PathBuf {
        self.dir.path().join("proxy").join("uploads")
    }

    /// Files in the staging directory: one per open session.
    fn staged_files(&self) -> usize {
        std::fs::read_dir(self.staging_dir()).unwrap().count()
    }

    /// Descriptors this process (the proxy runs in it) holds on staging files.
    fn descriptors_into_staging(&self) -> usize {
        let staging = self.staging_dir();
        std::fs::read_dir("/proc/self/fd")
            .unwrap()
            .filter_map(|entry| std::fs::read_link(entry.ok()?.path()).ok())
            .filter(|target| target.starts_with(&staging))
            .count()
    }

    async fn on_origins(&self, digest: &Digest) -> bool {
        self.cluster
            .origins
            .iter()
            .any(|origin| origin.store().contains(digest))
    }

    async fn stop(self) {
        self.proxy.shutdown().await.unwrap();
        self.cluster.shutdown().await;
    }
}

/// A client whose requests come from `127.0.0.<last>` (all of 127/8 is loopback on Linux).
fn client_from(last: u8) -> reqwest::Client {
    reqwest::Client::builder()
        .local_address(IpAddr::from([127, 0, 0, last]))
        .build()
        .unwrap()
}

fn header(response: &reqwest::Response, name: &str) -> String {
    response
        .headers()
        .get(name)
        .unwrap_or_else(|| panic!("no {name} header"))
        .to_str()
        .unwrap()
        .to_owned()
}

/// The status and the single error code of a refusal.
async fn error_of(response: reqwest::Response) -> (StatusCode, ErrorCode) {
    let status = response.status();
    let bytes = response.bytes().await.unwrap();
    let body: ErrorBody = serde_json::from_slice(&bytes)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&bytes)));
    assert_eq!(body.errors.len(), 1, "{body:?}");
    (status, body.errors[0].code.parse().unwrap())
}

/// A refused session: 429 `TOOMANYREQUESTS` telling the client when to retry.
async fn assert_too_many(response: reqwest::Response) {
    let retry_after: u64 = header(&response, "retry-after").parse().unwrap();
    assert!(retry_after > 0);
    assert_eq!(
        error_of(response).await,
        (StatusCode::TOO_MANY_REQUESTS, ErrorCode::TooManyRequests)
    );
}

fn blob(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31) ^ seed)
        .collect()
}

#[tokio::test]
async fn session_caps_answer_429_and_slots_free_when_sessions_end() {
    let fixture = Fixture::start(UploadLimits {
        max_sessions: 6,
        max_sessions_per_client: 4,
        ..UploadLimits::default()
    })
    .await;
    let (a, b, c) = (client_from(1), client_from(2), client_from(3));

    // One client up to its own cap, in any repositories.
    let mut a_sessions = Vec::new();
    for index in 0..4 {
        a_sessions.push(fixture.open_ok(&a, &format!("library/a{index}")).await);
    }
    assert_too_many(fixture.open(&a, "library/a").await).await;

    // Others up to the total.
    let b_first = fixture.open_ok(&b, "library/b").await;
    let _b_second = fixture.open_ok(&b, "library/b").await;
    assert_too_many(fixture.open(&b, "library/b").await).await;
    assert_too_many(fixture.open(&c, "library/c").await).await;
    assert_eq!(fixture.staged_files(), 6);

    // Cancelling a session frees its slot (for anyone).
    let response = a.delete(fixture.url(&a_sessions[0])).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::NO_CONTENT);
    let _c_first = fixture.open_ok(&c, "library/c").await;
    assert_too_many(fixture.open(&a, "library/a").await).await;

    // So does committing one.
    let data = b"a small blob".to_vec();
    let digest = Digest::of(&data);
    let response = b
        .put(fixture.url(&format!("{b_first}?digest={digest}")))
        .body(data)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::CREATED);
    assert!(fixture.on_origins(&digest).await);
    let _a_again = fixture.open_ok(&a, "library/a").await;
    assert_too_many(fixture.open(&c, "library/c").await).await;

    // One file per open session, and no descriptor held by an idle one.
    assert_eq!(fixture.staged_files(), 6);
    assert_eq!(fixture.descriptors_into_staging(), 0);
    fixture.stop().await;
}

#[tokio::test]
async fn thousands_of_sessions_opened_at_once_stop_at_the_cap() {
    const CAP: usize = 100;
    const ATTEMPTS: usize = 10_000;
    let fixture = Fixture::start(UploadLimits {
        max_sessions: CAP,
        max_sessions_per_client: CAP,
        ..UploadLimits::default()
    })
    .await;
    let client = client_from(1);
    let statuses: Vec<StatusCode> = futures::stream::iter(0..ATTEMPTS)
        .map(|_| {
            let request = client.post(fixture.url("/v2/library/flood/blobs/uploads/"));
            async move { request.send().await.unwrap().status() }
        })
        .buffer_unordered(64)
        .collect()
        .await;
    let accepted = statuses
        .iter()
        .filter(|&&status| status == StatusCode::ACCEPTED)
        .count();
    let refused = statuses
        .iter()
        .filter(|&&status| status == StatusCode::TOO_MANY_REQUESTS)
        .count();
    assert_eq!((accepted, refused), (CAP, ATTEMPTS - CAP));
    assert_eq!(fixture.staged_files(), CAP);
    assert_eq!(fixture.descriptors_into_staging(), 0);
    fixture.stop().await;
}

#[tokio::test]
async fn a_blob_past_max_blob_size_is_413_size_invalid_and_nothing_is_stored() {
    const MAX: usize = 64 * 1024;
    let fixture = Fixture::start(UploadLimits {
        max_blob_size: ByteSize(MAX as u64),
        ..UploadLimits::default()
    })
    .await;
    let client = client_from(1);
    let too_big = blob(MAX + 1, 1);
    let too_big_digest = Digest::of(&too_big);

    // Monolithic POST: refused on its Content-Length, before a session exists.
    let response = client
        .post(fixture.url(&format!(
            "/v2/library/big/blobs/uploads/?digest={too_big_digest}"
        )))
        .body(too_big.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(
        error_of(response).await,
        (StatusCode::PAYLOAD_TOO_LARGE, ErrorCode::SizeInvalid)
    );
    assert_eq!(fixture.staged_files(), 0);

    // Monolithic PUT into a session: refused, and the session is gone.
    let location = fixture.open_ok(&client, "library/big").await;
    let response = client
        .put(fixture.url(&format!("{location}?digest={too_big_digest}")))
        .body(too_big.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(
        error_of(response).await,
        (StatusCode::PAYLOAD_TOO_LARGE, ErrorCode::SizeInvalid)
    );
    let response = client.get(fixture.url(&location)).send().await.unwrap();
    assert_eq!(
        error_of(response).await,
        (StatusCode::NOT_FOUND, ErrorCode::BlobUploadUnknown)
    );

    // Chunks: the one crossing the limit is refused on its Content-Range.
    let location = fixture.open_ok(&client, "library/big").await;
    let half = MAX / 2 + 1;
    let response = client
        .patch(fixture.url(&location))
        .header("content-range", format!("0-{}", half - 1))
        .body(too_big[..half].to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    let response = client
        .patch(fixture.url(&location))
        .header("content-range", format!("{half}-{}", too_big.len() - 1))
        .body(too_big[half..].to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(
        error_of(response).await,
        (StatusCode::PAYLOAD_TOO_LARGE, ErrorCode::SizeInvalid)
    );
    let response = client
        .patch(fixture.url(&location))
        .body(b"more".to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(
        error_of(response).await,
        (StatusCode::NOT_FOUND, ErrorCode::BlobUploadUnknown)
    );

    // Streamed, with no length announced: counted as it arrives.
    let location = fixture.open_ok(&client, "library/big").await;
    let chunks: Vec<Result<Bytes, std::io::Error>> = too_big
        .chunks(8 * 1024)
        .map(|chunk| Ok(Bytes::copy_from_slice(chunk)))
        .collect();
    let response = client
        .patch(fixture.url(&location))
        .body(reqwest::Body::wrap_stream(futures::stream::iter(chunks)))
        .send()
        .await
        .unwrap();
    assert_eq!(
        error_of(response).await,
        (StatusCode::PAYLOAD_TOO_LARGE, ErrorCode::SizeInvalid)
    );
    let response = client.get(fixture.url(&location)).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::NOT_FOUND);

    assert_eq!(fixture.staged_files(), 0);
    assert!(!fixture.on_origins(&too_big_digest).await);

    // Exactly the maximum is a blob like any other.
    let fits = blob(MAX, 2);
    let digest = Digest::of(&fits);
    let response = client
        .post(fixture.url(&format!("/v2/library/big/blobs/uploads/?digest={digest}")))
        .body(fits)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::CREATED);
    assert!(fixture.on_origins(&digest).await);
    fixture.stop().await;
}

#[tokio::test]
async fn an_idle_session_expires_and_its_slot_and_file_are_freed() {
    let fixture = Fixture::start(UploadLimits {
        max_sessions: 1,
        max_sessions_per_client: 1,
        idle_timeout: Duration::from_secs(1),
        ..UploadLimits::default()
    })
    .await;
    let client = client_from(1);
    let location = fixture.open_ok(&client, "library/idle").await;
    let response = client
        .patch(fixture.url(&location))
        .body(b"hello".to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    assert_eq!(fixture.staged_files(), 1);

    // Watched through the staging directory: a request to the session would keep it alive.
    let expired = async {
        while fixture.staged_files() > 0 {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(30), expired)
        .await
        .expect("the idle session was never expired");

    let response = client
        .patch(fixture.url(&location))
        .body(b" world".to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(
        error_of(response).await,
        (StatusCode::NOT_FOUND, ErrorCode::BlobUploadUnknown)
    );
    // Its slot is free again.
    let _next = fixture.open_ok(&client, "library/idle").await;
    fixture.stop().await;
}
