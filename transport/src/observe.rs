//! One tower layer that makes every gRPC call visible, on both ends of the wire.
//!
//! - **Traces.** A client call opens a `grpc` span of kind `client` and writes its W3C trace
//!   context (`traceparent`, `tracestate`) into the request's metadata; the server opens a
//!   `grpc` span of kind `server` that continues that trace. So one pull is one trace: agent →
//!   tracker → origin → backend, however many processes it crosses. Without an OpenTelemetry
//!   layer installed (no `tracing.otlp_endpoint`) the spans are plain `tracing` spans and
//!   nothing is propagated.
//! - **Per-RPC metrics.** Every call is counted by method and final gRPC status code, and its
//!   latency (until the response's last byte) goes into a histogram:
//!   `kraken_grpc_{server,client}_handled_total{service, method, code}` and
//!   `kraken_grpc_{server,client}_handling_seconds{service, method}`.
//!
//! Servers get it from [`crate::grpc::GrpcServer`]; clients from [`crate::grpc::channel`],
//! which returns an [`ObservedChannel`]. Labels are bounded: a path that is not in the role
//! table ([`crate::access::ACCESS`]) is counted as `unknown`, so a stranger's made-up paths
//! cannot grow the metric set.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue};
use http_body::{Body, Frame, SizeHint};
use opentelemetry::propagation::{Extractor, Injector};
use tonic::codegen::{Service, http};
use tracing::Instrument as _;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

/// Counter of finished calls a server handled. Labels: `service`, `method`, `code`.
pub const SERVER_HANDLED: &str = "kraken_grpc_server_handled_total";
/// Histogram of a server's call latency, first byte in to last byte out. Labels: `service`,
/// `method`.
pub const SERVER_SECONDS: &str = "kraken_grpc_server_handling_seconds";
/// Counter of finished calls a client made. Labels: `service`, `method`, `code`.
pub const CLIENT_HANDLED: &str = "kraken_grpc_client_handled_total";
/// Histogram of a client's call latency, request out to the response's last byte. Labels:
/// `service`, `method`.
pub const CLIENT_SECONDS: &str = "kraken_grpc_client_handling_seconds";

/// gRPC health's service name.
const HEALTH_SERVICE: &str = "grpc.health.v1.Health";

/// Writes `span`'s trace context (`traceparent`, `tracestate`) into outgoing headers.
pub fn inject_trace_context(span: &tracing::Span, headers: &mut HeaderMap) {
    let context = span.context();
    opentelemetry::global::get_text_map_propagator(|propagator| {
        propagator.inject_context(&context, &mut HeaderInjector(headers));
    });
}

/// Makes `span` a child of the trace context carried by incoming headers, if any. Call it
/// before the span is first entered.
pub fn set_parent_from_headers(span: &tracing::Span, headers: &HeaderMap) {
    let parent = opentelemetry::global::get_text_map_propagator(|propagator| {
        propagator.extract(&HeaderExtractor(headers))
    });
    // Fails only when no OpenTelemetry layer is installed (export disabled) or the span already
    // started; either way there is no trace to join.
    let _ = span.set_parent(parent);
}

/// Which end of a call is observed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Side {
    Server,
    Client,
}

impl Side {
    fn metrics(self) -> (&'static str, &'static str) {
        match self {
            Side::Server => (SERVER_HANDLED, SERVER_SECONDS),
            Side::Client => (CLIENT_HANDLED, CLIENT_SECONDS),
        }
    }
}

/// The bounded `service` and `method` labels of a request path.
fn labels(path: &str) -> (&'static str, &'static str) {
    crate::access::ACCESS
        .iter()
        .find(|(known, _)| *known == path)
        .and_then(|(known, _)| known.strip_prefix('/')?.split_once('/'))
        .unwrap_or(("unknown", "unknown"))
}

/// The span of one call, named after its path for trace viewers. Health probes get none: they
/// run every few seconds between every pair of components and would bury the traces of real
/// work (they are still counted).
fn call_span(side: Side, service: &'static str, method: &'static str) -> tracing::Span {
    if service == HEALTH_SERVICE {
        return tracing::Span::none();
    }
    let kind = match side {
        Side::Server => "server",
        Side::Client => "client",
    };
    tracing::info_span!(
        "grpc",
        otel.name = format!("{service}/{method}"),
        otel.kind = kind,
        rpc.system = "grpc",
        rpc.service = service,
        rpc.method = method,
        rpc.grpc.status_code = tracing::field::Empty,
    )
}

/// The `grpc-status` in `headers`, if any; a value that is not a number counts as `UNKNOWN`.
fn grpc_status(headers: &HeaderMap) -> Option<tonic::Code> {
    let value = headers.get("grpc-status")?;
    let code = value
        .to_str()
        .ok()
        .and_then(|s| s.parse::<i32>().ok())
        .map_or(tonic::Code::Unknown, tonic::Code::from_i32);
    Some(code)
}

/// The `code` label: gRPC's own spelling (`OK`, `NotFound`, `Unavailable`, …).
fn code_label(code: tonic::Code) -> &'static str {
    use tonic::Code;
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "Canceled",
        Code::Unknown => "Unknown",
        Code::InvalidArgument => "InvalidArgument",
        Code::DeadlineExceeded => "DeadlineExceeded",
        Code::NotFound => "NotFound",
        Code::AlreadyExists => "AlreadyExists",
        Code::PermissionDenied => "PermissionDenied",
        Code::ResourceExhausted => "ResourceExhausted",
        Code::FailedPrecondition => "FailedPrecondition",
        Code::Aborted => "Aborted",
        Code::OutOfRange => "OutOfRange",
        Code::Unimplemented => "Unimplemented",
        Code::Internal => "Internal",
        Code::Unavailable => "Unavailable",
        Code::DataLoss => "DataLoss",
        Code::Unauthenticated => "Unauthenticated",
    }
}

/// One call in flight: records its outcome exactly once, when the status is known or, failing
/// that, when the call is dropped (the peer went away: `Canceled`).
struct Call {
    side: Side,
    service: &'static str,
    method: &'static str,
    started: Instant,
    span: tracing::Span,
    recorded: bool,
}

impl Call {
    fn finish(&mut self, code: tonic::Code) {
        if std::mem::replace(&mut self.recorded, true) {
            return;
        }
        let (handled, seconds) = self.side.metrics();
        let label = code_label(code);
        self.span.record("rpc.grpc.status_code", code as i32);
        metrics::counter!(handled, "service" => self.service, "method" => self.method, "code" => label)
            .increment(1);
        metrics::histogram!(seconds, "service" => self.service, "method" => self.method)
            .record(self.started.elapsed().as_secs_f64());
    }
}

impl Drop for Call {
    fn drop(&mut self) {
        self.finish(tonic::Code::Cancelled);
    }
}

/// A response body that reports the call's status from its trailers (or its end) and keeps
/// the call's span open until the last frame.
struct ObservedBody {
    inner: tonic::body::Body,
    call: Call,
}

impl Body for ObservedBody {
    type Data = Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(code) = frame.trailers_ref().and_then(grpc_status) {
                    this.call.finish(code);
                }
            }
            Poll::Ready(Some(Err(status))) => this.call.finish(status.code()),
            // A body that ends without trailers carried no status: the call broke off.
            Poll::Ready(None) => this.call.finish(tonic::Code::Unknown),
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Wraps a response: a trailers-only response (how errors usually travel) is recorded now,
/// anything else when its body ends.
fn observe_response(
    response: http::Response<tonic::body::Body>,
    mut call: Call,
) -> http::Response<tonic::body::Body> {
    if let Some(code) = grpc_status(response.headers()) {
        call.finish(code);
        return response;
    }
    response.map(|inner| tonic::body::Body::new(ObservedBody { inner, call }))
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

/// The server half: [`crate::grpc::GrpcServer`] stacks it outside every service.
#[derive(Debug, Clone, Copy, Default)]
pub struct ObserveLayer;

impl<S> tower_layer::Layer<S> for ObserveLayer {
    type Service = ObservedServer<S>;

    fn layer(&self, inner: S) -> Self::Service {
        ObservedServer { inner }
    }
}

/// A server service whose calls are traced and counted.
#[derive(Debug, Clone)]
pub struct ObservedServer<S> {
    inner: S,
}

impl<S, B> Service<http::Request<B>> for ObservedServer<S>
where
    S: Service<http::Request<B>, Response = http::Response<tonic::body::Body>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let (service, method) = labels(request.uri().path());
        let span = call_span(Side::Server, service, method);
        set_parent_from_headers(&span, request.headers());
        let call = Call {
            side: Side::Server,
            service,
            method,
            started: Instant::now(),
            span: span.clone(),
            recorded: false,
        };
        let response = span.in_scope(|| self.inner.call(request));
        Box::pin(
            async move {
                let response = response.await?;
                Ok(observe_response(response, call))
            }
            .instrument(span),
        )
    }
}

/// A client channel whose calls are traced (trace context sent along) and counted. What
/// [`crate::grpc::channel`] returns; generated clients take it in place of a bare
/// [`tonic::transport::Channel`].
#[derive(Debug, Clone)]
pub struct ObservedChannel {
    inner: tonic::transport::Channel,
}

impl ObservedChannel {
    /// Observes the calls made over `inner`.
    pub fn new(inner: tonic::transport::Channel) -> Self {
        Self { inner }
    }
}

impl Service<http::Request<tonic::body::Body>> for ObservedChannel {
    type Response = http::Response<tonic::body::Body>;
    type Error = tonic::transport::Error;
    type Future = BoxFuture<Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<tonic::body::Body>) -> Self::Future {
        let (service, method) = labels(request.uri().path());
        let span = call_span(Side::Client, service, method);
        inject_trace_context(&span, request.headers_mut());
        let mut call = Call {
            side: Side::Client,
            service,
            method,
            started: Instant::now(),
            span: span.clone(),
            recorded: false,
        };
        let response = self.inner.call(request);
        Box::pin(
            async move {
                match response.await {
                    Ok(response) => Ok(observe_response(response, call)),
                    Err(error) => {
                        // Never reached the server (refused, TLS, reset): tonic reports it
                        // as UNAVAILABLE to the caller, and so do we.
                        call.finish(tonic::Code::Unavailable);
                        Err(error)
                    }
                }
            }
            .instrument(span),
        )
    }
}

struct HeaderInjector<'a>(&'a mut HeaderMap);

impl Injector for HeaderInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(key.as_bytes()),
            HeaderValue::from_str(&value),
        ) {
            self.0.insert(name, value);
        }
    }
}

struct HeaderExtractor<'a>(&'a HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|value| value.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(HeaderName::as_str).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_in_the_role_table_are_labelled_by_service_and_method() {
        assert_eq!(
            labels("/kraken.origin.v1.BlobService/GetMetaInfo"),
            ("kraken.origin.v1.BlobService", "GetMetaInfo")
        );
        assert_eq!(
            labels("/grpc.health.v1.Health/Check"),
            ("grpc.health.v1.Health", "Check")
        );
    }

    #[test]
    fn a_made_up_path_is_one_unknown_label() {
        for path in ["/evil.Service/Method", "/", "", "no-slash", "/a/b/c"] {
            assert_eq!(labels(path), ("unknown", "unknown"), "{path:?}");
        }
    }

    #[test]
    fn grpc_status_is_read_from_headers_and_garbage_is_unknown() {
        let mut headers = HeaderMap::new();
        assert_eq!(grpc_status(&headers), None);
        headers.insert("grpc-status", HeaderValue::from_static("5"));
        assert_eq!(grpc_status(&headers), Some(tonic::Code::NotFound));
        headers.insert("grpc-status", HeaderValue::from_static("not-a-number"));
        assert_eq!(grpc_status(&headers), Some(tonic::Code::Unknown));
        assert_eq!(code_label(tonic::Code::Ok), "OK");
        assert_eq!(code_label(tonic::Code::Unavailable), "Unavailable");
    }
}
