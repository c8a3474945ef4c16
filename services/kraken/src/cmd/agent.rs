//! `kraken agent --config FILE`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::bail;
use clap::{Args, Subcommand};
use kraken_agent::Agent;
use kraken_config::agent::AgentConfig;
use kraken_proto::agent::v1::agent_service_client::AgentServiceClient;
use kraken_proto::agent::v1::{GetStatusRequest, GetStatusResponse};
use kraken_tls::Role;

use super::blob::ClientTls;
use super::{preflight, serve};

#[derive(Args, Debug)]
#[command(args_conflicts_with_subcommands = true)]
pub(crate) struct AgentArgs {
    /// The agent's YAML config (runs the agent).
    #[arg(long)]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<AgentCommand>,
}

#[derive(Subcommand, Debug)]
pub(crate) enum AgentCommand {
    /// Is P2P working on this host? Recent downloads with where their bytes came from
    /// (peers or origins) and how long they waited for metainfo; peers connected and
    /// blacklisted; bytes down and up.
    Status(StatusArgs),
}

#[derive(Args, Debug)]
pub(crate) struct StatusArgs {
    /// The agent's gRPC address (`listen.grpc`).
    #[arg(long, default_value = "127.0.0.1:16002")]
    agent: String,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    tls: ClientTls,
}

pub(crate) async fn run(args: AgentArgs) -> anyhow::Result<()> {
    match (args.command, args.config) {
        (Some(AgentCommand::Status(status_args)), _) => status(status_args).await,
        (None, Some(config)) => serve_agent(&config).await,
        (None, None) => bail!("`kraken agent` needs --config FILE (or a subcommand: status)"),
    }
}

async fn serve_agent(file: &Path) -> anyhow::Result<()> {
    let config = kraken_config::load::<AgentConfig>(file)?.config;
    preflight::Needs::agent(&config).check(file)?;
    let running = serve::start("agent", config.telemetry()).await?;
    let tls = serve::tls(&config.tls, file)?;
    let listener = serve::bind(config.listen.grpc, "gRPC").await?;
    let registry = serve::bind(config.listen.registry, "registry").await?;
    let mut agent = Agent::start(config, tls, listener).await?;
    let registry = agent.serve_registry(registry)?;
    tracing::info!(
        grpc = %agent.grpc_addr(),
        p2p = %agent.p2p_addr(),
        %registry,
        "agent running"
    );
    running.shutdown.wait().await;
    tracing::info!("agent shutting down");
    agent.shutdown().await?;
    Ok(())
}

async fn status(args: StatusArgs) -> anyhow::Result<()> {
    let tls = args.tls.load()?;
    let channel = kraken_transport::grpc::channel(&tls, &args.agent, None, Role::Agent)?;
    let reply = AgentServiceClient::new(channel)
        .get_status(GetStatusRequest {})
        .await
        .map_err(|status| {
            anyhow::anyhow!(
                "{} answered {:?}: {}",
                args.agent,
                status.code(),
                kraken_core::error_chain(&status)
            )
        })?
        .into_inner();
    if args.json {
        println!("{}", serde_json::to_string_pretty(&status_json(&reply))?);
    } else {
        print!("{}", status_table(&args.agent, &reply));
    }
    Ok(())
}

fn status_json(reply: &GetStatusResponse) -> serde_json::Value {
    serde_json::json!({
        "torrents": reply.torrents,
        "connected_peers": reply.connected_peers,
        "blacklisted_peers": reply.blacklisted_peers,
        "bytes_down": reply.bytes_down,
        "bytes_up": reply.bytes_up,
        "stored_blobs": reply.stored_blobs,
        "stored_bytes": reply.stored_bytes,
        "downloads": reply.downloads.iter().map(|d| serde_json::json!({
            "namespace": d.namespace,
            "digest": d.digest,
            "size": d.size,
            "bytes_from_peers": d.bytes_from_peers,
            "bytes_from_origins": d.bytes_from_origins,
            "duration_ms": d.duration_ms,
            "metainfo_wait_ms": d.metainfo_wait_ms,
            "finished_unix_ms": d.finished_unix_ms,
        })).collect::<Vec<_>>(),
    })
}

/// The human form: a summary, then one line per recent download.
fn status_table(agent: &str, reply: &GetStatusResponse) -> String {
    let mut out = format!(
        "agent {agent}: {} torrents, {} peers connected, {} blacklisted since start\n\
         bytes down {}, up {}; store: {} blobs, {}\n",
        reply.torrents,
        reply.connected_peers,
        reply.blacklisted_peers,
        human_bytes(reply.bytes_down),
        human_bytes(reply.bytes_up),
        reply.stored_blobs,
        human_bytes(reply.stored_bytes),
    );
    if reply.downloads.is_empty() {
        out.push_str("\nno downloads yet\n");
        return out;
    }
    out.push_str(&format!(
        "\nrecent downloads, newest first:\n  {:<20}  {:<19}  {:>10}  {:>10}  {:>12}  {:>8}  {:>13}\n",
        "FINISHED", "DIGEST", "SIZE", "FROM PEERS", "FROM ORIGINS", "TOOK", "METAINFO WAIT"
    ));
    for d in &reply.downloads {
        let finished = std::time::UNIX_EPOCH + Duration::from_millis(d.finished_unix_ms);
        out.push_str(&format!(
            "  {:<20}  {:<19}  {:>10}  {:>10}  {:>12}  {:>8}  {:>13}\n",
            humantime::format_rfc3339_seconds(finished).to_string(),
            super::replication::short_digest(&d.digest),
            human_bytes(d.size),
            share(d.bytes_from_peers, d.size),
            share(d.bytes_from_origins, d.size),
            format!("{:.1}s", d.duration_ms as f64 / 1000.0),
            format!("{}ms", d.metainfo_wait_ms),
        ));
    }
    out
}

/// `part` as a percentage of `whole`.
fn share(part: u64, whole: u64) -> String {
    if whole == 0 {
        return "-".to_owned();
    }
    format!("{:.0}%", part as f64 * 100.0 / whole as f64)
}

/// Bytes in binary units, one decimal (`4.0 MiB`), as the config's sizes are written.
fn human_bytes(bytes: u64) -> String {
    bytesize::ByteSize(bytes).display().iec().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use kraken_proto::agent::v1::RecentDownload;

    #[test]
    fn the_table_shows_each_downloads_sources_as_shares_of_its_size() {
        let reply = GetStatusResponse {
            downloads: vec![RecentDownload {
                namespace: "library/app".into(),
                digest: format!("sha256:{}", "ab".repeat(32)),
                size: 4 << 20,
                bytes_from_peers: 3 << 20,
                bytes_from_origins: 1 << 20,
                duration_ms: 1_500,
                finished_unix_ms: 0,
                metainfo_wait_ms: 7,
            }],
            torrents: 2,
            connected_peers: 3,
            blacklisted_peers: 1,
            bytes_down: 4 << 20,
            bytes_up: 512,
            stored_blobs: 1,
            stored_bytes: 4 << 20,
        };
        let table = status_table("127.0.0.1:16002", &reply);
        assert!(
            table.contains("2 torrents, 3 peers connected, 1 blacklisted"),
            "{table}"
        );
        assert!(table.contains("bytes down 4.0 MiB, up 512 B"), "{table}");
        let line = table.lines().last().unwrap();
        for cell in [
            "sha256:abababababab",
            "4.0 MiB",
            "75%",
            "25%",
            "1.5s",
            "7ms",
        ] {
            assert!(line.contains(cell), "{cell} not in {line:?}");
        }
        assert_eq!(share(0, 0), "-");
        assert_eq!(human_bytes(1536), "1.5 KiB");
    }
}
