//! The REST servers (the registry ports of the proxy and the agents): the one place their
//! connections are accepted, capped, timed out and, when configured, wrapped in TLS.
//!
//! `axum::serve` has no timeouts and no connection cap: a client that opens connections and
//! sends nothing, drips a header, or stops halfway through a body holds a file descriptor
//! (and an upload's open file) for as long as it likes. Here:
//!
//! - at most `max_connections` are open; past it the server stops accepting until one closes;
//! - a TLS handshake must finish within `tls_handshake_timeout`;
//! - a request's headers must arrive within `header_read_timeout`, which also closes an idle
//!   keep-alive HTTP/1.1 connection (hyper starts the clock when it waits for the next head);
//! - a request body that sends nothing for `body_idle_timeout` fails the request (the handler
//!   sees a body error, and the proxy aborts the upload chunk it was writing);
//! - HTTP/2 connections are pinged, and dropped when pings go unanswered.
//!
//! Each handler sees the client's address as `axum::extract::ConnectInfo<SocketAddr>`.

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::ConnectInfo;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio_stream::StreamExt;
use tonic::codegen::Service;
use tower_http::timeout::RequestBodyTimeoutLayer;

use crate::capped::{CappedIncoming, CappedStream};

/// Limits of a REST server. The defaults suit a registry: blobs of many GB stream for as long
/// as bytes move, but nothing may sit idle for long.
#[derive(Debug, Clone)]
pub struct HttpServerLimits {
    /// Open connections at once.
    pub max_connections: usize,
    /// Time a client has to finish the TLS handshake after connecting.
    pub tls_handshake_timeout: Duration,
    /// Time a client has to send a request's headers (and the longest an idle keep-alive
    /// HTTP/1.1 connection is kept).
    pub header_read_timeout: Duration,
    /// Longest pause allowed between two pieces of a request body.
    pub body_idle_timeout: Duration,
    /// Concurrent requests (streams) on one HTTP/2 connection.
    pub max_concurrent_streams: u32,
    /// Requests per second per client IP (bursts of twice as many); `0` is no limit.
    pub requests_per_second_per_client: u32,
}

impl Default for HttpServerLimits {
    fn default() -> Self {
        Self {
            max_connections: 1024,
            tls_handshake_timeout: Duration::from_secs(10),
            header_read_timeout: Duration::from_secs(30),
            body_idle_timeout: Duration::from_secs(60),
            max_concurrent_streams: 128,
            requests_per_second_per_client: 500,
        }
    }
}

impl From<&kraken_config::limits::HttpLimitsConfig> for HttpServerLimits {
    /// A component's `limits.registry` section.
    fn from(config: &kraken_config::limits::HttpLimitsConfig) -> Self {
        Self {
            max_connections: config.max_connections,
            tls_handshake_timeout: config.tls_handshake_timeout,
            header_read_timeout: config.header_read_timeout,
            body_idle_timeout: config.body_idle_timeout,
            max_concurrent_streams: config.max_concurrent_streams,
            requests_per_second_per_client: config.requests_per_second_per_client,
        }
    }
}

/// Why a registry port's certificate could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum HttpTlsError {
    #[error("cannot read {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: no PEM {what} found")]
    Pem { path: PathBuf, what: &'static str },
    #[error("the certificate {cert} and key {key} do not make a usable TLS server")]
    Config {
        cert: PathBuf,
        key: PathBuf,
        #[source]
        source: rustls::Error,
    },
}

/// A server config for a registry port from a PEM certificate chain and key, offering HTTP/2
/// and HTTP/1.1. Clients are Docker, containerd and skopeo, which present no certificate.
pub fn tls_server_config(
    cert: &Path,
    key: &Path,
) -> Result<Arc<rustls::ServerConfig>, HttpTlsError> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};

    let read = |path: &Path| {
        std::fs::read(path).map_err(|source| HttpTlsError::Read {
            path: path.to_owned(),
            source,
        })
    };
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&read(cert)?)
        .collect::<Result<_, _>>()
        .ok()
        .filter(|chain: &Vec<_>| !chain.is_empty())
        .ok_or_else(|| HttpTlsError::Pem {
            path: cert.to_owned(),
            what: "certificate",
        })?;
    let private = PrivateKeyDer::from_pem_slice(&read(key)?).map_err(|_| HttpTlsError::Pem {
        path: key.to_owned(),
        what: "private key",
    })?;
    let config_error = |source| HttpTlsError::Config {
        cert: cert.to_owned(),
        key: key.to_owned(),
        source,
    };
    let mut config = rustls::ServerConfig::builder_with_provider(kraken_tls::crypto_provider())
        .with_safe_default_protocol_versions()
        .map_err(config_error)?
        .with_no_client_auth()
        .with_single_cert(chain, private)
        .map_err(config_error)?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// The server config a `registry_tls:` section asks for: `None` (plain HTTP) when it names no
/// files.
pub fn registry_tls(
    section: &kraken_config::registry_auth::RegistryTlsConfig,
) -> Result<Option<Arc<rustls::ServerConfig>>, HttpTlsError> {
    section
        .files()
        .map(|(cert, key)| tls_server_config(cert, key))
        .transpose()
}

/// Serves `router` on `listener` until `shutdown` completes; then stops accepting and lets
/// requests in flight finish. Run it in a task stopped with [`crate::lifecycle::drain`], which
/// gives them the grace period and then cuts what is left.
///
/// `tls`: a rustls server config (its ALPN list decides between HTTP/2 and HTTP/1.1), or
/// `None` for plain HTTP.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: HttpServerLimits,
    tls: Option<Arc<rustls::ServerConfig>>,
    shutdown: impl Future<Output = ()> + Send,
) -> std::io::Result<()> {
    let router = router.layer(RequestBodyTimeoutLayer::new(limits.body_idle_timeout));
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .keep_alive(true);
    builder
        .http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(Some(Duration::from_secs(30)))
        .keep_alive_timeout(Duration::from_secs(10))
        .max_concurrent_streams(limits.max_concurrent_streams);
    let tls = tls.map(tokio_rustls::TlsAcceptor::from);
    let limiter = ClientLimiter::new(limits.requests_per_second_per_client);
    let graceful = GracefulShutdown::new();
    // Tells connections still waiting for their first byte (before hyper, and so before the
    // graceful watcher, has them) that the server is stopping.
    let stopping = tokio_util::sync::CancellationToken::new();
    let mut connections = JoinSet::new();
    let local = listener.local_addr().ok();
    let mut incoming = CappedIncoming::new(listener, limits.max_connections);
    tracing::info!(addr = ?local, tls = tls.is_some(), "HTTP server listening");

    tokio::pin!(shutdown);
    loop {
        // Reap finished connections so the set does not grow with the server's lifetime.
        while connections.try_join_next().is_some() {}
        if let Some(limiter) = &limiter {
            limiter.forget_idle();
        }
        let accepted = tokio::select! {
            accepted = incoming.next() => accepted,
            () = &mut shutdown => break,
        };
        let stream = match accepted {
            Some(Ok(stream)) => stream,
            Some(Err(error)) => {
                // Per-connection failures (a reset before accept, EMFILE): back off a little
                // rather than spin, and keep serving.
                tracing::warn!(%error, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
            None => break,
        };
        let Ok(remote) = stream.peer_addr() else {
            continue;
        };
        let connection = Connection {
            builder: builder.clone(),
            router: router.clone(),
            remote,
            handshake_timeout: limits.tls_handshake_timeout,
            header_read_timeout: limits.header_read_timeout,
            limiter: limiter.clone(),
        };
        let watcher = graceful.watcher();
        let tls = tls.clone();
        let stopping = stopping.clone();
        // The stream holds its slot until the connection ends.
        connections.spawn(async move { connection.run(stream, tls, watcher, stopping).await });
    }
    drop(incoming);
    stopping.cancel();
    // Ask every connection to finish its requests and close. The caller bounds this with
    // `lifecycle::drain`, whose abort drops the connection set and so cuts the stragglers.
    graceful.shutdown().await;
    while connections.join_next().await.is_some() {}
    Ok(())
}

/// Requests per second per client IP, with bursts of twice as many.
struct ClientLimiter {
    limiter: governor::DefaultKeyedRateLimiter<std::net::IpAddr>,
    per_second: u32,
    /// When idle clients' state was last dropped (at most once a minute).
    swept: std::sync::Mutex<std::time::Instant>,
}

impl ClientLimiter {
    fn new(per_second: u32) -> Option<Arc<Self>> {
        let rate = std::num::NonZeroU32::new(per_second)?;
        let burst = std::num::NonZeroU32::new(per_second.saturating_mul(2)).unwrap_or(rate);
        Some(Arc::new(Self {
            limiter: governor::RateLimiter::keyed(
                governor::Quota::per_second(rate).allow_burst(burst),
            ),
            per_second,
            swept: std::sync::Mutex::new(std::time::Instant::now()),
        }))
    }

    /// The `429` for `client` when it is over its rate, `None` when the request may go on.
    fn refuse(&self, client: std::net::IpAddr) -> Option<axum::response::Response> {
        if self.limiter.check_key(&client).is_ok() {
            return None;
        }
        metrics::counter!(RATE_LIMITED).increment(1);
        tracing::debug!(%client, "request over the per-client rate limit");
        // The registry error format (the distribution spec's), written out: this layer sits
        // below the crates that know it.
        let body = format!(
            "{{\"errors\":[{{\"code\":\"TOOMANYREQUESTS\",\"message\":\"more than {} \
             requests per second from this client\"}}]}}",
            self.per_second
        );
        axum::response::Response::builder()
            .status(axum::http::StatusCode::TOO_MANY_REQUESTS)
            .header(axum::http::header::CONTENT_TYPE, "application/json")
            .header(axum::http::header::RETRY_AFTER, "1")
            .body(axum::body::Body::from(body))
            .ok()
    }

    /// Drops the state of clients that have been quiet, so memory follows the active clients
    /// rather than every address ever seen.
    fn forget_idle(&self) {
        let mut swept = kraken_core::sync::lock(&self.swept);
        if swept.elapsed() >= Duration::from_secs(60) {
            self.limiter.retain_recent();
            self.limiter.shrink_to_fit();
            *swept = std::time::Instant::now();
        }
    }
}

/// Counter of requests refused by the per-client rate limit.
pub const RATE_LIMITED: &str = "kraken_http_rate_limited_total";

/// One accepted connection and what it needs to be served.
struct Connection {
    builder: auto::Builder<TokioExecutor>,
    router: Router,
    remote: SocketAddr,
    handshake_timeout: Duration,
    header_read_timeout: Duration,
    limiter: Option<Arc<ClientLimiter>>,
}

impl Connection {
    async fn run(
        self,
        stream: CappedStream,
        tls: Option<tokio_rustls::TlsAcceptor>,
        watcher: hyper_util::server::graceful::Watcher,
        stopping: tokio_util::sync::CancellationToken,
    ) {
        let Connection {
            builder,
            router,
            remote,
            handshake_timeout,
            header_read_timeout,
            limiter,
        } = self;
        let service = hyper::service::service_fn(move |mut request| {
            request.extensions_mut().insert(ConnectInfo(remote));
            let refused = limiter
                .as_ref()
                .and_then(|limiter| limiter.refuse(remote.ip()));
            let mut router = router.clone();
            async move {
                match refused {
                    Some(response) => Ok(response),
                    None => router.call(request).await,
                }
            }
        });
        let result = match tls {
            None => {
                // hyper-util reads the first bytes to tell HTTP/1.1 from HTTP/2 with no
                // timeout of its own: a client that connects and says nothing would sit there
                // forever. It gets the header timeout to say something.
                // A connection still silent when the server stops is closed at once: the
                // graceful shutdown below only reaches connections hyper already serves.
                let mut first = [0u8; 1];
                let peeked = tokio::select! {
                    peeked = tokio::time::timeout(header_read_timeout, stream.peek(&mut first)) => peeked,
                    () = stopping.cancelled() => {
                        tracing::debug!(%remote, "server stopping; closing a connection that sent nothing");
                        return;
                    }
                };
                match peeked {
                    Ok(Ok(n)) if n > 0 => {}
                    _ => {
                        tracing::debug!(%remote, "closing a connection that sent nothing");
                        return;
                    }
                }
                let connection = builder.serve_connection(TokioIo::new(stream), service);
                watcher.watch(connection).await
            }
            Some(acceptor) => {
                let handshake = tokio::select! {
                    handshake = tokio::time::timeout(handshake_timeout, acceptor.accept(stream)) => handshake,
                    () = stopping.cancelled() => {
                        tracing::debug!(%remote, "server stopping; dropping a TLS handshake");
                        return;
                    }
                };
                let stream = match handshake {
                    Ok(Ok(stream)) => stream,
                    Ok(Err(error)) => {
                        tracing::debug!(%remote, %error, "TLS handshake failed");
                        return;
                    }
                    Err(_) => {
                        tracing::debug!(%remote, "TLS handshake timed out");
                        return;
                    }
                };
                // ALPN already chose the protocol; skipping detection also means a client
                // silent after its handshake meets HTTP/1.1's header timeout.
                let builder = if stream.get_ref().1.alpn_protocol() == Some(b"h2") {
                    builder.http2_only()
                } else {
                    builder.http1_only()
                };
                let connection = builder.serve_connection(TokioIo::new(stream), service);
                watcher.watch(connection).await
            }
        };
        if let Err(error) = result {
            // Timeouts and clients going away mid-request end up here; they are routine.
            tracing::debug!(%remote, error = %error, "HTTP connection ended with an error");
        }
    }
}
