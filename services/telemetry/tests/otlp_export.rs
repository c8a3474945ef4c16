//! Spans reach an OTLP/gRPC collector with the component's `service.name`, and trace context
//! crosses HTTP headers. Its own test binary: `init` installs process-wide state.

use std::time::Duration;

use axum::http::HeaderMap;
use kraken_telemetry::{
    LogConfig, TracingConfig, init, inject_trace_context, set_parent_from_headers,
};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use tokio::sync::mpsc;
use tonic::transport::server::TcpIncoming;

/// Records every export request it receives.
struct FakeCollector(mpsc::UnboundedSender<ExportTraceServiceRequest>);

#[tonic::async_trait]
impl TraceService for FakeCollector {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let _ = self.0.send(request.into_inner());
        Ok(tonic::Response::new(ExportTraceServiceResponse {
            partial_success: None,
        }))
    }
}

#[tokio::test]
async fn spans_reach_the_collector_with_service_name() -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let (tx, mut rx) = mpsc::unbounded_channel();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(FakeCollector(tx)))
            .serve_with_incoming(TcpIncoming::from(listener)),
    );

    let tracing_config = TracingConfig {
        otlp_endpoint: Some(format!("http://{addr}")),
        ..TracingConfig::default()
    };
    let guard = init("tracker", &LogConfig::default(), &tracing_config)?;

    // An incoming request carrying a W3C trace context: our span joins that trace.
    let remote_trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let mut incoming = HeaderMap::new();
    incoming.insert(
        "traceparent",
        format!("00-{remote_trace_id}-00f067aa0ba902b7-01").parse()?,
    );
    let announce = tracing::info_span!("announce", peers = 3);
    set_parent_from_headers(&announce, &incoming);
    let mut outgoing = HeaderMap::new();
    {
        let _entered = announce.enter();
        tracing::info_span!("pick_peers").in_scope(|| {
            inject_trace_context(&tracing::Span::current(), &mut outgoing);
        });
    }
    drop(announce);
    let traceparent = outgoing
        .get("traceparent")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    assert!(
        traceparent.contains(remote_trace_id),
        "outgoing traceparent {traceparent:?}"
    );

    // Shut down off the runtime: it blocks while the last batch goes out, and the collector
    // answering it runs on this runtime.
    tokio::task::spawn_blocking(move || guard.shutdown()).await??;

    let mut names = Vec::new();
    let mut service_names = Vec::new();
    while let Ok(Some(request)) = tokio::time::timeout(Duration::from_millis(200), rx.recv()).await
    {
        for resource_spans in request.resource_spans {
            for attr in resource_spans.resource.iter().flat_map(|r| &r.attributes) {
                if attr.key == "service.name"
                    && let Some(Value::StringValue(name)) =
                        attr.value.as_ref().and_then(|v| v.value.as_ref())
                {
                    service_names.push(name.clone());
                }
            }
            for scope_spans in resource_spans.scope_spans {
                for span in scope_spans.spans {
                    assert_eq!(hex(&span.trace_id), remote_trace_id, "span {}", span.name);
                    names.push(span.name);
                }
            }
        }
    }
    names.sort();
    assert_eq!(names, ["announce", "pick_peers"]);
    assert!(!service_names.is_empty());
    assert!(
        service_names.iter().all(|n| n == "kraken-tracker"),
        "{service_names:?}"
    );
    Ok(())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
