//! `kraken doctor` on a node of a real cluster: a tracker, a build-index and an agent, each its
//! own `kraken` process from `config/examples`, and containerd's mirror config written by
//! `kraken mirror-config`. Healthy, every check passes (the clock too, against the servers'
//! answers) and it exits 0; then each breakage an
//! operator meets (mirror config missing, an expired certificate, the tracker down) fails the
//! check that names it, with a fix, and a non-zero exit.

// Test helpers outside `#[test]` functions: a panic there is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::Path;
use std::process::{Command, Output};

use common::herd::{FreePorts, Herd, examples_dir};
use common::{kraken, ok, text};
use kraken_tls::{DevCa, LeafOptions, Role};

/// `kraken doctor --config <config> <extra>` with the herd's environment.
fn doctor(herd: &Herd, config: &Path, extra: &[&str]) -> (bool, String) {
    let mut command = Command::new(env!("CARGO_BIN_EXE_kraken"));
    command
        .arg("doctor")
        .arg("--config")
        .arg(config)
        .args(extra);
    for (key, value) in &herd.env {
        command.env(key, value);
    }
    let Output {
        status,
        stdout,
        stderr,
    } = command.output().unwrap();
    (
        status.success(),
        format!("{}{}", text(&stdout), text(&stderr)),
    )
}

/// The output lines of checks that failed.
fn failures(output: &str) -> Vec<&str> {
    output.lines().filter(|l| l.starts_with("FAIL")).collect()
}

#[test]
fn doctor_passes_a_healthy_node_and_names_each_breakage_with_a_fix() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_path_buf();
    let certs = root.join("certs");
    ok(kraken(&["certs", "--out", &certs.display().to_string()]));

    let mut ports = FreePorts::default();
    let (tracker, build_index) = (ports.tcp(), ports.tcp());
    let (registry, p2p, grpc) = (ports.tcp(), ports.udp(), ports.tcp());
    // Metrics on reserved ports too: a process binding port 0 could be handed one of the
    // ports above between their release and their owner's bind.
    let metrics: Vec<_> = (0..3).map(|_| ports.tcp()).collect();
    ports.release();
    let mut env = vec![
        ("KRAKEN_DIR".to_owned(), root.display().to_string()),
        ("TRACKER_GRPC".to_owned(), tracker.to_string()),
        ("BUILD_INDEX_GRPC".to_owned(), build_index.to_string()),
        ("AGENT_REGISTRY".to_owned(), registry.to_string()),
        ("AGENT_P2P".to_owned(), p2p.to_string()),
        ("AGENT_GRPC".to_owned(), grpc.to_string()),
    ];
    for (role, addr) in ["TRACKER", "BUILD_INDEX", "AGENT"].iter().zip(&metrics) {
        env.push((format!("{role}_METRICS"), addr.to_string()));
    }
    let mut herd = Herd {
        members: Vec::new(),
        dir,
        env,
    };
    herd.spawn("tracker", "tracker", &[]);
    herd.spawn("build-index", "build-index", &[]);
    herd.spawn("agent", "agent", &[]);
    herd.wait_ready("tracker", &[tracker], "tracker starting");
    herd.wait_ready("build-index", &[build_index], "build-index running");
    herd.wait_ready("agent", &[registry, grpc], "agent running");

    // containerd pulls docker.io through the agent.
    let hosts_dir = root.join("certs.d");
    ok(kraken(&[
        "mirror-config",
        "--runtime",
        "containerd",
        "--agent",
        &registry.to_string(),
        "--upstream",
        "docker.io",
        "--config-path",
        &hosts_dir.display().to_string(),
    ]));
    let agent_config = examples_dir().join("agent/development.yaml");
    let containerd = [
        "--runtime",
        "containerd",
        "--config-path",
        hosts_dir.to_str().unwrap(),
    ];

    // Healthy: every check passes.
    let (passed, output) = doctor(&herd, &agent_config, &containerd);
    println!("healthy:\n{output}");
    assert!(passed, "{output}");
    assert!(failures(&output).is_empty(), "{output}");
    for check in [
        "ok    config:",
        "ok    certificate: agent role, valid until",
        &format!("ok    agent 127.0.0.1:{}", grpc.port()),
        &format!("ok    tracker {tracker}: SERVING"),
        &format!("ok    build-index {build_index}: SERVING"),
        &format!("ok    peer port: 127.0.0.1:{} ", p2p.port()),
        // The tracker's and build-index's answers carry their time: one clock here.
        "ok    clock: within 30s of 2 server(s)",
        "ok    mirror config (containerd)",
        "checks passed",
    ] {
        assert!(output.contains(check), "no {check:?} in:\n{output}");
    }

    // The mirror config is missing: pulls bypass the agent.
    let empty = root.join("empty-certs.d");
    let (passed, output) = doctor(
        &herd,
        &agent_config,
        &[
            "--runtime",
            "containerd",
            "--config-path",
            empty.to_str().unwrap(),
        ],
    );
    assert!(!passed, "{output}");
    let failed = failures(&output);
    assert_eq!(failed.len(), 1, "{output}");
    assert!(
        failed[0].contains("mirror config (containerd)") && failed[0].contains("missing"),
        "{output}"
    );
    assert!(
        output.contains("fix: `kraken mirror-config --runtime containerd"),
        "{output}"
    );

    // An expired certificate from the right CA: the certificate check fails, and so does the
    // tracker, which refuses it.
    let ca = DevCa::from_pem(
        &std::fs::read_to_string(certs.join("ca.pem")).unwrap(),
        &std::fs::read_to_string(certs.join("ca.key")).unwrap(),
    )
    .unwrap();
    let expired = ca.issue(Role::Agent, &LeafOptions::expired()).unwrap();
    std::fs::write(root.join("expired.pem"), &expired.cert_pem).unwrap();
    std::fs::write(root.join("expired.key"), &expired.key_pem).unwrap();
    let expired_config = root.join("agent-expired.yaml");
    std::fs::write(
        &expired_config,
        format!(
            "extends: {}\ntls:\n  ca: {}\n  cert: {}\n  key: {}\n",
            agent_config.display(),
            certs.join("ca.pem").display(),
            root.join("expired.pem").display(),
            root.join("expired.key").display()
        ),
    )
    .unwrap();
    let (passed, output) = doctor(&herd, &expired_config, &[]);
    println!("expired certificate:\n{output}");
    assert!(!passed, "{output}");
    let failed = failures(&output);
    assert!(
        failed
            .iter()
            .any(|l| l.starts_with("FAIL  certificate: expired")),
        "{output}"
    );
    assert!(
        failed
            .iter()
            .any(|l| l.starts_with(&format!("FAIL  tracker {tracker}: TLS refused"))),
        "the tracker refuses an expired certificate:\n{output}"
    );
    assert!(
        output.contains("fix: issue a new agent certificate"),
        "{output}"
    );

    // The tracker is down: its check fails and says to start it; the rest still pass.
    herd.stop_member("tracker");
    let (passed, output) = doctor(&herd, &agent_config, &containerd);
    assert!(!passed, "{output}");
    let failed = failures(&output);
    assert_eq!(failed.len(), 1, "only the tracker fails:\n{output}");
    assert!(
        failed[0].starts_with(&format!("FAIL  tracker {tracker}:")),
        "{output}"
    );
    assert!(output.contains("fix: start the tracker"), "{output}");
    assert!(output.contains("1 of "), "{output}");

    herd.stop();
}
