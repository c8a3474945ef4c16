//! The real grpcurl against the build-index's `ReplicationService`, over mutual TLS between
//! two clusters with their own CAs and no local .proto files: reflection lists the service,
//! `ListTasks` shows a task waiting for a remote that is down (and none once it is back), and
//! a certificate of the other cluster is refused what replication does not need.

// Test helpers outside `#[test]` functions: a panic there is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::time::Duration;

use kraken_devcluster::{DevClusterBuilder, DevClusters, Ports};
use kraken_oci::TaggedName;
use kraken_tls::{DevPki, Role};

/// `grpcurl [flags] address [verb...]`, trusting `ca`, presenting `role`'s certificate of
/// `pki`.
fn grpcurl(
    ca: &Path,
    pki: &DevPki,
    role: Role,
    flags: &[&str],
    address: &str,
    verb: &[&str],
) -> (bool, String) {
    let (cert, key) = (pki.cert_path(role), pki.key_path(role));
    kraken_interop::grpcurl(ca, Some((&cert, &key)), flags, address, verb)
}

fn list_tasks(pki: &DevPki, address: &str) -> serde_json::Value {
    let (ok, out) = grpcurl(
        &pki.ca_cert_path(),
        pki,
        Role::Client,
        &["-d", "{}"],
        address,
        &["kraken.buildindex.v1.ReplicationService/ListTasks"],
    );
    assert!(ok, "ListTasks failed: {out}");
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("not JSON ({e}): {out}"))
}

#[test]
fn grpcurl_lists_and_calls_replication_status_over_mtls() {
    kraken_tls::install_crypto_provider();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let small = |_, builder: DevClusterBuilder| builder.origins(1).agents(0).max_replica(1);
    let mut clusters = runtime
        .block_on(DevClusters::chain(dir.path(), 2, Ports::Ephemeral, small))
        .unwrap();
    let stopped = runtime
        .block_on(clusters.clusters[1].stop_build_index())
        .unwrap();
    let tag: TaggedName = "grpcurl/app:v1".parse().unwrap();
    let (digest, _) = runtime
        .block_on(clusters.clusters[0].push_image(&tag, "grpcurl"))
        .unwrap();
    let a = &clusters.clusters[0];
    let a_address = a.build_index_addr().to_string();

    // Reflection, with no proto files given.
    let (ok, services) = grpcurl(
        &a.pki.ca_cert_path(),
        &a.pki,
        Role::Client,
        &[],
        &a_address,
        &["list"],
    );
    assert!(ok, "grpcurl list failed: {services}");
    assert!(
        services
            .lines()
            .any(|l| l.trim() == "kraken.buildindex.v1.ReplicationService"),
        "{services}"
    );
    let (ok, methods) = grpcurl(
        &a.pki.ca_cert_path(),
        &a.pki,
        Role::Client,
        &[],
        &a_address,
        &["describe", "kraken.buildindex.v1.ReplicationService"],
    );
    assert!(ok && methods.contains("rpc ListTasks"), "{methods}");

    // The pending task, as JSON (proto3 JSON: 64-bit integers are strings).
    let mut listed = serde_json::Value::Null;
    for _ in 0..300 {
        listed = list_tasks(&a.pki, &a_address);
        if listed["tasks"][0]["attempts"].as_u64() >= Some(1) {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let task = &listed["tasks"][0];
    assert_eq!(listed["pending"], 1, "{listed}");
    assert_eq!(task["tag"], "grpcurl/app:v1", "{listed}");
    assert_eq!(task["digest"], digest.to_string());
    assert_eq!(task["remote"], "b");
    assert_eq!(task["cause"], "remote_unreachable", "{listed}");
    assert!(task["version"].as_str().unwrap().parse::<u64>().unwrap() > 0);

    // b is back: the task ends.
    runtime
        .block_on(clusters.clusters[1].restart_build_index(stopped))
        .unwrap();
    let a = &clusters.clusters[0];
    let mut pending = listed["pending"].clone();
    for _ in 0..600 {
        pending = list_tasks(&a.pki, &a_address)["pending"].clone();
        // proto3 JSON leaves zero values out.
        if pending.is_null() {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(pending.is_null(), "still pending: {pending}");

    // a's build-index certificate at b (which trusts a's CA): replication calls only. Not
    // reflection either, so grpcurl reads the proto file here.
    let protos = Path::new(env!("CARGO_MANIFEST_DIR")).join("../proto");
    let protos = protos.to_str().unwrap();
    let b = &clusters.clusters[1];
    let b_address = b.build_index_addr().to_string();
    let foreign = |body: &str, method: &str| {
        grpcurl(
            &b.pki.ca_cert_path(),
            &a.pki,
            Role::BuildIndex,
            &[
                "-import-path",
                protos,
                "-proto",
                "kraken/buildindex/v1/buildindex.proto",
                "-d",
                body,
            ],
            &b_address,
            &[method],
        )
    };
    let has = format!(r#"{{"tag": "{tag}"}}"#);
    let (ok, out) = foreign(&has, "kraken.buildindex.v1.TagService/Has");
    assert!(ok, "{out}");
    assert!(out.contains(&digest.to_string()), "b has the tag: {out}");
    let (ok, out) = foreign("{}", "kraken.buildindex.v1.ReplicationService/ListTasks");
    assert!(!ok, "{out}");
    assert!(out.contains("PermissionDenied"), "{out}");
    assert!(out.contains("remote cluster `a`"), "{out}");

    runtime.block_on(clusters.shutdown());
}
