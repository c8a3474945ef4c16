//! The `/metrics` endpoint spoken to over real HTTP/1.1 on an ephemeral port.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use kraken_telemetry::{
    PROMETHEUS_CONTENT_TYPE, ShutdownSignal, install_metrics_recorder, metrics_server_limits,
    run_metrics_server, serve_metrics,
};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};

/// A parsed HTTP response: status code, lower-cased headers, body.
struct Response {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Response {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

async fn http_get(addr: SocketAddr, path: &str) -> anyhow::Result<Response> {
    let mut stream = TcpStream::connect(addr).await?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await?;
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut raw)).await??;
    let raw = String::from_utf8(raw)?;
    let (head, body) = raw
        .split_once("\r\n\r\n")
        .ok_or_else(|| anyhow::anyhow!("no header terminator in {raw:?}"))?;
    let mut lines = head.lines();
    let status_line = lines.next().unwrap_or_default();
    let status = status_line
        .split_whitespace()
        .nth(1)
        .ok_or_else(|| anyhow::anyhow!("bad status line {status_line:?}"))?
        .parse()?;
    let headers = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    Ok(Response {
        status,
        headers,
        body: body.to_owned(),
    })
}

/// The value of the sample line that starts with `series ` (name plus labels).
fn sample(body: &str, series: &str) -> Option<f64> {
    body.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|value| value.trim().parse().ok())
}

#[tokio::test]
async fn serves_counters_and_histograms_in_prometheus_text_format() -> anyhow::Result<()> {
    let handle = install_metrics_recorder();
    let shutdown = ShutdownSignal::new();
    let addr = serve_metrics(
        "127.0.0.1:0".parse()?,
        handle,
        shutdown.clone().wait_owned(),
    )
    .await?;
    assert_ne!(addr.port(), 0);

    metrics::counter!("kraken_test_requests_total", "result" => "hit").increment(3);
    metrics::histogram!("kraken_test_fetch_seconds").record(0.003);
    metrics::histogram!("kraken_test_blob_bytes").record(5_000_000.0);

    let response = http_get(addr, "/metrics").await?;
    assert_eq!(response.status, 200);
    assert_eq!(
        response.header("content-type"),
        Some(PROMETHEUS_CONTENT_TYPE)
    );
    let body = &response.body;
    assert_eq!(
        sample(body, "kraken_test_requests_total{result=\"hit\"}"),
        Some(3.0),
        "{body}"
    );
    // `_seconds` and `_bytes` histograms get real buckets, not summaries.
    assert_eq!(
        sample(body, "kraken_test_fetch_seconds_bucket{le=\"0.0025\"}"),
        Some(0.0)
    );
    assert_eq!(
        sample(body, "kraken_test_fetch_seconds_bucket{le=\"0.005\"}"),
        Some(1.0)
    );
    assert_eq!(sample(body, "kraken_test_fetch_seconds_count"), Some(1.0));
    assert_eq!(
        sample(body, "kraken_test_blob_bytes_bucket{le=\"4194304\"}"),
        Some(0.0)
    );
    assert_eq!(
        sample(body, "kraken_test_blob_bytes_bucket{le=\"16777216\"}"),
        Some(1.0)
    );

    metrics::counter!("kraken_test_requests_total", "result" => "hit").increment(1);
    let body = http_get(addr, "/metrics").await?.body;
    assert_eq!(
        sample(&body, "kraken_test_requests_total{result=\"hit\"}"),
        Some(4.0)
    );

    assert_eq!(http_get(addr, "/nope").await?.status, 404);
    shutdown.trigger();
    Ok(())
}

#[tokio::test]
async fn installing_twice_returns_a_working_handle() {
    let first = install_metrics_recorder();
    let second = install_metrics_recorder();
    metrics::counter!("kraken_test_twice_total").increment(2);
    for handle in [&first, &second] {
        assert_eq!(
            sample(&handle.render(), "kraken_test_twice_total"),
            Some(2.0)
        );
    }
}

#[tokio::test]
async fn shutdown_stops_the_server() -> anyhow::Result<()> {
    let handle = install_metrics_recorder();

    // The spawned form: after the trigger the port stops accepting.
    let shutdown = ShutdownSignal::new();
    let addr = serve_metrics(
        "127.0.0.1:0".parse()?,
        handle.clone(),
        shutdown.clone().wait_owned(),
    )
    .await?;
    assert_eq!(http_get(addr, "/metrics").await?.status, 200);
    shutdown.trigger();
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(addr).await.is_ok() {
        assert!(
            Instant::now() < deadline,
            "metrics server still accepting after shutdown"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // The `run(listener, shutdown)` form: the future itself completes.
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let shutdown = ShutdownSignal::new();
    let server = tokio::spawn(run_metrics_server(
        listener,
        handle,
        metrics_server_limits(),
        shutdown.clone().wait_owned(),
    ));
    assert_eq!(http_get(addr, "/metrics").await?.status, 200);
    shutdown.trigger();
    tokio::time::timeout(Duration::from_secs(10), server).await???;
    let closed = TcpStream::connect(addr).await.map(drop);
    assert!(
        closed
            .as_ref()
            .is_err_and(|e| e.kind() == std::io::ErrorKind::ConnectionRefused),
        "the port is closed after shutdown: {closed:?}"
    );
    Ok(())
}

#[tokio::test]
async fn bind_failure_names_the_address() -> anyhow::Result<()> {
    let taken = TcpListener::bind("127.0.0.1:0").await?;
    let addr = taken.local_addr()?;
    let err = serve_metrics(addr, install_metrics_recorder(), std::future::pending())
        .await
        .unwrap_err();
    assert!(err.to_string().contains(&addr.to_string()), "{err}");
    Ok(())
}
