//! Every server built by `GrpcServer` has mTLS, health and reflection.

// Test helpers outside `#[test]` functions: a panic there is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use kraken_tls::{DevPkiOptions, Role, TlsMaterial, generate_dev_pki};
use kraken_transport::grpc::{GrpcServer, GrpcServerLimits, channel};
use tokio::net::TcpListener;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};
use tonic_reflection::pb::v1alpha::{
    ServerReflectionRequest, server_reflection_client::ServerReflectionClient,
    server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
};

#[tokio::test]
async fn serves_health_and_reflection_over_mtls_and_refuses_strangers() {
    kraken_tls::install_crypto_provider();
    let dir = tempfile::tempdir().unwrap();
    let pki = generate_dev_pki(dir.path(), &DevPkiOptions::default()).unwrap();
    let server_tls = TlsMaterial::load(&pki.tls_config(Role::Tracker)).unwrap();
    let client_tls = TlsMaterial::load(&pki.tls_config(Role::Agent)).unwrap();

    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap().to_string();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = GrpcServer::new(&server_tls, GrpcServerLimits::default()).unwrap();
    let task = tokio::spawn(server.serve(listener, async {
        let _ = stopped.await;
    }));

    let channel = channel(&client_tls, &address, Some("localhost")).unwrap();
    let status = HealthClient::new(channel.clone())
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .unwrap()
        .into_inner()
        .status;
    assert_eq!(status, ServingStatus::Serving as i32);

    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut responses = ServerReflectionClient::new(channel)
        .server_reflection_info(tokio_stream::iter(vec![request]))
        .await
        .unwrap()
        .into_inner();
    let response = responses.message().await.unwrap().unwrap();
    let Some(MessageResponse::ListServicesResponse(list)) = response.message_response else {
        panic!("unexpected reflection response {response:?}");
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    for expected in ["grpc.health.v1.Health", "kraken.tracker.v1.TrackerService"] {
        assert!(
            names.iter().any(|n| n == expected),
            "{expected} missing from {names:?}"
        );
    }

    // A client from another CA is refused.
    let other = tempfile::tempdir().unwrap();
    let other_pki = generate_dev_pki(other.path(), &DevPkiOptions::default()).unwrap();
    let stranger = TlsMaterial::from_pem(
        std::fs::read_to_string(pki.ca_cert_path()).unwrap(),
        std::fs::read_to_string(other_pki.cert_path(Role::Agent)).unwrap(),
        std::fs::read_to_string(other_pki.key_path(Role::Agent)).unwrap(),
    );
    // Loading refuses a certificate the CA did not sign; force the handshake with the
    // stranger's own CA instead, which the server does not trust.
    assert!(stranger.is_err());
    let stranger = TlsMaterial::load(&other_pki.tls_config(Role::Agent)).unwrap();
    let refused = HealthClient::new(channel_to(&stranger, &address))
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await;
    assert!(refused.is_err(), "a client from another CA must be refused");

    stop.send(()).unwrap();
    task.await.unwrap().unwrap();
}

fn channel_to(tls: &TlsMaterial, address: &str) -> tonic::transport::Channel {
    channel(tls, address, Some("localhost")).unwrap()
}
