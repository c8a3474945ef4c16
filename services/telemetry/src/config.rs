//! The `log:`, `metrics:` and `tracing:` sections of every component's YAML. They are defined in
//! `kraken-config`, next to the loader that validates them, and re-exported here so callers of
//! [`crate::init`] need one import.

pub use kraken_config::telemetry::{LogConfig, LogFormat, MetricsConfig, TracingConfig};
