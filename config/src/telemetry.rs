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
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MetricsConfig {
    /// Address of the HTTP listener serving `GET /metrics`, e.g. `0.0.0.0:9090`. Absent means
    /// metrics are recorded but not served.
    pub listen: Option<SocketAddr>,
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
