//! What every component subcommand does around its server: load and validate the config, set up
//! logging, tracing and metrics, load the TLS material, and run until SIGINT/SIGTERM.

use std::net::SocketAddr;
use std::path::Path;

use anyhow::{Context, anyhow, bail};
use kraken_config::telemetry::Telemetry;
use kraken_config::tls::TlsSection;
use kraken_telemetry::{ShutdownSignal, TelemetryGuard};
use kraken_tls::{TlsConfig, TlsMaterial};
use tokio::net::TcpListener;

/// Telemetry and shutdown of a running component.
pub(crate) struct Running {
    pub(crate) shutdown: ShutdownSignal,
    _telemetry: TelemetryGuard,
}

/// Starts telemetry for `component` and, unless disabled, the Prometheus endpoint.
pub(crate) async fn start(component: &str, telemetry: Telemetry<'_>) -> anyhow::Result<Running> {
    let guard = kraken_telemetry::init(component, telemetry.log, telemetry.tracing)
        .context("starting logging and tracing")?;
    let shutdown = kraken_telemetry::shutdown_on_signal();
    let handle = kraken_telemetry::install_metrics_recorder();
    if let Some(addr) = telemetry.metrics.listen_for(component) {
        let bound = kraken_telemetry::serve_metrics(addr, handle, shutdown.clone().wait_owned())
            .await
            .context("starting the metrics endpoint")?;
        tracing::info!(%bound, "Prometheus metrics on /metrics");
    }
    Ok(Running {
        shutdown,
        _telemetry: guard,
    })
}

/// Loads the certificates a component presents and trusts. Every component runs with mutual
/// TLS; there is no plaintext mode.
///
/// The section means what the loader validated (`TlsSection::files`, all of `ca`, `cert` and
/// `key` or none); a component additionally needs it to be there.
pub(crate) fn tls(section: &TlsSection, file: &Path) -> anyhow::Result<TlsMaterial> {
    let files = section
        .files()
        .map_err(|error| anyhow!("{}: {}", file.display(), error.within("tls")))?;
    let Some([ca, cert, key]) = files else {
        bail!(
            "{}: tls: `ca`, `cert` and `key` are required (every component uses mutual TLS; \
             `kraken certs --out DIR` makes a development PKI)",
            file.display()
        );
    };
    let config = TlsConfig {
        ca: ca.to_path_buf(),
        cert: cert.to_path_buf(),
        key: key.to_path_buf(),
    };
    TlsMaterial::load(&config).context("loading TLS material")
}

pub(crate) async fn bind(addr: SocketAddr, what: &str) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding the {what} listener on {addr}"))
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;

    fn error(section: &TlsSection) -> String {
        format!("{:#}", tls(section, Path::new("agent.yaml")).unwrap_err())
    }

    #[test]
    fn a_partial_section_names_the_missing_key_as_the_loader_does() {
        let section = TlsSection {
            ca: Some(PathBuf::from("/ca.pem")),
            cert: Some(PathBuf::from("/c.pem")),
            key: None,
        };
        let message = error(&section);
        assert!(
            message.starts_with("agent.yaml: tls.key: missing"),
            "{message}"
        );
        let validated = kraken_config::Validate::validate(&section).unwrap_err();
        assert!(message.contains(&validated.message), "{message}");
    }

    #[test]
    fn a_component_needs_the_section() {
        let message = error(&TlsSection::default());
        assert!(message.contains("are required"), "{message}");
    }
}
