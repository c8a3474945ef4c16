//! `kraken`: every component of the P2P registry in one binary, one subcommand each, plus the
//! tools an operator needs around them (dev PKI, config checking).

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod cmd;

#[derive(Parser, Debug)]
#[command(
    name = "kraken",
    version,
    about = "Peer-to-peer container registry and blob distribution"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Generate a development PKI: a cluster CA and one certificate per component role.
    Certs(cmd::certs::CertsArgs),
    /// Configuration tools.
    #[command(subcommand)]
    Config(cmd::config::ConfigCommand),
    /// Run a whole cluster in this process on loopback (tracker, origins, agents), with a
    /// filesystem backend, in-memory peer store and generated mTLS certificates.
    Devcluster(cmd::devcluster::DevClusterArgs),
    /// Run a tracker: hands out peers for each blob and fetches metainfo from the origins.
    Tracker(cmd::tracker::TrackerArgs),
    /// Run an origin: stores blobs, writes them to storage backends and seeds them.
    Origin(cmd::origin::OriginArgs),
    /// Run an agent: downloads blobs through the swarm and serves them on this host.
    Agent(cmd::agent::AgentArgs),
    /// Run a build-index: stores tags and checks their blobs are on the origins.
    BuildIndex(cmd::build_index::BuildIndexArgs),
    /// Run a proxy: the Docker/OCI registry API that pushes go to.
    Proxy(cmd::proxy::ProxyArgs),
    /// Upload a file to the origins as a blob; prints its digest.
    Push(cmd::blob::PushArgs),
    /// Download a blob through an agent (and so through the swarm).
    Pull(cmd::blob::PullArgs),
    /// Have an origin fetch a blob from its storage backend ahead of use.
    Prefetch(cmd::blob::PrefetchArgs),
    /// Check this node: agent config and certificate, the agent, trackers and build-index over
    /// mutual TLS, the P2P port as peers reach it, the runtime's mirror config. Prints a fix for
    /// each failure; exits non-zero if any check fails.
    Doctor(cmd::doctor::DoctorArgs),
    /// Ask a component's gRPC health service (over mTLS) whether it serves; exit 0 if so.
    Health(cmd::health::HealthArgs),
    /// Make this node's container runtime (containerd, podman, CRI-O, Docker) pull through
    /// its local agent, falling back to the upstream registry when the agent fails.
    MirrorConfig(cmd::mirror_config::MirrorConfigArgs),
    /// Cross-cluster replication: what a build-index still owes remote clusters.
    #[command(subcommand)]
    Replication(cmd::replication::ReplicationCommand),
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?)
}

fn main() -> ExitCode {
    kraken_tls::install_crypto_provider();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Certs(args) => cmd::certs::run(args),
        Command::Config(command) => cmd::config::run(command),
        Command::Devcluster(args) => {
            runtime().and_then(|rt| rt.block_on(cmd::devcluster::run(args)))
        }
        Command::Tracker(args) => runtime().and_then(|rt| rt.block_on(cmd::tracker::run(args))),
        Command::Origin(args) => runtime().and_then(|rt| rt.block_on(cmd::origin::run(args))),
        Command::Agent(args) => runtime().and_then(|rt| rt.block_on(cmd::agent::run(args))),
        Command::BuildIndex(args) => {
            runtime().and_then(|rt| rt.block_on(cmd::build_index::run(args)))
        }
        Command::Proxy(args) => runtime().and_then(|rt| rt.block_on(cmd::proxy::run(args))),
        Command::Push(args) => runtime().and_then(|rt| rt.block_on(cmd::blob::push(args))),
        Command::Pull(args) => runtime().and_then(|rt| rt.block_on(cmd::blob::pull(args))),
        Command::Prefetch(args) => runtime().and_then(|rt| rt.block_on(cmd::blob::prefetch(args))),
        Command::Doctor(args) => runtime().and_then(|rt| rt.block_on(cmd::doctor::run(args))),
        Command::Health(args) => runtime().and_then(|rt| rt.block_on(cmd::health::run(args))),
        Command::MirrorConfig(args) => cmd::mirror_config::run(args),
        Command::Replication(command) => {
            runtime().and_then(|rt| rt.block_on(cmd::replication::run(command)))
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}
