//! `kraken build-index --config FILE`.

use std::path::PathBuf;

use clap::Args;
use kraken_buildindex::BuildIndex;
use kraken_config::build_index::BuildIndexConfig;

use super::{preflight, serve};

#[derive(Args, Debug)]
pub(crate) struct BuildIndexArgs {
    /// The build-index's YAML config.
    #[arg(long)]
    config: PathBuf,
}

pub(crate) async fn run(args: BuildIndexArgs) -> anyhow::Result<()> {
    let config = kraken_config::load::<BuildIndexConfig>(&args.config)?.config;
    preflight::Needs::build_index(&config).check(&args.config)?;
    let running = serve::start("build-index", config.telemetry()).await?;
    let tls = serve::tls(&config.tls, &args.config)?;
    let listener = serve::bind(config.listen.grpc, "gRPC").await?;
    let build_index = BuildIndex::start(config, tls, listener).await?;
    tracing::info!(grpc = %build_index.addr(), "build-index running");
    running.shutdown.wait().await;
    tracing::info!("build-index shutting down");
    build_index.shutdown().await?;
    Ok(())
}
