//! A test image and the distribution-API push every registry accepts: the benchmarks that
//! compare with Debian's `docker-registry` push the same bytes to it and to Kraken.

use std::net::SocketAddr;

use anyhow::{Context, ensure};
use bytes::Bytes;
use sha2::{Digest as _, Sha256};

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";

/// `sha256:<hex>` of `data`.
pub fn sha256(data: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(data)))
}

/// An OCI image: pseudo-random layers (different from each other), a config, a manifest.
#[derive(Debug, Clone)]
pub struct TestImage {
    /// The layers, then the config.
    pub blobs: Vec<Bytes>,
    pub manifest: Bytes,
}

impl TestImage {
    /// `layers` layers of `layer_bytes` each.
    pub fn new(layers: u64, layer_bytes: usize) -> anyhow::Result<Self> {
        let layers: Vec<Bytes> = (0..layers)
            .map(|layer| kraken_tests::blob(layer_bytes, layer))
            .collect();
        let distinct: std::collections::HashSet<String> =
            layers.iter().map(|l| sha256(l)).collect();
        ensure!(distinct.len() == layers.len(), "the layers must differ");
        let config = Bytes::from_static(
            br#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}"#,
        );
        let descriptor = |media_type: &str, blob: &Bytes| serde_json::json!({"mediaType": media_type, "digest": sha256(blob), "size": blob.len()});
        let manifest = Bytes::from(serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": descriptor("application/vnd.oci.image.config.v1+json", &config),
            "layers": layers.iter().map(|l| descriptor("application/vnd.oci.image.layer.v1.tar", l)).collect::<Vec<_>>(),
        }))?);
        let mut blobs = layers;
        blobs.push(config);
        Ok(Self { blobs, manifest })
    }

    /// Bytes of every blob and the manifest.
    pub fn size(&self) -> usize {
        self.blobs.iter().map(Bytes::len).sum::<usize>() + self.manifest.len()
    }

    /// The manifest's digest.
    pub fn digest(&self) -> String {
        sha256(&self.manifest)
    }

    /// Pushes the blobs to `registry`'s `repo` (POST then PUT: the flow every registry
    /// supports; docker-registry has no monolithic POST).
    pub async fn push_blobs(
        &self,
        http: &reqwest::Client,
        registry: SocketAddr,
        repo: &str,
    ) -> anyhow::Result<()> {
        for blob in &self.blobs {
            let digest = sha256(blob);
            let start = http
                .post(format!("http://{registry}/v2/{repo}/blobs/uploads/"))
                .send()
                .await?;
            ensure!(start.status() == 202, "upload start: {}", start.status());
            let location = start
                .headers()
                .get("location")
                .and_then(|l| l.to_str().ok())
                .context("no upload location")?
                .to_owned();
            let location = if location.starts_with("http") {
                location
            } else {
                format!("http://{registry}{location}")
            };
            let separator = if location.contains('?') { '&' } else { '?' };
            let request = http
                .put(format!("{location}{separator}digest={digest}"))
                .header("content-type", "application/octet-stream")
                .body(blob.clone());
            created(request, "blob commit").await?;
        }
        Ok(())
    }

    /// Puts the manifest under `repo:tag`.
    pub async fn push_manifest(
        &self,
        http: &reqwest::Client,
        registry: SocketAddr,
        repo: &str,
        tag: &str,
    ) -> anyhow::Result<()> {
        let request = http
            .put(format!("http://{registry}/v2/{repo}/manifests/{tag}"))
            .header("content-type", OCI_MANIFEST)
            .body(self.manifest.clone());
        created(request, "manifest").await
    }

    /// Blobs, then the manifest as `repo:tag`.
    pub async fn push(
        &self,
        http: &reqwest::Client,
        registry: SocketAddr,
        repo: &str,
        tag: &str,
    ) -> anyhow::Result<()> {
        self.push_blobs(http, registry, repo).await?;
        self.push_manifest(http, registry, repo, tag).await
    }
}

/// Sends `request`, which must answer 201 Created.
async fn created(request: reqwest::RequestBuilder, what: &str) -> anyhow::Result<()> {
    let response = request.send().await?;
    let status = response.status();
    ensure!(
        status == 201,
        "{what}: {status} {:?}",
        response.text().await
    );
    Ok(())
}
