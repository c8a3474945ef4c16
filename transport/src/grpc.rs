//! gRPC servers and client channels with mutual TLS.

use std::future::Future;
use std::time::Duration;

use kraken_tls::TlsMaterial;
use std::convert::Infallible;
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;

use tonic::codegen::{Service, http};
use tonic::server::NamedService;
use tonic::service::Routes;
use tonic::transport::{Channel, Endpoint, Server};
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;

/// Limits applied to every server.
#[derive(Debug, Clone)]
pub struct GrpcServerLimits {
    /// Time to produce a response (for streams: until the stream starts).
    pub request_timeout: Duration,
    /// Concurrent requests per client connection; beyond it, requests are shed with
    /// `UNAVAILABLE` rather than queued without bound.
    pub concurrency_per_connection: usize,
}

impl Default for GrpcServerLimits {
    fn default() -> Self {
        Self {
            request_timeout: Duration::from_secs(30),
            concurrency_per_connection: 256,
        }
    }
}

/// Why a server could not start or stopped.
#[derive(Debug, thiserror::Error)]
pub enum GrpcError {
    #[error("invalid TLS configuration for the gRPC server")]
    Tls(#[source] tonic::transport::Error),
    #[error("building the reflection service")]
    Reflection(#[source] tonic_reflection::server::Error),
    #[error("gRPC server failed")]
    Serve(#[source] tonic::transport::Error),
    #[error("invalid gRPC endpoint `{endpoint}`")]
    Endpoint {
        endpoint: String,
        #[source]
        source: tonic::transport::Error,
    },
}

/// Assembles a server: add services, then [`GrpcServer::serve`].
pub struct GrpcServer {
    routes: Routes,
    health: HealthReporter,
    services: Vec<&'static str>,
    limits: GrpcServerLimits,
    tls: tonic::transport::ServerTlsConfig,
}

impl std::fmt::Debug for GrpcServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GrpcServer")
            .field("services", &self.services)
            .finish_non_exhaustive()
    }
}

impl GrpcServer {
    /// A server presenting `tls`'s certificate and requiring client certificates from its CA,
    /// with health and reflection already registered.
    pub fn new(tls: &TlsMaterial, limits: GrpcServerLimits) -> Result<Self, GrpcError> {
        let (health, health_service) = tonic_health::server::health_reporter();
        let routes = kraken_proto::reflection_routes()
            .map_err(GrpcError::Reflection)?
            .add_service(health_service);
        Ok(Self {
            routes,
            health,
            services: Vec::new(),
            limits,
            tls: tls.tonic_server_tls(),
        })
    }

    /// Adds a service; it reports SERVING on gRPC health once the server runs.
    pub fn add_service<S>(mut self, service: S) -> Self
    where
        S: Service<http::Request<tonic::body::Body>, Error = Infallible>
            + NamedService
            + Clone
            + Send
            + Sync
            + 'static,
        S::Response: axum::response::IntoResponse,
        S::Future: Send + 'static,
    {
        self.services.push(S::NAME);
        self.routes = self.routes.add_service(service);
        self
    }

    /// The health reporter, to mark services NOT_SERVING (e.g. while draining).
    pub fn health(&self) -> HealthReporter {
        self.health.clone()
    }

    /// Serves on `listener` until `shutdown` completes, then finishes in-flight requests.
    pub async fn serve(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send,
    ) -> Result<(), GrpcError> {
        for name in &self.services {
            self.health
                .set_service_status(*name, ServingStatus::Serving)
                .await;
        }
        self.health
            .set_service_status("", ServingStatus::Serving)
            .await;
        let local = listener.local_addr().ok();
        tracing::info!(addr = ?local, services = ?self.services, "gRPC server listening");
        Server::builder()
            .tls_config(self.tls)
            .map_err(GrpcError::Tls)?
            .timeout(self.limits.request_timeout)
            .concurrency_limit_per_connection(self.limits.concurrency_per_connection)
            .load_shed(true)
            .tcp_nodelay(true)
            .add_routes(self.routes)
            .serve_with_incoming_shutdown(TcpListenerStream::new(listener), shutdown)
            .await
            .map_err(GrpcError::Serve)
    }
}

/// A lazily connecting channel to `address` (`host:port`) that presents our certificate and
/// verifies the server's against our CA and `domain` (defaults to the host part of `address`).
pub fn channel(
    tls: &TlsMaterial,
    address: &str,
    domain: Option<&str>,
) -> Result<Channel, GrpcError> {
    let host = domain.unwrap_or_else(|| host_of(address));
    let endpoint_error = |source| GrpcError::Endpoint {
        endpoint: address.to_owned(),
        source,
    };
    let endpoint = Endpoint::from_shared(format!("https://{address}"))
        .map_err(endpoint_error)?
        .tls_config(tls.tonic_client_tls(host))
        .map_err(endpoint_error)?
        .connect_timeout(Duration::from_secs(5))
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(30))
        .keep_alive_while_idle(true);
    Ok(endpoint.connect_lazy())
}

fn host_of(address: &str) -> &str {
    let host = address
        .rsplit_once(':')
        .map(|(host, _)| host)
        .unwrap_or(address);
    host.trim_start_matches('[').trim_end_matches(']')
}
