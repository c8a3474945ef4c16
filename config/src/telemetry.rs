//! `log:`, `metrics:` and `tracing:` — the telemetry keys every component has at its top level.
//!
//! The shapes and defaults match `kraken-telemetry`'s own config types key for key, so the
//! binary can hand these over field by field; this crate does not depend on the telemetry stack.

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

use crate::validate::{Validate, ValidationError, ensure};

/// `log:` — what is written to stderr.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    /// Filter directives in `RUST_LOG` syntax, e.g. `info` or `info,kraken_store=debug`.
    /// A non-empty `RUST_LOG` environment variable replaces this value entirely.
    pub level: String,
    /// Line format: `text` for humans, `json` (one object per line) for log shippers.
    pub format: LogFormat,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            level: "info".to_owned(),
            format: LogFormat::Text,
        }
    }
}

impl Validate for LogConfig {
    fn validate(&self) -> Result<(), ValidationError> {
        ensure(
            !self.level.trim().is_empty(),
            "level",
            "must not be empty (e.g. `info`)",
        )
    }
}

/// How log lines are rendered.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// `metrics:` — where Prometheus scrapes this component.
///
/// On by default: a component with no `metrics:` section serves `GET /metrics` on
/// `0.0.0.0:<its documented port>` ([`default_metrics_port`]), so a fleet is observable
/// without per-host configuration. The endpoint is plain HTTP and read-only; keep the port on
/// a management network.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MetricsConfig {
    /// Whether `/metrics` is served at all (`false` records metrics without serving them).
    pub enabled: bool,
    /// Address of the HTTP listener serving `GET /metrics`, e.g. `127.0.0.1:9106`. Absent
    /// means `0.0.0.0` on the component's default port.
    pub listen: Option<SocketAddr>,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            listen: None,
        }
    }
}

impl MetricsConfig {
    /// Where `component` serves `/metrics`, or `None` when disabled.
    pub fn listen_for(&self, component: &str) -> Option<SocketAddr> {
        self.enabled.then(|| {
            self.listen.unwrap_or_else(|| {
                SocketAddr::from(([0, 0, 0, 0], default_metrics_port(component)))
            })
        })
    }
}

/// Each component's default Prometheus port (the README's firewall table): proxy 9101,
/// origin 9102, tracker 9103, build-index 9104, agent 9106. Distinct, so every role can run
/// on one host with its defaults.
pub fn default_metrics_port(component: &str) -> u16 {
    match component {
        "proxy" => 9101,
        "origin" => 9102,
        "tracker" => 9103,
        "build-index" => 9104,
        "agent" => 9106,
        _ => 9100,
    }
}

impl Validate for MetricsConfig {
    fn validate(&self) -> Result<(), ValidationError> {
        Ok(())
    }
}

/// `tracing:` — distributed tracing export over OTLP/gRPC.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TracingConfig {
    /// OTLP/gRPC collector endpoint, e.g. `http://127.0.0.1:4317`. Absent disables span export.
    pub otlp_endpoint: Option<String>,
    /// `service.name` resource attribute; defaults to `kraken-<component>`.
    pub service_name: Option<String>,
    /// Fraction of new root traces that are sampled, from 0.0 to 1.0.
    pub sample_ratio: f64,
}

impl Default for TracingConfig {
    fn default() -> Self {
        Self {
            otlp_endpoint: None,
            service_name: None,
            sample_ratio: 1.0,
        }
    }
}

impl TracingConfig {
    /// The `service.name` reported for `component`.
    pub fn service_name_for(&self, component: &str) -> String {
        match &self.service_name {
            Some(name) => name.clone(),
            None => format!("kraken-{component}"),
        }
    }

    /// Whether `sample_ratio` is a usable probability.
    pub fn sample_ratio_is_valid(&self) -> bool {
        (0.0..=1.0).contains(&self.sample_ratio)
    }
}

impl Validate for TracingConfig {
    fn validate(&self) -> Result<(), ValidationError> {
        ensure(
            self.sample_ratio_is_valid(),
            "sample_ratio",
            format!(
                "{} is out of range: expected a number from 0.0 to 1.0",
                self.sample_ratio
            ),
        )?;
        if let Some(endpoint) = &self.otlp_endpoint {
            ensure(
                endpoint.starts_with("http://") || endpoint.starts_with("https://"),
                "otlp_endpoint",
                format!("`{endpoint}` is not a URL: expected e.g. `http://127.0.0.1:4317`"),
            )?;
        }
        Ok(())
    }
}

/// The three telemetry sections of a component, borrowed together.
#[derive(Debug, Clone, Copy)]
pub struct Telemetry<'a> {
    /// `log:`
    pub log: &'a LogConfig,
    /// `metrics:`
    pub metrics: &'a MetricsConfig,
    /// `tracing:`
    pub tracing: &'a TracingConfig,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_are_served_on_the_components_documented_port_unless_disabled() {
        let default = MetricsConfig::default();
        assert_eq!(
            default.listen_for("agent"),
            Some("0.0.0.0:9106".parse().unwrap())
        );
        assert_eq!(
            default.listen_for("build-index"),
            Some("0.0.0.0:9104".parse().unwrap())
        );
        let ports: std::collections::HashSet<_> =
            ["proxy", "origin", "tracker", "build-index", "agent"]
                .map(default_metrics_port)
                .into_iter()
                .collect();
        assert_eq!(ports.len(), 5, "one port per role: {ports:?}");

        let chosen: MetricsConfig =
            serde_json::from_str(r#"{"listen": "127.0.0.1:1234"}"#).unwrap();
        assert_eq!(
            chosen.listen_for("agent"),
            Some("127.0.0.1:1234".parse().unwrap())
        );
        let off: MetricsConfig =
            serde_json::from_str(r#"{"enabled": false, "listen": "127.0.0.1:1234"}"#).unwrap();
        assert_eq!(off.listen_for("agent"), None);
    }
}
