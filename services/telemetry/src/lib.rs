//! Observability and lifecycle plumbing shared by every Kraken component (agent, origin,
//! tracker, proxy, build-index) and the `kraken` binary: the global `tracing` subscriber with
//! optional OTLP span export, the Prometheus `/metrics` endpoint, the [`ShutdownSignal`] every
//! server is run with, and progress reporting for long CLI transfers. It must never block or
//! fail a request path because of telemetry: spans are exported from a background thread
//! through a bounded queue that drops when full, metrics are lock-free counters rendered only
//! when scraped, and an unreachable collector costs lost spans, not latency. It never installs
//! anything global except through [`init`] and [`install_metrics_recorder`].
//!
//! # Start-up
//!
//! ```no_run
//! # async fn example() -> anyhow::Result<()> {
//! use kraken_telemetry::{LogConfig, MetricsConfig, TracingConfig};
//!
//! let (log, metrics, tracing) =
//!     (LogConfig::default(), MetricsConfig::default(), TracingConfig::default());
//! let _guard = kraken_telemetry::init("agent", &log, &tracing)?;
//! let handle = kraken_telemetry::install_metrics_recorder();
//! let shutdown = kraken_telemetry::shutdown_on_signal();
//! if let Some(addr) = metrics.listen {
//!     kraken_telemetry::serve_metrics(addr, handle, shutdown.clone().wait_owned()).await?;
//! }
//! // run(listener, shutdown.clone()).await ...
//! # Ok(()) }
//! ```
//!
//! # Metric names
//!
//! Record through the [`metrics`](https://docs.rs/metrics) macros (`counter!`, `gauge!`,
//! `histogram!`), named `kraken_<component>_<what>_<unit>`:
//!
//! - `<component>` is `agent`, `origin`, `tracker`, `proxy`, `build_index`, or a shared crate's
//!   area (`store`, `p2p`) when the metric is recorded below the component level.
//! - `<what>` is a snake_case noun phrase: `blob_download`, `announce_requests`, `peers_connected`.
//! - `<unit>` is a base unit in plural: `seconds`, `bytes`; counters of events end in `_total`
//!   (`kraken_agent_blob_downloads_total`), plain current values (gauges) may omit the unit.
//! - Labels carry bounded sets only (`result="hit"`, `status="404"`); never a digest, peer id or
//!   address.
//!
//! Histograms whose names end in `_seconds` or `_bytes` get [`SECONDS_BUCKETS`] and
//! [`BYTES_BUCKETS`]; any other histogram is rendered as a summary.

mod config;
mod error;
mod logging;
mod otlp;
mod progress;
mod prometheus;
mod shutdown;

pub use config::{LogConfig, LogFormat, MetricsConfig, TracingConfig};
pub use error::TelemetryError;
pub use logging::{TelemetryGuard, init, init_for_tests};
pub use metrics_exporter_prometheus::PrometheusHandle;
pub use progress::{PROGRESS_LOG_INTERVAL, ProgressReporter, progress_bar};
pub use prometheus::{
    BYTES_BUCKETS, PROMETHEUS_CONTENT_TYPE, SECONDS_BUCKETS, install_metrics_recorder,
    metrics_router, metrics_server_limits, run_metrics_server, serve_metrics,
};
// Trace context crosses processes in the transport's observe layer; re-exported for the
// REST surfaces that carry it in plain HTTP headers.
pub use kraken_transport::observe::{inject_trace_context, set_parent_from_headers};
pub use shutdown::{ShutdownSignal, shutdown_on_signal};
