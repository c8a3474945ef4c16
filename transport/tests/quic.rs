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
            let payload = read_piece_payload(&mut piece_stream, header.length, &limiter)
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
            results.push(read_piece_payload(&mut stream, header.length, &limiter).await);
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
    send_piece(&connection, &header, Bytes::from_static(b"twelve bytes"))
        .await
        .unwrap();
    // Announces 10 bytes but sends 4.
    send_piece(&connection, &header, Bytes::from_static(b"four"))
        .await
        .unwrap();
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
