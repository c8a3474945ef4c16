//! The tag client dialing another cluster's build-index, as a replicating build-index or
//! origin does: material holding the remote's CA and our own certificate, a server name
//! override, versioned puts that never move a tag back, `Has` with the digest, and the
//! remote's origin list. The remote is a real build-index (a dev cluster's) with its own CA,
//! listing ours under `trusted_remotes`.

// Test helpers outside `#[test]` functions: a panic there is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use kraken_config::Pattern;
use kraken_config::build_index::{TagType, TagTypeRule};
use kraken_config::cluster::UpstreamConfig;
use kraken_config::remote::TrustedBuildIndexRemote;
use kraken_devcluster::{ConfigHooks, DevCluster};
use kraken_oci::TaggedName;
use kraken_tagclient::{PutOutcome, TagClient, TagClientError};
use kraken_tls::{DevPkiOptions, Role, TlsMaterial, generate_dev_pki};

/// The remote's servers are known by this name, not by the address dialed.
const REMOTE_NAME: &str = "build-index.b.example";

fn tag(text: &str) -> TaggedName {
    text.parse().unwrap()
}

async fn bounded<T>(step: impl Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(60), step)
        .await
        .expect("a call took longer than its bound")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_remote_build_index_is_reached_with_its_ca_and_server_name() {
    kraken_tls::install_crypto_provider();
    let dir = tempfile::tempdir().unwrap();
    // Our cluster `a`, and `b` whose certificates name it `REMOTE_NAME` (and loopback).
    let a = generate_dev_pki(&dir.path().join("a"), &DevPkiOptions::default()).unwrap();
    let b_pki = DevPkiOptions {
        hosts: vec![REMOTE_NAME.into()],
        ..DevPkiOptions::default()
    };
    generate_dev_pki(&dir.path().join("b/pki"), &b_pki).unwrap();
    let a_ca = a.ca_cert_path();
    let b = DevCluster::builder(dir.path().join("b"))
        .origins(1)
        .agents(0)
        .configure(ConfigHooks {
            build_index: Some(Arc::new(move |config| {
                config.trusted_remotes.insert(
                    "a".into(),
                    TrustedBuildIndexRemote {
                        ca: a_ca.clone(),
                        tags: vec![Pattern::new("^blobs/").unwrap()],
                    },
                );
                config.tag_types.insert(
                    0,
                    TagTypeRule {
                        namespace: Pattern::new("^blobs/").unwrap(),
                        tag_type: TagType::Default,
                    },
                );
            })),
            ..ConfigHooks::default()
        })
        .start()
        .await
        .unwrap();
    let first = b
        .push(&"blobs/x".parse().unwrap(), Bytes::from_static(b"first"))
        .await
        .unwrap();
    let second = b
        .push(&"blobs/x".parse().unwrap(), Bytes::from_static(b"second"))
        .await
        .unwrap();

    let upstream = UpstreamConfig::of([b.build_index_addr().to_string()]);
    let ours = TlsMaterial::load_for_remote(&a.tls_config(Role::BuildIndex), &b.pki.ca_cert_path())
        .unwrap();
    let remote = TagClient::for_remote(&upstream, &ours, Some(REMOTE_NAME)).unwrap();

    let name = tag("blobs/x:1");
    assert_eq!(bounded(remote.has_digest(&name)).await.unwrap(), None);
    let version = 1_700_000_000_000;
    let stored = bounded(remote.put_versioned(&name, &second, true, version))
        .await
        .unwrap();
    assert_eq!(stored, PutOutcome::Stored { version });
    assert_eq!(
        bounded(remote.has_digest(&name)).await.unwrap(),
        Some(second)
    );
    // A late, older put changes nothing.
    let late = bounded(remote.put_versioned(&name, &first, true, version - 1))
        .await
        .unwrap();
    assert_eq!(late, PutOutcome::Superseded { version });
    assert_eq!(
        bounded(remote.has_digest(&name)).await.unwrap(),
        Some(second)
    );
    // What a's origins ask before they upload.
    let origins = TagClient::for_remote(
        &upstream,
        &TlsMaterial::load_for_remote(&a.tls_config(Role::Origin), &b.pki.ca_cert_path()).unwrap(),
        Some(REMOTE_NAME),
    )
    .unwrap();
    assert_eq!(
        bounded(origins.list_origins()).await.unwrap(),
        [b.origins[0].grpc_addr().to_string()]
    );

    // The override is what the certificate is checked against: another name fails the
    // handshake, whatever the address.
    let wrong = TagClient::for_remote(&upstream, &ours, Some("build-index.c.example")).unwrap();
    let error = bounded(wrong.has_digest(&name)).await.unwrap_err();
    let TagClientError::Unreachable { status, .. } = &error else {
        panic!("expected a failed handshake, got {error:?}");
    };
    assert!(
        kraken_tls::handshake_failure(status, "b").is_some(),
        "a TLS failure: {status:?}"
    );
    // Material with our own CA as roots cannot verify b at all.
    let local = TlsMaterial::load(&a.tls_config(Role::BuildIndex)).unwrap();
    let unverified = TagClient::for_remote(&upstream, &local, Some(REMOTE_NAME)).unwrap();
    let error = bounded(unverified.has_digest(&name)).await.unwrap_err();
    assert!(error.is_unavailable(), "{error:?}");
    b.shutdown().await;
}
