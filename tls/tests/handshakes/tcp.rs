//! TLS over loopback TCP with tokio-rustls.

use kraken_tls::{DevCa, LeafOptions, Role, ServerCheck, TlsError, TlsMaterial};

use crate::common::{
    ALPN_TEST, anonymous_client, expired, foreign_client, setup, tcp_exchange, valid,
};

#[tokio::test]
async fn same_ca_handshake_and_each_side_reads_the_other_role() {
    setup();
    let ca = DevCa::new().unwrap();
    let server = valid(&ca, Role::Origin)
        .server_config(&[ALPN_TEST])
        .unwrap();
    let client = valid(&ca, Role::Agent)
        .client_config(&[ALPN_TEST], ServerCheck::Hostname)
        .unwrap();
    let outcome = tcp_exchange(server, client, "localhost").await;
    outcome.assert_ok(Role::Agent, Role::Origin);
    assert_eq!(
        outcome.suite,
        Some(rustls::CipherSuite::TLS13_AES_128_GCM_SHA256)
    );
    let server_view = outcome.server.unwrap();
    assert_eq!(server_view.common_name.as_deref(), Some("kraken-agent"));
}

#[tokio::test]
async fn dialing_by_ip_matches_the_ip_sans() {
    setup();
    let ca = DevCa::new().unwrap();
    for name in ["127.0.0.1", "::1"] {
        let server = valid(&ca, Role::Tracker).server_config(&[]).unwrap();
        let client = valid(&ca, Role::Proxy)
            .client_config(&[], ServerCheck::Hostname)
            .unwrap();
        tcp_exchange(server, client, name)
            .await
            .assert_ok(Role::Proxy, Role::Tracker);
    }
}

#[tokio::test]
async fn client_without_certificate_is_refused() {
    setup();
    let ca = DevCa::new().unwrap();
    let server_material = valid(&ca, Role::Origin);
    let server = server_material.server_config(&[ALPN_TEST]).unwrap();
    let client = anonymous_client(&server_material, ALPN_TEST);
    tcp_exchange(server, client, "localhost")
        .await
        .assert_refused_by_server("peer sent no certificates");
}

#[tokio::test]
async fn client_certificate_from_another_ca_is_refused() {
    setup();
    let ours = DevCa::new().unwrap();
    let theirs = DevCa::new().unwrap();
    let server_material = valid(&ours, Role::Origin);
    let server = server_material.server_config(&[ALPN_TEST]).unwrap();
    let stranger = theirs.issue(Role::Agent, &LeafOptions::default()).unwrap();
    // Loading refuses a certificate that does not chain to the configured CA…
    let loaded = TlsMaterial::from_pem(ours.cert_pem(), &stranger.cert_pem, &stranger.key_pem);
    assert!(
        matches!(loaded, Err(TlsError::NotSignedByCa { .. })),
        "{loaded:?}"
    );
    // …so build the client by hand: it trusts our CA, so only the server can stop it.
    let client = foreign_client(&server_material, &stranger, ALPN_TEST);
    tcp_exchange(server, client, "localhost")
        .await
        .assert_refused_by_server("UnknownIssuer");
}

#[tokio::test]
async fn server_certificate_from_another_ca_is_refused() {
    setup();
    let ours = DevCa::new().unwrap();
    let theirs = DevCa::new().unwrap();
    let server = valid(&theirs, Role::Origin)
        .server_config(&[ALPN_TEST])
        .unwrap();
    let client = valid(&ours, Role::Agent)
        .client_config(&[ALPN_TEST], ServerCheck::Hostname)
        .unwrap();
    tcp_exchange(server, client, "localhost")
        .await
        .assert_refused_by_client("UnknownIssuer");
}

#[tokio::test]
async fn expired_client_certificate_is_refused() {
    setup();
    let ca = DevCa::new().unwrap();
    let server = valid(&ca, Role::Origin)
        .server_config(&[ALPN_TEST])
        .unwrap();
    let client = expired(&ca, Role::Agent)
        .client_config(&[ALPN_TEST], ServerCheck::Hostname)
        .unwrap();
    tcp_exchange(server, client, "localhost")
        .await
        .assert_refused_by_server("expired");
}

#[tokio::test]
async fn expired_server_certificate_is_refused() {
    setup();
    let ca = DevCa::new().unwrap();
    let server = expired(&ca, Role::Origin)
        .server_config(&[ALPN_TEST])
        .unwrap();
    let client = valid(&ca, Role::Agent)
        .client_config(&[ALPN_TEST], ServerCheck::Hostname)
        .unwrap();
    tcp_exchange(server, client, "localhost")
        .await
        .assert_refused_by_client("expired");
}

#[tokio::test]
async fn hostname_check_refuses_a_name_the_certificate_lacks() {
    setup();
    let ca = DevCa::new().unwrap();
    let server = valid(&ca, Role::Agent).server_config(&[]).unwrap();
    let client = valid(&ca, Role::Agent)
        .client_config(&[], ServerCheck::Hostname)
        .unwrap();
    tcp_exchange(server, client, "peer-7.invalid")
        .await
        .assert_refused_by_client("not valid for name");
}

#[tokio::test]
async fn role_only_accepts_an_allowed_role_under_any_name() {
    setup();
    let ca = DevCa::new().unwrap();
    let server = valid(&ca, Role::Origin).server_config(&[]).unwrap();
    let client = valid(&ca, Role::Agent)
        .client_config(&[], ServerCheck::RoleOnly(&[Role::Agent, Role::Origin]))
        .unwrap();
    tcp_exchange(server, client, "peer-7.invalid")
        .await
        .assert_ok(Role::Agent, Role::Origin);
}

#[tokio::test]
async fn role_only_refuses_a_role_not_allowed_even_when_the_name_matches() {
    setup();
    let ca = DevCa::new().unwrap();
    for name in ["peer-7.invalid", "localhost"] {
        let server = valid(&ca, Role::Tracker).server_config(&[]).unwrap();
        let client = valid(&ca, Role::Agent)
            .client_config(&[], ServerCheck::RoleOnly(&[Role::Agent, Role::Origin]))
            .unwrap();
        tcp_exchange(server, client, name)
            .await
            .assert_refused_by_client("RoleNotAllowed { role: Tracker, allowed: [Agent, Origin] }");
    }
}

#[tokio::test]
async fn hostname_and_role_refuses_a_valid_certificate_of_another_role() {
    setup();
    let ca = DevCa::new().unwrap();
    let expect_tracker = |ca: &DevCa| {
        valid(ca, Role::Agent)
            .client_config(&[], ServerCheck::HostnameAndRole(&[Role::Tracker]))
            .unwrap()
    };
    // An origin's certificate names `localhost` too, but it is not the tracker.
    let origin = valid(&ca, Role::Origin).server_config(&[]).unwrap();
    tcp_exchange(origin, expect_tracker(&ca), "localhost")
        .await
        .assert_refused_by_client("RoleNotAllowed { role: Origin, allowed: [Tracker] }");
    // The right role under the wrong name is still refused: the name is checked too.
    let tracker = valid(&ca, Role::Tracker).server_config(&[]).unwrap();
    tcp_exchange(tracker, expect_tracker(&ca), "peer-7.invalid")
        .await
        .assert_refused_by_client("not valid for name");
    let tracker = valid(&ca, Role::Tracker).server_config(&[]).unwrap();
    tcp_exchange(tracker, expect_tracker(&ca), "localhost")
        .await
        .assert_ok(Role::Agent, Role::Tracker);
}

#[tokio::test]
async fn a_client_certificate_cannot_serve() {
    setup();
    let ca = DevCa::new().unwrap();
    // `client` certificates carry only the clientAuth usage, so even a verifier that would
    // accept their role refuses them as a server.
    let server = valid(&ca, Role::Client).server_config(&[]).unwrap();
    let client = valid(&ca, Role::Agent)
        .client_config(&[], ServerCheck::RoleOnly(&Role::ALL))
        .unwrap();
    tcp_exchange(server, client, "localhost")
        .await
        .assert_refused_by_client("does not allow extended key usage for server authentication");
}

#[tokio::test]
async fn role_only_still_refuses_another_ca_and_expiry() {
    setup();
    let ours = DevCa::new().unwrap();
    let theirs = DevCa::new().unwrap();
    let client = valid(&ours, Role::Agent)
        .client_config(&[], ServerCheck::RoleOnly(&[Role::Origin]))
        .unwrap();

    let foreign = valid(&theirs, Role::Origin).server_config(&[]).unwrap();
    tcp_exchange(foreign, client.clone(), "peer-7.invalid")
        .await
        .assert_refused_by_client("UnknownIssuer");

    let stale = expired(&ours, Role::Origin).server_config(&[]).unwrap();
    tcp_exchange(stale, client, "peer-7.invalid")
        .await
        .assert_refused_by_client("expired");
}

#[tokio::test]
async fn alpn_is_negotiated() {
    setup();
    let ca = DevCa::new().unwrap();
    let server = valid(&ca, Role::Origin)
        .server_config(&[b"h2", ALPN_TEST])
        .unwrap();
    let mut client = valid(&ca, Role::Agent)
        .client_config(&[ALPN_TEST], ServerCheck::Hostname)
        .unwrap();
    // The protocol both offer is the one agreed.
    let outcome = tcp_exchange(server.clone(), client.clone(), "localhost").await;
    outcome.assert_ok(Role::Agent, Role::Origin);
    assert_eq!(outcome.alpn.as_deref(), Some(ALPN_TEST));
    client.alpn_protocols = vec![b"nope".to_vec()];
    // A server with ALPN configured refuses a client offering none of its protocols.
    tcp_exchange(server, client, "localhost")
        .await
        .assert_refused_by_server("peer doesn't support any known protocol");
}
