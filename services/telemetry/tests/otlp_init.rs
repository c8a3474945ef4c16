//! `init` with span export to a collector that is not there. Its own test binary: `init`
//! installs process-wide state, so this must be the only test in the process that calls it.
//!
//! "Never blocks" is checked as "returns": nothing here is timed (the suite's per-test
//! timeout fails a call that hangs, by name); speed is not a test's business.

use kraken_telemetry::{LogConfig, LogFormat, TelemetryError, TracingConfig, init};

#[tokio::test]
async fn init_with_unreachable_collector_neither_panics_nor_blocks() -> anyhow::Result<()> {
    let log = LogConfig {
        level: "info".to_owned(),
        format: LogFormat::Json,
    };

    // A malformed endpoint is refused up front and installs nothing.
    let bad = TracingConfig {
        otlp_endpoint: Some("http://bad host:4317".to_owned()),
        ..TracingConfig::default()
    };
    let err = init("agent", &log, &bad).unwrap_err();
    assert!(
        matches!(err, TelemetryError::OtlpExporter { .. }),
        "{err:?}"
    );

    // A port nothing listens on.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?;
    let tracing_config = TracingConfig {
        otlp_endpoint: Some(format!("http://{closed}")),
        service_name: None,
        sample_ratio: 1.0,
    };
    let guard = init("agent", &log, &tracing_config)?;
    assert!(guard.exports_spans());

    // Recording spans never waits for the collector.
    for i in 0..1_000 {
        let span = tracing::info_span!("fetch", piece = i);
        let _entered = span.enter();
        // Below the filter: keeps the test's stderr short while the span itself is recorded.
        tracing::debug!(bytes = 4096, "piece received");
    }

    // A second init is refused without disturbing the first.
    let again = init("agent", &log, &tracing_config);
    assert!(
        matches!(again, Err(TelemetryError::AlreadyInitialized)),
        "{again:?}"
    );

    // Shutting down on this current-thread runtime completes: the exporter does not need this
    // runtime to make progress. The spans are dropped (the export fails), within the bound.
    let _ = guard.shutdown();
    tracing::info!("logging still works after span export stopped");
    Ok(())
}
