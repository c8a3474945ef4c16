//! `kraken devcluster`: every component in one process on loopback, the embedded default.

use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use kraken_devcluster::{DevCluster, DevClusters, Ports};

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
    /// Skip the start-up self-check (push a blob, pull it through every agent; with several
    /// clusters, also tag an image at the first and pull it by tag from every other).
    #[arg(long)]
    no_check: bool,
    /// Clusters to run, each with its own CA. With 2 or more, cluster a replicates every tag
    /// (and every blob under it) to b, b to c, and so on over mTLS between the CAs; cluster
    /// i's ports start at base-port + 2000·i and its data is under DIR/cluster-<name>.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=8))]
    clusters: u16,
}

/// How long the multi-cluster self-check waits for the tag to reach the last cluster.
const REPLICATION_PATIENCE: Duration = Duration::from_secs(60);

pub(crate) async fn run(args: DevClusterArgs) -> anyhow::Result<()> {
    let telemetry = kraken_config::telemetry::LogConfig::default();
    let _guard = kraken_telemetry::init("devcluster", &telemetry, &Default::default())?;
    let shutdown = kraken_telemetry::shutdown_on_signal();
    if args.clusters > 1 {
        return run_chain(args, shutdown).await;
    }
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

/// `--clusters N`: N clusters chained for replication.
async fn run_chain(
    args: DevClusterArgs,
    shutdown: kraken_telemetry::ShutdownSignal,
) -> anyhow::Result<()> {
    let clusters = DevClusters::chain(
        &args.dir,
        usize::from(args.clusters),
        Ports::Fixed {
            base: args.base_port,
        },
        |_, builder| {
            builder
                .origins(args.origins)
                .agents(args.agents)
                .max_replica(args.max_replica)
                .secure_registry(true)
        },
    )
    .await?;
    say(&format!(
        "kraken devcluster is running: {} clusters, each with its own CA\n\n{}",
        args.clusters,
        clusters.summary()
    ));
    if !args.no_check {
        let checked = async {
            for cluster in &clusters.clusters {
                cluster.self_check().await?;
            }
            clusters.self_check(REPLICATION_PATIENCE).await
        };
        match checked.await {
            Ok(tag) => say(&format!(
                "self-check passed: every agent pulled a blob, and {tag} tagged at cluster a \
                 was resolved and pulled at every other cluster"
            )),
            Err(error) => {
                clusters.shutdown().await;
                return Err(error.into());
            }
        }
    }
    say("\nPress Ctrl-C to stop.");
    shutdown.wait().await;
    say("stopping");
    clusters.shutdown().await;
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
