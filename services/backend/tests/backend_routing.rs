//! Namespace routing end to end: an `origin.yaml` with two rules, loaded and validated by the
//! config pipeline, turned into backends; blobs of two namespaces land in two different
//! storages (a real S3 server, moto, and a directory), each invisible to the other.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::moto::Moto;
use common::{blob, digest, file_with, ns, read_all};
use kraken_backend::{Backends, UploadSource};
use kraken_config::OriginConfig;

#[tokio::test]
async fn two_namespaces_go_to_two_different_backends() {
    let moto = Moto::start().await;
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("s3-secret");
    std::fs::write(&secret, "moto-secret\n").unwrap();
    let blobs_dir = dir.path().join("fs-blobs");
    let yaml = format!(
        r#"
name: 127.0.0.1:15002
cluster:
  hosts:
    static: [127.0.0.1:15002]
store:
  dir: {store}
backends:
  - namespace: ^team/
    backend:
      s3:
        region: us-east-1
        bucket: kraken-blobs
        root_directory: /kraken/
        name_path: sharded_docker_blob
        username: kraken-user
        endpoint: {endpoint}
        force_path_style: true
        disable_ssl: true
    bandwidth:
      enable: true
  - namespace: .*
    backend:
      fs:
        root: {blobs}
auth:
  s3:
    kraken-user:
      aws_access_key_id: moto-key
      aws_secret_access_key_file: {secret}
"#,
        store = dir.path().join("store").display(),
        endpoint = moto.endpoint,
        blobs = blobs_dir.display(),
        secret = secret.display(),
    );
    let config = kraken_config::load_from_str::<OriginConfig>("origin.yaml", &yaml)
        .unwrap()
        .config;
    let origins = config.cluster.hosts.static_hosts.len();
    let backends = Backends::from_config(&config.backends, &config.auth, origins).unwrap();

    let team = ns("team/app");
    let library = ns("library/ubuntu");
    assert_eq!(backends.backend_for(&team).unwrap().kind(), "s3");
    assert_eq!(backends.backend_for(&library).unwrap().kind(), "fs");

    let team_blob = blob(70_000, 1);
    let library_blob = blob(80_000, 2);
    let (team_digest, library_digest) = (digest(&team_blob), digest(&library_blob));
    for (namespace, data) in [(&team, &team_blob), (&library, &library_blob)] {
        backends
            .backend_for(namespace)
            .unwrap()
            .upload(
                namespace,
                &digest(data),
                UploadSource::File(file_with(data)),
                data.len() as u64,
            )
            .await
            .unwrap();
    }

    // team/app's blob is in the bucket, library/ubuntu's in the directory.
    let team_hex = team_digest.hex();
    let key = format!(
        "kraken/docker/registry/v2/blobs/sha256/{}/{team_hex}/data",
        &team_hex[..2]
    );
    assert_eq!(moto.raw_object(&key).await, Some(team_blob.clone()));
    let library_hex = library_digest.hex();
    let file = blobs_dir
        .join("library/ubuntu/blobs/sha256")
        .join(&library_hex[..2])
        .join(&library_hex);
    assert_eq!(std::fs::read(&file).unwrap(), library_blob);

    // Each backend holds only its own namespace's blob.
    let s3 = backends.backend_for(&team).unwrap();
    let fs = backends.backend_for(&library).unwrap();
    assert_eq!(s3.stat(&team, &library_digest).await.unwrap(), None);
    assert_eq!(fs.stat(&library, &team_digest).await.unwrap(), None);
    assert_eq!(
        read_all(s3.download(&team, &team_digest).await.unwrap()).await,
        team_blob
    );
    assert_eq!(
        read_all(fs.download(&library, &library_digest).await.unwrap()).await,
        library_blob
    );
    // The bandwidth rule wrapped only the S3 backend.
    assert!(format!("{s3:?}").contains("BandwidthLimited"));
    assert!(!format!("{fs:?}").contains("BandwidthLimited"));
}
