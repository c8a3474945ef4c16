//! tonic over mutual TLS, with `grpc.health.v1` as the service so no proto is needed.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use kraken_tls::{DevCa, Role, TlsMaterial, peer_role_from_request, require_role};
use tokio::sync::oneshot;
use tonic::Code;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, ClientTlsConfig, Endpoint, Server};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

use crate::common::{setup, valid};

struct TestServer {
    addr: SocketAddr,
    /// The role each accepted call came from, as the server read it.
    seen: Arc<Mutex<Vec<Role>>>,
    shutdown: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<Result<(), tonic::transport::Error>>,
}

impl TestServer {
    /// A health service that only agents and clients may call.
    async fn start(material: &TlsMaterial) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (_reporter, health) = tonic_health::server::health_reporter();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let record = Arc::clone(&seen);
        let service = InterceptedService::new(health, move |req: tonic::Request<()>| {
            let role = peer_role_from_request(&req)?;
            record.lock().unwrap().push(role);
            require_role(&req, &[Role::Agent, Role::Client])?;
            Ok(req)
        });
        let (tx, rx) = oneshot::channel::<()>();
        let router = Server::builder()
            .tls_config(material.tonic_server_tls().unwrap())
            .unwrap()
            .add_service(service);
        let task = tokio::spawn(router.serve_with_incoming_shutdown(
            tonic::transport::server::TcpIncoming::from(listener),
            async {
                let _ = rx.await;
            },
        ));
        TestServer {
            addr,
            seen,
            shutdown: Some(tx),
            task,
        }
    }

    async fn stop(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        (&mut self.task).await.unwrap().unwrap();
    }

    fn endpoint(&self, tls: ClientTlsConfig) -> Endpoint {
        // Dial the address and check the certificate for `localhost` (set in `tls`), so
        // the test never depends on how this host resolves `localhost`.
        Channel::from_shared(format!("https://{}", self.addr))
            .unwrap()
            .tls_config(tls)
            .unwrap()
    }
}

async fn check(endpoint: Endpoint) -> Result<ServingStatus, tonic::Status> {
    let channel = endpoint
        .connect()
        .await
        .map_err(|e| tonic::Status::unavailable(format!("{e:?}")))?;
    let response = HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await?;
    Ok(response.into_inner().status())
}

#[tokio::test]
async fn client_with_cluster_certificate_gets_serving_and_its_role_is_seen() {
    setup();
    let ca = DevCa::new().unwrap();
    let server = TestServer::start(&valid(&ca, Role::Origin)).await;
    let status = check(server.endpoint(valid(&ca, Role::Agent).tonic_client_tls("localhost")))
        .await
        .unwrap();
    assert_eq!(status, ServingStatus::Serving);
    assert_eq!(*server.seen.lock().unwrap(), vec![Role::Agent]);
    server.stop().await;
}

#[tokio::test]
async fn role_not_allowed_gets_permission_denied_naming_the_roles() {
    setup();
    let ca = DevCa::new().unwrap();
    let server = TestServer::start(&valid(&ca, Role::Origin)).await;
    let err = check(server.endpoint(valid(&ca, Role::Proxy).tonic_client_tls("localhost")))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    assert_eq!(
        err.message(),
        "certificate role `proxy` may not call this method; allowed roles: agent, client"
    );
    server.stop().await;
}

#[tokio::test]
async fn client_without_identity_fails() {
    setup();
    let ca = DevCa::new().unwrap();
    let server = TestServer::start(&valid(&ca, Role::Origin)).await;
    let anonymous = ClientTlsConfig::new()
        .ca_certificate(tonic::transport::Certificate::from_pem(ca.cert_pem()))
        .domain_name("localhost");
    let err = check(server.endpoint(anonymous)).await.unwrap_err();
    // TLS 1.3 lets the client finish its half of the handshake; the server's alert then
    // fails the first call.
    assert!(
        format!("{err:?}").contains("CertificateRequired"),
        "{err:?}"
    );
    assert!(server.seen.lock().unwrap().is_empty(), "a call got through");
    server.stop().await;
}

#[tokio::test]
async fn client_checking_the_wrong_name_fails() {
    setup();
    let ca = DevCa::new().unwrap();
    let server = TestServer::start(&valid(&ca, Role::Origin)).await;
    let err = check(server.endpoint(valid(&ca, Role::Agent).tonic_client_tls("origin.invalid")))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    server.stop().await;
}
