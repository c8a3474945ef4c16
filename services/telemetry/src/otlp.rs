//! OTLP/gRPC span export, isolated on its own small runtime.
//!
//! The tonic channel behind the exporter spawns its connection tasks on whatever runtime is
//! current when it is built. Building it on the component's runtime would tie span export to
//! that runtime: a guard dropped on a `current_thread` runtime would block the only thread the
//! export needs and stall shutdown until the timeout. A dedicated one-worker runtime keeps export
//! independent of the caller, and lets `init` run with or without a runtime.

use std::time::Duration;

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::WithExportConfig as _;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::error::OTelSdkError;
use opentelemetry_sdk::trace::{Sampler, SdkTracer, SdkTracerProvider};

use crate::TelemetryError;

/// Upper bound for one export RPC, retries included.
const EXPORT_TIMEOUT: Duration = Duration::from_secs(3);
/// Upper bound for draining queued spans when the guard is dropped.
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(5);

/// Tracing targets whose spans are never exported: they belong to the export path itself
/// (the gRPC stack carrying spans to the collector), and exporting them would feed back.
const EXPORT_PATH_TARGETS: &[&str] = &[
    "h2",
    "hyper",
    "hyper_util",
    "tonic",
    "tower",
    "opentelemetry",
    "opentelemetry_sdk",
    "opentelemetry_otlp",
];

/// Whether spans and events from `target` may be turned into OpenTelemetry spans.
pub(crate) fn is_exportable_target(target: &str) -> bool {
    !EXPORT_PATH_TARGETS.iter().any(|prefix| {
        target
            .strip_prefix(prefix)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with("::"))
    })
}

/// A running tracer provider plus the runtime its exporter lives on.
pub(crate) struct OtlpPipeline {
    provider: SdkTracerProvider,
    runtime: Option<tokio::runtime::Runtime>,
}

impl std::fmt::Debug for OtlpPipeline {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OtlpPipeline").finish_non_exhaustive()
    }
}

impl OtlpPipeline {
    /// Builds the exporter, batch processor, sampler and resource. Connects lazily: an
    /// unreachable collector costs dropped spans and an error line per batch, never a stall.
    pub(crate) fn start(
        endpoint: &str,
        service_name: String,
        sample_ratio: f64,
    ) -> Result<Self, TelemetryError> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("kraken-otlp-export")
            .enable_all()
            .build()
            .map_err(TelemetryError::OtlpRuntime)?;
        let exporter = {
            let _entered = runtime.enter();
            opentelemetry_otlp::SpanExporter::builder()
                .with_tonic()
                .with_endpoint(endpoint)
                .with_timeout(EXPORT_TIMEOUT)
                .build()
        };
        let exporter = match exporter {
            Ok(exporter) => exporter,
            Err(source) => {
                runtime.shutdown_background();
                return Err(TelemetryError::OtlpExporter {
                    endpoint: endpoint.to_owned(),
                    source,
                });
            }
        };
        // The SDK's batch processor exports from its own thread with a bounded queue: a full
        // queue drops spans instead of slowing the code that records them.
        let provider = SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(
                sample_ratio,
            ))))
            .with_resource(Resource::builder().with_service_name(service_name).build())
            .build();
        Ok(Self {
            provider,
            runtime: Some(runtime),
        })
    }

    pub(crate) fn provider(&self) -> &SdkTracerProvider {
        &self.provider
    }

    pub(crate) fn tracer(&self) -> SdkTracer {
        self.provider.tracer("kraken")
    }

    pub(crate) fn flush(&self) -> Result<(), OTelSdkError> {
        self.provider.force_flush()
    }

    /// Exports what is queued (bounded by [`SHUTDOWN_TIMEOUT`]) and stops the export runtime.
    /// Later calls do nothing.
    pub(crate) fn shutdown(&mut self) -> Result<(), OTelSdkError> {
        let Some(runtime) = self.runtime.take() else {
            return Ok(());
        };
        let result = self.provider.shutdown_with_timeout(SHUTDOWN_TIMEOUT);
        // Not `drop`: dropping a runtime inside another runtime's async context panics.
        runtime.shutdown_background();
        result
    }
}

impl Drop for OtlpPipeline {
    fn drop(&mut self) {
        // Errors were already reported by the SDK through `tracing`; nothing left to do here.
        let _ = self.shutdown();
    }
}

#[cfg(test)]
mod tests {
    use super::is_exportable_target;

    #[test]
    fn export_path_targets_are_excluded() {
        for target in [
            "h2",
            "h2::proto",
            "hyper_util::client",
            "tonic::transport",
            "tower",
        ] {
            assert!(!is_exportable_target(target), "{target}");
        }
        for target in [
            "kraken_agent",
            "kraken_store::blob",
            "h2o",
            "towering",
            "tonicity",
        ] {
            assert!(is_exportable_target(target), "{target}");
        }
    }
}
