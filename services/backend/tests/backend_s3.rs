//! The `s3` backend against a real S3-compatible server: moto (`moto[server]` from PyPI,
//! which tests/run.sh installs into its venv), started on a free loopback port per test.
//!
//! moto was chosen over s3s-fs because it installs in seconds from PyPI (s3s-fs is a ~2 min
//! `cargo install`) and mimics AWS closely where it matters here: the 5 MiB minimum part size
//! of multipart uploads, 404s for missing keys, and `ListMultipartUploads`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;

use common::moto::{BUCKET, Moto};
use common::{blob, digest, file_with, ns, refusing_addr};
use kraken_backend::{Backend, BackendError, Backends, S3Backend, UploadSource};
use kraken_config::Pattern;
use kraken_config::backend::{
    AuthConfig, BackendBandwidthConfig, BackendConfig, BackendKind, NamePath, S3BackendConfig,
    S3Credentials,
};

/// `auth.s3.kraken` with the secret in a file, as production configs should hold it.
fn auth_with_secret_file(dir: &std::path::Path) -> AuthConfig {
    let secret = dir.join("aws_secret");
    std::fs::write(&secret, "moto-secret\n").unwrap();
    let mut auth = AuthConfig::default();
    auth.s3.insert(
        "kraken".to_owned(),
        S3Credentials {
            aws_access_key_id: "moto-key".to_owned(),
            aws_secret_access_key: None,
            aws_secret_access_key_file: Some(secret),
        },
    );
    auth
}

fn backend_from_config(config: S3BackendConfig, dir: &std::path::Path) -> Arc<dyn Backend> {
    let rules = [BackendConfig {
        namespace: Pattern::new(".*").unwrap(),
        backend: BackendKind::S3(config),
        bandwidth: BackendBandwidthConfig::default(),
    }];
    let backends = Backends::from_config(&rules, &auth_with_secret_file(dir), 1).unwrap();
    backends.backend_for(&ns("library/ubuntu")).unwrap().clone()
}

#[tokio::test]
async fn blobs_round_trip_in_the_docker_registry_layout_with_multipart_for_large_ones() {
    let moto = Moto::start().await;
    let dir = tempfile::tempdir().unwrap();
    let backend = backend_from_config(
        moto.config("/kraken/default/", NamePath::ShardedDockerBlob),
        dir.path(),
    );
    assert_eq!(backend.kind(), "s3");
    let namespace = ns("library/ubuntu");
    // Below the 6 MiB threshold: one PutObject. Above: 5 MiB parts (5 + 5 + 2).
    let small = blob(100_000, 1);
    let large = blob(12 << 20, 2);
    let (small_digest, large_digest) = (digest(&small), digest(&large));
    assert_eq!(backend.stat(&namespace, &small_digest).await.unwrap(), None);

    let expected =
        common::contract::round_trip(backend.as_ref(), &namespace, &[&small, &large]).await;
    for (data, digest) in [(&small, small_digest), (&large, large_digest)] {
        // The object sits where a Docker registry with `rootdirectory: /kraken/default` keeps
        // it, readable without the backend.
        let hex = digest.hex();
        let key = format!(
            "kraken/default/docker/registry/v2/blobs/sha256/{}/{hex}/data",
            &hex[..2]
        );
        assert_eq!(moto.raw_object(&key).await.as_ref(), Some(data));
        if data.len() > 6 << 20 {
            // A multipart object's ETag ends in its part count: 5 + 5 + 2 MiB.
            let head = moto
                .sdk()
                .head_object()
                .bucket(BUCKET)
                .key(&key)
                .send()
                .await
                .unwrap();
            let e_tag = head.e_tag().unwrap();
            assert!(e_tag.trim_matches('"').ends_with("-3"), "{e_tag}");
        }
    }
    assert_eq!(moto.pending_multipart_uploads().await, 0);

    // The layout has no namespaces: the blob is visible from any namespace routed here, and
    // the listing reports digests only.
    assert_eq!(
        backend
            .stat(&ns("other/repo"), &small_digest)
            .await
            .unwrap(),
        Some(small.len() as u64)
    );
    let listed = backend.list("").await.unwrap();
    assert_eq!(
        listed.iter().map(|b| b.digest).collect::<Vec<_>>(),
        expected
    );
    assert!(listed.iter().all(|b| b.namespace.is_none()));
}

#[tokio::test]
async fn the_identity_layout_names_objects_by_hex_under_the_root() {
    let moto = Moto::start().await;
    let dir = tempfile::tempdir().unwrap();
    let backend = backend_from_config(moto.config("/flat", NamePath::Identity), dir.path());
    let data = blob(2048, 3);
    let digest = digest(&data);
    backend
        .upload(
            &ns("team/app"),
            &digest,
            UploadSource::File(file_with(&data)),
            data.len() as u64,
        )
        .await
        .unwrap();
    assert_eq!(
        moto.raw_object(&format!("flat/{}", digest.hex())).await,
        Some(data.clone())
    );
    let listed = backend.list("").await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].digest, digest);
}

#[tokio::test]
async fn a_missing_blob_is_not_found() {
    let moto = Moto::start().await;
    let dir = tempfile::tempdir().unwrap();
    let backend = backend_from_config(moto.config("/", NamePath::ShardedDockerBlob), dir.path());
    let missing = digest(b"never uploaded");
    assert_eq!(backend.stat(&ns("a/b"), &missing).await.unwrap(), None);
    let error = backend.download(&ns("a/b"), &missing).await.unwrap_err();
    assert!(matches!(error, BackendError::NotFound { .. }), "{error}");
    assert!(backend.list("").await.unwrap().is_empty());
}

#[tokio::test]
async fn a_source_shorter_than_announced_stores_nothing_and_aborts_its_multipart_upload() {
    let moto = Moto::start().await;
    let config = moto.config("/", NamePath::ShardedDockerBlob);
    let mut auth = AuthConfig::default();
    auth.s3.insert(
        "kraken".to_owned(),
        S3Credentials {
            aws_access_key_id: "moto-key".to_owned(),
            aws_secret_access_key: Some(kraken_config::Secret::new("moto-secret")),
            aws_secret_access_key_file: None,
        },
    );
    let backend = S3Backend::from_config(&config, &auth).unwrap();
    let namespace = ns("library/ubuntu");
    for (len, announced) in [(1000usize, 1001u64), (11 << 20, 12 << 20), (1000, 999)] {
        let data = blob(len, len as u64);
        let digest = digest(&data);
        let error = backend
            .upload(
                &namespace,
                &digest,
                UploadSource::Reader(Box::pin(std::io::Cursor::new(data))),
                announced,
            )
            .await
            .unwrap_err();
        assert!(
            matches!(error, BackendError::Other { .. }),
            "{len} bytes announced as {announced}: {error}"
        );
        assert_eq!(backend.stat(&namespace, &digest).await.unwrap(), None);
    }
    assert_eq!(
        moto.pending_multipart_uploads().await,
        0,
        "the failed upload was aborted"
    );
}

#[tokio::test]
async fn an_unreachable_server_is_unavailable() {
    let (refusing, _held) = refusing_addr();
    let mut config = S3BackendConfig {
        region: "us-east-1".to_owned(),
        bucket: BUCKET.to_owned(),
        endpoint: Some(format!("http://{refusing}")),
        force_path_style: true,
        username: "kraken".to_owned(),
        ..S3BackendConfig::default()
    };
    let dir = tempfile::tempdir().unwrap();
    let backend = S3Backend::from_config(&config, &auth_with_secret_file(dir.path())).unwrap();
    let error = backend.stat(&ns("a/b"), &digest(b"x")).await.unwrap_err();
    assert!(error.is_transient(), "{error}");
    assert!(matches!(
        error,
        BackendError::Unavailable { backend: "s3", .. }
    ));

    // A user missing from `auth.s3` is a start-up error, not a runtime one.
    config.username = "nobody".to_owned();
    let error = S3Backend::from_config(&config, &AuthConfig::default()).unwrap_err();
    assert!(error.to_string().contains("nobody"), "{error}");
}

#[tokio::test]
async fn keeps_the_backend_contract() {
    let moto = Moto::start().await;
    let dir = tempfile::tempdir().unwrap();
    for (root, layout) in [
        ("/kraken/default/", NamePath::ShardedDockerBlob),
        ("/flat", NamePath::Identity),
    ] {
        let backend = backend_from_config(moto.config(root, layout), dir.path());
        common::contract::writable(backend.as_ref(), &ns("library/ubuntu"), 100).await;
    }
}
