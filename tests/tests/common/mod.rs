//! Registry-client helpers shared by the whole-cluster tests that push through the proxy's
//! HTTP API as a client would (`mod common;` in each).

// Each test binary uses its own subset.
#![allow(dead_code)]

use std::net::SocketAddr;

use reqwest::{Client, StatusCode};
use sha2::{Digest as _, Sha256};

/// `sha256:<hex>` of `data`.
pub(crate) fn sha256(data: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(data)))
}

/// Pushes `data` as one monolithic upload; returns its digest.
pub(crate) async fn push_blob(http: &Client, proxy: SocketAddr, repo: &str, data: &[u8]) -> String {
    let digest = sha256(data);
    let response = http
        .post(format!(
            "http://{proxy}/v2/{repo}/blobs/uploads/?digest={digest}"
        ))
        .header("content-type", "application/octet-stream")
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

/// Puts a manifest under `reference`; returns its digest.
pub(crate) async fn push_manifest(
    http: &Client,
    proxy: SocketAddr,
    repo: &str,
    reference: &str,
    media_type: &str,
    body: &[u8],
) -> String {
    let response = http
        .put(format!("http://{proxy}/v2/{repo}/manifests/{reference}"))
        .header("content-type", media_type)
        .body(body.to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(
        response.status(),
        StatusCode::CREATED,
        "{:?}",
        response.text().await
    );
    sha256(body)
}
