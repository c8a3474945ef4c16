//! "Is it working, and where did the time go?" answered from outside, on real processes: a
//! tracker, an origin and an agent, each its own `kraken` process started from
//! `config/examples`, exporting spans to an independent OTLP collector (Python grpcio with the
//! OpenTelemetry project's protos) and serving `/metrics`.
//!
//! - One pull is one trace: the agent's registry request, its `GetMetaInfo` call to the
//!   tracker, the tracker's call to the origin and the origin's answer carry one trace id
//!   across three processes, each span pointing at its caller's.
//! - Every RPC is counted on both ends, by method and status code, with a latency histogram,
//!   scraped from the running binaries; so are a download's bytes by source (origin or peer),
//!   which `kraken agent status` also shows per download.

// Test helpers outside `#[test]` functions: a panic there is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::herd::{FreePorts, Herd, examples_dir, sha256};
use common::{kraken, ok, sample, scrape};
use kraken_interop::otlp::OtlpCollector;
use serde_json::Value;

/// Hang guard for the spans to arrive: exporters send in batches (every few seconds) and at
/// shutdown.
const SPAN_PATIENCE: Duration = Duration::from_secs(60);

/// `<dir>/<component>.yaml`: the example config with span export to `endpoint`, plus `extra`.
fn traced_config(dir: &Path, component: &str, endpoint: &str, extra: &str) -> std::path::PathBuf {
    let path = dir.join(format!("{component}.yaml"));
    let base = examples_dir().join(component).join("development.yaml");
    std::fs::write(
        &path,
        format!(
            "extends: {}\ntracing:\n  otlp_endpoint: {endpoint}\n{extra}",
            base.display()
        ),
    )
    .unwrap();
    path
}

#[test]
fn one_pull_is_one_trace_across_agent_tracker_and_origin_and_every_rpc_is_counted() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_path_buf();
    ok(kraken(&[
        "certs",
        "--out",
        &root.join("certs").display().to_string(),
    ]));
    let collector = OtlpCollector::start(&root.join("spans.jsonl"));
    let endpoint = collector.endpoint();

    let mut ports = FreePorts::default();
    let (tracker, origin, origin_p2p) = (ports.tcp(), ports.tcp(), ports.udp());
    let (registry, agent_p2p, agent_grpc) = (ports.tcp(), ports.udp(), ports.tcp());
    let (tracker_metrics, origin_metrics, agent_metrics) = (ports.tcp(), ports.tcp(), ports.tcp());
    let unused_build_index = ports.tcp();
    ports.release();

    let env = vec![
        ("KRAKEN_DIR".to_owned(), root.display().to_string()),
        ("KRAKEN_LOG".to_owned(), "info".to_owned()),
        ("TRACKER_GRPC".to_owned(), tracker.to_string()),
        ("ORIGIN1_GRPC".to_owned(), origin.to_string()),
        // Nothing here needs tags; the agent dials its build-index lazily.
        (
            "BUILD_INDEX_GRPC".to_owned(),
            unused_build_index.to_string(),
        ),
        ("TRACKER_METRICS".to_owned(), tracker_metrics.to_string()),
        ("ORIGIN_METRICS".to_owned(), origin_metrics.to_string()),
        ("AGENT_METRICS".to_owned(), agent_metrics.to_string()),
    ];
    let mut herd = Herd {
        members: Vec::new(),
        dir,
        env,
    };
    // A ring of one origin, so it owns every blob.
    let one_origin = format!("  hosts:\n    static: [\"{origin}\"]\n");
    let origin_config = traced_config(
        &root,
        "origin",
        &endpoint,
        &format!("cluster:\n{one_origin}hashring:\n  max_replica: 1\n"),
    );
    let tracker_config = traced_config(
        &root,
        "tracker",
        &endpoint,
        &format!("origin:\n{one_origin}"),
    );
    let agent_config = traced_config(&root, "agent", &endpoint, "");
    herd.spawn_with(
        "origin",
        "origin",
        &origin_config,
        &[
            ("ORIGIN_NAME", origin.to_string()),
            ("ORIGIN_GRPC", origin.to_string()),
            ("ORIGIN_P2P", origin_p2p.to_string()),
        ],
    );
    herd.spawn_with("tracker", "tracker", &tracker_config, &[]);
    herd.spawn_with(
        "agent",
        "agent",
        &agent_config,
        &[
            ("AGENT_REGISTRY", registry.to_string()),
            ("AGENT_P2P", agent_p2p.to_string()),
            ("AGENT_GRPC", agent_grpc.to_string()),
        ],
    );
    herd.wait_ready("origin", &[origin, origin_metrics], "origin running");
    herd.wait_ready("tracker", &[tracker, tracker_metrics], "tracker starting");
    herd.wait_ready(
        "agent",
        &[registry, agent_grpc, agent_metrics],
        "agent running",
    );

    // A blob on the origin, then one pull through the agent's registry, as a runtime does.
    let data: Vec<u8> = (0..3_000_000u32).map(|i| (i * 7 % 253) as u8).collect();
    let file = root.join("blob.bin");
    std::fs::write(&file, &data).unwrap();
    let pki = root.join("certs").display().to_string();
    let pushed = ok(kraken(&[
        "push",
        &file.display().to_string(),
        "--origin",
        &origin.to_string(),
        "--namespace",
        "trace/app",
        "--pki",
        &pki,
    ]));
    let digest = sha256(&data);
    assert!(pushed.starts_with(&digest), "{pushed}");
    let pulled = root.join("pulled.bin");
    let curl = Command::new("curl")
        .args(["-sS", "--fail", "--max-time", "120", "-o"])
        .arg(&pulled)
        .arg(format!("http://{registry}/v2/trace/app/blobs/{digest}"))
        .output()
        .unwrap();
    assert!(
        curl.status.success(),
        "{}",
        String::from_utf8_lossy(&curl.stderr)
    );
    assert!(std::fs::read(&pulled).unwrap() == data, "the pull verifies");

    // Per-RPC metrics, on both ends of each call the pull made.
    let agent_text = scrape(&agent_metrics.to_string());
    let tracker_text = scrape(&tracker_metrics.to_string());
    let origin_text = scrape(&origin_metrics.to_string());
    let tracker_service = "kraken.tracker.v1.TrackerService";
    let origin_service = "kraken.origin.v1.BlobService";
    let metainfo_ok = |text: &str, side: &str, service: &str| {
        sample(
            text,
            &format!("kraken_grpc_{side}_handled_total"),
            &[
                ("service", service),
                ("method", "GetMetaInfo"),
                ("code", "OK"),
            ],
        )
    };
    assert!(
        metainfo_ok(&agent_text, "client", tracker_service) >= 1.0,
        "the agent counts its GetMetaInfo call:\n{agent_text}"
    );
    assert!(
        metainfo_ok(&tracker_text, "server", tracker_service) >= 1.0,
        "the tracker counts the call it answered:\n{tracker_text}"
    );
    assert!(
        metainfo_ok(&tracker_text, "client", origin_service) >= 1.0,
        "the tracker counts its call to the origin:\n{tracker_text}"
    );
    assert!(
        metainfo_ok(&origin_text, "server", origin_service) >= 1.0,
        "the origin counts the call it answered:\n{origin_text}"
    );
    // The push's upload was counted too, and health probes are counted by their own method.
    assert!(
        sample(
            &origin_text,
            "kraken_grpc_server_handled_total",
            &[("method", "Upload")]
        ) + sample(
            &origin_text,
            "kraken_grpc_server_handled_total",
            &[("method", "CommitUpload")]
        ) >= 1.0,
        "{origin_text}"
    );
    // Latency histograms: a count and buckets per method.
    assert!(
        sample(
            &tracker_text,
            "kraken_grpc_server_handling_seconds_count",
            &[("method", "GetMetaInfo")]
        ) >= 1.0,
        "{tracker_text}"
    );
    assert!(
        tracker_text.contains("kraken_grpc_server_handling_seconds_bucket{"),
        "{tracker_text}"
    );

    // Where the bytes came from: the one agent had no peer to share with, so every byte came
    // from the origin. Counted when the download commits, which may trail the response's
    // last byte by a moment: polled, with a hang guard.
    let deadline = std::time::Instant::now() + SPAN_PATIENCE;
    let from_origin = loop {
        let text = scrape(&agent_metrics.to_string());
        let bytes = sample(
            &text,
            "kraken_p2p_downloaded_bytes_total",
            &[("source", "origin")],
        );
        if bytes > 0.0 {
            assert_eq!(
                sample(
                    &text,
                    "kraken_p2p_downloaded_bytes_total",
                    &[("source", "peer")]
                ),
                0.0,
                "{text}"
            );
            break bytes;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no byte sources:\n{text}"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(from_origin, data.len() as f64);

    // `kraken agent status` tells the same story, per download, from the host's own tools.
    let agent_status = |extra: &[&str]| {
        let agent = agent_grpc.to_string();
        let mut args = vec!["agent", "status", "--agent", &agent, "--pki", &pki];
        args.extend_from_slice(extra);
        ok(kraken(&args))
    };
    let status: Value = serde_json::from_str(&agent_status(&["--json"])).unwrap();
    let download = &status["downloads"][0];
    assert_eq!(download["digest"], digest, "{status}");
    assert_eq!(download["namespace"], "trace/app", "{status}");
    assert_eq!(download["size"], data.len(), "{status}");
    assert_eq!(download["bytes_from_origins"], data.len(), "{status}");
    assert_eq!(download["bytes_from_peers"], 0, "{status}");
    assert!(
        status["bytes_down"].as_u64().unwrap() >= data.len() as u64,
        "{status}"
    );
    assert_eq!(status["stored_blobs"], 1, "{status}");
    let table = agent_status(&[]);
    let line = table
        .lines()
        .find(|l| l.contains(&digest[..19]))
        .unwrap_or_else(|| panic!("no line for the download:\n{table}"));
    assert!(line.contains("0%") && line.contains("100%"), "{table}");

    // Stop every process: each flushes its last spans on the way out.
    herd.stop();

    // The agent's span of the registry request is the root of one trace, and the tracker and
    // origin joined it.
    let in_trace = |spans: &[Value], trace: &str, service: &str, name: &str| -> Option<Value> {
        spans
            .iter()
            .find(|s| s["trace_id"] == trace && s["service"] == service && s["name"] == name)
            .cloned()
    };
    let metainfo = |service: &str| format!("{service}/GetMetaInfo");
    let spans = collector.wait_for(SPAN_PATIENCE, "one trace across the three", |spans| {
        spans
            .iter()
            .filter(|s| s["service"] == "kraken-agent" && s["name"] == "registry blob")
            .any(|root| {
                let trace = root["trace_id"].as_str().unwrap_or_default();
                in_trace(spans, trace, "kraken-origin", &metainfo(origin_service)).is_some()
            })
    });
    let root = spans
        .iter()
        .find(|s| s["service"] == "kraken-agent" && s["name"] == "registry blob")
        .unwrap();
    let trace = root["trace_id"].as_str().unwrap();
    assert_eq!(trace.len(), 32, "{root}");
    assert_eq!(
        root["parent_span_id"], "",
        "the registry request is the root: {root}"
    );

    // Each hop's span names the span of the call that reached it.
    let agent_call = in_trace(&spans, trace, "kraken-agent", &metainfo(tracker_service))
        .unwrap_or_else(|| panic!("no agent client span in trace {trace}: {spans:#?}"));
    let tracker_answer = in_trace(&spans, trace, "kraken-tracker", &metainfo(tracker_service))
        .filter(|s| s["parent_span_id"] == agent_call["span_id"])
        .unwrap_or_else(|| panic!("no tracker span under the agent's call: {spans:#?}"));
    let tracker_call = spans
        .iter()
        .find(|s| {
            s["trace_id"] == trace
                && s["service"] == "kraken-tracker"
                && s["name"] == metainfo(origin_service)
        })
        .unwrap_or_else(|| panic!("no tracker client span to the origin: {spans:#?}"));
    let origin_answer = spans
        .iter()
        .find(|s| {
            s["trace_id"] == trace
                && s["service"] == "kraken-origin"
                && s["parent_span_id"] == tracker_call["span_id"]
        })
        .unwrap_or_else(|| panic!("no origin span under the tracker's call: {spans:#?}"));
    assert_eq!(origin_answer["name"], metainfo(origin_service));
    assert_eq!(
        origin_answer["attributes"]["rpc.grpc.status_code"], 0,
        "{origin_answer}"
    );
    assert_eq!(
        agent_call["attributes"]["rpc.method"], "GetMetaInfo",
        "{agent_call}"
    );
    assert_eq!(
        tracker_answer["attributes"]["rpc.grpc.status_code"], 0,
        "{tracker_answer}"
    );
}
