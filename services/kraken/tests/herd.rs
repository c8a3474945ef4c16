//! The herd: a whole cluster as an operator would run it, every component its own `kraken`
//! process started from `config/examples` (tracker, 3 origins, build-index, proxy, 2 agents),
//! the PKI from `kraken certs`. An image goes in through the proxy with skopeo and comes out
//! through both agents' registries, every digest unchanged; then every process stops on
//! SIGTERM with exit status 0.
//!
//! The examples' `${VAR:-default}` addresses and `KRAKEN_DIR` place the herd in a temp dir on
//! free loopback ports, so it runs beside other tests. This is deliberately not the in-process
//! devcluster: separate processes are what catch a config the binary cannot start from, state
//! two processes share by accident, and a component that hangs or fails on SIGTERM.

// Test helpers outside `#[test]` functions: a panic there is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::SocketAddr;
use std::process::Command;

use common::herd::{FreePorts, Herd, sha256, skopeo};
use kraken_interop::have;
use kraken_interop::oci_layout::write_single;

#[test]
fn herd_of_processes_pushes_pulls_through_both_agents_and_stops_on_sigterm() {
    assert!(
        have("skopeo"),
        "skopeo is missing: tests/run.sh installs it (apt-get install skopeo)"
    );
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_path_buf();

    // The PKI where the examples look for it: $KRAKEN_DIR/certs.
    let certs = Command::new(env!("CARGO_BIN_EXE_kraken"))
        .arg("certs")
        .arg("--out")
        .arg(root.join("certs"))
        .output()
        .unwrap();
    assert!(
        certs.status.success(),
        "kraken certs: {}",
        String::from_utf8_lossy(&certs.stderr)
    );

    let mut ports = FreePorts::default();
    let tracker = ports.tcp();
    let build_index = ports.tcp();
    let proxy_registry = ports.tcp();
    let proxy_grpc = ports.tcp();
    let origins: Vec<(SocketAddr, SocketAddr)> =
        (0..3).map(|_| (ports.tcp(), ports.udp())).collect();
    let agents: Vec<(SocketAddr, SocketAddr, SocketAddr)> = (0..2)
        .map(|_| (ports.tcp(), ports.udp(), ports.tcp()))
        .collect();
    ports.release();

    let any_port = "127.0.0.1:0".to_owned();
    let mut env = vec![
        ("KRAKEN_DIR".to_owned(), root.display().to_string()),
        ("KRAKEN_LOG".to_owned(), "info".to_owned()),
        ("TRACKER_GRPC".to_owned(), tracker.to_string()),
        ("BUILD_INDEX_GRPC".to_owned(), build_index.to_string()),
        ("PROXY_REGISTRY".to_owned(), proxy_registry.to_string()),
        ("PROXY_GRPC".to_owned(), proxy_grpc.to_string()),
    ];
    for (index, (grpc, _)) in origins.iter().enumerate() {
        env.push((format!("ORIGIN{}_GRPC", index + 1), grpc.to_string()));
    }
    // Metrics listeners on any free port: nothing here scrapes them.
    for role in ["TRACKER", "BUILD_INDEX", "PROXY", "ORIGIN", "AGENT"] {
        env.push((format!("{role}_METRICS"), any_port.clone()));
    }
    let mut herd = Herd {
        members: Vec::new(),
        dir,
        env,
    };

    for (index, (grpc, p2p)) in origins.iter().enumerate() {
        herd.spawn(
            &format!("origin{}", index + 1),
            "origin",
            &[
                ("ORIGIN_NAME", grpc.to_string()),
                ("ORIGIN_GRPC", grpc.to_string()),
                ("ORIGIN_P2P", p2p.to_string()),
                ("ORIGIN_INSTANCE", format!("origin{}", index + 1)),
            ],
        );
    }
    for (index, (grpc, _)) in origins.iter().enumerate() {
        herd.wait_ready(&format!("origin{}", index + 1), &[*grpc], "origin running");
    }
    herd.spawn("tracker", "tracker", &[]);
    herd.spawn("build-index", "build-index", &[]);
    herd.wait_ready("tracker", &[tracker], "tracker starting");
    herd.wait_ready("build-index", &[build_index], "build-index running");
    herd.spawn("proxy", "proxy", &[]);
    for (index, (registry, p2p, grpc)) in agents.iter().enumerate() {
        herd.spawn(
            &format!("agent{}", index + 1),
            "agent",
            &[
                ("AGENT_REGISTRY", registry.to_string()),
                ("AGENT_P2P", p2p.to_string()),
                ("AGENT_GRPC", grpc.to_string()),
                ("AGENT_INSTANCE", format!("agent{}", index + 1)),
            ],
        );
    }
    herd.wait_ready("proxy", &[proxy_registry, proxy_grpc], "proxy running");
    for (index, (registry, _, grpc)) in agents.iter().enumerate() {
        herd.wait_ready(
            &format!("agent{}", index + 1),
            &[*registry, *grpc],
            "agent running",
        );
    }

    // The image: two uncompressed layers, written by the test (nothing can be pulled here).
    let layout = root.join("layout");
    let image = write_single(&layout, "v1", 2, 512 * 1024).unwrap();
    let repo = "herd/app";
    // `--preserve-digests` keeps skopeo from gzipping the layers, which would change digests.
    skopeo(&[
        "copy",
        "--preserve-digests",
        "--dest-tls-verify=false",
        &format!("oci:{}:v1", layout.display()),
        &format!("docker://{proxy_registry}/{repo}:v1"),
    ]);

    for (index, (registry, _, _)) in agents.iter().enumerate() {
        let agent = format!("agent{}", index + 1);
        let by_tag = format!("docker://{registry}/{repo}:v1");
        let raw = skopeo(&["inspect", "--raw", "--tls-verify=false", &by_tag]);
        assert_eq!(
            sha256(raw.as_bytes()),
            image.digest,
            "{agent}: the manifest came back changed"
        );
        let inspected: serde_json::Value =
            serde_json::from_str(&skopeo(&["inspect", "--tls-verify=false", &by_tag])).unwrap();
        assert_eq!(inspected["Digest"], image.digest, "{agent}: {inspected}");
        assert_eq!(
            inspected["Layers"],
            serde_json::json!(image.layers),
            "{agent}: {inspected}"
        );

        // The whole image, every blob through the agent (and so through the swarm).
        let out = root.join(format!("pulled-{agent}"));
        skopeo(&[
            "copy",
            "--preserve-digests",
            "--dest-oci-accept-uncompressed-layers",
            "--src-tls-verify=false",
            &by_tag,
            &format!("oci:{}:v1", out.display()),
        ]);
        let index_json: serde_json::Value =
            serde_json::from_slice(&std::fs::read(out.join("index.json")).unwrap()).unwrap();
        assert_eq!(
            index_json["manifests"][0]["digest"], image.digest,
            "{agent}"
        );
        let blob = |digest: &str| {
            let hex = digest.trim_start_matches("sha256:");
            let copied = std::fs::read(out.join("blobs/sha256").join(hex))
                .unwrap_or_else(|e| panic!("{agent}: {digest} was not pulled: {e}"));
            assert_eq!(sha256(&copied), digest, "{agent}: {digest} changed");
            copied
        };
        let manifest: serde_json::Value = serde_json::from_slice(&blob(&image.digest)).unwrap();
        let config = manifest["config"]["digest"].as_str().unwrap();
        blob(config);
        for layer in &image.layers {
            blob(layer);
        }
    }

    herd.stop();
}
