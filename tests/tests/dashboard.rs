//! The Grafana dashboard (`deploy/grafana/kraken.json`) cannot drift from the code: it is valid
//! dashboard JSON, and every metric its queries name is one some component records (a string
//! literal in the workspace's sources), so a renamed metric fails here instead of leaving an
//! empty panel in production.

// Test helpers outside `#[test]` functions: a panic there is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// Every `.rs` file under `dir`, recursively.
fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            sources(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The metric names in a PromQL expression, with a histogram's series suffix removed.
fn metric_names(expr: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut rest = expr;
    while let Some(start) = rest.find("kraken_") {
        let tail = &rest[start..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        let name = &tail[..end];
        let base = ["_bucket", "_count", "_sum"]
            .iter()
            .find_map(|suffix| name.strip_suffix(suffix))
            .unwrap_or(name);
        names.push(base.to_owned());
        rest = &tail[end..];
    }
    names
}

#[test]
fn every_metric_on_the_dashboard_is_recorded_by_the_code() {
    let path = workspace().join("deploy/grafana/kraken.json");
    let dashboard: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    assert!(dashboard["uid"].is_string() && dashboard["title"].is_string());

    let panels = dashboard["panels"].as_array().unwrap();
    let mut used = BTreeSet::new();
    let mut queries = 0;
    for panel in panels.iter().filter(|p| p["type"] != "row") {
        let title = panel["title"].as_str().unwrap();
        let targets = panel["targets"].as_array().unwrap();
        assert!(!targets.is_empty(), "panel {title:?} has no query");
        for target in targets {
            let expr = target["expr"].as_str().unwrap();
            let names = metric_names(expr);
            assert!(
                !names.is_empty(),
                "{title:?}: {expr} names no kraken metric"
            );
            used.extend(names);
            queries += 1;
        }
    }
    assert!(queries >= 20, "{queries} queries");

    let mut files = Vec::new();
    for dir in ["services", "transport"] {
        sources(&workspace().join(dir), &mut files);
    }
    let code: String = files
        .iter()
        .filter(|f| !f.components().any(|c| c.as_os_str() == "tests"))
        .map(|f| std::fs::read_to_string(f).unwrap())
        .collect();
    let missing: Vec<&String> = used
        .iter()
        .filter(|name| !code.contains(&format!("\"{name}\"")))
        .collect();
    assert!(
        missing.is_empty(),
        "the dashboard queries metrics no component records: {missing:?}"
    );
    // The families an operator asks for first are all there.
    for family in [
        "kraken_p2p_downloaded_bytes_total",
        "kraken_grpc_server_handled_total",
        "kraken_origin_writeback_queue_depth",
        "kraken_buildindex_replication_pending_tasks",
    ] {
        assert!(used.contains(family), "no panel shows {family}");
    }
}

#[test]
fn metric_names_are_read_out_of_promql() {
    assert_eq!(
        metric_names(
            "histogram_quantile(0.99, sum by (le) (rate(kraken_agent_download_seconds_bucket{job=~\"$job\"}[5m]))) / kraken_p2p_links"
        ),
        ["kraken_agent_download_seconds", "kraken_p2p_links"]
    );
}
