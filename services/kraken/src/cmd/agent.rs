//! `kraken agent --config FILE`.

use std::path::PathBuf;

use clap::Args;
use kraken_agent::Agent;
use kraken_config::agent::AgentConfig;

use super::{preflight, serve};

#[derive(Args, Debug)]
pub(crate) struct AgentArgs {
    /// The agent's YAML config.
    #[arg(long)]
    config: PathBuf,
}

pub(crate) async fn run(args: AgentArgs) -> anyhow::Result<()> {
    let config = kraken_config::load::<AgentConfig>(&args.config)?.config;
    preflight::Needs::agent(&config).check(&args.config)?;
    let running = serve::start("agent", config.telemetry()).await?;
    let tls = serve::tls(&config.tls, &args.config)?;
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
