//! Prometheus exposition of the `metrics` facade.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::OnceLock;
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use metrics_exporter_prometheus::{BuildError, Matcher, PrometheusBuilder, PrometheusHandle};
use tokio::net::TcpListener;

use kraken_transport::http::HttpServerLimits;

use crate::TelemetryError;

/// Content type of the Prometheus text exposition format.
pub const PROMETHEUS_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Histogram buckets for `*_seconds`: sub-millisecond lookups up to ten-minute blob transfers.
pub const SECONDS_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    60.0, 120.0, 300.0, 600.0,
];

/// Histogram buckets for `*_bytes`: powers of four from 1 KiB (manifests) to 16 GiB (layers).
pub const BYTES_BUCKETS: &[f64] = &[
    1024.0,
    4096.0,
    16384.0,
    65536.0,
    262_144.0,
    1_048_576.0,
    4_194_304.0,
    16_777_216.0,
    67_108_864.0,
    268_435_456.0,
    1_073_741_824.0,
    4_294_967_296.0,
    17_179_869_184.0,
];

/// Histograms keep raw samples until upkeep folds them into buckets; without a scrape this is
/// what bounds their memory.
const UPKEEP_INTERVAL: Duration = Duration::from_secs(5);

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Installs the process-wide Prometheus recorder behind the `metrics` macros and returns a handle
/// that renders it. Idempotent: every call returns a handle to the same recorder.
///
/// The first call also starts a small background thread that performs the recorder's periodic
/// upkeep. If some other library installed a `metrics` recorder first, a warning is logged and
/// the returned handle renders only an empty registry.
pub fn install_metrics_recorder() -> PrometheusHandle {
    HANDLE
        .get_or_init(|| {
            // The only possible error is an empty bucket list, and both lists are constants.
            let recorder = prometheus_builder()
                .unwrap_or_else(|_| PrometheusBuilder::new())
                .build_recorder();
            let handle = recorder.handle();
            if let Err(err) = metrics::set_global_recorder(recorder) {
                tracing::warn!(error = %err, "another metrics recorder is installed; /metrics will stay empty");
            }
            let upkeep = handle.clone();
            let spawned = std::thread::Builder::new()
                .name("kraken-metrics-upkeep".to_owned())
                .spawn(move || {
                    loop {
                        std::thread::sleep(UPKEEP_INTERVAL);
                        upkeep.run_upkeep();
                    }
                });
            if let Err(err) = spawned {
                tracing::warn!(error = %err, "cannot start metrics upkeep; histograms grow until scraped");
            }
            handle
        })
        .clone()
}

fn prometheus_builder() -> Result<PrometheusBuilder, BuildError> {
    PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".to_owned()), SECONDS_BUCKETS)?
        .set_buckets_for_metric(Matcher::Suffix("_bytes".to_owned()), BYTES_BUCKETS)
}

/// A router serving `GET /metrics` in the Prometheus text format. Merge it into a component's
/// HTTP router, or serve it alone with [`serve_metrics`].
pub fn metrics_router(handle: PrometheusHandle) -> Router {
    Router::new()
        .route("/metrics", get(render_metrics))
        .with_state(handle)
}

async fn render_metrics(State(handle): State<PrometheusHandle>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, PROMETHEUS_CONTENT_TYPE)],
        handle.render(),
    )
}

/// Binds `addr` (port 0 picks a free port), serves [`metrics_router`] on it in a background task
/// until `shutdown` completes, and returns the bound address.
///
/// Must be called within a Tokio runtime. Serving errors after bind are logged.
pub async fn serve_metrics(
    addr: SocketAddr,
    handle: PrometheusHandle,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<SocketAddr, TelemetryError> {
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|source| TelemetryError::MetricsBind { addr, source })?;
    let local_addr = listener
        .local_addr()
        .map_err(|source| TelemetryError::MetricsBind { addr, source })?;
    tokio::spawn(async move {
        let limits = metrics_server_limits();
        if let Err(err) = run_metrics_server(listener, handle, limits, shutdown).await {
            tracing::error!(error = %err, %local_addr, "metrics server stopped");
        }
    });
    tracing::info!(%local_addr, "serving metrics at /metrics");
    Ok(local_addr)
}

/// Limits of the metrics endpoint: a scraper or two, sending tiny requests. `axum::serve` has
/// none, so anyone reaching the port could hold connections open forever by saying nothing.
pub fn metrics_server_limits() -> HttpServerLimits {
    HttpServerLimits {
        max_connections: 64,
        tls_handshake_timeout: Duration::from_secs(10),
        header_read_timeout: Duration::from_secs(10),
        body_idle_timeout: Duration::from_secs(10),
        max_concurrent_streams: 16,
        // Scrapes come every few seconds; this only stops a client hammering the port.
        requests_per_second_per_client: 50,
    }
}

/// Serves [`metrics_router`] on `listener` with `limits` (normally
/// [`metrics_server_limits`]) until `shutdown` completes and open requests finish.
pub async fn run_metrics_server(
    listener: TcpListener,
    handle: PrometheusHandle,
    limits: HttpServerLimits,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), TelemetryError> {
    kraken_transport::http::serve(listener, metrics_router(handle), limits, None, shutdown)
        .await
        .map_err(TelemetryError::MetricsServe)
}
