//! `kraken replication status` lists what a build-index still owes remote clusters (one line
//! per tag and remote, with its attempts and last error); `kraken replication retry TAG`
//! queues a tag again for every matching remote, due at once.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use clap::{Args, Subcommand};
use kraken_config::cluster::UpstreamConfig;
use kraken_oci::TaggedName;
use kraken_proto::buildindex::v1::replication_service_client::ReplicationServiceClient;
use kraken_proto::buildindex::v1::{ListTasksRequest, ReplicationTask};
use kraken_tagclient::TagClient;
use kraken_tls::Role;

use super::blob::ClientTls;

#[derive(Subcommand, Debug)]
pub(crate) enum ReplicationCommand {
    /// List the pending replication tasks of a build-index.
    Status(StatusArgs),
    /// Queue a tag again for every remote its rules match, due at once.
    Retry(RetryArgs),
}

#[derive(Args, Debug)]
pub(crate) struct StatusArgs {
    /// gRPC address of the build-index (host:port).
    #[arg(long, default_value = "127.0.0.1:15004")]
    build_index: String,
    /// Only tasks for this remote cluster.
    #[arg(long, default_value = "")]
    remote: String,
    /// Only tags (`repository:tag`) starting with this.
    #[arg(long, default_value = "")]
    tag_prefix: String,
    /// One JSON object per task, one per line, then a summary object.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    tls: ClientTls,
}

#[derive(Args, Debug)]
pub(crate) struct RetryArgs {
    /// The tag to replicate again (`repository:tag`).
    tag: TaggedName,
    /// gRPC address of the build-index (host:port).
    #[arg(long, default_value = "127.0.0.1:15004")]
    build_index: String,
    #[command(flatten)]
    tls: ClientTls,
}

pub(crate) async fn run(command: ReplicationCommand) -> anyhow::Result<()> {
    match command {
        ReplicationCommand::Status(args) => status(args).await,
        ReplicationCommand::Retry(args) => retry(args).await,
    }
}

/// Listings stop after this many pages: a build-index whose page tokens never end the
/// listing must not keep the command running.
const MAX_PAGES: usize = 10_000;

async fn status(args: StatusArgs) -> anyhow::Result<()> {
    let tls = args.tls.load()?;
    let channel = kraken_transport::grpc::channel(&tls, &args.build_index, None, Role::BuildIndex)?;
    let mut client = ReplicationServiceClient::new(channel);
    let mut tasks = Vec::new();
    let mut summary = None;
    let mut page_token = String::new();
    for _ in 0..MAX_PAGES {
        let page = client
            .list_tasks(ListTasksRequest {
                remote: args.remote.clone(),
                tag_prefix: args.tag_prefix.clone(),
                page_size: 0,
                page_token,
            })
            .await
            .with_context(|| format!("listing the tasks of build-index {}", args.build_index))?
            .into_inner();
        summary.get_or_insert((page.pending, page.oldest_age_ms));
        tasks.extend(page.tasks);
        if page.next_page_token.is_empty() {
            break;
        }
        page_token = page.next_page_token;
    }
    let (pending, oldest_age_ms) = summary.unwrap_or_default();
    let now = unix_ms();
    let mut out = String::new();
    if args.json {
        for task in &tasks {
            out.push_str(&task_json(task).to_string());
            out.push('\n');
        }
        out.push_str(
            &serde_json::json!({"pending": pending, "oldest_age_ms": oldest_age_ms}).to_string(),
        );
        out.push('\n');
    } else {
        if !tasks.is_empty() {
            out.push_str(&table(&tasks, now));
        }
        out.push_str(&format!(
            "{pending} pending{}\n",
            if pending > 0 {
                format!(
                    "; the oldest for {}",
                    age(Duration::from_millis(oldest_age_ms))
                )
            } else {
                String::new()
            }
        ));
    }
    print!("{out}");
    Ok(())
}

async fn retry(args: RetryArgs) -> anyhow::Result<()> {
    let tls = args.tls.load()?;
    let client = TagClient::new(&UpstreamConfig::of([args.build_index.clone()]), &tls)?;
    let remotes = client.replicate(&args.tag).await.with_context(|| {
        format!(
            "asking build-index {} to replicate {}",
            args.build_index, args.tag
        )
    })?;
    if remotes.is_empty() {
        println!(
            "{}: no remote's rules match this tag; nothing queued",
            args.tag
        );
    } else {
        println!("{}: queued for {}", args.tag, remotes.join(", "));
    }
    Ok(())
}

/// The human listing: a header and one aligned line per task.
fn table(tasks: &[ReplicationTask], now_ms: u64) -> String {
    let header = [
        "TAG",
        "DIGEST",
        "REMOTE",
        "ATTEMPTS",
        "AGE",
        "NEXT",
        "CAUSE",
        "LAST_ERROR",
    ];
    let mut rows: Vec<[String; 8]> = vec![header.map(str::to_owned)];
    for task in tasks {
        let target = if task.peer.is_empty() {
            task.remote.clone()
        } else {
            format!("{} (peer {})", task.remote, task.peer)
        };
        let next = if task.running {
            format!("running {}/{} blobs", task.blobs_done, task.blobs_total)
        } else if task.next_attempt_unix_ms <= now_ms {
            "now".to_owned()
        } else {
            format!(
                "in {}",
                age(Duration::from_millis(task.next_attempt_unix_ms - now_ms))
            )
        };
        rows.push([
            task.tag.clone(),
            short_digest(&task.digest),
            target,
            task.attempts.to_string(),
            age(Duration::from_millis(
                now_ms.saturating_sub(task.created_unix_ms),
            )),
            next,
            dash(&task.cause),
            dash(&task.last_error),
        ]);
    }
    let widths: Vec<usize> = (0..header.len())
        .map(|column| {
            rows.iter()
                .map(|row| row[column].chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for row in rows {
        let mut line = String::new();
        for (column, cell) in row.iter().enumerate() {
            if column + 1 == row.len() {
                // The last column is not padded: errors are long.
                line.push_str(cell);
            } else {
                line.push_str(&format!("{cell:<width$}  ", width = widths[column]));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

fn task_json(task: &ReplicationTask) -> serde_json::Value {
    serde_json::json!({
        "tag": task.tag,
        "digest": task.digest,
        "remote": task.remote,
        "peer": task.peer,
        "version": task.version,
        "attempts": task.attempts,
        "cause": task.cause,
        "last_error": task.last_error,
        "created_unix_ms": task.created_unix_ms,
        "next_attempt_unix_ms": task.next_attempt_unix_ms,
        "running": task.running,
        "held_for_peer": task.held_for_peer,
        "blobs_done": task.blobs_done,
        "blobs_total": task.blobs_total,
        "bytes_sent": task.bytes_sent,
    })
}

/// `sha256:` and the first 12 hex digits: enough to tell digests apart on a screen.
pub(crate) fn short_digest(digest: &str) -> String {
    match digest.split_once(':') {
        // By characters: the text comes from the server.
        Some((algorithm, hex)) if hex.chars().count() > 12 => {
            format!("{algorithm}:{}", hex.chars().take(12).collect::<String>())
        }
        _ => digest.to_owned(),
    }
}

fn dash(text: &str) -> String {
    if text.is_empty() {
        "-".to_owned()
    } else {
        text.to_owned()
    }
}

/// A duration as a person reads it: `45s`, `3m12s`, `2h5m`, `3d4h`.
fn age(duration: Duration) -> String {
    let s = duration.as_secs();
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m{}s", s / 60, s % 60),
        3600..86_400 => format!("{}h{}m", s / 3600, s % 3600 / 60),
        _ => format!("{}d{}h", s / 86_400, s % 86_400 / 3600),
    }
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn task(tag: &str, attempts: u32, next_in_ms: i64, error: &str) -> ReplicationTask {
        ReplicationTask {
            tag: tag.into(),
            digest: format!("sha256:{}", "ab".repeat(32)),
            remote: "b".into(),
            attempts,
            created_unix_ms: 1_000_000 - 125_000,
            next_attempt_unix_ms: (1_000_000 + next_in_ms) as u64,
            last_error: error.into(),
            cause: if error.is_empty() { "" } else { "tls" }.into(),
            ..ReplicationTask::default()
        }
    }

    #[test]
    fn the_table_aligns_columns_and_says_when_each_task_runs_next() {
        let tasks = [
            task("team/app:v1", 0, -5, ""),
            task(
                "team/long-name:release-2026",
                3,
                42_000,
                "remote `b` refused our certificate (unknown CA)",
            ),
        ];
        let text = table(&tasks, 1_000_000);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3, "{text}");
        assert!(lines[0].starts_with("TAG  "), "{text}");
        // Every column starts where the header's does.
        let column = |line: &str, at: usize| line[at..].split("  ").next().unwrap().to_owned();
        let remote_at = lines[0].find("REMOTE").unwrap();
        assert_eq!(column(lines[1], remote_at), "b");
        assert_eq!(column(lines[2], remote_at), "b");
        let next_at = lines[0].find("NEXT").unwrap();
        assert_eq!(column(lines[1], next_at), "now");
        assert_eq!(column(lines[2], next_at), "in 42s");
        assert_eq!(
            column(lines[1], lines[0].find("DIGEST").unwrap()),
            "sha256:abababababab"
        );
        let cause_at = lines[0].find("CAUSE").unwrap();
        let error_at = lines[0].find("LAST_ERROR").unwrap();
        assert_eq!(column(lines[1], cause_at), "-", "no cause yet");
        assert_eq!(&lines[1][error_at..], "-");
        assert_eq!(column(lines[2], cause_at), "tls");
        assert_eq!(
            &lines[2][error_at..],
            "remote `b` refused our certificate (unknown CA)"
        );
        assert_eq!(column(lines[2], lines[0].find("AGE").unwrap()), "2m5s");
    }

    #[test]
    fn digests_are_shortened_by_characters_whatever_the_server_sent() {
        assert_eq!(
            short_digest(&format!("sha256:{}", "ab".repeat(32))),
            "sha256:abababababab"
        );
        assert_eq!(short_digest("sha256:éééééééééééééé"), "sha256:éééééééééééé");
        assert_eq!(short_digest("nonsense"), "nonsense");
    }

    #[test]
    fn ages_read_as_people_write_them() {
        assert_eq!(age(Duration::from_secs(0)), "0s");
        assert_eq!(age(Duration::from_secs(192)), "3m12s");
        assert_eq!(age(Duration::from_secs(7_500)), "2h5m");
        assert_eq!(age(Duration::from_secs(273_600)), "3d4h");
    }
}
