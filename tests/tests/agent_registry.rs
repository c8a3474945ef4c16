//! README claims about the agent that only a whole cluster can show:
//! - its registry serves only clients in `allowed_cidrs` (403 `DENIED` naming the address for
//!   anyone else, before any work is done), and a configured range lets them in;
//! - `AgentService/Preload` by `repository:tag` brings the manifest and every blob it
//!   references into the agent's cache;
//! - a tag re-pointed at the build-index is served re-pointed at once: the agent resolves tags
//!   on every request (no stale tags).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;

use common::{push_blob, sha256};
use kraken_devcluster::ConfigHooks;
use kraken_proto::agent::v1::{PreloadRequest, StatRequest, preload_request::Target};
use reqwest::{Client, StatusCode};

const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
/// A second loopback address: Linux routes all of 127.0.0.0/8 to `lo`, so a client bound to it
/// reaches the agent's 127.0.0.1 listener from a source outside the default `allowed_cidrs`.
const OUTSIDER: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2));

/// Pushes a one-layer image (layer made of `seed`) tagged `tag`; returns (manifest, blobs).
async fn push_image(
    http: &Client,
    proxy: SocketAddr,
    repo: &str,
    tag: &str,
    seed: u8,
) -> (String, Vec<String>) {
    let layer: Vec<u8> = (0..200_000u32)
        .map(|i| (i.wrapping_mul(31) as u8) ^ seed)
        .collect();
    let config = format!(
        r#"{{"architecture":"amd64","os":"linux","rootfs":{{"type":"layers","diff_ids":[]}},"seed":{seed}}}"#
    );
    let layer_digest = push_blob(http, proxy, repo, &layer).await;
    let config_digest = push_blob(http, proxy, repo, config.as_bytes()).await;
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": config_digest, "size": config.len()},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar",
                    "digest": layer_digest, "size": layer.len()}],
    }))
    .unwrap();
    let response = http
        .put(format!("http://{proxy}/v2/{repo}/manifests/{tag}"))
        .header("content-type", OCI_MANIFEST)
        .body(manifest.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::CREATED);
    (sha256(&manifest), vec![layer_digest, config_digest])
}

fn client_from(source: IpAddr) -> Client {
    Client::builder().local_address(source).build().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_registry_refuses_clients_outside_allowed_cidrs_and_serves_a_configured_range() {
    // Agent 0 keeps the default ranges (loopback, the Docker bridge gateway); agent 1 also
    // allows 127.0.0.2.
    let cluster = kraken_tests::Cluster::builder()
        .agents(2)
        .customize(|builder| {
            builder.configure(ConfigHooks {
                agents: Some(Arc::new(|index, config| {
                    if index == 1 {
                        config.allowed_cidrs.push("127.0.0.2/32".parse().unwrap());
                    }
                })),
                ..ConfigHooks::default()
            })
        })
        .start()
        .await;
    let proxy = cluster.proxy_registry_addr();
    let repo = "cidrs/app";
    let (manifest, blobs) = push_image(&Client::new(), proxy, repo, "v1", 1).await;

    let outsider = client_from(OUTSIDER);
    let defaults = cluster.agent_registry_addr(0);
    for path in [
        "/v2/".to_owned(),
        format!("/v2/{repo}/manifests/v1"),
        format!("/v2/{repo}/blobs/{}", blobs[0]),
    ] {
        let response = outsider
            .get(format!("http://{defaults}{path}"))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::FORBIDDEN, "{path}");
        let body: serde_json::Value = response.json().await.unwrap();
        assert_eq!(body["errors"][0]["code"], "DENIED", "{path}: {body}");
        let message = body["errors"][0]["message"].as_str().unwrap();
        assert!(message.contains("127.0.0.2"), "{path}: {message}");
    }
    // Nothing was fetched on the outsider's behalf: the blob is not in agent 0's cache.
    let stat = cluster
        .agent_client(0)
        .stat(StatRequest {
            namespace: repo.to_owned(),
            digest: blobs[0].clone(),
        })
        .await;
    assert!(
        stat.is_err_and(|status| status.code() == tonic::Code::NotFound),
        "a refused request must not start a download"
    );
    // The same request from 127.0.0.1 is served.
    let local = Client::new()
        .get(format!("http://{defaults}/v2/{repo}/manifests/v1"))
        .header("accept", OCI_MANIFEST)
        .send()
        .await
        .unwrap();
    assert_eq!(local.status(), StatusCode::OK);
    assert_eq!(local.headers()["docker-content-digest"], manifest.as_str());

    // Agent 1 lets 127.0.0.2 in.
    let allowed = outsider
        .get(format!(
            "http://{}/v2/{repo}/blobs/{}",
            cluster.agent_registry_addr(1),
            blobs[0]
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(allowed.status(), StatusCode::OK);
    assert_eq!(sha256(&allowed.bytes().await.unwrap()), blobs[0]);
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn preload_by_tag_brings_the_manifest_and_every_blob_into_the_cache() {
    let cluster = kraken_tests::Cluster::builder().agents(1).start().await;
    let repo = "preload/app";
    let (manifest, blobs) =
        push_image(&Client::new(), cluster.proxy_registry_addr(), repo, "v7", 7).await;
    let mut agent = cluster.agent_client(0);
    for digest in blobs.iter().chain([&manifest]) {
        let status = agent
            .stat(StatRequest {
                namespace: repo.to_owned(),
                digest: digest.clone(),
            })
            .await
            .unwrap_err();
        assert_eq!(status.code(), tonic::Code::NotFound, "{digest} before");
    }

    let mut progress = agent
        .preload(PreloadRequest {
            target: Some(Target::Tag(format!("{repo}:v7"))),
        })
        .await
        .unwrap()
        .into_inner();
    let mut reported = std::collections::BTreeSet::new();
    let mut done = false;
    while let Some(event) = progress.message().await.unwrap() {
        assert!(!done, "nothing follows the done event");
        reported.insert(event.digest.clone());
        done = event.done;
    }
    assert!(done, "the stream ends with done");
    for digest in blobs.iter().chain([&manifest]) {
        assert!(reported.contains(digest), "no progress for {digest}");
        let stat = agent
            .stat(StatRequest {
                namespace: repo.to_owned(),
                digest: digest.clone(),
            })
            .await
            .unwrap()
            .into_inner();
        assert!(stat.complete, "{digest} is not complete after the preload");
    }

    // A tag that does not exist names itself in a NOT_FOUND.
    let missing = agent
        .preload(PreloadRequest {
            target: Some(Target::Tag(format!("{repo}:nope"))),
        })
        .await;
    let status = match missing {
        Err(status) => status,
        Ok(stream) => stream.into_inner().message().await.unwrap_err(),
    };
    assert_eq!(status.code(), tonic::Code::NotFound, "{status:?}");
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_re_pointed_tag_is_served_re_pointed_at_once() {
    let cluster = kraken_tests::Cluster::builder().agents(1).start().await;
    let http = Client::new();
    let proxy = cluster.proxy_registry_addr();
    let agent = cluster.agent_registry_addr(0);
    let repo = "repoint/app";
    let url = format!("http://{agent}/v2/{repo}/manifests/latest");
    let pull = || async {
        let response = http
            .get(&url)
            .header("accept", OCI_MANIFEST)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        let header = response.headers()["docker-content-digest"]
            .to_str()
            .unwrap()
            .to_owned();
        let body = response.bytes().await.unwrap();
        assert_eq!(sha256(&body), header, "the body is the digest's manifest");
        header
    };

    let (first, _) = push_image(&http, proxy, repo, "latest", 1).await;
    assert_eq!(pull().await, first);
    // Pulled once more, so the first manifest is certainly in the agent's cache.
    assert_eq!(pull().await, first);
    let (second, second_blobs) = push_image(&http, proxy, repo, "latest", 2).await;
    assert_ne!(first, second);
    assert_eq!(pull().await, second, "the agent served a stale tag");
    // And the re-pointed image's layer comes through too.
    let layer = http
        .get(format!(
            "http://{agent}/v2/{repo}/blobs/{}",
            second_blobs[0]
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(layer.status(), StatusCode::OK);
    assert_eq!(sha256(&layer.bytes().await.unwrap()), second_blobs[0]);
    // Back again: a tag can also move back to an older image.
    push_image(&http, proxy, repo, "latest", 1).await;
    assert_eq!(pull().await, first);
    cluster.shutdown().await;
}
