//! `kraken tracker --config FILE`.

use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use kraken_config::tracker::TrackerConfig;

use super::{preflight, serve};

#[derive(Args, Debug)]
pub(crate) struct TrackerArgs {
    /// The tracker's YAML config.
    #[arg(long)]
    config: PathBuf,
}

pub(crate) async fn run(args: TrackerArgs) -> anyhow::Result<()> {
    let config = kraken_config::load::<TrackerConfig>(&args.config)?.config;
    preflight::Needs::tracker(&config).check(&args.config)?;
    let running = serve::start("tracker", config.telemetry()).await?;
    let tls = serve::tls(&config.tls, &args.config)?;
    let listener = serve::bind(config.listen.grpc, "gRPC").await?;
    tracing::info!(grpc = %config.listen.grpc, "tracker starting");
    kraken_tracker::run(config, tls, listener, running.shutdown.clone().wait_owned())
        .await
        .context("tracker stopped")
}
