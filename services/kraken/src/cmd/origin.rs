//! `kraken origin --config FILE`.

use std::path::PathBuf;

use clap::Args;
use kraken_config::origin::OriginConfig;
use kraken_origin::Origin;

use super::{preflight, serve};

#[derive(Args, Debug)]
pub(crate) struct OriginArgs {
    /// The origin's YAML config.
    #[arg(long)]
    config: PathBuf,
}

pub(crate) async fn run(args: OriginArgs) -> anyhow::Result<()> {
    let config = kraken_config::load::<OriginConfig>(&args.config)?.config;
    preflight::Needs::origin(&config).check(&args.config)?;
    let running = serve::start("origin", config.telemetry()).await?;
    let tls = serve::tls(&config.tls, &args.config)?;
    let listener = serve::bind(config.listen.grpc, "gRPC").await?;
    let origin = Origin::start(config, tls, listener).await?;
    tracing::info!(grpc = %origin.grpc_addr(), p2p = %origin.p2p_addr(), "origin running");
    running.shutdown.wait().await;
    tracing::info!("origin shutting down");
    origin.shutdown().await?;
    Ok(())
}
