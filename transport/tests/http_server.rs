//! The REST server shell: slow clients are cut off, connections are capped, and TLS works.
//!
//! No test here measures time: each waits (with a generous bound, so a regression fails
//! instead of hanging) for the server to close a connection it should close.

// Test helpers outside `#[test]` functions: a panic there is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::ConnectInfo;
use axum::routing::{get, put};
use kraken_transport::http::{HttpServerLimits, serve};
use rustls_pki_types::pem::PemObject;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// How long a test waits for something the server must do within a sub-second limit.
const BOUND: Duration = Duration::from_secs(30);

struct Server {
    addr: SocketAddr,
    stop: tokio_util::sync::CancellationToken,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl Server {
    async fn start(limits: HttpServerLimits, tls: Option<Arc<rustls::ServerConfig>>) -> Self {
        let app = Router::new()
            .route(
                "/who",
                get(|ConnectInfo(peer): ConnectInfo<SocketAddr>| async move { peer.to_string() }),
            )
            .route(
                "/upload",
                put(|body: Bytes| async move { format!("{} bytes", body.len()) }),
            );
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let stop = tokio_util::sync::CancellationToken::new();
        let task = tokio::spawn(serve(
            listener,
            app,
            limits,
            tls,
            stop.clone().cancelled_owned(),
        ));
        Self { addr, stop, task }
    }

    async fn shut_down(self) {
        self.stop.cancel();
        tokio::time::timeout(BOUND, self.task)
            .await
            .unwrap()
            .unwrap()
            .unwrap();
    }
}

/// Reads until the server closes the connection; returns what it sent. Panics if it does not
/// close within [`BOUND`].
async fn read_until_closed(stream: &mut TcpStream) -> String {
    let mut all = Vec::new();
    tokio::time::timeout(BOUND, async {
        let mut buf = [0u8; 4096];
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => all.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await
    .expect("the server never closed the connection");
    String::from_utf8_lossy(&all).into_owned()
}

fn short(limits: impl FnOnce(&mut HttpServerLimits)) -> HttpServerLimits {
    let mut l = HttpServerLimits {
        header_read_timeout: Duration::from_millis(300),
        body_idle_timeout: Duration::from_millis(300),
        tls_handshake_timeout: Duration::from_millis(300),
        ..HttpServerLimits::default()
    };
    limits(&mut l);
    l
}

#[tokio::test]
async fn a_request_is_served_with_the_client_address() {
    let server = Server::start(HttpServerLimits::default(), None).await;
    let mut stream = TcpStream::connect(server.addr).await.unwrap();
    let local = stream.local_addr().unwrap();
    stream
        .write_all(b"GET /who HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
        .await
        .unwrap();
    let response = read_until_closed(&mut stream).await;
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert!(response.ends_with(&local.to_string()), "{response}");
    server.shut_down().await;
}

#[tokio::test]
async fn slow_headers_and_idle_connections_are_closed() {
    let server = Server::start(short(|_| {}), None).await;
    // Never sends a byte.
    let mut idle = TcpStream::connect(server.addr).await.unwrap();
    // Drips half a request line and stops.
    let mut loris = TcpStream::connect(server.addr).await.unwrap();
    loris.write_all(b"GET /who HT").await.unwrap();
    // Makes one request on a keep-alive connection, then goes quiet.
    let mut kept = TcpStream::connect(server.addr).await.unwrap();
    kept.write_all(b"GET /who HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(read_until_closed(&mut idle).await, "");
    let answer = read_until_closed(&mut kept).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let answer = read_until_closed(&mut loris).await;
    assert!(
        answer.is_empty() || answer.starts_with("HTTP/1.1 408"),
        "{answer}"
    );
    server.shut_down().await;
}

#[tokio::test]
async fn a_body_that_stops_fails_its_request_and_frees_the_connection() {
    let server = Server::start(short(|_| {}), None).await;
    let mut stream = TcpStream::connect(server.addr).await.unwrap();
    // 11 of the 100 bytes announced, then silence.
    stream
        .write_all(b"PUT /upload HTTP/1.1\r\nhost: x\r\ncontent-length: 100\r\n\r\nhello world")
        .await
        .unwrap();
    let answer = read_until_closed(&mut stream).await;
    assert!(!answer.contains("100 bytes"), "{answer}");
    // A body that keeps coming is fine, however slowly it starts.
    let mut stream = TcpStream::connect(server.addr).await.unwrap();
    stream
        .write_all(
            b"PUT /upload HTTP/1.1\r\nhost: x\r\ncontent-length: 4\r\nconnection: close\r\n\r\nabcd",
        )
        .await
        .unwrap();
    let answer = read_until_closed(&mut stream).await;
    assert!(answer.ends_with("4 bytes"), "{answer}");
    server.shut_down().await;
}

#[tokio::test]
async fn connections_past_the_cap_wait_for_a_free_slot() {
    let server = Server::start(short(|l| l.max_connections = 1), None).await;
    // Holds the only slot until the header timeout closes it.
    let mut holder = TcpStream::connect(server.addr).await.unwrap();
    let mut waiting = TcpStream::connect(server.addr).await.unwrap();
    waiting
        .write_all(b"GET /who HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
        .await
        .unwrap();
    let (order_tx, mut order) = tokio::sync::mpsc::unbounded_channel();
    let tx = order_tx.clone();
    tokio::spawn(async move {
        read_until_closed(&mut holder).await;
        tx.send("holder closed").unwrap();
    });
    tokio::spawn(async move {
        let answer = read_until_closed(&mut waiting).await;
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        order_tx.send("waiting served").unwrap();
    });
    // The second connection is only served once the first gave its slot back.
    assert_eq!(order.recv().await, Some("holder closed"));
    assert_eq!(order.recv().await, Some("waiting served"));
    server.shut_down().await;
}

#[tokio::test]
async fn tls_serves_and_a_silent_handshake_is_cut() {
    kraken_tls::install_crypto_provider();
    let ca = kraken_tls::DevCa::new().unwrap();
    let issued = ca
        .issue(kraken_tls::Role::Proxy, &kraken_tls::LeafOptions::default())
        .unwrap();
    let certs: Vec<_> =
        rustls_pki_types::CertificateDer::pem_slice_iter(issued.cert_pem.as_bytes())
            .collect::<Result<_, _>>()
            .unwrap();
    let key = rustls_pki_types::PrivateKeyDer::from_pem_slice(issued.key_pem.as_bytes()).unwrap();
    let mut config = rustls::ServerConfig::builder_with_provider(kraken_tls::crypto_provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .unwrap();
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let server = Server::start(short(|_| {}), Some(Arc::new(config))).await;

    let mut silent = TcpStream::connect(server.addr).await.unwrap();
    assert_eq!(read_until_closed(&mut silent).await, "");

    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pki_types::CertificateDer::pem_slice_iter(ca.cert_pem().as_bytes()) {
        roots.add(cert.unwrap()).unwrap();
    }
    let client = rustls::ClientConfig::builder_with_provider(kraken_tls::crypto_provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(client));
    let tcp = TcpStream::connect(server.addr).await.unwrap();
    let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
    let mut tls = connector.connect(name, tcp).await.unwrap();
    tls.write_all(b"GET /who HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut answer = String::new();
    let _ = tokio::time::timeout(BOUND, tls.read_to_string(&mut answer)).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    server.shut_down().await;
}

#[tokio::test]
async fn a_client_over_its_rate_gets_429_and_others_do_not() {
    let server = Server::start(
        HttpServerLimits {
            requests_per_second_per_client: 1,
            ..HttpServerLimits::default()
        },
        None,
    )
    .await;
    // Bursts of twice the rate pass; the requests after them, sent at once, do not.
    let mut statuses = Vec::new();
    for _ in 0..30 {
        let mut stream = TcpStream::connect(server.addr).await.unwrap();
        stream
            .write_all(b"GET /who HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
            .await
            .unwrap();
        let answer = read_until_closed(&mut stream).await;
        statuses.push(answer[9..12].to_owned());
        if answer.starts_with("HTTP/1.1 429") {
            assert!(answer.contains("retry-after: 1"), "{answer}");
            assert!(answer.contains("TOOMANYREQUESTS"), "{answer}");
        }
    }
    let refused = statuses.iter().filter(|s| *s == "429").count();
    // At 1/s, 30 quick requests see at most a burst of 2 and one more per second taken.
    assert!(refused >= 10, "30 requests at once at 1/s: {statuses:?}");
    assert!(statuses[..2].iter().all(|s| s == "200"), "{statuses:?}");
    server.shut_down().await;
}

#[tokio::test]
async fn a_stop_closes_connections_that_have_sent_nothing_yet() {
    // Timeouts far beyond the test's bound: if the stop waited for the silent connections to
    // time out (as it did: they were not yet hyper's, so the graceful shutdown missed them),
    // `shut_down` would hit its bound and fail.
    let patient = HttpServerLimits {
        header_read_timeout: Duration::from_secs(3600),
        tls_handshake_timeout: Duration::from_secs(3600),
        ..HttpServerLimits::default()
    };
    let server = Server::start(patient, None).await;
    let mut silent = TcpStream::connect(server.addr).await.unwrap();
    // A served request first, so the server certainly accepted connections before the stop.
    let mut served = TcpStream::connect(server.addr).await.unwrap();
    served
        .write_all(b"GET /who HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    assert!(
        read_until_closed(&mut served)
            .await
            .starts_with("HTTP/1.1 200")
    );
    server.shut_down().await;
    assert_eq!(
        read_until_closed(&mut silent).await,
        "",
        "closed without a word"
    );
}
