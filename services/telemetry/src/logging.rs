//! The process-wide `tracing` subscriber: filter, stderr formatter and optional span export.

use std::io::IsTerminal as _;
use std::sync::atomic::{AtomicBool, Ordering};

use tracing::Subscriber;
use tracing_log::AsLog as _;
use tracing_subscriber::filter::{EnvFilter, LevelFilter, filter_fn};
use tracing_subscriber::fmt::{self, MakeWriter};
use tracing_subscriber::layer::{Layer, SubscriberExt as _};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt as _;

use crate::otlp::{OtlpPipeline, is_exportable_target};
use crate::{LogConfig, LogFormat, TelemetryError, TracingConfig};

/// Set once [`init`] has installed its subscriber, so later calls fail fast without building an
/// exporter first.
static INSTALLED: AtomicBool = AtomicBool::new(false);

/// Keeps span export alive; dropping it flushes queued spans and shuts the exporter down.
///
/// Hold it in `main` for the life of the process. Dropping it blocks the current thread for at
/// most a few seconds while the last batch is sent, which is acceptable at exit only. Without an
/// `otlp_endpoint` the guard is inert.
#[must_use = "dropping the guard stops span export"]
#[derive(Debug)]
pub struct TelemetryGuard {
    otlp: Option<OtlpPipeline>,
}

impl TelemetryGuard {
    /// Whether spans are being exported over OTLP.
    pub fn exports_spans(&self) -> bool {
        self.otlp.is_some()
    }

    /// Sends every queued span now. Blocks up to a few seconds: from async code, call it through
    /// `tokio::task::spawn_blocking`.
    pub fn flush(&self) -> Result<(), TelemetryError> {
        match &self.otlp {
            Some(otlp) => otlp.flush().map_err(TelemetryError::OtlpFlush),
            None => Ok(()),
        }
    }

    /// Flushes and stops span export, reporting whether the last batch made it. Dropping the
    /// guard does the same and discards the result.
    pub fn shutdown(mut self) -> Result<(), TelemetryError> {
        match self.otlp.as_mut() {
            Some(otlp) => otlp.shutdown().map_err(TelemetryError::OtlpFlush),
            None => Ok(()),
        }
    }
}

/// Installs the global `tracing` subscriber for `component` (`agent`, `origin`, ...).
///
/// - Filter: a non-empty `RUST_LOG` replaces `log.level`; both use `EnvFilter` syntax.
/// - Output: `log.format` lines on stderr, coloured only when stderr is a terminal.
/// - `log` records (rustls, quinn) are forwarded into `tracing`.
/// - When `tracing.otlp_endpoint` is set: spans go to an OTLP/gRPC collector through a batch
///   processor, with `service.name` = `kraken-<component>` unless `tracing.service_name` is set,
///   a parent-based ratio sampler, and the W3C trace-context propagator registered globally so
///   gRPC clients and servers can carry trace ids across components.
///
/// Works with or without a Tokio runtime. A second call in the same process returns
/// [`TelemetryError::AlreadyInitialized`] and changes nothing.
pub fn init(
    component: &str,
    log: &LogConfig,
    tracing: &TracingConfig,
) -> Result<TelemetryGuard, TelemetryError> {
    if INSTALLED.load(Ordering::Acquire) {
        return Err(TelemetryError::AlreadyInitialized);
    }
    let rust_log = std::env::var("RUST_LOG").ok();
    let filter = env_filter(&log.level, rust_log.as_deref())?;
    if !tracing.sample_ratio_is_valid() {
        return Err(TelemetryError::InvalidSampleRatio(tracing.sample_ratio));
    }
    let otlp = match &tracing.otlp_endpoint {
        Some(endpoint) => Some(OtlpPipeline::start(
            endpoint,
            tracing.service_name_for(component),
            tracing.sample_ratio,
        )?),
        None => None,
    };
    // From here on an early return drops the guard, which shuts the exporter down again.
    let guard = TelemetryGuard { otlp };

    let otel_layer = guard.otlp.as_ref().map(|otlp| {
        tracing_opentelemetry::layer()
            .with_tracer(otlp.tracer())
            .with_filter(filter_fn(|meta| is_exportable_target(meta.target())))
    });
    let stderr_is_terminal = std::io::stderr().is_terminal();
    let subscriber = tracing_subscriber::registry()
        .with(filter)
        .with(fmt_layer(log.format, std::io::stderr, stderr_is_terminal))
        .with(otel_layer);
    tracing::subscriber::set_global_default(subscriber)
        .map_err(|_| TelemetryError::AlreadyInitialized)?;
    INSTALLED.store(true, Ordering::Release);

    // Another library may already own the `log` facade; tracing output still works without it.
    let _ = tracing_log::LogTracer::builder()
        .with_max_level(LevelFilter::current().as_log())
        .init();

    if let Some(otlp) = &guard.otlp {
        opentelemetry::global::set_text_map_propagator(
            opentelemetry_sdk::propagation::TraceContextPropagator::new(),
        );
        opentelemetry::global::set_tracer_provider(otlp.provider().clone());
    }
    tracing::debug!(
        component,
        format = ?log.format,
        otlp_endpoint = tracing.otlp_endpoint.as_deref(),
        "telemetry initialised"
    );
    Ok(guard)
}

/// Routes `tracing` output to the test harness's captured output, honouring `RUST_LOG`
/// (default `info`). Safe to call from every test: only the first call in a process does
/// anything, and failures are ignored.
pub fn init_for_tests() {
    let rust_log = std::env::var("RUST_LOG").ok();
    let filter = env_filter("info", rust_log.as_deref()).unwrap_or_else(|_| EnvFilter::new("info"));
    let _ = tracing_subscriber::registry()
        .with(filter)
        .with(fmt::layer().with_test_writer())
        .try_init();
}

/// The filter from `RUST_LOG` when it is set and non-empty, else from `level`.
pub(crate) fn env_filter(level: &str, rust_log: Option<&str>) -> Result<EnvFilter, TelemetryError> {
    match rust_log.map(str::trim).filter(|value| !value.is_empty()) {
        Some(value) => EnvFilter::try_new(value).map_err(|source| TelemetryError::InvalidRustLog {
            value: value.to_owned(),
            source,
        }),
        None => EnvFilter::try_new(level).map_err(|source| TelemetryError::InvalidLogLevel {
            level: level.to_owned(),
            source,
        }),
    }
}

/// The stderr formatter for `format`, writing to `writer` (stderr in production, a buffer in
/// tests).
pub(crate) fn fmt_layer<S, W>(
    format: LogFormat,
    writer: W,
    ansi: bool,
) -> Box<dyn Layer<S> + Send + Sync + 'static>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    match format {
        LogFormat::Text => fmt::layer().with_writer(writer).with_ansi(ansi).boxed(),
        LogFormat::Json => fmt::layer()
            .json()
            .with_writer(writer)
            .with_current_span(true)
            .with_span_list(false)
            .boxed(),
    }
}

#[cfg(test)]
mod tests {
    use std::io;
    use std::sync::{Arc, Mutex};

    use tracing_subscriber::fmt::MakeWriter;
    use tracing_subscriber::layer::SubscriberExt as _;

    use super::*;

    /// Collects everything written into one shared buffer.
    #[derive(Clone, Default)]
    struct Capture(Arc<Mutex<Vec<u8>>>);

    impl Capture {
        fn text(&self) -> String {
            String::from_utf8(self.0.lock().unwrap().clone()).unwrap()
        }
    }

    impl io::Write for Capture {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    impl<'w> MakeWriter<'w> for Capture {
        type Writer = Capture;
        fn make_writer(&'w self) -> Self::Writer {
            self.clone()
        }
    }

    #[test]
    fn json_format_writes_one_json_object_per_line() {
        let capture = Capture::default();
        let subscriber = tracing_subscriber::registry()
            .with(env_filter("info", None).unwrap())
            .with(fmt_layer(LogFormat::Json, capture.clone(), false));
        tracing::subscriber::with_default(subscriber, || {
            let span = tracing::info_span!("pull", digest = "sha256:abc");
            let _entered = span.enter();
            tracing::info!(bytes = 42_u64, "blob downloaded");
            tracing::warn!("peer stalled");
            tracing::debug!("filtered out at info");
        });

        let text = capture.text();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|line| serde_json::from_str(line).expect(line))
            .collect();
        assert_eq!(lines.len(), 2, "{text}");
        assert_eq!(lines[0]["level"], "INFO");
        assert_eq!(lines[0]["fields"]["message"], "blob downloaded");
        assert_eq!(lines[0]["fields"]["bytes"], 42);
        assert_eq!(lines[0]["span"]["name"], "pull");
        assert_eq!(lines[0]["span"]["digest"], "sha256:abc");
        assert_eq!(lines[1]["level"], "WARN");
        assert!(lines[1]["timestamp"].is_string());
    }

    #[test]
    fn text_format_is_plain_without_ansi() {
        let capture = Capture::default();
        let subscriber = tracing_subscriber::registry()
            .with(env_filter("debug", None).unwrap())
            .with(fmt_layer(LogFormat::Text, capture.clone(), false));
        tracing::subscriber::with_default(subscriber, || tracing::debug!(peer = 7, "hello"));
        let text = capture.text();
        assert!(text.contains("DEBUG"), "{text}");
        assert!(text.contains("hello peer=7"), "{text}");
        assert!(!text.contains('\u{1b}'), "{text}");
    }

    #[test]
    fn rust_log_overrides_level() {
        let capture = Capture::default();
        let filter = env_filter("error", Some("warn")).unwrap();
        let subscriber = tracing_subscriber::registry().with(filter).with(fmt_layer(
            LogFormat::Text,
            capture.clone(),
            false,
        ));
        tracing::subscriber::with_default(subscriber, || {
            tracing::warn!("kept");
            tracing::info!("dropped");
        });
        let text = capture.text();
        assert!(text.contains("kept") && !text.contains("dropped"), "{text}");

        // An empty RUST_LOG counts as unset.
        assert!(env_filter("info", Some("  ")).is_ok());
    }

    #[test]
    fn invalid_filters_are_reported_with_their_origin() {
        let err = env_filter("info,foo=loud", None).unwrap_err();
        assert!(
            matches!(err, TelemetryError::InvalidLogLevel { .. }),
            "{err:?}"
        );
        assert!(err.to_string().contains("log.level"), "{err}");
        let err = env_filter("info", Some("=nope=")).unwrap_err();
        assert!(
            matches!(err, TelemetryError::InvalidRustLog { .. }),
            "{err:?}"
        );
    }

    #[test]
    fn init_for_tests_is_repeatable() {
        init_for_tests();
        // The second call finds a subscriber in place and leaves it; it must not panic.
        init_for_tests();
        assert!(
            tracing::dispatcher::has_been_set(),
            "a global subscriber is installed"
        );
        assert!(
            tracing::enabled!(tracing::Level::ERROR),
            "the installed subscriber records errors"
        );
    }

    #[test]
    fn bad_sample_ratio_is_rejected_before_anything_is_installed() {
        let tracing = TracingConfig {
            sample_ratio: 2.0,
            ..TracingConfig::default()
        };
        match init("agent", &LogConfig::default(), &tracing) {
            Err(TelemetryError::InvalidSampleRatio(r)) => assert_eq!(r, 2.0),
            // Another test in this process may have installed a subscriber first.
            Err(TelemetryError::AlreadyInitialized) => {}
            other => panic!("unexpected: {other:?}"),
        }
    }
}
