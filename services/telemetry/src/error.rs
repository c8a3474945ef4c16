use std::net::SocketAddr;

/// Why telemetry could not be set up or torn down.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TelemetryError {
    /// A global `tracing` subscriber is already installed in this process (by an earlier
    /// [`init`](crate::init), [`init_for_tests`](crate::init_for_tests) or another library).
    #[error("a global tracing subscriber is already installed in this process")]
    AlreadyInitialized,

    /// `log.level` is not valid filter syntax.
    #[error("log.level {level:?} is not a valid filter (expected e.g. `info,kraken_store=debug`)")]
    InvalidLogLevel {
        /// The rejected directives.
        level: String,
        /// What the parser objected to.
        #[source]
        source: tracing_subscriber::filter::ParseError,
    },

    /// The `RUST_LOG` environment variable is not valid filter syntax.
    #[error("RUST_LOG {value:?} is not a valid filter (expected e.g. `info,kraken_store=debug`)")]
    InvalidRustLog {
        /// The rejected directives.
        value: String,
        /// What the parser objected to.
        #[source]
        source: tracing_subscriber::filter::ParseError,
    },

    /// `tracing.sample_ratio` is outside `0.0..=1.0`.
    #[error("tracing.sample_ratio {0} is out of range (expected a number from 0.0 to 1.0)")]
    InvalidSampleRatio(f64),

    /// The OTLP exporter rejected `tracing.otlp_endpoint` (bad URI, or `https://` without TLS).
    #[error("tracing.otlp_endpoint {endpoint:?} cannot be used for OTLP/gRPC export")]
    OtlpExporter {
        /// The configured endpoint.
        endpoint: String,
        /// The exporter's reason.
        #[source]
        source: opentelemetry_otlp::ExporterBuildError,
    },

    /// The background runtime that drives span export could not be started.
    #[error("cannot start the OTLP export runtime")]
    OtlpRuntime(#[source] std::io::Error),

    /// Flushing or shutting down the tracer provider failed (e.g. the collector timed out).
    #[error("cannot flush spans to the OTLP collector")]
    OtlpFlush(#[source] opentelemetry_sdk::error::OTelSdkError),

    /// The metrics listener could not bind its address.
    #[error("cannot bind the metrics listener on {addr}")]
    MetricsBind {
        /// The configured `metrics.listen` address.
        addr: SocketAddr,
        /// The socket error.
        #[source]
        source: std::io::Error,
    },

    /// The metrics HTTP server failed while serving.
    #[error("metrics server failed")]
    MetricsServe(#[source] std::io::Error),
}
