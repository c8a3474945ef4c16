//! Every server built by `GrpcServer` has mTLS, health and reflection.

// Test helpers outside `#[test]` functions: a panic there is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use kraken_tls::{DevPkiOptions, Role, TlsMaterial, TrustDomains, generate_dev_pki};
use kraken_transport::access;
use kraken_transport::grpc::{GrpcServer, GrpcServerLimits, channel};
use kraken_transport::remote::probe_handshake;
use tokio::net::TcpListener;
use tonic::{Code, Status};
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

    let channel = channel(&client_tls, &address, Some("localhost"), Role::Tracker).unwrap();
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
    assert!(
        matches!(stranger, Err(kraken_tls::TlsError::NotSignedByCa { .. })),
        "{stranger:?}"
    );
    let stranger = TlsMaterial::load(&other_pki.tls_config(Role::Agent)).unwrap();
    let refused = HealthClient::new(channel_to(&stranger, &address))
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await;
    // Refused in the handshake (the server does not know the client's CA, and the client does
    // not know the server's), not by a handler and not by a timeout.
    let refused = refused.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::Unavailable, "{refused:?}");
    let chain = format!("{refused:?}");
    assert!(
        chain.contains("UnknownIssuer") || chain.contains("UnknownCA"),
        "a certificate refusal, not another failure: {chain}"
    );

    stop.send(()).unwrap();
    task.await.unwrap().unwrap();
}

fn channel_to(tls: &TlsMaterial, address: &str) -> kraken_transport::observe::ObservedChannel {
    channel(tls, address, Some("localhost"), Role::Tracker).unwrap()
}

/// A server with `limits`, presenting a certificate of `role`; stops when the sender drops.
struct TestServer {
    address: String,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<Result<(), kraken_transport::grpc::GrpcError>>,
}

impl TestServer {
    async fn start(pki: &kraken_tls::DevPki, role: Role, limits: GrpcServerLimits) -> Self {
        Self::start_trusting(pki, role, limits, &[]).await
    }

    /// As `start`, also trusting each `(name, pki)`'s CA as the remote cluster `name`.
    async fn start_trusting(
        pki: &kraken_tls::DevPki,
        role: Role,
        limits: GrpcServerLimits,
        remotes: &[(&str, &kraken_tls::DevPki)],
    ) -> Self {
        let tls = TlsMaterial::load(&pki.tls_config(role)).unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap().to_string();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let remotes: Vec<(String, std::path::PathBuf)> = remotes
            .iter()
            .map(|(name, remote)| (name.to_string(), remote.ca_cert_path()))
            .collect();
        let domains = TrustDomains::load(&tls, &remotes).unwrap();
        let server = GrpcServer::with_trust(&tls, domains, limits).unwrap();
        let task = tokio::spawn(server.serve(listener, async {
            let _ = stopped.await;
        }));
        Self {
            address,
            stop: Some(stop),
            task,
        }
    }

    async fn stop(mut self) {
        let _ = self.stop.take().map(|s| s.send(()));
        self.task.await.unwrap().unwrap();
    }
}

/// Calls `path` with one empty message and returns the status the server answered with
/// before any response message (`Ok` when the call was let through and started streaming).
async fn call_raw(
    channel: kraken_transport::observe::ObservedChannel,
    path: &'static str,
) -> Result<(), Status> {
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready()
        .await
        .map_err(|e| Status::unavailable(e.to_string()))?;
    let codec = tonic_prost::ProstCodec::<(), ()>::default();
    let request = tonic::Request::new(tokio_stream::iter(vec![()]));
    grpc.streaming(request, http::uri::PathAndQuery::from_static(path), codec)
        .await
        .map(drop)
}

/// A call on `channel` fails at the handshake (`UNAVAILABLE`), for the reason `why`.
async fn assert_connection_refused(channel: kraken_transport::observe::ObservedChannel, why: &str) {
    let status = call_raw(channel, "/grpc.health.v1.Health/Check")
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert!(
        format!("{status:?}").contains(why),
        "the refusal names the reason `{why}`: {status:?}"
    );
}

#[tokio::test]
async fn every_method_admits_exactly_the_roles_in_the_access_table() {
    kraken_tls::install_crypto_provider();
    let dir = tempfile::tempdir().unwrap();
    let pki = generate_dev_pki(dir.path(), &DevPkiOptions::default()).unwrap();
    // No application services: a call the table admits reaches the router and comes back
    // UNIMPLEMENTED (or, for health and reflection, is served); one it refuses never gets
    // that far.
    let server = TestServer::start(&pki, Role::Tracker, GrpcServerLimits::default()).await;
    assert_local_callers_get_exactly_the_access_table(&pki, &server).await;

    // A certificate from another CA never gets to a method: the handshake fails.
    let other = tempfile::tempdir().unwrap();
    let other_pki = generate_dev_pki(other.path(), &DevPkiOptions::default()).unwrap();
    let stranger = TlsMaterial::load(&other_pki.tls_config(Role::Origin)).unwrap();
    let stranger = channel(&stranger, &server.address, Some("localhost"), Role::Tracker).unwrap();
    // The stranger refuses our server first (it does not trust our CA).
    assert_connection_refused(stranger, "UnknownIssuer").await;
    server.stop().await;
}

/// Every role of `pki` calls every method of a server (holding a tracker certificate) and is
/// admitted exactly where [`access::ACCESS`] says.
async fn assert_local_callers_get_exactly_the_access_table(
    pki: &kraken_tls::DevPki,
    server: &TestServer,
) {
    let mut checked = 0;
    for role in Role::ALL {
        let tls = TlsMaterial::load(&pki.tls_config(role)).unwrap();
        let channel = channel(&tls, &server.address, Some("localhost"), Role::Tracker).unwrap();
        for (method, allowed) in access::ACCESS {
            let outcome = call_raw(channel.clone(), method).await;
            if allowed.contains(&role) {
                if let Err(status) = &outcome {
                    assert!(
                        !matches!(
                            status.code(),
                            Code::PermissionDenied | Code::Unauthenticated
                        ),
                        "{role} should be let through to {method}: {status:?}"
                    );
                }
            } else {
                let status = outcome.expect_err(method);
                assert_eq!(status.code(), Code::PermissionDenied, "{role} {method}");
                assert!(
                    status
                        .message()
                        .contains(&format!("`{role}` may not call `{method}`")),
                    "{status:?}"
                );
            }
            checked += 1;
        }
        // A method nobody listed is refused to everyone, not left open.
        let status = call_raw(channel, "/kraken.origin.v1.BlobService/Undocumented")
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::PermissionDenied, "{role}");
        assert!(
            status.message().contains("not in the access table"),
            "{status:?}"
        );
    }
    assert_eq!(checked, Role::ALL.len() * access::ACCESS.len());
}

/// Two dev PKIs, each a cluster with its own CA: `a` replicates to `b`.
fn two_clusters() -> (tempfile::TempDir, kraken_tls::DevPki, kraken_tls::DevPki) {
    let dir = tempfile::tempdir().unwrap();
    let a = generate_dev_pki(&dir.path().join("a"), &DevPkiOptions::default()).unwrap();
    let b = generate_dev_pki(&dir.path().join("b"), &DevPkiOptions::default()).unwrap();
    (dir, a, b)
}

/// Clusters a, b and c, each its own CA, and a build-index server of b that trusts a.
async fn b_trusting_a() -> (tempfile::TempDir, [kraken_tls::DevPki; 3], TestServer) {
    kraken_tls::install_crypto_provider();
    let (dir, a, b) = two_clusters();
    let c = generate_dev_pki(&dir.path().join("c"), &DevPkiOptions::default()).unwrap();
    let trusting = TestServer::start_trusting(
        &b,
        Role::BuildIndex,
        GrpcServerLimits::default(),
        &[("a", &a)],
    )
    .await;
    (dir, [a, b, c], trusting)
}

/// `own`'s certificate of `role`, dialing the cluster whose CA is `remote`'s.
fn dialing(own: &kraken_tls::DevPki, role: Role, remote: &kraken_tls::DevPki) -> TlsMaterial {
    TlsMaterial::load_for_remote(&own.tls_config(role), &remote.ca_cert_path()).unwrap()
}

#[tokio::test]
async fn every_method_admits_exactly_the_foreign_roles_in_the_foreign_table() {
    kraken_tls::install_crypto_provider();
    let (_dir, a, b) = two_clusters();
    // Cluster b's server trusts cluster a. It holds a tracker certificate, like the local
    // table's test, so every method of every service can be tried on it.
    let server =
        TestServer::start_trusting(&b, Role::Tracker, GrpcServerLimits::default(), &[("a", &a)])
            .await;
    let mut checked = 0;
    for role in Role::ALL {
        let tls = dialing(&a, role, &b);
        let channel = channel(&tls, &server.address, Some("localhost"), Role::Tracker).unwrap();
        let mut admitted = Vec::new();
        for (method, _) in access::ACCESS {
            let outcome = call_raw(channel.clone(), method).await;
            let foreign = access::allowed_foreign_roles(method).unwrap_or_default();
            if foreign.contains(&role) {
                if let Err(status) = &outcome {
                    assert!(
                        !matches!(
                            status.code(),
                            Code::PermissionDenied | Code::Unauthenticated
                        ),
                        "a's {role} should be let through to {method}: {status:?}"
                    );
                }
                admitted.push(*method);
            } else {
                let status = outcome.expect_err(method);
                assert_eq!(status.code(), Code::PermissionDenied, "a's {role} {method}");
                assert!(
                    status.message().contains(&format!(
                        "remote cluster `a` (role `{role}`) may not call `{method}`"
                    )),
                    "{status:?}"
                );
            }
            checked += 1;
        }
        let expected: Vec<&str> = access::FOREIGN_ACCESS
            .iter()
            .filter(|(_, roles)| roles.contains(&role))
            .map(|(method, _)| *method)
            .collect();
        admitted.sort_unstable();
        let mut expected_sorted = expected.clone();
        expected_sorted.sort_unstable();
        assert_eq!(admitted, expected_sorted, "a's {role}");
        match role {
            // What replication needs, and only that.
            Role::BuildIndex => assert_eq!(
                expected,
                [
                    "/kraken.buildindex.v1.TagService/Has",
                    "/kraken.buildindex.v1.TagService/Put"
                ]
            ),
            Role::Origin => assert_eq!(expected.len(), 8, "{expected:?}"),
            // A foreign certificate never acts as an agent, tracker, proxy or client here.
            Role::Agent | Role::Tracker | Role::Proxy | Role::Client => {
                assert!(expected.is_empty(), "a's {role} may call {expected:?}")
            }
        }
    }
    assert_eq!(checked, Role::ALL.len() * access::ACCESS.len());

    // b's own certificates are untouched by the trust in a.
    assert_local_callers_get_exactly_the_access_table(&b, &server).await;
    server.stop().await;
}

#[tokio::test]
async fn a_foreign_ca_is_refused_in_the_handshake_unless_trusted() {
    let (_dir, [a, b, c], trusting) = b_trusting_a().await;
    let local_only = TestServer::start(&b, Role::BuildIndex, GrpcServerLimits::default()).await;
    let has = "/kraken.buildindex.v1.TagService/Has";

    // a's build-index, dialing b with b's CA as its roots: admitted by the server that
    // trusts a (UNIMPLEMENTED: the test server has no TagService behind the table).
    let from_a = dialing(&a, Role::BuildIndex, &b);
    let status = call_raw(channel_to_build_index(&from_a, &trusting), has)
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unimplemented, "{status:?}");

    // The same certificate at a server of b that does not trust a: refused in the handshake,
    // and the error says that the remote refused *our* certificate.
    let status = health_check(channel_to_build_index(&from_a, &local_only)).await;
    let failure = kraken_tls::handshake_failure(&status, "b")
        .unwrap_or_else(|| panic!("no TLS failure found in {status:?}"));
    assert_eq!(
        failure.to_string(),
        "remote `b` refused our certificate (unknown CA)"
    );

    // An unlisted cluster c is refused by the trusting server just the same.
    let from_c = dialing(&c, Role::BuildIndex, &b);
    let status = health_check(channel_to_build_index(&from_c, &trusting)).await;
    assert!(
        matches!(
            kraken_tls::handshake_failure(&status, "b"),
            Some(kraken_tls::HandshakeFailure::RefusedOurCertificate { .. })
        ),
        "{status:?}"
    );

    // a's build-index dialing b with a's own material (a's CA as the roots) refuses b's
    // server itself: the message says which side to fix.
    let wrong_roots = TlsMaterial::load(&a.tls_config(Role::BuildIndex)).unwrap();
    let status = health_check(channel_to_build_index(&wrong_roots, &trusting)).await;
    let failure = kraken_tls::handshake_failure(&status, "b")
        .unwrap_or_else(|| panic!("no TLS failure found in {status:?}"));
    assert!(
        failure
            .to_string()
            .starts_with("remote's certificate is not from the configured CA for remote `b`"),
        "{failure}"
    );
    // Failures that are not TLS are not dressed up as such.
    let nobody = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let closed = nobody.local_addr().unwrap().to_string();
    drop(nobody);
    let status =
        health_check(channel(&from_a, &closed, Some("localhost"), Role::BuildIndex).unwrap()).await;
    assert_eq!(
        kraken_tls::handshake_failure(&status, "b"),
        None,
        "{status:?}"
    );

    trusting.stop().await;
    local_only.stop().await;
}

fn channel_to_build_index(
    tls: &TlsMaterial,
    server: &TestServer,
) -> kraken_transport::observe::ObservedChannel {
    channel(tls, &server.address, Some("localhost"), Role::BuildIndex).unwrap()
}

/// A health check that must fail; its status keeps the error chain behind it.
async fn health_check(channel: kraken_transport::observe::ObservedChannel) -> Status {
    HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .expect_err("the call should fail")
}

#[tokio::test]
async fn a_client_refuses_a_server_of_the_wrong_role() {
    kraken_tls::install_crypto_provider();
    let dir = tempfile::tempdir().unwrap();
    let pki = generate_dev_pki(dir.path(), &DevPkiOptions::default()).unwrap();
    let server = TestServer::start(&pki, Role::Origin, GrpcServerLimits::default()).await;
    let agent = TlsMaterial::load(&pki.tls_config(Role::Agent)).unwrap();
    // An agent dialing its tracker reaches a server holding an origin certificate (valid,
    // same CA, same host name): it refuses to talk.
    let to_tracker = channel(&agent, &server.address, Some("localhost"), Role::Tracker).unwrap();
    assert_connection_refused(to_tracker, "RoleNotAllowed").await;
    // Dialed as what it is, the same server answers.
    let to_origin = channel(&agent, &server.address, Some("localhost"), Role::Origin).unwrap();
    call_raw(to_origin, "/grpc.health.v1.Health/Check")
        .await
        .unwrap();
    server.stop().await;
}

#[tokio::test]
async fn silent_connections_are_closed_and_capped() {
    use tokio::io::AsyncReadExt;

    kraken_tls::install_crypto_provider();
    let dir = tempfile::tempdir().unwrap();
    let pki = generate_dev_pki(dir.path(), &DevPkiOptions::default()).unwrap();
    let limits = GrpcServerLimits {
        max_connections: 1,
        tls_handshake_timeout: Duration::from_millis(300),
        ..GrpcServerLimits::default()
    };
    let server = TestServer::start(&pki, Role::Tracker, limits).await;

    // A slow-loris connection: TCP only, never a TLS byte. It takes the only slot.
    let mut silent = tokio::net::TcpStream::connect(&server.address)
        .await
        .unwrap();
    let agent = TlsMaterial::load(&pki.tls_config(Role::Agent)).unwrap();
    let client = channel(&agent, &server.address, Some("localhost"), Role::Tracker).unwrap();
    let (order_tx, mut order) = tokio::sync::mpsc::unbounded_channel();
    let closed_tx = order_tx.clone();
    let watcher = tokio::spawn(async move {
        let mut byte = [0u8; 1];
        // EOF (or a reset) once the handshake timeout closes it; bounded so a server that
        // never closes fails the test instead of hanging it.
        let read = tokio::time::timeout(Duration::from_secs(30), silent.read(&mut byte)).await;
        let _ = closed_tx.send(("silent closed", read.is_ok()));
    });
    let caller = tokio::spawn(async move {
        let result = tokio::time::timeout(
            Duration::from_secs(30),
            call_raw(client, "/grpc.health.v1.Health/Check"),
        )
        .await;
        let _ = order_tx.send(("call answered", matches!(result, Ok(Ok(())))));
    });
    // The silent connection is closed by the server (it was not left open), and only then,
    // with its slot free, is the real caller served.
    assert_eq!(order.recv().await, Some(("silent closed", true)));
    assert_eq!(order.recv().await, Some(("call answered", true)));
    watcher.await.unwrap();
    caller.await.unwrap();
    server.stop().await;
}

#[tokio::test]
async fn the_handshake_probe_names_a_refused_certificate_and_nothing_else() {
    let (_dir, [a, b, c], trusting) = b_trusting_a().await;
    let address = trusting.address.clone();
    let probe = |material: TlsMaterial| {
        let address = address.clone();
        async move { probe_handshake(&material, &address, "localhost", "b").await }
    };
    // An unlisted cluster: the server's alert, found by reading after the handshake.
    let refused = probe(dialing(&c, Role::BuildIndex, &b)).await;
    assert!(
        matches!(
            refused,
            Some(kraken_tls::HandshakeFailure::RefusedOurCertificate { .. })
        ),
        "{refused:?}"
    );
    assert_eq!(
        refused.unwrap().to_string(),
        "remote `b` refused our certificate (unknown CA)"
    );
    // A trusted cluster's certificate: nothing to report.
    assert_eq!(probe(dialing(&a, Role::BuildIndex, &b)).await, None);
    // Our roots do not hold the server's CA: our side refuses, and says so.
    let ours = probe(TlsMaterial::load(&a.tls_config(Role::BuildIndex)).unwrap()).await;
    assert!(
        matches!(
            ours,
            Some(kraken_tls::HandshakeFailure::NotFromConfiguredCa { .. })
        ),
        "{ours:?}"
    );
    // Nobody listening is not a TLS problem.
    let nobody = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let closed = nobody.local_addr().unwrap().to_string();
    drop(nobody);
    let from_a = dialing(&a, Role::BuildIndex, &b);
    assert_eq!(
        probe_handshake(&from_a, &closed, "localhost", "b").await,
        None
    );
}
