//! Spans exported by a component reach an independent OTLP/gRPC collector: Python grpcio with
//! the OpenTelemetry project's generated protos (`interop/python/otlp_collector.py`), not the
//! Rust crates that produced them. A parent and a child span arrive with the component's
//! `service.name`, one trace id, the child pointing at its parent, and their attributes typed
//! (a string, an integer).
//!
//! Its own test binary: `kraken_telemetry::init` installs process-wide state.

// Test helpers outside `#[test]` functions: a panic there is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use kraken_interop::otlp::OtlpCollector;
use kraken_telemetry::{LogConfig, TracingConfig, init};

#[tokio::test]
async fn spans_reach_an_independent_otlp_collector() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("spans.jsonl");
    let collector = OtlpCollector::start(&out);

    let config = TracingConfig {
        otlp_endpoint: Some(collector.endpoint()),
        ..TracingConfig::default()
    };
    let guard = init("agent", &LogConfig::default(), &config).unwrap();
    {
        let pull = tracing::info_span!("pull", digest = "sha256:abc");
        let _entered = pull.enter();
        tracing::info_span!("fetch_piece", piece = 7i64).in_scope(|| {
            tracing::info!("piece verified");
        });
    }
    // Shut down off the runtime: it blocks while the last batch goes out.
    tokio::task::spawn_blocking(move || guard.shutdown())
        .await
        .unwrap()
        .unwrap();

    // The collector writes spans as it receives them; shutdown returned after the export, so
    // they are there or about to be (a bounded wait, no timing claim).
    let spans = tokio::task::spawn_blocking(move || {
        collector.wait_for(Duration::from_secs(30), "two spans", |spans| {
            spans.len() >= 2
        })
    })
    .await
    .unwrap();
    let find = |name: &str| {
        spans
            .iter()
            .find(|s| s["name"] == name)
            .unwrap_or_else(|| panic!("no {name} span in {spans:?}"))
    };
    let (pull, fetch) = (find("pull"), find("fetch_piece"));
    for span in [pull, fetch] {
        assert_eq!(span["service"], "kraken-agent", "{span}");
        assert_eq!(span["trace_id"].as_str().unwrap().len(), 32, "{span}");
    }
    assert_eq!(pull["trace_id"], fetch["trace_id"], "one trace");
    assert_eq!(
        fetch["parent_span_id"], pull["span_id"],
        "the child names its parent"
    );
    assert_eq!(pull["parent_span_id"], "", "the pull is the root");
    assert_eq!(pull["attributes"]["digest"], "sha256:abc", "{pull}");
    assert_eq!(fetch["attributes"]["piece"], 7, "{fetch}");
}
