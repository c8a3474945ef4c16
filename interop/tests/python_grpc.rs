//! The CI-uploader use case with the real Python grpcio (from the test command's venv): stubs
//! generated from `proto/` at run time, an image's blobs uploaded to the origins and a tag put
//! on the build-index over mutual TLS; then an agent serves that image by tag through the
//! registry API, fetching it through the swarm.

// Test helpers outside `#[test]` functions: a panic there is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;

use kraken_devcluster::{DevCluster, Ports};
use kraken_interop::venv_tool;
use kraken_tls::Role;
use sha2::{Digest as _, Sha256};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_grpcio_uploads_and_tags_then_the_agent_serves_it() {
    let python = venv_tool("python");
    let dir = tempfile::tempdir().unwrap();
    let cluster = DevCluster::builder(dir.path().join("cluster"))
        .ports(Ports::Ephemeral)
        .start()
        .await
        .unwrap();
    let layer: Vec<u8> = (0..(3u32 << 20))
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 11) as u8)
        .collect();
    let layer_file = dir.path().join("layer.tar");
    std::fs::write(&layer_file, &layer).unwrap();
    let repo = env!("CARGO_MANIFEST_DIR");
    let proto = PathBuf::from(repo).join("../proto");
    let script = PathBuf::from(repo).join("python/ci_upload.py");
    let pki = &cluster.pki;
    let args: Vec<String> = vec![
        script.display().to_string(),
        proto.display().to_string(),
        dir.path().join("stubs").display().to_string(),
        pki.ca_cert_path().display().to_string(),
        pki.cert_path(Role::Client).display().to_string(),
        pki.key_path(Role::Client).display().to_string(),
        cluster.origins[0].grpc_addr().to_string(),
        cluster.build_index_addr().to_string(),
        "ci/uploaded".to_owned(),
        "build-42".to_owned(),
        layer_file.display().to_string(),
    ];
    let output = tokio::task::spawn_blocking(move || {
        std::process::Command::new(python)
            .args(&args)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert!(
        output.status.success(),
        "ci_upload.py failed:\n{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    let manifest_digest = String::from_utf8_lossy(&output.stdout).trim().to_owned();
    assert!(manifest_digest.starts_with("sha256:"), "{manifest_digest}");

    let agent = cluster.agent_registry_addr(0);
    let http = reqwest::Client::new();
    let manifest = http
        .get(format!("http://{agent}/v2/ci/uploaded/manifests/build-42"))
        .send()
        .await
        .unwrap();
    assert_eq!(manifest.status(), 200);
    assert_eq!(
        manifest.headers()["docker-content-digest"]
            .to_str()
            .unwrap(),
        manifest_digest
    );
    assert_eq!(
        manifest.headers()["content-type"].to_str().unwrap(),
        "application/vnd.oci.image.manifest.v1+json"
    );
    let body = manifest.bytes().await.unwrap();
    assert_eq!(
        format!("sha256:{}", hex::encode(Sha256::digest(&body))),
        manifest_digest
    );
    let layer_digest = format!("sha256:{}", hex::encode(Sha256::digest(&layer)));
    let served = http
        .get(format!(
            "http://{agent}/v2/ci/uploaded/blobs/{layer_digest}"
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(served.status(), 200);
    assert!(
        served.bytes().await.unwrap() == layer,
        "the agent served different bytes"
    );
    cluster.shutdown().await;
}
