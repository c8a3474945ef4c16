//! Replication between two herds of `kraken` processes, each cluster with its own CA from its
//! own `kraken certs`, configured by files that extend `config/examples`: cluster a (three
//! origins, a build-index, the proxy) replicates every tag to cluster b (three origins, a
//! tracker, a build-index, an agent), which trusts a's CA.
//!
//! skopeo pushes a two-platform image to a's proxy and copies it back by tag from b's agent,
//! every digest unchanged. Then b's build-index stops; a second push waits in a's queue
//! (`kraken replication status` names the cause, a's Prometheus endpoint counts the failure
//! and the pending task), a's build-index is restarted with SIGTERM
//! and comes back with the task, and b gets the tag once its build-index is back. Every
//! process exits 0 on SIGTERM.

// Test helpers outside `#[test]` functions: a panic there is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::herd::{FreePorts, Herd, examples_dir, sha256, skopeo};
use common::{kraken, ok, sample, scrape};
use kraken_interop::have;
use kraken_interop::oci_layout::write_multi_platform;

/// How long a test waits for a tag to reach cluster b before it fails (a hang guard: it
/// arrives in seconds).
const PATIENCE: Duration = Duration::from_secs(120);

/// The addresses of one herd.
struct Ports {
    origins: Vec<(SocketAddr, SocketAddr)>,
    tracker: SocketAddr,
    build_index: SocketAddr,
    proxy_registry: SocketAddr,
    proxy_grpc: SocketAddr,
    agent: (SocketAddr, SocketAddr, SocketAddr),
}

impl Ports {
    fn take(free: &mut FreePorts) -> Self {
        Self {
            origins: (0..3).map(|_| (free.tcp(), free.udp())).collect(),
            tracker: free.tcp(),
            build_index: free.tcp(),
            proxy_registry: free.tcp(),
            proxy_grpc: free.tcp(),
            agent: (free.tcp(), free.udp(), free.tcp()),
        }
    }
}

/// A herd in a temp dir of its own with its own PKI (`$KRAKEN_DIR/certs`), nothing started.
fn herd(ports: &Ports) -> Herd {
    let dir = tempfile::tempdir().unwrap();
    let certs = dir.path().join("certs");
    ok(kraken(&["certs", "--out", certs.to_str().unwrap()]));
    let mut env = vec![
        ("KRAKEN_DIR".to_owned(), dir.path().display().to_string()),
        ("KRAKEN_LOG".to_owned(), "info".to_owned()),
        ("TRACKER_GRPC".to_owned(), ports.tracker.to_string()),
        ("BUILD_INDEX_GRPC".to_owned(), ports.build_index.to_string()),
        (
            "PROXY_REGISTRY".to_owned(),
            ports.proxy_registry.to_string(),
        ),
        ("PROXY_GRPC".to_owned(), ports.proxy_grpc.to_string()),
    ];
    for (index, (grpc, _)) in ports.origins.iter().enumerate() {
        env.push((format!("ORIGIN{}_GRPC", index + 1), grpc.to_string()));
    }
    for role in ["TRACKER", "BUILD_INDEX", "PROXY", "ORIGIN", "AGENT"] {
        env.push((format!("{role}_METRICS"), "127.0.0.1:0".to_owned()));
    }
    Herd {
        members: Vec::new(),
        dir,
        env,
    }
}

/// Writes `<herd dir>/<component>.yaml`: the development example plus `extra`.
fn config(herd: &Herd, component: &str, extra: &str) -> std::path::PathBuf {
    let path = herd.dir.path().join(format!("{component}.yaml"));
    let example = examples_dir().join(component).join("development.yaml");
    std::fs::write(&path, format!("extends: {}\n{extra}", example.display())).unwrap();
    path
}

fn ca_of(herd: &Herd) -> String {
    herd.dir.path().join("certs/ca.pem").display().to_string()
}

fn start_origins(herd: &mut Herd, ports: &Ports, config: &Path) {
    for (index, (grpc, p2p)) in ports.origins.iter().enumerate() {
        herd.spawn_with(
            &format!("origin{}", index + 1),
            "origin",
            config,
            &[
                ("ORIGIN_NAME", grpc.to_string()),
                ("ORIGIN_GRPC", grpc.to_string()),
                ("ORIGIN_P2P", p2p.to_string()),
                ("ORIGIN_INSTANCE", format!("origin{}", index + 1)),
            ],
        );
    }
    for (index, (grpc, _)) in ports.origins.iter().enumerate() {
        herd.wait_ready(&format!("origin{}", index + 1), &[*grpc], "origin running");
    }
}

/// The digest `image` resolves to through the registry at `registry`, `None` while unknown.
fn digest_at(registry: SocketAddr, image: &str) -> Option<String> {
    let output = Command::new("skopeo")
        .args([
            "--command-timeout",
            "30s",
            "inspect",
            "--raw",
            "--tls-verify=false",
        ])
        .arg(format!("docker://{registry}/{image}"))
        .output()
        .unwrap();
    output.status.success().then(|| sha256(&output.stdout))
}

fn wait_for_digest(registry: SocketAddr, image: &str, digest: &str) {
    let deadline = Instant::now() + PATIENCE;
    let mut last = None;
    while Instant::now() < deadline {
        last = digest_at(registry, image);
        if last.as_deref() == Some(digest) {
            return;
        }
        std::thread::sleep(Duration::from_millis(300));
    }
    panic!("{image} never resolved to {digest} at {registry} (last: {last:?})");
}

/// Pushes a two-platform image with `layer`-byte layers through the proxy at `proxy` as
/// `repo:tag`; returns its index digest.
fn push(root: &Path, proxy: SocketAddr, repo: &str, tag: &str, layer: usize) -> String {
    let layout = root.join(format!("layout-{tag}"));
    let image = write_multi_platform(&layout, tag, layer).unwrap();
    skopeo(&[
        "copy",
        "--all",
        "--preserve-digests",
        "--dest-tls-verify=false",
        &format!("oci:{}:{tag}", layout.display()),
        &format!("docker://{proxy}/{repo}:{tag}"),
    ]);
    image.digest
}

/// `kraken replication status --json` of the build-index at `build_index`: the task lines.
fn status(herd: &Herd, build_index: SocketAddr) -> Vec<serde_json::Value> {
    let certs = herd.dir.path().join("certs");
    let out = ok(kraken(&[
        "replication",
        "status",
        "--json",
        "--build-index",
        &build_index.to_string(),
        "--pki",
        certs.to_str().unwrap(),
    ]));
    let mut lines: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    lines.pop();
    lines
}

#[test]
fn two_herds_with_their_own_cas_replicate_an_image_and_survive_restarts() {
    assert!(
        have("skopeo"),
        "skopeo is missing: tests/run.sh installs it (apt-get install skopeo)"
    );
    let mut free = FreePorts::default();
    let (a_ports, b_ports) = (Ports::take(&mut free), Ports::take(&mut free));
    let a_metrics = free.tcp().to_string();
    free.release();
    let mut a = herd(&a_ports);
    let mut b = herd(&b_ports);

    // Cluster b: trusts a's CA for replication.
    let trust_a = format!("trusted_remotes:\n  a:\n    ca: {}\n", ca_of(&a));
    let b_origin = config(&b, "origin", &trust_a);
    let b_build_index = config(&b, "build-index", &trust_a);
    start_origins(&mut b, &b_ports, &b_origin);
    b.spawn("tracker", "tracker", &[]);
    b.spawn_with("build-index", "build-index", &b_build_index, &[]);
    b.wait_ready("tracker", &[b_ports.tracker], "tracker starting");
    b.wait_ready("build-index", &[b_ports.build_index], "build-index running");
    let (registry, p2p, grpc) = b_ports.agent;
    b.spawn(
        "agent",
        "agent",
        &[
            ("AGENT_REGISTRY", registry.to_string()),
            ("AGENT_P2P", p2p.to_string()),
            ("AGENT_GRPC", grpc.to_string()),
        ],
    );
    b.wait_ready("agent", &[registry, grpc], "agent running");

    // Cluster a: replicates every tag to b, whose servers chain to b's CA.
    let to_b = format!(
        "remotes:\n  b:\n    build_index:\n      hosts:\n        static: ['{}']\n    tls:\n      ca: {}\n",
        b_ports.build_index,
        ca_of(&b)
    );
    let a_origin = config(&a, "origin", &to_b);
    let a_build_index = config(
        &a,
        "build-index",
        &format!(
            "{to_b}    tags: ['.*']\nreplication:\n  retry_interval: 1s\n  max_retry_interval: 4s\n"
        ),
    );
    start_origins(&mut a, &a_ports, &a_origin);
    let metrics_var = [("BUILD_INDEX_METRICS", a_metrics.clone())];
    a.spawn_with("build-index", "build-index", &a_build_index, &metrics_var);
    a.wait_ready("build-index", &[a_ports.build_index], "build-index running");
    a.spawn("proxy", "proxy", &[]);
    a.wait_ready(
        "proxy",
        &[a_ports.proxy_registry, a_ports.proxy_grpc],
        "proxy running",
    );

    // Pushed to a, pulled by tag from b's agent: index, platform manifests, every layer.
    let root = a.dir.path().to_path_buf();
    let v1 = push(&root, a_ports.proxy_registry, "repl/app", "v1", 256 * 1024);
    wait_for_digest(registry, "repl/app:v1", &v1);
    let out = root.join("pulled");
    skopeo(&[
        "copy",
        "--all",
        "--preserve-digests",
        "--dest-oci-accept-uncompressed-layers",
        "--src-tls-verify=false",
        &format!("docker://{registry}/repl/app:v1"),
        &format!("oci:{}:v1", out.display()),
    ]);
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("index.json")).unwrap()).unwrap();
    assert_eq!(index["manifests"][0]["digest"], v1);
    let blobs = std::fs::read_dir(out.join("blobs/sha256")).unwrap();
    let mut count = 0;
    for blob in blobs {
        let path = blob.unwrap().path();
        let name = path.file_name().unwrap().to_str().unwrap().to_owned();
        assert_eq!(
            sha256(&std::fs::read(&path).unwrap()),
            format!("sha256:{name}"),
            "blob {name} changed on its way"
        );
        count += 1;
    }
    // The index, two platform manifests, their configs and layers.
    assert!(count >= 7, "only {count} blobs pulled");

    // b's build-index is down: the next push waits in a's queue, with its reason.
    b.stop_member("build-index");
    let v2 = push(&root, a_ports.proxy_registry, "repl/app", "v2", 128 * 1024);
    let deadline = Instant::now() + PATIENCE;
    let waiting = loop {
        let tasks = status(&a, a_ports.build_index);
        let task = tasks
            .into_iter()
            .find(|t| t["tag"] == "repl/app:v2" && t["attempts"].as_u64() >= Some(1));
        if let Some(task) = task {
            break task;
        }
        assert!(Instant::now() < deadline, "no failed attempt shows up");
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(waiting["cause"], "remote_unreachable", "{waiting}");
    assert_eq!(waiting["digest"], v2);
    // What an alert reads: a's Prometheus endpoint.
    // `kraken_buildindex_replication_<what>{labels}` in `metrics`.
    let replication = |metrics: &str, what: &str, labels: &[(&str, &str)]| {
        sample(
            metrics,
            &format!("kraken_buildindex_replication_{what}"),
            labels,
        )
    };
    let metrics = scrape(&a_metrics);
    let remote_b = [("remote", "b")];
    let failures = [("remote", "b"), ("cause", "remote_unreachable")];
    assert!(
        replication(&metrics, "failures_total", &failures) >= 1.0,
        "{metrics}"
    );
    assert_eq!(replication(&metrics, "pending_tasks", &remote_b), 1.0);
    let replicated = [("remote", "b"), ("outcome", "replicated")];
    assert!(replication(&metrics, "tasks_total", &replicated) >= 1.0);
    assert!(
        replication(&metrics, "bytes_total", &remote_b) > 0.0,
        "v1's blobs were counted"
    );

    // a's build-index restarts with the task; b's comes back: b gets the tag.
    a.stop_member("build-index");
    a.spawn_with("build-index", "build-index", &a_build_index, &metrics_var);
    a.wait_ready("build-index", &[a_ports.build_index], "build-index running");
    b.spawn_with("build-index", "build-index", &b_build_index, &[]);
    b.wait_ready("build-index", &[b_ports.build_index], "build-index running");
    wait_for_digest(registry, "repl/app:v2", &v2);
    let deadline = Instant::now() + PATIENCE;
    while !status(&a, a_ports.build_index).is_empty() {
        assert!(Instant::now() < deadline, "a's queue never drained");
        std::thread::sleep(Duration::from_millis(200));
    }
    let metrics = scrape(&a_metrics);
    assert_eq!(
        replication(&metrics, "pending_tasks", &remote_b),
        0.0,
        "{metrics}"
    );
    assert!(replication(&metrics, "tasks_total", &replicated) >= 1.0);

    a.stop();
    b.stop();
}
