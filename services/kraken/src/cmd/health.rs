//! `kraken health ADDR --role ROLE`: asks a component's gRPC health service over mutual TLS
//! whether it is serving — the probe for container health checks and load balancers. Exits 0
//! when it answers SERVING; otherwise prints why and exits 1.

use std::time::Duration;

use anyhow::{Context, bail};
use clap::Args;
use kraken_tls::Role;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

use crate::cmd::blob::ClientTls;

#[derive(Args, Debug)]
pub(crate) struct HealthArgs {
    /// gRPC address of the component (host:port).
    address: String,
    /// The role the server's certificate must carry (`origin`, `tracker`, `agent`, `proxy`,
    /// `build-index`): a server of another role is refused, not reported healthy.
    #[arg(long)]
    role: Role,
    /// The service to ask about (e.g. `kraken.origin.v1.BlobService`); the server as a whole
    /// by default.
    #[arg(long, default_value = "")]
    service: String,
    /// Give up after this long (connect, handshake and answer).
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    timeout: Duration,
    #[command(flatten)]
    tls: ClientTls,
}

pub(crate) async fn run(args: HealthArgs) -> anyhow::Result<()> {
    let tls = args.tls.load()?;
    let channel = kraken_transport::grpc::channel(&tls, &args.address, None, args.role)?;
    let request = HealthCheckRequest {
        service: args.service.clone(),
    };
    let answer = tokio::time::timeout(args.timeout, HealthClient::new(channel).check(request))
        .await
        .with_context(|| format!("{} did not answer within {:?}", args.address, args.timeout))?
        .map_err(|status| {
            anyhow::anyhow!(
                "{} answered {:?}: {}",
                args.address,
                status.code(),
                kraken_core::error_chain(&status)
            )
        })?;
    let status =
        ServingStatus::try_from(answer.into_inner().status).unwrap_or(ServingStatus::Unknown);
    let name = status.as_str_name();
    println!("{name}");
    if status != ServingStatus::Serving {
        bail!("{} is {name}", args.address);
    }
    Ok(())
}
