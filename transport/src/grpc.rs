//! gRPC servers and client channels with mutual TLS.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use kraken_tls::{Role, ServerCheck, TlsMaterial, TrustDomains};
use rustls_pki_types::ServerName;
use std::convert::Infallible;
use tokio::net::{TcpListener, TcpStream};

use tonic::codegen::{Service, http};
use tonic::server::NamedService;
use tonic::service::Routes;
use tonic::transport::{Endpoint, Server, Uri};
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;

use crate::access::AccessLayer;
use crate::capped::CappedIncoming;
use crate::observe::{ObserveLayer, ObservedChannel};

/// Limits applied to every server.
#[derive(Debug, Clone)]
pub struct GrpcServerLimits {
    /// Time to produce a response (for streams: until the stream starts).
    pub request_timeout: Duration,
    /// Concurrent requests per client connection; beyond it, requests are shed with
    /// `UNAVAILABLE` rather than queued without bound.
    pub concurrency_per_connection: usize,
    /// Open connections at once; past it the server stops accepting until one closes, so a
    /// flood of idle connections cannot exhaust file descriptors.
    pub max_connections: usize,
    /// Time a client has to finish the TLS handshake after connecting.
    pub tls_handshake_timeout: Duration,
    /// A connection silent to HTTP/2 pings for this long (after one every
    /// `keepalive_interval`) is closed: a vanished client does not hold its slot.
    pub keepalive_interval: Duration,
    pub keepalive_timeout: Duration,
    /// Connections are closed gracefully after this age, so even a busy long-lived client
    /// releases its slot now and then and load spreads after a server joins.
    pub max_connection_age: Duration,
}

impl Default for GrpcServerLimits {
    fn default() -> Self {
        Self {
            request_timeout: Duration::from_secs(30),
            concurrency_per_connection: 256,
            max_connections: 4096,
            tls_handshake_timeout: Duration::from_secs(10),
            keepalive_interval: Duration::from_secs(30),
            keepalive_timeout: Duration::from_secs(10),
            max_connection_age: Duration::from_secs(30 * 60),
        }
    }
}

impl<D> From<&kraken_config::limits::GrpcLimitsConfig<D>> for GrpcServerLimits {
    /// A component's `limits.grpc` section.
    fn from(config: &kraken_config::limits::GrpcLimitsConfig<D>) -> Self {
        Self {
            request_timeout: config.request_timeout,
            concurrency_per_connection: config.concurrency_per_connection,
            max_connections: config.max_connections,
            tls_handshake_timeout: config.tls_handshake_timeout,
            keepalive_interval: config.keepalive_interval,
            keepalive_timeout: config.keepalive_timeout,
            max_connection_age: config.max_connection_age,
        }
    }
}

/// Why a server could not start or stopped.
#[derive(Debug, thiserror::Error)]
pub enum GrpcError {
    #[error("invalid TLS configuration for the gRPC server")]
    Tls(#[source] tonic::transport::Error),
    #[error("building the gRPC server's TLS configuration")]
    ServerTls(#[source] Box<kraken_tls::TlsError>),
    #[error("building the reflection service")]
    Reflection(#[source] tonic_reflection::server::Error),
    #[error("gRPC server failed")]
    Serve(#[source] tonic::transport::Error),
    #[error("`{name}` (for `{endpoint}`) is not a valid TLS server name")]
    ServerName { endpoint: String, name: String },
    #[error("building the TLS client for `{endpoint}`")]
    ClientTls {
        endpoint: String,
        #[source]
        source: Box<kraken_tls::TlsError>,
    },
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
    domains: Arc<TrustDomains>,
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
        Self::with_trust(tls, TrustDomains::local_only(tls), limits)
    }

    /// As [`GrpcServer::new`], also accepting client certificates from the remote clusters'
    /// CAs in `domains` (built from `tls`), whose holders may call only
    /// [`crate::access::FOREIGN_ACCESS`].
    pub fn with_trust(
        tls: &TlsMaterial,
        domains: TrustDomains,
        limits: GrpcServerLimits,
    ) -> Result<Self, GrpcError> {
        let (health, health_service) = tonic_health::server::health_reporter();
        let routes = kraken_proto::reflection_routes()
            .map_err(GrpcError::Reflection)?
            .add_service(health_service);
        Ok(Self {
            routes,
            health,
            services: Vec::new(),
            tls: tls
                .tonic_server_tls_with(&domains)
                .map_err(|e| GrpcError::ServerTls(Box::new(e)))?
                .timeout(limits.tls_handshake_timeout),
            domains: Arc::new(domains),
            limits,
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
        let limits = &self.limits;
        let incoming = CappedIncoming::new(listener, limits.max_connections);
        Server::builder()
            .tls_config(self.tls)
            .map_err(GrpcError::Tls)?
            .timeout(limits.request_timeout)
            .concurrency_limit_per_connection(limits.concurrency_per_connection)
            .load_shed(true)
            .http2_keepalive_interval(Some(limits.keepalive_interval))
            .http2_keepalive_timeout(Some(limits.keepalive_timeout))
            .max_connection_age(limits.max_connection_age)
            // Outermost, so refusals are traced and counted like any other answer.
            .layer(ObserveLayer)
            .layer(AccessLayer::new(Arc::clone(&self.domains)))
            .add_routes(self.routes)
            .serve_with_incoming_shutdown(incoming, shutdown)
            .await
            .map_err(GrpcError::Serve)
    }
}

/// A lazily connecting channel to `address` (`host:port`) that presents our certificate and
/// verifies the server's against our CA, `domain` (defaults to the host part of `address`)
/// and `server`: a server whose certificate carries another role is refused, so holding any
/// cluster certificate is not enough to pose as the tracker or an origin.
pub fn channel(
    tls: &TlsMaterial,
    address: &str,
    domain: Option<&str>,
    server: Role,
) -> Result<ObservedChannel, GrpcError> {
    let host = domain.unwrap_or_else(|| host_of(address));
    let endpoint_error = |source| GrpcError::Endpoint {
        endpoint: address.to_owned(),
        source,
    };
    let server_name = ServerName::try_from(host.to_owned()).map_err(|_| GrpcError::ServerName {
        endpoint: address.to_owned(),
        name: host.to_owned(),
    })?;
    let config = tls
        .client_config(&[ALPN_H2], ServerCheck::HostnameAndRole(&[server]))
        .map_err(|source| GrpcError::ClientTls {
            endpoint: address.to_owned(),
            source: Box::new(source),
        })?;
    let connector = MtlsConnector {
        tls: tokio_rustls::TlsConnector::from(Arc::new(config)),
        server_name,
    };
    // The scheme is `http` because the connector, not tonic, does TLS (tonic's own TLS
    // cannot check the server's role); nothing leaves the connector unencrypted.
    let endpoint = Endpoint::from_shared(format!("http://{address}"))
        .map_err(endpoint_error)?
        .connect_timeout(Duration::from_secs(5))
        .http2_keep_alive_interval(Duration::from_secs(30))
        .keep_alive_while_idle(true);
    Ok(ObservedChannel::new(
        endpoint.connect_with_connector_lazy(connector),
    ))
}

/// HTTP/2's ALPN id: tonic servers expect it.
const ALPN_H2: &[u8] = b"h2";

/// Dials TCP and runs our rustls client handshake (role-checking verifier included).
#[derive(Clone)]
struct MtlsConnector {
    tls: tokio_rustls::TlsConnector,
    server_name: ServerName<'static>,
}

type Connecting = Pin<
    Box<
        dyn Future<
                Output = std::io::Result<
                    hyper_util::rt::TokioIo<tokio_rustls::client::TlsStream<TcpStream>>,
                >,
            > + Send,
    >,
>;

impl Service<Uri> for MtlsConnector {
    type Response = hyper_util::rt::TokioIo<tokio_rustls::client::TlsStream<TcpStream>>;
    type Error = std::io::Error;
    type Future = Connecting;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let tls = self.tls.clone();
        let server_name = self.server_name.clone();
        Box::pin(async move {
            let host = uri.host().unwrap_or_default();
            let host = host
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_owned();
            let port = uri.port_u16().unwrap_or(443);
            let tcp = TcpStream::connect((host.as_str(), port)).await?;
            tcp.set_nodelay(true)?;
            let stream = tls.connect(server_name, tcp).await?;
            Ok(hyper_util::rt::TokioIo::new(stream))
        })
    }
}

/// The host part of `host:port`, without the brackets of an IPv6 literal.
pub fn host_of(address: &str) -> &str {
    let host = address
        .rsplit_once(':')
        .map(|(host, _)| host)
        .unwrap_or(address);
    host.trim_start_matches('[').trim_end_matches(']')
}
