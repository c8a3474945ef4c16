//! `kraken push` and `kraken pull` as a user runs them, against a whole in-process cluster with
//! mutual TLS: a directory pushed file by file, each file pulled back by digest through an agent,
//! and a tagged manifest pulled by `repository:tag` through the build-index.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{kraken, ok};
use std::path::Path;

use kraken_core::{Digest, Namespace};
use kraken_devcluster::{DevCluster, Ports};
use kraken_tls::Role;

async fn blocking<T: Send + 'static>(work: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(work).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn push_a_directory_then_pull_by_digest_and_by_tag() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = DevCluster::builder(dir.path().join("cluster"))
        .ports(Ports::Ephemeral)
        .start()
        .await
        .unwrap();
    let files = dir.path().join("files");
    std::fs::create_dir_all(files.join("nested")).unwrap();
    let a: Vec<u8> = (0..700_000u32).map(|i| (i * 31 % 251) as u8).collect();
    let b = b"a small file".to_vec();
    std::fs::write(files.join("a.bin"), &a).unwrap();
    std::fs::write(files.join("nested/b.txt"), &b).unwrap();
    let pki = cluster.pki.dir().display().to_string();
    let origin = cluster.origins[0].grpc_addr().to_string();
    let agent = cluster.agents[0].grpc_addr().to_string();

    let pushed = {
        let (files, pki, origin) = (files.clone(), pki.clone(), origin.clone());
        blocking(move || {
            ok(kraken(&[
                "push",
                &files.display().to_string(),
                "--origin",
                &origin,
                "--namespace",
                "cli/files",
                "--pki",
                &pki,
            ]))
        })
        .await
    };
    // One `digest  path` line per file, sorted by path.
    let lines: Vec<(String, String)> = pushed
        .lines()
        .map(|line| {
            let (digest, path) = line.split_once("  ").unwrap();
            (digest.to_owned(), path.to_owned())
        })
        .collect();
    assert_eq!(lines.len(), 2, "{pushed}");
    assert!(lines[0].1.ends_with("a.bin") && lines[1].1.ends_with("nested/b.txt"));
    assert_eq!(lines[0].0, Digest::of(&a).to_string());
    assert_eq!(lines[1].0, Digest::of(&b).to_string());

    for ((digest, _), expected) in lines.iter().zip([&a, &b]) {
        let out = dir.path().join("out.bin");
        let (digest, pki, agent, out2) = (digest.clone(), pki.clone(), agent.clone(), out.clone());
        blocking(move || {
            ok(kraken(&[
                "pull",
                &digest,
                "--namespace",
                "cli/files",
                "--agent",
                &agent,
                "--pki",
                &pki,
                "--quiet",
                "-o",
                &out2.display().to_string(),
            ]))
        })
        .await;
        assert!(std::fs::read(&out).unwrap() == *expected);
    }

    // A manifest over the pushed files, tagged at the build-index, pulled by tag.
    let namespace: Namespace = "cli/files".parse().unwrap();
    let config =
        br#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}"#;
    let config_digest = cluster
        .push(&namespace, config.to_vec().into())
        .await
        .unwrap();
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": config_digest.to_string(), "size": config.len()},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar",
                    "digest": lines[0].0, "size": a.len()}],
    }))
    .unwrap();
    let manifest_digest = cluster
        .push(&namespace, manifest.clone().into())
        .await
        .unwrap();
    let tags = kraken_tagclient::TagClient::new(
        &kraken_config::cluster::UpstreamConfig::of([cluster.build_index_addr().to_string()]),
        &cluster.tls(Role::Client).unwrap(),
    )
    .unwrap();
    tags.put(&"cli/files:v1".parse().unwrap(), &manifest_digest, false)
        .await
        .unwrap();
    let out = dir.path().join("manifest.json");
    let build_index = cluster.build_index_addr().to_string();
    let out2 = out.clone();
    blocking(move || {
        ok(kraken(&[
            "pull",
            "cli/files:v1",
            "--build-index",
            &build_index,
            "--agent",
            &agent,
            "--pki",
            &pki,
            "--quiet",
            "-o",
            &out2.display().to_string(),
        ]))
    })
    .await;
    assert_eq!(std::fs::read(&out).unwrap(), manifest);
    check_errors(&cluster, dir.path()).await;
    cluster.shutdown().await;
}

/// Clear errors: a digest without a namespace, a target that is neither, an unknown tag.
async fn check_errors(cluster: &DevCluster, dir: &Path) {
    let pki = cluster.pki.dir().display().to_string();
    let agent = cluster.agents[0].grpc_addr().to_string();
    let build_index = cluster.build_index_addr().to_string();
    let out = dir.join("never").display().to_string();
    let digest = Digest::of(b"x").to_string();
    let cases: Vec<(Vec<String>, &str)> = vec![
        (vec![digest], "--namespace"),
        (
            vec!["not a target".into()],
            "neither sha256:<hex> nor repository:tag",
        ),
        (vec!["cli/files:missing".into()], "cli/files:missing"),
    ];
    for (target, expected) in cases {
        let mut args: Vec<String> = vec!["pull".into()];
        args.extend(target);
        args.extend(
            [
                "--build-index",
                &build_index,
                "--agent",
                &agent,
                "--pki",
                &pki,
                "-o",
                &out,
            ]
            .map(String::from),
        );
        let output = blocking(move || {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            kraken(&args)
        })
        .await;
        assert!(!output.status.success());
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            stderr.contains(expected),
            "expected `{expected}` in: {stderr}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_reports_serving_and_refuses_a_server_of_another_role() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = DevCluster::builder(dir.path().join("cluster"))
        .ports(Ports::Ephemeral)
        .agents(1)
        .start()
        .await
        .unwrap();
    let pki = cluster.pki.dir().display().to_string();
    let origin = cluster.origins[0].grpc_addr().to_string();
    let tracker = cluster.tracker_addr.to_string();
    let (serving, wrong_role, nobody) = blocking(move || {
        let serving = kraken(&["health", &origin, "--role", "origin", "--pki", &pki]);
        // The tracker answers, but it is not the origin this probe was told to expect.
        let wrong_role = kraken(&["health", &tracker, "--role", "origin", "--pki", &pki]);
        let nobody = kraken(&[
            "health",
            "127.0.0.1:1",
            "--role",
            "origin",
            "--pki",
            &pki,
            "--timeout",
            "2s",
        ]);
        (serving, wrong_role, nobody)
    })
    .await;
    assert_eq!(ok(serving).trim(), "SERVING");
    assert!(!wrong_role.status.success());
    let stderr = String::from_utf8_lossy(&wrong_role.stderr);
    assert!(stderr.contains("RoleNotAllowed"), "{stderr}");
    assert!(!nobody.status.success());
    cluster.shutdown().await;
}
