//! A real proxy and build-index in front of the dev cluster's origins, on loopback with real
//! mutual TLS between components, driven over HTTP the way Docker, containerd and skopeo push
//! and pull: monolithic, chunked and streamed uploads, commits, mounts, manifests of every
//! kind, tags and the catalog, the prefetch RPC, and every refusal the spec names, each
//! checked to leave what was stored unchanged.

// Test code: a failed step is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use bytes::Bytes;
use kraken_buildindex::BuildIndex;
use kraken_config::build_index::BuildIndexConfig;
use kraken_config::cluster::UpstreamConfig;
use kraken_config::proxy::ProxyConfig;
use kraken_core::{Digest, Namespace};
use kraken_devcluster::DevCluster;
use kraken_oci::media_type::{
    DOCKER_CONFIG, DOCKER_LAYER, DOCKER_MANIFEST, DOCKER_MANIFEST_LIST, OCI_CONFIG, OCI_INDEX,
    OCI_LAYER_GZIP, OCI_MANIFEST,
};
use kraken_oci::{ErrorBody, ErrorCode};
use kraken_proxy::Proxy;
use kraken_tls::Role;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use tokio::net::TcpListener;

struct Fixture {
    cluster: DevCluster,
    build_index: BuildIndex,
    proxy: Proxy,
    http: reqwest::Client,
    _dir: tempfile::TempDir,
}

impl Fixture {
    async fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let cluster = DevCluster::builder(dir.path().join("cluster"))
            .origins(3)
            .agents(0)
            .max_replica(2)
            .start()
            .await
            .unwrap();
        let hosts: Vec<String> = cluster
            .origins
            .iter()
            .map(|o| o.grpc_addr().to_string())
            .collect();

        let mut build_index_config = BuildIndexConfig {
            origin: UpstreamConfig::of(hosts.clone()),
            ..BuildIndexConfig::default()
        };
        build_index_config.hashring.max_replica = 2;
        build_index_config.tag_store.dir = dir.path().join("tags");
        build_index_config.replication.dir = dir.path().join("replication");
        let build_index = BuildIndex::start_with_backends(
            build_index_config,
            cluster.tls(Role::BuildIndex).unwrap(),
            TcpListener::bind("127.0.0.1:0").await.unwrap(),
            kraken_backend::Backends::default(),
        )
        .await
        .unwrap();

        let mut config = ProxyConfig {
            origin: UpstreamConfig::of(hosts),
            build_index: UpstreamConfig::of([build_index.addr().to_string()]),
            ..ProxyConfig::default()
        };
        config.hashring.max_replica = 2;
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
            build_index,
            proxy,
            http: reqwest::Client::new(),
            _dir: dir,
        }
    }

    fn url(&self, path: &str) -> String {
        if path.starts_with("http") {
            return path.to_owned();
        }
        format!("http://{}{path}", self.proxy.registry_addr())
    }

    fn request(&self, method: Method, path: &str) -> reqwest::RequestBuilder {
        self.http.request(method, self.url(path))
    }

    /// Monolithic upload (`POST ?digest=`).
    async fn push_blob(&self, repository: &str, data: &[u8]) -> Digest {
        let digest = Digest::of(data);
        let response = self
            .request(
                Method::POST,
                &format!("/v2/{repository}/blobs/uploads/?digest={digest}"),
            )
            .body(data.to_vec())
            .send()
            .await
            .unwrap();
        assert_eq!(
            response.status(),
            StatusCode::CREATED,
            "{:?}",
            response.text().await
        );
        digest
    }

    async fn put_manifest(
        &self,
        repository: &str,
        reference: &str,
        media_type: &str,
        body: &[u8],
    ) -> reqwest::Response {
        self.request(
            Method::PUT,
            &format!("/v2/{repository}/manifests/{reference}"),
        )
        .header("content-type", media_type)
        .body(body.to_vec())
        .send()
        .await
        .unwrap()
    }

    /// Pushes a config and layers and returns the (uploaded) Docker manifest body.
    async fn image(&self, repository: &str, seed: &str, layer_sizes: &[usize]) -> Vec<u8> {
        let config = format!("{{\"architecture\":\"amd64\",\"seed\":\"{seed}\"}}");
        let config_digest = self.push_blob(repository, config.as_bytes()).await;
        let mut layers = Vec::new();
        for (index, size) in layer_sizes.iter().enumerate() {
            let data = blob(*size, &format!("{seed}/{index}"));
            let digest = self.push_blob(repository, &data).await;
            layers.push(
                json!({"mediaType": DOCKER_LAYER, "digest": digest.to_string(), "size": size}),
            );
        }
        serde_json::to_vec(&json!({
            "schemaVersion": 2,
            "mediaType": DOCKER_MANIFEST,
            "config": {"mediaType": DOCKER_CONFIG, "digest": config_digest.to_string(), "size": config.len()},
            "layers": layers,
        }))
        .unwrap()
    }

    /// Whether any origin holds the blob on its disk.
    async fn on_origins(&self, digest: &Digest) -> bool {
        for origin in &self.cluster.origins {
            if origin.store().contains(digest) {
                return true;
            }
        }
        false
    }

    async fn stop(self) {
        self.proxy.shutdown().await.unwrap();
        self.build_index.shutdown().await.unwrap();
        self.cluster.shutdown().await;
    }
}

fn blob(len: usize, seed: &str) -> Vec<u8> {
    let seed = Digest::of(seed.as_bytes());
    (0..len)
        .map(|i| seed.as_bytes()[i % 32].wrapping_add((i / 32) as u8))
        .collect()
}

/// The status and the single error code of a refusal.
async fn error_of(response: reqwest::Response) -> (StatusCode, ErrorCode, Value) {
    let status = response.status();
    assert_eq!(
        response.headers()["content-type"],
        "application/json",
        "error responses are JSON"
    );
    let body: ErrorBody = serde_json::from_value(json_of(response).await).unwrap();
    assert_eq!(body.errors.len(), 1, "{body:?}");
    let code = body.errors[0].code.parse().unwrap();
    let detail = body.errors[0].detail.clone().unwrap_or(Value::Null);
    (status, code, detail)
}

async fn json_of(response: reqwest::Response) -> Value {
    let bytes = response.bytes().await.unwrap();
    serde_json::from_slice(&bytes)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&bytes)))
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

#[tokio::test]
async fn the_base_endpoint_announces_the_api_version() {
    let fixture = Fixture::start().await;
    let response = fixture.request(Method::GET, "/v2/").send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        header(&response, "docker-distribution-api-version"),
        "registry/2.0"
    );
    let response = fixture.request(Method::GET, "/nope").send().await.unwrap();
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
    fixture.stop().await;
}

#[tokio::test]
async fn an_image_pushed_monolithically_pulls_back_by_tag_and_digest() {
    let fixture = Fixture::start().await;
    let manifest = fixture.image("library/app", "a", &[3000, 70_000]).await;
    let digest = Digest::of(&manifest);
    let response = fixture
        .put_manifest("library/app", "1.0", DOCKER_MANIFEST, &manifest)
        .await;
    assert_eq!(response.status(), StatusCode::CREATED);
    assert_eq!(
        header(&response, "docker-content-digest"),
        digest.to_string()
    );
    assert_eq!(
        header(&response, "location"),
        format!("/v2/library/app/manifests/{digest}")
    );

    for reference in ["1.0".to_owned(), digest.to_string()] {
        let path = format!("/v2/library/app/manifests/{reference}");
        let response = fixture.request(Method::GET, &path).send().await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(header(&response, "content-type"), DOCKER_MANIFEST);
        assert_eq!(
            header(&response, "docker-content-digest"),
            digest.to_string()
        );
        assert_eq!(response.bytes().await.unwrap(), manifest);
        let response = fixture.request(Method::HEAD, &path).send().await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(
            header(&response, "content-length"),
            manifest.len().to_string()
        );
    }

    // Blobs, whole, HEAD and ranged.
    let layer = blob(70_000, "a/1");
    let layer_digest = Digest::of(&layer);
    let path = format!("/v2/library/app/blobs/{layer_digest}");
    let response = fixture.request(Method::GET, &path).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        header(&response, "docker-content-digest"),
        layer_digest.to_string()
    );
    assert_eq!(response.bytes().await.unwrap(), layer);
    let response = fixture.request(Method::HEAD, &path).send().await.unwrap();
    assert_eq!(header(&response, "content-length"), "70000");
    let response = fixture
        .request(Method::GET, &path)
        .header("range", "bytes=100-199")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(header(&response, "content-range"), "bytes 100-199/70000");
    assert_eq!(response.bytes().await.unwrap(), layer[100..200]);
    let response = fixture
        .request(Method::GET, &path)
        .header("range", "bytes=70000-")
        .send()
        .await
        .unwrap();
    let (status, code, _) = error_of(response).await;
    assert_eq!(
        (status, code),
        (StatusCode::RANGE_NOT_SATISFIABLE, ErrorCode::RangeInvalid)
    );
    fixture.stop().await;
}

#[tokio::test]
async fn a_chunked_upload_refuses_out_of_order_and_truncated_chunks_and_resumes() {
    let fixture = Fixture::start().await;
    let data = blob(300_000, "chunked");
    let digest = Digest::of(&data);
    let response = fixture
        .request(Method::POST, "/v2/team/app/blobs/uploads/")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    let location = header(&response, "location");
    let uuid = header(&response, "docker-upload-uuid");
    assert!(location.ends_with(&uuid));
    assert_eq!(header(&response, "range"), "0-0");

    let patch = |range: String, body: Vec<u8>| {
        fixture
            .request(Method::PATCH, &location)
            .header("content-range", range)
            .header("content-type", "application/octet-stream")
            .body(body)
    };
    let response = patch("0-99999".into(), data[..100_000].to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    assert_eq!(header(&response, "range"), "0-99999");

    // Out of order: a chunk that skips ahead.
    let response = patch("150000-199999".into(), data[150_000..200_000].to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(header(&response, "range"), "0-99999");
    let (status, code, _) = error_of(response).await;
    assert_eq!(
        (status, code),
        (
            StatusCode::RANGE_NOT_SATISFIABLE,
            ErrorCode::BlobUploadInvalid
        )
    );
    // A repeated chunk.
    let response = patch("0-99999".into(), data[..100_000].to_vec())
        .send()
        .await
        .unwrap();
    let (status, code, _) = error_of(response).await;
    assert_eq!(
        (status, code),
        (
            StatusCode::RANGE_NOT_SATISFIABLE,
            ErrorCode::BlobUploadInvalid
        )
    );
    // Truncated: the range announces more than the body holds.
    let response = patch("100000-199999".into(), data[100_000..150_000].to_vec())
        .send()
        .await
        .unwrap();
    let (status, code, _) = error_of(response).await;
    assert_eq!(
        (status, code),
        (
            StatusCode::RANGE_NOT_SATISFIABLE,
            ErrorCode::BlobUploadInvalid
        )
    );

    // Nothing changed: the status still reports the first chunk only.
    let response = fixture
        .request(Method::GET, &location)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::NO_CONTENT);
    assert_eq!(header(&response, "range"), "0-99999");
    assert_eq!(header(&response, "docker-upload-uuid"), uuid);

    let response = patch("100000-199999".into(), data[100_000..200_000].to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(header(&response, "range"), "0-199999");
    // The last chunk rides on the commit.
    let response = fixture
        .request(Method::PUT, &format!("{location}?digest={digest}"))
        .header("content-range", "200000-299999")
        .body(data[200_000..].to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::CREATED);
    assert_eq!(
        header(&response, "docker-content-digest"),
        digest.to_string()
    );
    assert!(fixture.on_origins(&digest).await);
    let pulled = fixture
        .request(Method::GET, &format!("/v2/team/app/blobs/{digest}"))
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert_eq!(pulled, data);
    // The session is finished.
    let response = fixture
        .request(Method::GET, &location)
        .send()
        .await
        .unwrap();
    let (status, code, _) = error_of(response).await;
    assert_eq!(
        (status, code),
        (StatusCode::NOT_FOUND, ErrorCode::BlobUploadUnknown)
    );
    fixture.stop().await;
}

#[tokio::test]
async fn a_streamed_patch_without_content_range_is_accepted() {
    let fixture = Fixture::start().await;
    let data = Bytes::from(blob(2_500_000, "streamed"));
    let digest = Digest::of(&data);
    let response = fixture
        .request(Method::POST, "/v2/library/streamed/blobs/uploads/")
        .send()
        .await
        .unwrap();
    let location = header(&response, "location");
    // Chunked transfer encoding, no Content-Length, no Content-Range: Docker's way.
    let chunks: Vec<Result<Bytes, std::io::Error>> = data
        .chunks(64 * 1024)
        .map(|c| Ok(Bytes::copy_from_slice(c)))
        .collect();
    let response = fixture
        .request(Method::PATCH, &location)
        .body(reqwest::Body::wrap_stream(futures::stream::iter(chunks)))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    assert_eq!(header(&response, "range"), format!("0-{}", data.len() - 1));
    let response = fixture
        .request(Method::PUT, &format!("{location}?digest={digest}"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::CREATED);
    assert!(fixture.on_origins(&digest).await);
    fixture.stop().await;
}

#[tokio::test]
async fn a_wrong_digest_on_commit_is_digest_invalid_and_stores_nothing() {
    let fixture = Fixture::start().await;
    let data = blob(50_000, "wrong");
    let actual = Digest::of(&data);
    let claimed = Digest::of(b"something else");

    // POST + PATCH + PUT with the wrong digest.
    let response = fixture
        .request(Method::POST, "/v2/library/app/blobs/uploads/")
        .send()
        .await
        .unwrap();
    let location = header(&response, "location");
    fixture
        .request(Method::PATCH, &location)
        .body(data.clone())
        .send()
        .await
        .unwrap();
    let response = fixture
        .request(Method::PUT, &format!("{location}?digest={claimed}"))
        .send()
        .await
        .unwrap();
    let (status, code, detail) = error_of(response).await;
    assert_eq!(
        (status, code),
        (StatusCode::BAD_REQUEST, ErrorCode::DigestInvalid)
    );
    assert_eq!(detail["actual"], actual.to_string());
    // Monolithic with the wrong digest, and a malformed one.
    let response = fixture
        .request(
            Method::POST,
            &format!("/v2/library/app/blobs/uploads/?digest={claimed}"),
        )
        .body(data.clone())
        .send()
        .await
        .unwrap();
    let (_, code, _) = error_of(response).await;
    assert_eq!(code, ErrorCode::DigestInvalid);
    let response = fixture
        .request(
            Method::POST,
            "/v2/library/app/blobs/uploads/?digest=sha256:nope",
        )
        .body(data.clone())
        .send()
        .await
        .unwrap();
    let (_, code, _) = error_of(response).await;
    assert_eq!(code, ErrorCode::DigestInvalid);

    // Nothing reached the origins, and the failed session is gone.
    assert!(!fixture.on_origins(&actual).await);
    assert!(!fixture.on_origins(&claimed).await);
    for digest in [actual, claimed] {
        let response = fixture
            .request(Method::HEAD, &format!("/v2/library/app/blobs/{digest}"))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::NOT_FOUND);
    }
    let response = fixture
        .request(Method::GET, &location)
        .send()
        .await
        .unwrap();
    let (_, code, _) = error_of(response).await;
    assert_eq!(code, ErrorCode::BlobUploadUnknown);
    fixture.stop().await;
}

#[tokio::test]
async fn malformed_manifests_are_manifest_invalid_and_leave_the_tag_alone() {
    let fixture = Fixture::start().await;
    let manifest = fixture.image("library/app", "m", &[100]).await;
    let good = Digest::of(&manifest);
    let response = fixture
        .put_manifest("library/app", "stable", DOCKER_MANIFEST, &manifest)
        .await;
    assert_eq!(response.status(), StatusCode::CREATED);

    let mismatched = {
        let mut value: Value = serde_json::from_slice(&manifest).unwrap();
        value["mediaType"] = json!(OCI_MANIFEST);
        serde_json::to_vec(&value).unwrap()
    };
    let schema1 = serde_json::to_vec(&json!({"schemaVersion": 1, "name": "x"})).unwrap();
    let cases: Vec<(&str, Vec<u8>)> = vec![
        (DOCKER_MANIFEST, b"{\"schemaVersion\": 2, ".to_vec()),
        (DOCKER_MANIFEST, b"[]".to_vec()),
        (DOCKER_MANIFEST, schema1),
        (DOCKER_MANIFEST, mismatched),
        (
            "application/vnd.docker.distribution.manifest.v1+prettyjws",
            manifest.clone(),
        ),
    ];
    for (media_type, body) in cases {
        let response = fixture
            .put_manifest("library/app", "stable", media_type, &body)
            .await;
        let (status, code, _) = error_of(response).await;
        assert_eq!(
            (status, code),
            (StatusCode::BAD_REQUEST, ErrorCode::ManifestInvalid)
        );
        if body != manifest {
            assert!(!fixture.on_origins(&Digest::of(&body)).await);
        }
    }
    // By digest, the body must hash to it.
    let response = fixture
        .put_manifest(
            "library/app",
            &Digest::of(b"other").to_string(),
            DOCKER_MANIFEST,
            &manifest,
        )
        .await;
    let (_, code, _) = error_of(response).await;
    assert_eq!(code, ErrorCode::DigestInvalid);

    let response = fixture
        .request(Method::GET, "/v2/library/app/manifests/stable")
        .send()
        .await
        .unwrap();
    assert_eq!(header(&response, "docker-content-digest"), good.to_string());
    fixture.stop().await;
}

#[tokio::test]
async fn a_manifest_referencing_a_missing_blob_is_manifest_blob_unknown() {
    let fixture = Fixture::start().await;
    let config = fixture.push_blob("library/app", b"{}").await;
    let missing = Digest::of(b"a layer nobody pushed");
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, "digest": config.to_string(), "size": 2},
        "layers": [{"mediaType": OCI_LAYER_GZIP, "digest": missing.to_string(), "size": 10}],
    }))
    .unwrap();
    let response = fixture
        .put_manifest("library/app", "broken", OCI_MANIFEST, &manifest)
        .await;
    let (status, code, detail) = error_of(response).await;
    assert_eq!(
        (status, code),
        (StatusCode::BAD_REQUEST, ErrorCode::ManifestBlobUnknown)
    );
    assert_eq!(detail["digest"], missing.to_string());
    assert!(!fixture.on_origins(&Digest::of(&manifest)).await);

    // An index naming a child manifest that was never pushed.
    let index = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": [{"mediaType": OCI_MANIFEST, "digest": Digest::of(&manifest).to_string(), "size": manifest.len()}],
    }))
    .unwrap();
    let response = fixture
        .put_manifest("library/app", "broken", OCI_INDEX, &index)
        .await;
    let (_, code, _) = error_of(response).await;
    assert_eq!(code, ErrorCode::ManifestBlobUnknown);

    // An index whose child is stored but lacks a layer (the child went to the origins
    // directly, past the proxy's checks): the missing layer is named, the index not stored.
    fixture
        .cluster
        .push(
            &"library/app".parse().unwrap(),
            Bytes::from(manifest.clone()),
        )
        .await
        .unwrap();
    let response = fixture
        .put_manifest("library/app", "broken", OCI_INDEX, &index)
        .await;
    let (_, code, detail) = error_of(response).await;
    assert_eq!(code, ErrorCode::ManifestBlobUnknown);
    assert_eq!(detail["digest"], missing.to_string());
    assert!(!fixture.on_origins(&Digest::of(&index)).await);

    // The repository still has no tags at all.
    let response = fixture
        .request(Method::GET, "/v2/library/app/manifests/broken")
        .send()
        .await
        .unwrap();
    let (status, code, _) = error_of(response).await;
    assert_eq!(
        (status, code),
        (StatusCode::NOT_FOUND, ErrorCode::NameUnknown)
    );
    fixture.stop().await;
}

#[tokio::test]
async fn unknown_names_tags_blobs_and_uploads_have_their_own_codes() {
    let fixture = Fixture::start().await;
    let manifest = fixture.image("known/app", "k", &[10]).await;
    fixture
        .put_manifest("known/app", "1", DOCKER_MANIFEST, &manifest)
        .await;
    let unknown_digest = Digest::of(b"unknown");
    let cases = [
        (
            Method::GET,
            "/v2/unknown/app/manifests/latest".to_owned(),
            StatusCode::NOT_FOUND,
            ErrorCode::NameUnknown,
        ),
        (
            Method::GET,
            "/v2/known/app/manifests/2".to_owned(),
            StatusCode::NOT_FOUND,
            ErrorCode::ManifestUnknown,
        ),
        (
            Method::GET,
            format!("/v2/known/app/manifests/{unknown_digest}"),
            StatusCode::NOT_FOUND,
            ErrorCode::ManifestUnknown,
        ),
        (
            Method::GET,
            "/v2/unknown/app/tags/list".to_owned(),
            StatusCode::NOT_FOUND,
            ErrorCode::NameUnknown,
        ),
        (
            Method::GET,
            format!("/v2/known/app/blobs/{unknown_digest}"),
            StatusCode::NOT_FOUND,
            ErrorCode::BlobUnknown,
        ),
        (
            Method::GET,
            "/v2/known/app/blobs/sha256:123".to_owned(),
            StatusCode::BAD_REQUEST,
            ErrorCode::DigestInvalid,
        ),
        (
            Method::GET,
            "/v2/Known/App/tags/list".to_owned(),
            StatusCode::BAD_REQUEST,
            ErrorCode::NameInvalid,
        ),
        (
            Method::PATCH,
            "/v2/known/app/blobs/uploads/0000".to_owned(),
            StatusCode::NOT_FOUND,
            ErrorCode::BlobUploadUnknown,
        ),
        (
            Method::PUT,
            format!("/v2/known/app/blobs/uploads/0000?digest={unknown_digest}"),
            StatusCode::NOT_FOUND,
            ErrorCode::BlobUploadUnknown,
        ),
        (
            Method::DELETE,
            "/v2/known/app/manifests/1".to_owned(),
            StatusCode::METHOD_NOT_ALLOWED,
            ErrorCode::Unsupported,
        ),
    ];
    for (method, path, status, code) in cases {
        let response = fixture.request(method.clone(), &path).send().await.unwrap();
        let (got_status, got_code, _) = error_of(response).await;
        assert_eq!((got_status, got_code), (status, code), "{method} {path}");
    }
    // An upload session belongs to its repository.
    let response = fixture
        .request(Method::POST, "/v2/known/app/blobs/uploads/")
        .send()
        .await
        .unwrap();
    let uuid = header(&response, "docker-upload-uuid");
    let response = fixture
        .request(Method::GET, &format!("/v2/other/app/blobs/uploads/{uuid}"))
        .send()
        .await
        .unwrap();
    assert_eq!(error_of(response).await.1, ErrorCode::BlobUploadUnknown);
    // Cancelled sessions are gone.
    let response = fixture
        .request(
            Method::DELETE,
            &format!("/v2/known/app/blobs/uploads/{uuid}"),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::NO_CONTENT);
    let response = fixture
        .request(Method::GET, &format!("/v2/known/app/blobs/uploads/{uuid}"))
        .send()
        .await
        .unwrap();
    assert_eq!(error_of(response).await.1, ErrorCode::BlobUploadUnknown);
    fixture.stop().await;
}

#[tokio::test]
async fn tags_and_the_catalog_paginate_with_link_headers() {
    let fixture = Fixture::start().await;
    let manifest = fixture.image("lib/one", "t", &[10]).await;
    for tag in ["a", "b", "c", "d", "e"] {
        let response = fixture
            .put_manifest("lib/one", tag, DOCKER_MANIFEST, &manifest)
            .await;
        assert_eq!(response.status(), StatusCode::CREATED);
    }
    for repository in ["lib/two", "lib/one/sub", "zeta"] {
        let manifest = fixture.image(repository, repository, &[10]).await;
        fixture
            .put_manifest(repository, "latest", DOCKER_MANIFEST, &manifest)
            .await;
    }

    let response = fixture
        .request(Method::GET, "/v2/lib/one/tags/list")
        .send()
        .await
        .unwrap();
    assert!(response.headers().get("link").is_none());
    let body = json_of(response).await;
    assert_eq!(
        body,
        json!({"name": "lib/one", "tags": ["a", "b", "c", "d", "e"]})
    );

    let mut path = "/v2/lib/one/tags/list?n=2".to_owned();
    let mut pages = Vec::new();
    loop {
        let response = fixture.request(Method::GET, &path).send().await.unwrap();
        let link = response
            .headers()
            .get("link")
            .map(|l| l.to_str().unwrap().to_owned());
        let body = json_of(response).await;
        pages.push(body["tags"].clone());
        match link {
            Some(link) => {
                assert!(link.ends_with("; rel=\"next\""), "{link}");
                path = link[1..link.find('>').unwrap()].to_owned();
            }
            None => break,
        }
    }
    assert_eq!(pages, [json!(["a", "b"]), json!(["c", "d"]), json!(["e"])]);
    let body = fixture
        .request(Method::GET, "/v2/lib/one/tags/list?n=0")
        .send()
        .await
        .unwrap();
    let body = json_of(body).await;
    assert_eq!(body["tags"], json!([]));

    let body = fixture
        .request(Method::GET, "/v2/_catalog")
        .send()
        .await
        .unwrap();
    let body = json_of(body).await;
    assert_eq!(
        body,
        json!({"repositories": ["lib/one", "lib/one/sub", "lib/two", "zeta"]})
    );
    let response = fixture
        .request(Method::GET, "/v2/_catalog?n=2&last=lib/one")
        .send()
        .await
        .unwrap();
    assert_eq!(
        header(&response, "link"),
        "</v2/_catalog?n=2&last=lib/two>; rel=\"next\""
    );
    let body = json_of(response).await;
    assert_eq!(body["repositories"], json!(["lib/one/sub", "lib/two"]));
    fixture.stop().await;
}

#[tokio::test]
async fn a_blob_mounts_across_repositories() {
    let fixture = Fixture::start().await;
    let data = blob(40_000, "mount");
    let digest = fixture.push_blob("source/app", &data).await;
    let response = fixture
        .request(
            Method::POST,
            &format!("/v2/target/app/blobs/uploads/?mount={digest}&from=source/app"),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::CREATED);
    assert_eq!(
        header(&response, "location"),
        format!("/v2/target/app/blobs/{digest}")
    );
    // The target namespace's backend has its own copy.
    let backend = fixture.cluster.dir.join("backend");
    let mut found = false;
    for _ in 0..50 {
        found = kraken_backend::FsBackend::new(&backend)
            .blob_path(&"target/app".parse::<Namespace>().unwrap(), &digest)
            .exists();
        if found {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        found,
        "the mount was written back under the target namespace"
    );

    // A source without the blob: an ordinary upload session instead.
    let other = Digest::of(b"not there");
    let response = fixture
        .request(
            Method::POST,
            &format!("/v2/target/app/blobs/uploads/?mount={other}&from=source/app"),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    assert!(response.headers().get("docker-upload-uuid").is_some());
    fixture.stop().await;
}

#[tokio::test]
async fn a_multi_platform_index_pushes_pulls_and_prefetches() {
    let fixture = Fixture::start().await;
    let repository = "multi/app";
    let mut children = Vec::new();
    for arch in ["amd64", "arm64"] {
        let manifest = fixture.image(repository, arch, &[1000, 2000]).await;
        let digest = Digest::of(&manifest);
        let response = fixture
            .put_manifest(repository, &digest.to_string(), DOCKER_MANIFEST, &manifest)
            .await;
        assert_eq!(response.status(), StatusCode::CREATED);
        children.push(
            json!({"mediaType": DOCKER_MANIFEST, "digest": digest.to_string(),
            "size": manifest.len(), "platform": {"architecture": arch, "os": "linux"}}),
        );
    }
    let list = serde_json::to_vec(&json!({
        "schemaVersion": 2, "mediaType": DOCKER_MANIFEST_LIST, "manifests": children,
    }))
    .unwrap();
    let response = fixture
        .put_manifest(repository, "v1", DOCKER_MANIFEST_LIST, &list)
        .await;
    assert_eq!(response.status(), StatusCode::CREATED);
    let response = fixture
        .request(Method::GET, "/v2/multi/app/manifests/v1")
        .send()
        .await
        .unwrap();
    assert_eq!(header(&response, "content-type"), DOCKER_MANIFEST_LIST);
    assert_eq!(response.bytes().await.unwrap(), list);

    let channel = kraken_transport::grpc::channel(
        &fixture.cluster.tls(Role::Client).unwrap(),
        &fixture.proxy.grpc_addr().to_string(),
        None,
        Role::Proxy,
    )
    .unwrap();
    let mut client =
        kraken_proto::proxy::v1::proxy_service_client::ProxyServiceClient::new(channel);
    let reply = client
        .prefetch(kraken_proto::proxy::v1::PrefetchRequest {
            tag: "multi/app:v1".into(),
        })
        .await
        .unwrap()
        .into_inner();
    // The list and both children first, then two configs and four layers.
    assert_eq!(reply.digests.len(), 3 + 2 + 4);
    assert_eq!(reply.digests[0], Digest::of(&list).to_string());
    assert!(reply.total_bytes > 6000);
    let status = client
        .prefetch(kraken_proto::proxy::v1::PrefetchRequest {
            tag: "multi/app:none".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::NotFound);
    fixture.stop().await;
}

/// Bytes in the files under `dir` (the proxy's staged uploads).
fn staged_bytes(dir: &std::path::Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .filter_map(|e| e.metadata().ok())
                .filter(|m| m.is_file())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}

#[tokio::test]
async fn a_large_blob_is_staged_on_disk_as_it_arrives() {
    const CHUNK: usize = 1 << 20;
    const CHUNKS: usize = 128;
    let fixture = Fixture::start().await;
    let piece = |index: usize| -> Bytes {
        let seed = Digest::of(&index.to_le_bytes());
        Bytes::from(
            (0..CHUNK)
                .map(|i| seed.as_bytes()[i % 32] ^ (i >> 5) as u8)
                .collect::<Vec<u8>>(),
        )
    };
    let mut hasher = kraken_core::Sha256Hasher::new();
    for index in 0..CHUNKS {
        hasher.update(&piece(index));
    }
    let digest = hasher.finish();
    let response = fixture
        .request(Method::POST, "/v2/big/blob/blobs/uploads/")
        .send()
        .await
        .unwrap();
    let location = header(&response, "location");
    // The body comes from the test, a chunk at a time through a channel of one: the test
    // decides how much of it exists.
    let (send, receive) = tokio::sync::mpsc::channel::<Bytes>(1);
    let body = futures::stream::unfold(receive, |mut receive| async move {
        let chunk = receive.recv().await?;
        Some((Ok::<_, std::io::Error>(chunk), receive))
    });
    let patch = tokio::spawn(
        fixture
            .request(Method::PATCH, &location)
            .body(reqwest::Body::wrap_stream(body))
            .send(),
    );
    let half = CHUNKS / 2;
    for index in 0..half {
        send.send(piece(index)).await.unwrap();
    }
    // With the request still open and the other half not even generated, what the proxy
    // received is on its disk: it stages as it goes instead of holding the body. It may keep
    // back what it gathers for one write, and what sits in the connection's buffers.
    let uploads = fixture._dir.path().join("proxy/uploads");
    let expected = ((half - 4) * CHUNK) as u64;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while staged_bytes(&uploads) < expected {
        assert!(
            tokio::time::Instant::now() < deadline,
            "only {} of {} MiB sent is staged",
            staged_bytes(&uploads) >> 20,
            half
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(!patch.is_finished(), "the request is still open");
    for index in half..CHUNKS {
        send.send(piece(index)).await.unwrap();
    }
    drop(send);
    let response = patch.await.unwrap().unwrap();
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    assert_eq!(staged_bytes(&uploads), (CHUNKS * CHUNK) as u64);
    let response = fixture
        .request(Method::PUT, &format!("{location}?digest={digest}"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::CREATED);
    assert!(fixture.on_origins(&digest).await);
    fixture.stop().await;
}
