//! `HostPool` against real gRPC servers over mutual TLS: active health checks with their
//! hysteresis, DNS membership, passive checks and the order requests are tried in.

// Test helpers outside `#[test]` functions: a panic there is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::time::Duration;

use kraken_config::cluster::{
    ActiveHealthCheckConfig, HealthCheckFilterConfig, HealthMonitorConfig, HostList,
    PassiveHealthCheckConfig,
};
use kraken_core::Digest;
use kraken_tls::{DevPki, DevPkiOptions, Role, TlsMaterial, generate_dev_pki};
use kraken_transport::cluster::{HostPool, HostStatus, PoolOptions};
use kraken_transport::grpc::{GrpcServer, GrpcServerLimits};
use tokio::net::TcpListener;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

struct Pki {
    pki: DevPki,
    _dir: tempfile::TempDir,
}

impl Pki {
    fn new() -> Self {
        kraken_tls::install_crypto_provider();
        let dir = tempfile::tempdir().unwrap();
        let pki = generate_dev_pki(dir.path(), &DevPkiOptions::default()).unwrap();
        Self { pki, _dir: dir }
    }

    fn tls(&self, role: Role) -> TlsMaterial {
        TlsMaterial::load(&self.pki.tls_config(role)).unwrap()
    }
}

/// A gRPC server (health only) on `listener` until the token fires.
fn serve(pki: &Pki, listener: TcpListener) -> CancellationToken {
    let stop = CancellationToken::new();
    let server = GrpcServer::new(&pki.tls(Role::Origin), GrpcServerLimits::default()).unwrap();
    tokio::spawn(server.serve(listener, stop.clone().cancelled_owned()));
    stop
}

/// An address nothing listens on (bound, then released).
async fn dead_addr() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    listener.local_addr().unwrap()
}

fn checks(fails: u32, passes: u32) -> ActiveHealthCheckConfig {
    ActiveHealthCheckConfig {
        filter: HealthCheckFilterConfig { fails, passes },
        monitor: HealthMonitorConfig {
            interval: Duration::from_millis(50),
            timeout: Duration::from_millis(500),
        },
    }
}

fn status_of(pool: &HostPool, host: SocketAddr) -> HostStatus {
    pool.statuses()
        .into_iter()
        .find(|s| s.host == host.to_string())
        .unwrap()
}

async fn eventually(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn active_checks_take_a_dead_member_out_after_fails_and_back_after_passes() {
    let pki = Pki::new();
    let live_listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let live = live_listener.local_addr().unwrap();
    let _live = serve(&pki, live_listener);
    let dead = dead_addr().await;
    let hosts = HostList::of([live.to_string(), dead.to_string()]);
    let pool = HostPool::new(
        &hosts,
        &pki.tls(Role::Origin),
        PoolOptions::ring(Role::Origin, &Default::default()),
    )
    .unwrap();
    assert!(
        pool.is_healthy(&dead.to_string()),
        "every member starts healthy"
    );
    let shutdown = CancellationToken::new();
    let checks = pool.spawn_active_checks(&checks(3, 2), None, shutdown.clone());

    eventually("the dead member is marked unhealthy", || {
        !status_of(&pool, dead).healthy
    })
    .await;
    let fallen = status_of(&pool, dead);
    assert!(
        fallen.active.consecutive_failures >= 3,
        "only after `fails` failed probes in a row: {fallen:?}"
    );
    assert!(status_of(&pool, live).healthy);
    // Requests for any digest now try the live member first, the dead one last.
    for i in 0..8u32 {
        let order = pool.order(&Digest::of(&i.to_le_bytes()));
        assert_eq!(order, [live.to_string(), dead.to_string()]);
    }

    // It comes back: `passes` probes in a row make it healthy again.
    let revived = TcpListener::bind(dead).await.unwrap();
    let _revived = serve(&pki, revived);
    eventually("the revived member is healthy again", || {
        status_of(&pool, dead).healthy
    })
    .await;
    let risen = status_of(&pool, dead);
    assert!(risen.active.consecutive_passes >= 2, "{risen:?}");
    assert_eq!(risen.active.consecutive_failures, 0);

    shutdown.cancel();
    checks.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dns_name_becomes_one_member_per_address_checked_against_the_name() {
    let pki = Pki::new();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let _server = serve(&pki, listener);
    let hosts = HostList {
        static_hosts: Vec::new(),
        dns: Some(format!("localhost:{port}")),
    };
    let options = PoolOptions {
        refresh_interval: Duration::from_millis(100),
        ..PoolOptions::ring(Role::Origin, &Default::default())
    };
    let pool = HostPool::new(&hosts, &pki.tls(Role::Origin), options).unwrap();
    let members = pool.ready(Duration::from_secs(10)).await.unwrap();
    let v4 = format!("127.0.0.1:{port}");
    assert!(
        members.contains(&v4),
        "{:?}",
        members.labels().collect::<Vec<_>>()
    );
    assert_eq!(members.tls_name(&v4), Some("localhost"));

    // The probe reaches the member by IP and verifies the certificate against the name.
    let shutdown = CancellationToken::new();
    let _checks = pool.spawn_active_checks(&checks(1, 1), None, shutdown.clone());
    eventually("a successful probe of the resolved member", || {
        pool.statuses()
            .iter()
            .any(|s| s.host == v4 && s.active.consecutive_passes >= 2 && s.healthy)
    })
    .await;
    shutdown.cancel();
}

#[tokio::test]
async fn passive_checks_count_network_errors_and_answers_heal() {
    let pki = Pki::new();
    let hosts = HostList::of(["a.example:1", "b.example:1", "c.example:1"]);
    let passive = PassiveHealthCheckConfig {
        fails: 2,
        fail_timeout: Duration::from_secs(60),
    };
    let pool = HostPool::new(
        &hosts,
        &pki.tls(Role::Proxy),
        PoolOptions::upstream(Role::Origin, &passive),
    )
    .unwrap();
    let digest = Digest::of(b"blob");
    let ranked: Vec<String> = pool.ranked(&digest).into_iter().map(|h| h.label).collect();
    let first = ranked[0].clone();
    assert_eq!(pool.order(&digest), ranked);

    let refused = tonic::Status::unavailable("connection refused");
    assert!(pool.record_status(&first, &refused));
    assert!(pool.is_healthy(&first), "one error is not enough");
    // Answers never count against a host, and heal it.
    assert!(!pool.record_status(&first, &tonic::Status::not_found("no such blob")));
    pool.record_network_error(&first);
    assert!(pool.is_healthy(&first), "the answer reset the count");
    assert!(pool.record_network_error(&first), "second error in a row");
    assert!(!pool.is_healthy(&first));
    let mut expected = ranked[1..].to_vec();
    expected.push(first.clone());
    assert_eq!(
        pool.order(&digest),
        expected,
        "the unhealthy owner goes last"
    );
    let status = pool
        .statuses()
        .into_iter()
        .find(|s| s.host == first)
        .unwrap();
    assert_eq!((status.healthy, status.failures), (false, 3));
    pool.record_success(&first);
    assert!(pool.is_healthy(&first));
    // Owners reported by someone else are ordered the same way.
    pool.record_network_error("elsewhere:1");
    pool.record_network_error("elsewhere:1");
    assert_eq!(
        pool.order_hosts(["elsewhere:1".to_owned(), first.clone()]),
        [first, "elsewhere:1".to_owned()]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_name_override_is_what_every_members_certificate_is_checked_against() {
    kraken_tls::install_crypto_provider();
    let dir = tempfile::tempdir().unwrap();
    // A remote cluster's origin whose certificate names it `origin.b.example` (and loopback).
    let options = DevPkiOptions {
        hosts: vec!["origin.b.example".into()],
        ..DevPkiOptions::default()
    };
    let pki = Pki {
        pki: generate_dev_pki(dir.path(), &options).unwrap(),
        _dir: dir,
    };
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let _server = serve(&pki, listener);
    let check = |server_name: Option<&str>| {
        let options = PoolOptions {
            server_name: server_name.map(str::to_owned),
            ..PoolOptions::upstream(Role::Origin, &PassiveHealthCheckConfig::default())
        };
        let pool = HostPool::new(
            &HostList::of([addr.clone()]),
            &pki.tls(Role::Origin),
            options,
        )
        .unwrap();
        let channel = pool.channel(&addr).unwrap();
        async move {
            let request = tonic_health::pb::HealthCheckRequest::default();
            let answer = tokio::time::timeout(
                Duration::from_secs(20),
                tonic_health::pb::health_client::HealthClient::new(channel).check(request),
            )
            .await
            .expect("the health check hung");
            answer.map(drop)
        }
    };
    check(None)
        .await
        .expect("the address itself is in the certificate");
    check(Some("origin.b.example"))
        .await
        .expect("the override names a SAN of the certificate");
    let refused = check(Some("origin.c.example")).await.unwrap_err();
    let failure = kraken_tls::handshake_failure(&refused, "b");
    assert!(
        matches!(
            &failure,
            Some(kraken_tls::HandshakeFailure::RemoteCertificateRefused { .. })
        ),
        "the override is what the certificate is checked against: {failure:?} ({refused:?})"
    );
}
