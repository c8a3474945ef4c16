//! The QUIC peer protocol's TLS: quinn endpoints on 127.0.0.1:0 with ALPN `kraken-p2p/1`.

use std::sync::Arc;

use kraken_tls::{ALPN_P2P, DevCa, LeafOptions, Role, ServerCheck};

use crate::common::{
    anonymous_client, expired, foreign_client, quic_client, quic_exchange, quic_server, setup,
    valid,
};

fn quinn_client(tls: rustls::ClientConfig) -> quinn::ClientConfig {
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(Arc::new(tls)).unwrap();
    quinn::ClientConfig::new(Arc::new(crypto))
}

#[tokio::test]
async fn peers_connect_open_a_stream_and_read_each_other_role() {
    setup();
    let ca = DevCa::new().unwrap();
    let outcome = quic_exchange(
        quic_server(&valid(&ca, Role::Origin)),
        quic_client(&valid(&ca, Role::Agent)),
        "localhost",
    )
    .await;
    outcome.assert_ok(Role::Agent, Role::Origin);
}

#[tokio::test]
async fn peers_dialed_by_address_are_checked_by_role() {
    setup();
    let ca = DevCa::new().unwrap();
    let client = valid(&ca, Role::Agent)
        .quinn_client_config(
            &[ALPN_P2P],
            ServerCheck::RoleOnly(&[Role::Agent, Role::Origin]),
        )
        .unwrap();
    // The certificate lists no such name: a peer learned from the tracker by address.
    quic_exchange(quic_server(&valid(&ca, Role::Agent)), client, "10.0.0.7")
        .await
        .assert_ok(Role::Agent, Role::Agent);

    let client = valid(&ca, Role::Agent)
        .quinn_client_config(
            &[ALPN_P2P],
            ServerCheck::RoleOnly(&[Role::Agent, Role::Origin]),
        )
        .unwrap();
    quic_exchange(quic_server(&valid(&ca, Role::Proxy)), client, "10.0.0.7")
        .await
        .assert_refused_by_client("RoleNotAllowed { role: Proxy");
}

#[tokio::test]
async fn peer_without_certificate_never_gets_a_byte() {
    setup();
    let ca = DevCa::new().unwrap();
    let server = valid(&ca, Role::Origin);
    let client = quinn_client(anonymous_client(&server, ALPN_P2P));
    quic_exchange(quic_server(&server), client, "localhost")
        .await
        .assert_refused_by_server("peer sent no certificates");
}

#[tokio::test]
async fn peer_from_another_ca_is_refused() {
    setup();
    let ours = DevCa::new().unwrap();
    let theirs = DevCa::new().unwrap();
    let server = valid(&ours, Role::Origin);
    let stranger = theirs.issue(Role::Agent, &LeafOptions::default()).unwrap();
    let client = quinn_client(foreign_client(&server, &stranger, ALPN_P2P));
    quic_exchange(quic_server(&server), client, "localhost")
        .await
        .assert_refused_by_server("UnknownIssuer");

    // And the other way round: a server from another CA.
    quic_exchange(
        quic_server(&valid(&theirs, Role::Origin)),
        quic_client(&valid(&ours, Role::Agent)),
        "localhost",
    )
    .await
    .assert_refused_by_client("UnknownIssuer");
}

#[tokio::test]
async fn expired_certificates_are_refused_both_ways() {
    setup();
    let ca = DevCa::new().unwrap();
    quic_exchange(
        quic_server(&valid(&ca, Role::Origin)),
        quic_client(&expired(&ca, Role::Agent)),
        "localhost",
    )
    .await
    .assert_refused_by_server("expired");

    quic_exchange(
        quic_server(&expired(&ca, Role::Origin)),
        quic_client(&valid(&ca, Role::Agent)),
        "localhost",
    )
    .await
    .assert_refused_by_client("expired");
}

#[tokio::test]
async fn wrong_alpn_is_refused() {
    setup();
    let ca = DevCa::new().unwrap();
    let client = valid(&ca, Role::Agent)
        .quinn_client_config(&[b"kraken-p2p/0"], ServerCheck::Hostname)
        .unwrap();
    let outcome = quic_exchange(quic_server(&valid(&ca, Role::Origin)), client, "localhost").await;
    // The server finds no protocol in common and says so with TLS's own alert (120), which the
    // client receives: not a timeout, not a certificate problem.
    outcome.assert_refused_by_server("error 120: peer doesn't support any known protocol");
    let client = outcome.client.as_ref().unwrap_err();
    assert!(
        client.contains("120"),
        "client error {client:?} lacks the alert"
    );
}
