//! `kraken proxy --config FILE`.

use std::path::PathBuf;

use clap::Args;
use kraken_config::proxy::ProxyConfig;
use kraken_proxy::Proxy;

use super::{preflight, serve};

#[derive(Args, Debug)]
pub(crate) struct ProxyArgs {
    /// The proxy's YAML config.
    #[arg(long)]
    config: PathBuf,
}

pub(crate) async fn run(args: ProxyArgs) -> anyhow::Result<()> {
    let config = kraken_config::load::<ProxyConfig>(&args.config)?.config;
    preflight::Needs::proxy(&config).check(&args.config)?;
    let running = serve::start("proxy", config.telemetry()).await?;
    let tls = serve::tls(&config.tls, &args.config)?;
    let registry = serve::bind(config.listen.registry, "registry").await?;
    let grpc = serve::bind(config.listen.grpc, "gRPC").await?;
    let proxy = Proxy::start(config, tls, registry, grpc).await?;
    tracing::info!(
        registry = %proxy.registry_addr(),
        grpc = %proxy.grpc_addr(),
        "proxy running"
    );
    running.shutdown.wait().await;
    tracing::info!("proxy shutting down");
    proxy.shutdown().await?;
    Ok(())
}
