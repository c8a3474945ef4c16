//! `kraken replication status` and `retry` as an operator runs them, against two in-process
//! clusters with their own CAs: a task waiting for a remote that is down is listed with its
//! attempts and reason, `retry` queues it again, and once the remote is back the queue drains.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{kraken, ok};
use std::time::Duration;

use kraken_devcluster::{DevClusterBuilder, DevClusters, Ports};
use kraken_oci::TaggedName;

async fn run(args: Vec<String>) -> String {
    tokio::task::spawn_blocking(move || ok(kraken(&args)))
        .await
        .unwrap()
}

/// The `--json` lines of `kraken replication status`: the tasks, then the summary.
async fn status_json(args: &[String]) -> (Vec<serde_json::Value>, serde_json::Value) {
    let mut args = args.to_vec();
    args.push("--json".into());
    let out = run(args).await;
    let mut lines: Vec<serde_json::Value> = out
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    let summary = lines.pop().expect("a summary line");
    (lines, summary)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_lists_a_waiting_task_with_its_reason_and_retry_requeues_it() {
    let dir = tempfile::tempdir().unwrap();
    let small = |_, builder: DevClusterBuilder| builder.origins(1).agents(0).max_replica(1);
    let mut clusters = DevClusters::chain(dir.path(), 2, Ports::Ephemeral, small)
        .await
        .unwrap();
    let stopped = clusters.clusters[1].stop_build_index().await.unwrap();
    let a = &clusters.clusters[0];
    let tag: TaggedName = "ops/app:v1".parse().unwrap();
    let (digest, _) = a.push_image(&tag, "status").await.unwrap();
    let args: Vec<String> = [
        "replication",
        "status",
        "--build-index",
        &a.build_index_addr().to_string(),
        "--pki",
        &a.pki.dir().display().to_string(),
    ]
    .map(str::to_owned)
    .to_vec();

    // Wait for a failed attempt (the dev cluster retries after 1 s, then 2 s, …).
    let mut task = serde_json::Value::Null;
    for _ in 0..300 {
        let (tasks, summary) = status_json(&args).await;
        assert_eq!(summary["pending"], 1, "{summary}");
        task = tasks[0].clone();
        if task["attempts"].as_u64() >= Some(1) && task["running"] == false {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(task["tag"], "ops/app:v1", "{task}");
    assert_eq!(task["digest"], digest.to_string());
    assert_eq!(task["remote"], "b");
    assert_eq!(task["cause"], "remote_unreachable", "{task}");
    assert!(task["version"].as_u64().unwrap() > 0);

    // The table an operator reads.
    let table = run(args.clone()).await;
    let lines: Vec<&str> = table.lines().collect();
    assert!(lines[0].starts_with("TAG "), "{table}");
    assert!(
        lines[1].starts_with("ops/app:v1 ")
            && lines[1].contains(&format!("sha256:{}", &digest.hex()[..12]))
            && lines[1].contains("remote_unreachable")
            && lines[1].contains("cannot reach the build-index of remote `b`"),
        "{table}"
    );
    assert!(
        lines[2].starts_with("1 pending; the oldest for "),
        "{table}"
    );
    // Filters reach the server.
    let mut other = args.clone();
    other.extend(["--remote".into(), "c".into()]);
    assert_eq!(run(other).await.lines().last(), Some("0 pending"));

    let mut retry = vec!["replication".to_owned(), "retry".into(), tag.to_string()];
    retry.extend(args[2..].iter().cloned());
    assert_eq!(run(retry).await.trim(), "ops/app:v1: queued for b");

    // b comes back: the task ends and the listing is empty.
    clusters.clusters[1]
        .restart_build_index(stopped)
        .await
        .unwrap();
    let mut drained = false;
    for _ in 0..600 {
        if status_json(&args).await.1["pending"] == 0 {
            drained = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(drained, "the task never ended: {}", run(args.clone()).await);
    let b = clusters.clusters[1]
        .tag_client(kraken_tls::Role::Client)
        .unwrap();
    assert_eq!(b.get(&tag).await.unwrap(), Some(digest));
    clusters.shutdown().await;
}
