//! `kraken devcluster`: every component in one process on loopback, the embedded default.

use std::path::PathBuf;

use clap::Args;
use kraken_devcluster::{DevCluster, Ports};

#[derive(Args, Debug)]
pub(crate) struct DevClusterArgs {
    /// Data directory: PKI, stores and the filesystem storage backend. Reused across runs.
    #[arg(long, default_value = "devcluster")]
    dir: PathBuf,
    /// First port of Kraken's devcluster layout (origins on base+2/+12/+22, tracker on base+3,
    /// agents' gRPC on base+1002/+1012, QUIC ports next to them).
    #[arg(long, default_value_t = 15000)]
    base_port: u16,
    #[arg(long, default_value_t = 3)]
    origins: usize,
    #[arg(long, default_value_t = 2)]
    agents: usize,
    /// Owners of each blob among the origins.
    #[arg(long, default_value_t = 2)]
    max_replica: usize,
    /// Skip the start-up self-check (push a blob, pull it through every agent).
    #[arg(long)]
    no_check: bool,
}

pub(crate) async fn run(args: DevClusterArgs) -> anyhow::Result<()> {
    let telemetry = kraken_config::telemetry::LogConfig::default();
    let _guard = kraken_telemetry::init("devcluster", &telemetry, &Default::default())?;
    let shutdown = kraken_telemetry::shutdown_on_signal();
    let cluster = DevCluster::builder(&args.dir)
        .origins(args.origins)
        .agents(args.agents)
        .max_replica(args.max_replica)
        .secure_registry(true)
        .ports(Ports::Fixed {
            base: args.base_port,
        })
        .start()
        .await?;
    say(&format!(
        "kraken devcluster is running\n\n{}",
        cluster.summary()
    ));
    if !args.no_check {
        let digest = cluster.self_check().await?;
        say(&format!(
            "self-check passed: pushed {digest} and pulled it through every agent"
        ));
    }
    say("\nPress Ctrl-C to stop.");
    shutdown.wait().await;
    say("stopping");
    cluster.shutdown().await;
    Ok(())
}

/// Prints a line for the person running the cluster. A closed stdout (the terminal went away,
/// a pipe reader quit) must not stop a running cluster, so write errors are ignored.
fn say(text: &str) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{text}");
    let _ = out.flush();
}
