//! The QUIC peer transport over real loopback sockets with real mutual TLS.

// Test helpers outside `#[test]` functions: a panic there is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use kraken_proto::p2p::v1::{self as pb, message::Kind};
use kraken_tls::{DevCa, LeafOptions, Role, TlsMaterial};
use kraken_transport::bandwidth::BandwidthLimiter;
use kraken_transport::quic::{
    PeerEndpoint, QuicTuning, TransportError, control_stream, open_control, read_piece_header,
    read_piece_payload, send_piece,
};

fn material(ca: &DevCa, role: Role, options: &LeafOptions) -> TlsMaterial {
    let issued = ca.issue(role, options).unwrap();
    TlsMaterial::from_pem(ca.cert_pem(), &issued.cert_pem, &issued.key_pem).unwrap()
}

fn endpoint(tls: &TlsMaterial) -> PeerEndpoint {
    PeerEndpoint::bind("127.0.0.1:0".parse().unwrap(), tls, &QuicTuning::default()).unwrap()
}

fn setup() -> DevCa {
    kraken_tls::install_crypto_provider();
    DevCa::new().unwrap()
}

#[tokio::test]
async fn control_messages_and_pieces_flow_over_one_connection_per_peer_pair() {
    let ca = setup();
    let agent = endpoint(&material(&ca, Role::Agent, &LeafOptions::default()));
    let origin = endpoint(&material(&ca, Role::Origin, &LeafOptions::default()));
    let origin_addr = origin.local_addr().unwrap();

    let server = {
        let origin = origin.clone();
        tokio::spawn(async move {
            let connection = origin.accept().await.unwrap();
            let role = kraken_tls::peer_role_from_quinn(&connection).unwrap();
            let (send, recv) = connection.accept_bi().await.unwrap();
            let (mut tx, mut rx) = control_stream(send, recv);
            let hello = rx.recv().await.unwrap().unwrap();
            tx.send(&hello).await.unwrap();
            let mut piece_stream = connection.accept_uni().await.unwrap();
            let header = read_piece_header(&mut piece_stream).await.unwrap();
            let limiter = BandwidthLimiter::unlimited();
            let payload = read_piece_payload(&mut piece_stream, &header, header.length, &limiter)
                .await
                .unwrap();
            tx.finish().await;
            (role, header, payload, connection.stable_id())
        })
    };

    let connection = agent.connect(origin_addr).await.unwrap();
    let again = agent.connect(origin_addr).await.unwrap();
    assert_eq!(
        connection.stable_id(),
        again.stable_id(),
        "one connection per peer pair"
    );
    assert_eq!(
        kraken_tls::peer_role_from_quinn(&connection).unwrap(),
        Role::Origin
    );

    let (mut tx, mut rx) = open_control(&connection).await.unwrap();
    let hello = pb::Message {
        kind: Some(Kind::Have(pb::Have { piece: 42 })),
    };
    tx.send(&hello).await.unwrap();
    assert_eq!(rx.recv().await.unwrap().unwrap(), hello);

    let data: Bytes = (0..(3 << 20))
        .map(|i: u32| (i % 251) as u8)
        .collect::<Vec<_>>()
        .into();
    let header = pb::PieceHeader {
        digest: Bytes::from_static(&[1; 32]),
        piece: 7,
        offset: 0,
        length: data.len() as u64,
    };
    send_piece(&connection, &header, data.clone())
        .await
        .unwrap();

    let (role, got_header, payload, _) = server.await.unwrap();
    assert_eq!(role, Role::Agent);
    assert_eq!(got_header, header);
    assert_eq!(payload, data);
    assert!(
        rx.recv().await.unwrap().is_none(),
        "finished stream reads as None"
    );
}

async fn dial_fails(client: &PeerEndpoint, server: &PeerEndpoint) -> TransportError {
    let addr: SocketAddr = server.local_addr().unwrap();
    // Drive the server's accept loop so the handshake can proceed (and be refused).
    let server = server.clone();
    let accepting = tokio::spawn(async move { server.accept().await });
    let result = client.connect(addr).await;
    accepting.abort();
    match result {
        Ok(connection) => {
            // A refused client certificate may only surface once the server closes.
            let closed =
                tokio::time::timeout(std::time::Duration::from_secs(10), connection.closed())
                    .await
                    .expect("the connection should have been refused, but it stayed open");
            TransportError::Connection {
                addr,
                source: closed,
            }
        }
        Err(error) => error,
    }
}

#[tokio::test]
async fn another_ca_is_refused_in_both_directions() {
    let ca = setup();
    let stranger_ca = DevCa::new().unwrap();
    let ours = endpoint(&material(&ca, Role::Agent, &LeafOptions::default()));
    let theirs = endpoint(&material(
        &stranger_ca,
        Role::Agent,
        &LeafOptions::default(),
    ));
    dial_fails(&theirs, &ours).await;
    dial_fails(&ours, &theirs).await;
}

#[tokio::test]
async fn expired_certificates_are_refused() {
    let ca = setup();
    let valid = endpoint(&material(&ca, Role::Agent, &LeafOptions::default()));
    let expired = endpoint(&material(&ca, Role::Agent, &LeafOptions::expired()));
    dial_fails(&expired, &valid).await;
    dial_fails(&valid, &expired).await;
}

#[tokio::test]
async fn roles_other_than_agent_and_origin_are_refused() {
    let ca = setup();
    let agent = endpoint(&material(&ca, Role::Agent, &LeafOptions::default()));
    let proxy = endpoint(&material(&ca, Role::Proxy, &LeafOptions::default()));
    let error = dial_fails(&agent, &proxy).await;
    assert!(
        format!("{error:?}").contains("Proxy") || format!("{error:?}").contains("proxy"),
        "{error:?}"
    );
    dial_fails(&proxy, &agent).await;
}

#[tokio::test]
async fn a_client_without_a_certificate_gets_nothing() {
    let ca = setup();
    let agent = endpoint(&material(&ca, Role::Agent, &LeafOptions::default()));
    let addr = agent.local_addr().unwrap();
    let accepting = {
        let agent = agent.clone();
        tokio::spawn(async move { agent.accept().await.is_some() })
    };

    // A QUIC client that trusts our CA but presents no certificate of its own.
    let mut roots = rustls::RootCertStore::empty();
    use rustls_pki_types::pem::PemObject;
    for cert in rustls_pki_types::CertificateDer::pem_slice_iter(ca.cert_pem().as_bytes()) {
        roots.add(cert.unwrap()).unwrap();
    }
    let mut tls = rustls::ClientConfig::builder_with_provider(kraken_tls::crypto_provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    tls.alpn_protocols = vec![kraken_tls::ALPN_P2P.to_vec()];
    let config = quinn::ClientConfig::new(Arc::new(
        quinn::crypto::rustls::QuicClientConfig::try_from(tls).unwrap(),
    ));
    let mut client = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    client.set_default_client_config(config);
    let outcome = client.connect(addr, "localhost").unwrap().await;
    let refused = match outcome {
        Err(_) => true,
        Ok(connection) => {
            // The server rejects the missing certificate right after the client's flight.
            let stream = connection.open_bi().await;
            let read = match stream {
                Ok((_, mut recv)) => recv.read_to_end(16).await.is_err(),
                Err(_) => true,
            };
            read && !connection.closed().await.to_string().is_empty()
        }
    };
    assert!(
        refused,
        "a certificate-less client must not get a working connection"
    );
    accepting.abort();
}

#[tokio::test]
async fn malformed_piece_streams_are_rejected() {
    let ca = setup();
    let a = endpoint(&material(&ca, Role::Agent, &LeafOptions::default()));
    let b = endpoint(&material(&ca, Role::Agent, &LeafOptions::default()));
    let b_addr = b.local_addr().unwrap();
    let receiver = tokio::spawn(async move {
        let connection = b.accept().await.unwrap();
        let mut results = Vec::new();
        for _ in 0..2 {
            let mut stream = connection.accept_uni().await.unwrap();
            let header = read_piece_header(&mut stream).await.unwrap();
            let limiter = BandwidthLimiter::unlimited();
            // The receiver asked for a 10 byte piece.
            results.push(read_piece_payload(&mut stream, &header, 10, &limiter).await);
        }
        results
    });
    let connection = a.connect(b_addr).await.unwrap();
    // Announces 10 bytes but sends 12.
    let header = pb::PieceHeader {
        digest: Bytes::new(),
        piece: 0,
        offset: 0,
        length: 10,
    };
    // The receiver may stop it before or after its transport acknowledged every byte.
    let _ = send_piece(&connection, &header, Bytes::from_static(b"twelve bytes")).await;
    // Announces 10 bytes but sends 4.
    let _ = send_piece(&connection, &header, Bytes::from_static(b"four")).await;
    let results = receiver.await.unwrap();
    assert!(
        matches!(&results[0], Err(TransportError::Protocol { .. })),
        "{:?}",
        results[0]
    );
    assert!(
        matches!(&results[1], Err(TransportError::Protocol { .. })),
        "{:?}",
        results[1]
    );
}

/// Fails the test instead of hanging it.
async fn within<T>(what: &str, future: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(std::time::Duration::from_secs(30), future)
        .await
        .unwrap_or_else(|_| panic!("hang guard: {what}"))
}

/// Accepts connections on `endpoint` for as long as the test runs.
fn accept_forever(
    endpoint: &PeerEndpoint,
) -> tokio::sync::mpsc::UnboundedReceiver<quinn::Connection> {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let endpoint = endpoint.clone();
    tokio::spawn(async move {
        while let Some(connection) = endpoint.accept().await {
            if tx.send(connection).is_err() {
                return;
            }
        }
    });
    rx
}

/// A genuine QUIC Initial datagram, captured from a client that is then thrown away: sent from
/// a plain UDP socket it starts a handshake that nobody will ever finish.
async fn captured_initial() -> Vec<u8> {
    let capture = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let target = capture.local_addr().unwrap();
    let ca = DevCa::new().unwrap();
    let tls = material(&ca, Role::Agent, &LeafOptions::default());
    let client = endpoint(&tls);
    let dial = tokio::spawn(async move { client.connect(target).await.map(|_| ()) });
    let mut datagram = vec![0u8; 65536];
    let (len, _) = within("capturing an Initial", capture.recv_from(&mut datagram))
        .await
        .unwrap();
    dial.abort();
    datagram.truncate(len);
    datagram
}

#[tokio::test]
async fn a_silent_quic_initial_does_not_hold_up_other_peers() {
    let ca = setup();
    let node = endpoint(&material(&ca, Role::Origin, &LeafOptions::default()));
    let node_addr = node.local_addr().unwrap();
    let mut accepted = accept_forever(&node);

    // A host sends one Initial and never says another word.
    let initial = captured_initial().await;
    let silent = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    silent.send_to(&initial, node_addr).await.unwrap();
    within("the silent handshake to start", async {
        while node.open_connections() == 0 {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    })
    .await;

    // A certified peer connects meanwhile and talks: the silent one holds up nothing (the
    // dial gives up after its 5 s connect timeout, well inside the 60 s a handshake could
    // stall the accept loop before).
    let peer = endpoint(&material(&ca, Role::Agent, &LeafOptions::default()));
    let connection = within("dialling", peer.connect(node_addr)).await.unwrap();
    let accepted = within("accepting", accepted.recv()).await.unwrap();
    let echo = tokio::spawn(async move {
        let (send, recv) = accepted.accept_bi().await.unwrap();
        let (mut tx, mut rx) = control_stream(send, recv);
        let message = rx.recv().await.unwrap().unwrap();
        tx.send(&message).await.unwrap();
        tx.finish().await;
    });
    let (mut tx, mut rx) = open_control(&connection).await.unwrap();
    let hello = pb::Message {
        kind: Some(Kind::Have(pb::Have { piece: 1 })),
    };
    tx.send(&hello).await.unwrap();
    assert_eq!(within("the echo", rx.recv()).await.unwrap().unwrap(), hello);
    echo.await.unwrap();
    assert_eq!(
        node.open_connections(),
        2,
        "the silent handshake is still pending beside the working connection"
    );
    node.close();
    peer.close();
}

#[tokio::test]
async fn a_handshake_that_never_completes_is_dropped_after_the_handshake_timeout() {
    let ca = setup();
    let tuning = QuicTuning {
        handshake_timeout: std::time::Duration::from_millis(500),
        ..QuicTuning::default()
    };
    let tls = material(&ca, Role::Origin, &LeafOptions::default());
    let node = PeerEndpoint::bind("127.0.0.1:0".parse().unwrap(), &tls, &tuning).unwrap();
    let node_addr = node.local_addr().unwrap();
    let _accepted = accept_forever(&node);
    let initial = captured_initial().await;
    let silent = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    silent.send_to(&initial, node_addr).await.unwrap();
    // Dropped when its handshake timeout fires; without one only quinn's 60 s idle timeout
    // would end it, past the hang guard.
    within("the silent handshake to start", async {
        while node.open_connections() == 0 {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    })
    .await;
    within("the silent handshake to be dropped", async {
        while node.open_connections() != 0 {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    })
    .await;
    node.close();
}

#[tokio::test]
async fn connections_from_one_address_are_capped() {
    let ca = setup();
    let tuning = QuicTuning {
        max_connections_per_ip: 1,
        connect_timeout: std::time::Duration::from_secs(10),
        ..QuicTuning::default()
    };
    let tls = material(&ca, Role::Origin, &LeafOptions::default());
    let node = PeerEndpoint::bind("127.0.0.1:0".parse().unwrap(), &tls, &tuning).unwrap();
    let node_addr = node.local_addr().unwrap();
    let mut accepted = accept_forever(&node);

    let first = endpoint(&material(&ca, Role::Agent, &LeafOptions::default()));
    let kept = within("the first dial", first.connect(node_addr))
        .await
        .unwrap();
    let _kept_server_side = within("accepting", accepted.recv()).await.unwrap();

    // Same IP address (loopback), second connection: refused at once.
    let second = endpoint(&material(&ca, Role::Agent, &LeafOptions::default()));
    let refused = within("the second dial", second.connect(node_addr)).await;
    assert!(
        matches!(refused, Err(TransportError::Connection { .. })),
        "{refused:?}"
    );

    // Once the first closes, its slot is free again.
    kept.close(0u32.into(), b"done");
    first.close();
    within("the slot to be released", async {
        loop {
            let third = endpoint(&material(&ca, Role::Agent, &LeafOptions::default()));
            if third.connect(node_addr).await.is_ok() {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    })
    .await;
}

/// Opens a piece stream by hand: the header announces `announced` bytes, then `body` follows
/// and the stream stays open unless `finish`.
async fn raw_piece_stream(
    connection: &quinn::Connection,
    announced: u64,
    body: &[u8],
    finish: bool,
) -> quinn::SendStream {
    use prost::Message as _;
    let header = pb::PieceHeader {
        digest: Bytes::from_static(&[7; 32]),
        piece: 3,
        offset: 0,
        length: announced,
    }
    .encode_to_vec();
    let mut stream = connection.open_uni().await.unwrap();
    stream
        .write_all(&(header.len() as u32).to_be_bytes())
        .await
        .unwrap();
    stream.write_all(&header).await.unwrap();
    // The receiver may already have stopped the stream.
    let _ = stream.write_all(body).await;
    if finish {
        let _ = stream.finish();
    }
    stream
}

#[tokio::test]
async fn an_oversized_piece_is_refused_before_its_body_is_read() {
    let ca = setup();
    let sender = endpoint(&material(&ca, Role::Agent, &LeafOptions::default()));
    let receiver = endpoint(&material(&ca, Role::Agent, &LeafOptions::default()));
    let receiver_addr = receiver.local_addr().unwrap();
    let mut accepted = accept_forever(&receiver);
    let connection = within("dialling", sender.connect(receiver_addr))
        .await
        .unwrap();
    let inbound = within("accepting", accepted.recv()).await.unwrap();
    let limiter = BandwidthLimiter::unlimited();
    const REQUESTED: u64 = 1024;

    // Announces 32 MiB for a 1 KiB request, sends a little and keeps the stream open: had the
    // receiver started on the body it would wait for the rest, so an answer proves it read
    // nothing past the header.
    let announced_big = raw_piece_stream(&connection, 32 << 20, &[0; 4096], false).await;
    let mut stream = within("the stream", inbound.accept_uni()).await.unwrap();
    let header = read_piece_header(&mut stream).await.unwrap();
    let refused = within(
        "the refusal",
        read_piece_payload(&mut stream, &header, REQUESTED, &limiter),
    )
    .await;
    assert!(
        matches!(
            refused,
            Err(TransportError::PieceLength {
                announced,
                expected: REQUESTED
            }) if announced == 32 << 20
        ),
        "{refused:?}"
    );
    let stopped = within("the stop", announced_big.stopped()).await.unwrap();
    assert_eq!(
        stopped,
        Some(kraken_transport::quic::PIECE_REFUSED.into()),
        "the sender is told the stream was refused"
    );

    // Announces the requested length but sends 8 MiB: at most the requested bytes are read,
    // then the stream is stopped.
    let mut sends_more = {
        let connection = connection.clone();
        tokio::spawn(async move {
            raw_piece_stream(&connection, REQUESTED, &vec![1; 8 << 20], true).await
        })
    };
    let mut stream = within("the stream", inbound.accept_uni()).await.unwrap();
    let header = read_piece_header(&mut stream).await.unwrap();
    let refused = within(
        "the refusal",
        read_piece_payload(&mut stream, &header, REQUESTED, &limiter),
    )
    .await;
    assert!(
        matches!(&refused, Err(TransportError::Protocol { reason, .. }) if reason.contains("more than")),
        "{refused:?}"
    );
    let sent = within("the sender", &mut sends_more).await.unwrap();
    assert_eq!(
        within("the stop", sent.stopped()).await.unwrap(),
        Some(kraken_transport::quic::PIECE_REFUSED.into())
    );
    // The connection itself is still good for pieces of the right size.
    let stream_ok = {
        let connection = connection.clone();
        tokio::spawn(async move {
            raw_piece_stream(&connection, REQUESTED, &[2; REQUESTED as usize], true).await
        })
    };
    let mut stream = within("the stream", inbound.accept_uni()).await.unwrap();
    let header = read_piece_header(&mut stream).await.unwrap();
    let payload = within(
        "the piece",
        read_piece_payload(&mut stream, &header, REQUESTED, &limiter),
    )
    .await
    .unwrap();
    assert_eq!(payload.len() as u64, REQUESTED);
    stream_ok.await.unwrap();
    sender.close();
    receiver.close();
}

#[tokio::test]
async fn an_endpoint_on_the_unspecified_ipv6_address_serves_and_reaches_both_families() {
    let ca = setup();
    let tls = material(&ca, Role::Agent, &LeafOptions::default());
    let tuning = QuicTuning::default();
    let bind = |addr: &str| PeerEndpoint::bind(addr.parse().unwrap(), &tls, &tuning).unwrap();
    let v4: SocketAddr = "10.1.2.3:1".parse().unwrap();
    let v6: SocketAddr = "[2001:db8::1]:1".parse().unwrap();
    let mapped: SocketAddr = "[::ffff:10.1.2.3]:1".parse().unwrap();

    let dual = bind("[::]:0");
    assert!(dual.reaches(v4) && dual.reaches(v6) && dual.reaches(mapped));
    let only_v4 = bind("127.0.0.1:0");
    assert!(only_v4.reaches(v4) && only_v4.reaches(mapped) && !only_v4.reaches(v6));
    let only_v6 = bind("[::1]:0");
    assert!(only_v6.reaches(v6) && !only_v6.reaches(v4) && !only_v6.reaches(mapped));

    // Dual-stack for real: an IPv4 peer and an IPv6 peer both connect to the `[::]` socket,
    // and it dials an IPv4 peer back.
    let port = dual.local_addr().unwrap().port();
    let server = {
        let dual = dual.clone();
        tokio::spawn(async move {
            let first = dual.accept().await.unwrap();
            let second = dual.accept().await.unwrap();
            let mut sources = [first, second].map(|c| c.remote_address().ip().to_canonical());
            sources.sort();
            sources
        })
    };
    let v4_peer = endpoint(&material(&ca, Role::Agent, &LeafOptions::default()));
    within(
        "an IPv4 dial of [::]",
        v4_peer.connect(SocketAddr::from(([127, 0, 0, 1], port))),
    )
    .await
    .unwrap();
    within(
        "an IPv6 dial of [::]",
        only_v6.connect(SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, port))),
    )
    .await
    .unwrap();
    let sources = within("both accepted", server).await.unwrap();
    assert_eq!(
        sources.map(|ip| ip.to_string()),
        ["127.0.0.1".to_owned(), "::1".to_owned()]
    );
    let v4_server = v4_peer.local_addr().unwrap();
    let accepted = tokio::spawn(async move { v4_peer.accept().await.map(|c| c.stable_id()) });
    within("[::] dials an IPv4 peer", dual.connect(v4_server))
        .await
        .unwrap();
    within("the IPv4 peer accepts", accepted)
        .await
        .unwrap()
        .unwrap();
}
