//! OCI distribution pull conformance of the agent's registry API, against a whole cluster: an
//! image pushed through the proxy's HTTP API (as a client would), then every pull endpoint of
//! an agent checked for status, headers and error JSON — existing and missing blobs and
//! manifests, by tag and by digest, invalid references, ranges, tag listing, writes refused.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{push_blob, push_manifest, sha256};
use kraken_oci::ErrorBody;
use reqwest::{Client, Method, Response, StatusCode};

const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";

/// The error codes of a registry error response (which must be JSON).
async fn codes(response: Response) -> Vec<String> {
    assert_eq!(
        response.headers()["content-type"].to_str().unwrap(),
        "application/json",
        "errors are JSON"
    );
    let body: ErrorBody = response.json().await.unwrap();
    body.errors
        .into_iter()
        .map(|e| e.code.to_string())
        .collect()
}

fn image_manifest(config: (&str, usize), layers: &[(&str, usize)]) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config.0, "size": config.1},
        "layers": layers.iter().map(|(d, s)| serde_json::json!({
            "mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": d, "size": s
        })).collect::<Vec<_>>(),
    }))
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_registry_pull_conformance() {
    let cluster = kraken_tests::Cluster::builder().start().await;
    let proxy = cluster.proxy_registry_addr();
    let agent = cluster.agent_registry_addr(0);
    let http = Client::new();
    let repo = "conformance/app";

    // An image: two layers, a config, a manifest tagged v1, and an index tagged multi.
    let layer_a: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 251) as u8).collect();
    let layer_b: Vec<u8> = (0..70_000u32).map(|i| (i * 13 % 241) as u8).collect();
    let config =
        br#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}"#;
    let a = push_blob(&http, proxy, repo, &layer_a).await;
    let b = push_blob(&http, proxy, repo, &layer_b).await;
    let c = push_blob(&http, proxy, repo, config).await;
    let manifest = image_manifest(
        (&c, config.len()),
        &[(&a, layer_a.len()), (&b, layer_b.len())],
    );
    let m = push_manifest(&http, proxy, repo, "v1", OCI_MANIFEST, &manifest).await;
    let index = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": [{"mediaType": OCI_MANIFEST, "digest": m, "size": manifest.len(),
                       "platform": {"architecture": "amd64", "os": "linux"}}],
    }))
    .unwrap();
    let i = push_manifest(&http, proxy, repo, "multi", OCI_INDEX, &index).await;
    let base = format!("http://{agent}/v2");

    // The version check.
    let response = http.get(format!("{base}/")).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        response.headers()["docker-distribution-api-version"],
        "registry/2.0"
    );

    // Manifests: HEAD and GET, by tag and by digest.
    for reference in ["v1", m.as_str()] {
        let url = format!("{base}/{repo}/manifests/{reference}");
        let head = http.head(&url).send().await.unwrap();
        assert_eq!(head.status(), StatusCode::OK, "HEAD {reference}");
        assert_eq!(head.headers()["content-type"], OCI_MANIFEST);
        assert_eq!(head.headers()["docker-content-digest"].to_str().unwrap(), m);
        assert_eq!(
            head.headers()["content-length"].to_str().unwrap(),
            manifest.len().to_string()
        );
        assert!(head.bytes().await.unwrap().is_empty(), "HEAD has no body");
        let get = http.get(&url).send().await.unwrap();
        assert_eq!(get.status(), StatusCode::OK, "GET {reference}");
        assert_eq!(get.bytes().await.unwrap(), manifest);
    }
    let get = http
        .get(format!("{base}/{repo}/manifests/multi"))
        .send()
        .await
        .unwrap();
    assert_eq!(get.status(), StatusCode::OK);
    assert_eq!(get.headers()["content-type"], OCI_INDEX);
    assert_eq!(get.headers()["docker-content-digest"].to_str().unwrap(), i);
    assert_eq!(get.bytes().await.unwrap(), index);

    // Missing manifests: unknown tag, unknown digest, a blob that is not a manifest.
    let missing = sha256(b"never pushed");
    for reference in ["nope", missing.as_str()] {
        let response = http
            .get(format!("{base}/{repo}/manifests/{reference}"))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::NOT_FOUND, "{reference}");
        assert_eq!(codes(response).await, ["MANIFEST_UNKNOWN"], "{reference}");
        let head = http
            .head(format!("{base}/{repo}/manifests/{reference}"))
            .send()
            .await
            .unwrap();
        assert_eq!(head.status(), StatusCode::NOT_FOUND, "HEAD {reference}");
    }
    let response = http
        .get(format!("{base}/{repo}/manifests/{a}"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        response.status(),
        StatusCode::NOT_FOUND,
        "a layer is not a manifest"
    );
    assert_eq!(codes(response).await, ["MANIFEST_UNKNOWN"]);

    // Blobs: HEAD and GET, existing and missing.
    let url = format!("{base}/{repo}/blobs/{a}");
    let head = http.head(&url).send().await.unwrap();
    assert_eq!(head.status(), StatusCode::OK);
    assert_eq!(
        head.headers()["content-length"].to_str().unwrap(),
        layer_a.len().to_string()
    );
    assert_eq!(head.headers()["docker-content-digest"].to_str().unwrap(), a);
    let get = http.get(&url).send().await.unwrap();
    assert_eq!(get.status(), StatusCode::OK);
    assert_eq!(get.headers()["docker-content-digest"].to_str().unwrap(), a);
    assert!(get.bytes().await.unwrap() == layer_a);
    let response = http
        .get(format!("{base}/{repo}/blobs/{missing}"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
    assert_eq!(codes(response).await, ["BLOB_UNKNOWN"]);
    let head = http
        .head(format!("{base}/{repo}/blobs/{missing}"))
        .send()
        .await
        .unwrap();
    assert_eq!(head.status(), StatusCode::NOT_FOUND);

    // Ranges: a middle slice, a suffix, and one past the end.
    let get = http
        .get(format!("{base}/{repo}/blobs/{b}"))
        .header("range", "bytes=1000-1999")
        .send()
        .await
        .unwrap();
    assert_eq!(get.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(
        get.headers()["content-range"].to_str().unwrap(),
        format!("bytes 1000-1999/{}", layer_b.len())
    );
    assert!(get.bytes().await.unwrap() == layer_b[1000..2000]);
    let get = http
        .get(format!("{base}/{repo}/blobs/{b}"))
        .header("range", "bytes=-10")
        .send()
        .await
        .unwrap();
    assert_eq!(get.status(), StatusCode::PARTIAL_CONTENT);
    assert!(get.bytes().await.unwrap() == layer_b[layer_b.len() - 10..]);
    let get = http
        .get(format!("{base}/{repo}/blobs/{b}"))
        .header("range", format!("bytes={}-", layer_b.len()))
        .send()
        .await
        .unwrap();
    assert_eq!(get.status(), StatusCode::RANGE_NOT_SATISFIABLE);
    assert_eq!(
        get.headers()["content-range"].to_str().unwrap(),
        format!("bytes */{}", layer_b.len())
    );
    assert_eq!(codes(get).await, ["RANGE_INVALID"]);

    // Invalid references: a malformed digest, name and tag are 400s naming the problem.
    let response = http
        .get(format!("{base}/{repo}/blobs/sha256:xyz"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    assert_eq!(codes(response).await, ["DIGEST_INVALID"]);
    let response = http
        .get(format!("{base}/Upper/Case/manifests/v1"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    assert_eq!(codes(response).await, ["NAME_INVALID"]);
    let response = http
        .get(format!("{base}/{repo}/manifests/bad!tag"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    assert!(!codes(response).await.is_empty());

    // Tags.
    let tags: serde_json::Value = http
        .get(format!("{base}/{repo}/tags/list"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(tags["name"], repo);
    let mut listed: Vec<String> = serde_json::from_value(tags["tags"].clone()).unwrap();
    listed.sort();
    assert_eq!(listed, ["multi", "v1"]);
    let page = http
        .get(format!("{base}/{repo}/tags/list?n=1"))
        .send()
        .await
        .unwrap();
    assert!(
        page.headers().contains_key("link"),
        "a first page links to the next"
    );
    let page: serde_json::Value = page.json().await.unwrap();
    assert_eq!(page["tags"].as_array().map(Vec::len), Some(1));
    let response = http
        .get(format!("{base}/no/such/repo/tags/list"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
    assert_eq!(codes(response).await, ["NAME_UNKNOWN"]);

    // The agent is read-only.
    for (method, path) in [
        (Method::PUT, format!("{repo}/manifests/v2")),
        (Method::POST, format!("{repo}/blobs/uploads/")),
        (Method::DELETE, format!("{repo}/blobs/{a}")),
    ] {
        let response = http
            .request(method.clone(), format!("{base}/{path}"))
            .send()
            .await
            .unwrap();
        assert_eq!(
            response.status(),
            StatusCode::METHOD_NOT_ALLOWED,
            "{method} {path}"
        );
        assert_eq!(codes(response).await, ["UNSUPPORTED"]);
    }
    cluster.shutdown().await;
}
