//! The issue 11 audit, replayed against a real cluster: each test mounts one attack and asserts
//! it no longer harms. Attacks already covered closer to the code they exercise are not
//! repeated here; this map lists every finding and where its test lives.
//!
//! | finding | test |
//! |---|---|
//! | slow-loris (silent or dripping clients) on gRPC, registry and metrics ports | [`slow_clients_are_cut_on_every_port`] (here); per server: `transport/tests/grpc_server.rs` `silent_connections_are_closed_and_capped`, `transport/tests/http_server.rs` `slow_headers_and_idle_connections_are_closed`, `a_body_that_stops_fails_its_request_and_frees_the_connection`, `connections_past_the_cap_wait_for_a_free_slot`, `tls_serves_and_a_silent_handshake_is_cut` |
//! | a certificate holder poisons a swarm with fake complete peers, or steals a peer id | [`a_poisoned_tracker_does_not_stop_a_pull`] (here); unit level: `services/tracker/tests/integration/service.rs` `a_peer_id_announced_from_another_certificate_is_refused`, `a_claimed_address_of_another_host_is_replaced_by_the_source`, `unusable_addresses_are_refused`, `the_per_address_cap_refuses_the_33rd_fake_while_known_peers_refresh`; the origin slot: `services/scheduler/src/core/connstate.rs` `the_last_free_slot_waits_for_a_wanted_origin`, `fake_seeders_ahead_of_the_origins_leave_an_origin_a_slot` |
//! | `Duplicate` and `Delete` callable by any role | `services/origin/tests/origin.rs` `duplicate_and_delete_are_refused_to_every_role_but_origin`, `roles_limit_what_a_caller_may_do`; every method × every role: `transport/tests/grpc_server.rs` `every_method_admits_exactly_the_roles_in_the_access_table` |
//! | a client talks to a server of the wrong role | `transport/tests/grpc_server.rs` `a_client_refuses_a_server_of_the_wrong_role` |
//! | a silent QUIC Initial blocks the accept loop | `transport/tests/quic.rs` `a_silent_quic_initial_does_not_hold_up_other_peers`, `a_handshake_that_never_completes_is_dropped_after_the_handshake_timeout`, `connections_from_one_address_are_capped` |
//! | an oversized piece stream is buffered whole | `transport/tests/quic.rs` `an_oversized_piece_is_refused_before_its_body_is_read`, `malformed_piece_streams_are_rejected` |
//! | anyone who reaches the proxy can push and re-tag | `services/proxy/tests/auth.rs` `anonymous_pushes_are_challenged_and_logins_are_checked`, `tokens_carry_what_each_user_may_do`; real clients: `interop/tests/registry_auth.rs` (skopeo refused anonymously, with a wrong password and as a pull-only user; Docker logs in over TLS and pushes) |
//! | fake "complete" peers win the hand-out | `services/tracker/tests/integration/service.rs` `a_fake_seeder_comes_after_the_origins_until_another_host_says_it_served`, `reports_from_the_reported_peers_own_source_address_are_ignored` |
//! | unbounded upload sessions, no maximum blob size, files held for hours | `services/proxy/tests/uploads.rs` `thousands_of_sessions_opened_at_once_stop_at_the_cap` (10,000 POSTs), `session_caps_answer_429_and_slots_free_when_sessions_end`, `a_blob_past_max_blob_size_is_413_size_invalid_and_nothing_is_stored`, `an_idle_session_expires_and_its_slot_and_file_are_freed` |
//! | a manifest check stats every reference after one is missing | `services/originclient/src/references.rs` `the_check_stops_at_the_first_missing_reference`, `a_missing_reference_cancels_the_stats_in_flight` |
//! | a client floods a registry port | `transport/tests/http_server.rs` `a_client_over_its_rate_gets_429_and_others_do_not` |
//! | the tracker's peer store has no caps | `services/tracker/tests/integration/service.rs` `the_per_address_cap_refuses_the_33rd_fake_while_known_peers_refresh`; Redis: `services/tracker/tests/integration/redis_store.rs` |
//! | `Content-Range: 0-18446744073709551615` wraps | `services/oci/src/range.rs` `a_content_range_of_two_to_the_64_bytes_is_refused_not_wrapped` |
//! | blobs and metadata world-readable | `services/store/tests/store.rs` `blobs_metadata_and_directories_are_not_world_readable` |
//!
//! Every wait here has a generous upper bound so that a regression fails instead of hanging;
//! no test asserts how long anything took.

// Test helpers outside `#[test]` functions: a panic there is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use kraken_core::{Digest, PeerId, PeerInfo};
use kraken_devcluster::ConfigHooks;
use kraken_proto::common::v1 as pb;
use kraken_proto::tracker::v1::AnnounceRequest;
use kraken_proto::tracker::v1::tracker_service_client::TrackerServiceClient;
use kraken_tests::{Cluster, blob};
use kraken_tls::{DevCa, LeafOptions, Role, TlsMaterial};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Short enough that the test is quick, long enough that honest loopback handshakes between
/// the cluster's own components (debug build, busy CI machine) finish well within it.
const SHORT: Duration = Duration::from_millis(500);

/// The most a server may take to close a slow client: far above `SHORT`, so only a server
/// that never closes fails the test.
const BOUND: Duration = Duration::from_secs(30);

/// The pause between two dripped bytes: well under `SHORT`, so the connection is never idle
/// for a full timeout and only a deadline on the whole header or handshake can cut it.
const DRIP_EVERY: Duration = Duration::from_millis(50);

/// Every component with short handshake and header timeouts, set through the `limits:` keys.
fn short_limits() -> ConfigHooks {
    ConfigHooks {
        tracker: Some(Arc::new(|config| {
            config.limits.grpc.tls_handshake_timeout = SHORT;
        })),
        build_index: Some(Arc::new(|config| {
            config.limits.grpc.tls_handshake_timeout = SHORT;
        })),
        proxy: Some(Arc::new(|config| {
            config.limits.grpc.tls_handshake_timeout = SHORT;
            config.limits.registry.header_read_timeout = SHORT;
            config.limits.registry.tls_handshake_timeout = SHORT;
        })),
        agents: Some(Arc::new(|_, config| {
            config.limits.grpc.tls_handshake_timeout = SHORT;
            config.limits.registry.header_read_timeout = SHORT;
            config.limits.registry.tls_handshake_timeout = SHORT;
        })),
    }
}

/// How a port is spoken to: TLS (gRPC) or plain HTTP (registry, metrics).
#[derive(Debug, Clone, Copy)]
enum Protocol {
    Tls,
    Http,
}

/// Half a request: the start of what a real client sends, never finished. The drip that
/// follows extends it without ever completing it.
fn half_request(protocol: Protocol) -> (Vec<u8>, u8) {
    match protocol {
        // A TLS record header announcing a 512-byte handshake message (a ClientHello), and
        // the first bytes of that message; the rest trickles in as zeros.
        Protocol::Tls => (
            vec![0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc],
            0,
        ),
        // A request line and the start of a header line that never ends.
        Protocol::Http => (
            b"GET /v2/ HTTP/1.1\r\nHost: kraken\r\nX-Slow: ".to_vec(),
            b'a',
        ),
    }
}

/// Whether the server at `addr` closes, within `bound`, a connection that sends nothing
/// (`drip: false`) or half a request and then one byte every [`DRIP_EVERY`] (`drip: true`).
async fn closed_by_server(
    addr: SocketAddr,
    protocol: Protocol,
    drip: bool,
    bound: Duration,
) -> bool {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let (start, filler) = half_request(protocol);
    if drip {
        stream.write_all(&start).await.unwrap();
    }
    let (mut read, mut write) = stream.into_split();
    let reader = async move {
        // Whatever the server answers (an HTTP 408, a TLS alert) is read and dropped; the
        // connection counts as closed at EOF or a reset.
        let mut buf = [0u8; 1024];
        loop {
            match read.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    };
    let dripper = async move {
        if !drip {
            return std::future::pending::<()>().await;
        }
        let mut tick = tokio::time::interval(DRIP_EVERY);
        loop {
            tick.tick().await;
            if write.write_all(&[filler]).await.is_err() {
                // The server reset the connection: that is the close we wait for, and the
                // reader sees it too.
                return std::future::pending::<()>().await;
            }
        }
    };
    tokio::time::timeout(bound, async {
        tokio::select! {
            () = reader => {}
            () = dripper => {}
        }
    })
    .await
    .is_ok()
}

/// The probe itself: a server that accepts and never closes keeps both slow clients, so a
/// port that lost its limits would fail [`slow_clients_are_cut_on_every_port`].
#[tokio::test]
async fn the_probe_notices_a_server_that_keeps_slow_clients() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let holder = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = listener.accept().await {
            held.push(stream);
        }
    });
    for drip in [false, true] {
        let bound = Duration::from_secs(1);
        assert!(!closed_by_server(addr, Protocol::Http, drip, bound).await);
        assert!(!closed_by_server(addr, Protocol::Tls, drip, bound).await);
    }
    holder.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_clients_are_cut_on_every_port() {
    let cluster = Cluster::builder()
        .origins(2)
        .max_replica(2)
        .agents(2)
        .customize(|builder| {
            builder
                .configure(short_limits())
                .configure_origins(|_, config| {
                    config.limits.grpc.tls_handshake_timeout = SHORT;
                })
        })
        .start()
        .await;
    // The cluster still works with the short limits: honest clients are not cut.
    let data = blob(64 << 10, 11);
    let digest = cluster.push("library/slow", data.clone()).await;
    assert_eq!(
        cluster.pull(0, "library/slow", &digest).await.unwrap(),
        data
    );

    // The devcluster runs no metrics endpoint; one is started here the way `kraken <component>`
    // starts it, with the same short header timeout.
    let metrics_listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let metrics_addr = metrics_listener.local_addr().unwrap();
    let stop_metrics = tokio_util::sync::CancellationToken::new();
    let metrics = tokio::spawn(kraken_telemetry::run_metrics_server(
        metrics_listener,
        kraken_telemetry::install_metrics_recorder(),
        kraken_transport::http::HttpServerLimits {
            header_read_timeout: SHORT,
            tls_handshake_timeout: SHORT,
            ..kraken_telemetry::metrics_server_limits()
        },
        stop_metrics.clone().cancelled_owned(),
    ));

    let mut ports = vec![
        (
            "tracker gRPC".to_owned(),
            cluster.tracker_addr,
            Protocol::Tls,
        ),
        (
            "build-index gRPC".to_owned(),
            cluster.build_index_addr(),
            Protocol::Tls,
        ),
        (
            "proxy gRPC".to_owned(),
            cluster.proxy.grpc_addr(),
            Protocol::Tls,
        ),
        (
            "proxy registry".to_owned(),
            cluster.proxy_registry_addr(),
            Protocol::Http,
        ),
        ("metrics".to_owned(), metrics_addr, Protocol::Http),
    ];
    for (i, origin) in cluster.origins.iter().enumerate() {
        ports.push((
            format!("origin {i} gRPC"),
            origin.grpc_addr(),
            Protocol::Tls,
        ));
    }
    for (i, agent) in cluster.agents.iter().enumerate() {
        ports.push((format!("agent {i} gRPC"), agent.grpc_addr(), Protocol::Tls));
        ports.push((
            format!("agent {i} registry"),
            cluster.agent_registry_addr(i),
            Protocol::Http,
        ));
    }

    // All at once: each attack holds its own connection, as a real slow-loris would.
    let attacks = ports.iter().flat_map(|(name, addr, protocol)| {
        [false, true].map(|drip| async move {
            let closed = closed_by_server(*addr, *protocol, drip, BOUND).await;
            (name.clone(), drip, closed)
        })
    });
    let results = futures::future::join_all(attacks).await;
    let kept: Vec<String> = results
        .iter()
        .filter(|(_, _, closed)| !closed)
        .map(|(name, drip, _)| {
            let how = if *drip { "dripping" } else { "silent" };
            format!("{name} ({how})")
        })
        .collect();
    assert!(
        kept.is_empty(),
        "ports that kept a slow client open for {BOUND:?}: {kept:?}"
    );

    // After the attack the cluster still serves.
    assert_eq!(
        cluster.pull(1, "library/slow", &digest).await.unwrap(),
        data
    );
    stop_metrics.cancel();
    metrics.await.unwrap().unwrap();
    cluster.shutdown().await;
}

/// A tracker client presenting `tls`.
fn tracker_client(
    tls: &TlsMaterial,
    addr: SocketAddr,
) -> TrackerServiceClient<kraken_transport::observe::ObservedChannel> {
    let channel =
        kraken_transport::grpc::channel(tls, &addr.to_string(), Some("localhost"), Role::Tracker)
            .unwrap();
    TrackerServiceClient::new(channel)
}

/// A second agent certificate from the cluster's CA: another holder of the role, with its own
/// identity.
fn another_agent_certificate(cluster: &Cluster) -> TlsMaterial {
    let read = |path: std::path::PathBuf| std::fs::read_to_string(path).unwrap();
    let ca = DevCa::from_pem(
        &read(cluster.pki.ca_cert_path()),
        &read(cluster.pki.ca_key_path()),
    )
    .unwrap();
    let cert = ca.issue(Role::Agent, &LeafOptions::default()).unwrap();
    TlsMaterial::from_pem(ca.cert_pem(), &cert.cert_pem, &cert.key_pem).unwrap()
}

fn announce(namespace: &str, digest: &Digest, peer: &PeerInfo) -> AnnounceRequest {
    AnnounceRequest {
        namespace: namespace.to_owned(),
        digest: digest.to_string(),
        peer: Some(pb::PeerInfo::from(peer)),
        ..AnnounceRequest::default()
    }
}

/// UDP ports nothing listens on: bound, noted, released.
fn dead_ports(n: usize) -> Vec<u16> {
    let sockets: Vec<std::net::UdpSocket> = (0..n)
        .map(|_| std::net::UdpSocket::bind("127.0.0.1:0").unwrap())
        .collect();
    sockets
        .iter()
        .map(|socket| socket.local_addr().unwrap().port())
        .collect()
}

/// Every agent pulls `digest` at once; returns how long the slowest took.
async fn pull_everywhere(
    cluster: &Cluster,
    namespace: &str,
    digest: &Digest,
    data: &[u8],
) -> Duration {
    let started = Instant::now();
    let pulls = (0..cluster.agents.len())
        .map(|i| async move { (i, cluster.pull(i, namespace, digest).await) });
    let results = tokio::time::timeout(Duration::from_secs(300), futures::future::join_all(pulls))
        .await
        .expect("every pull finished");
    for (i, result) in results {
        let copy = result.unwrap_or_else(|status| panic!("agent {i}: {status}"));
        assert_eq!(Digest::of(&copy), *digest, "agent {i}");
        assert_eq!(copy.len(), data.len(), "agent {i}");
    }
    started.elapsed()
}

const FAKES: usize = 60;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poisoned_tracker_does_not_stop_a_pull() {
    let cluster = Cluster::builder()
        .origins(1)
        .agents(4)
        .customize(|builder| {
            builder.configure(ConfigHooks {
                // Above the fakes plus the real agents, all on 127.0.0.1: every fake is
                // stored, so what saves the pull is the scheduler keeping a slot for an
                // origin, not the tracker's per-address cap.
                tracker: Some(Arc::new(|config| {
                    config.max_peers_per_address = 100;
                })),
                ..ConfigHooks::default()
            })
        })
        .start()
        .await;
    let namespace = "library/poison";

    // A clean run first, for comparison (and so the agents' peer ids are bound to their
    // certificate before the thief tries one).
    let clean = blob(4 << 20, 21);
    let clean_digest = cluster.push(namespace, clean.clone()).await;
    let clean_time = pull_everywhere(&cluster, namespace, &clean_digest, &clean).await;

    let data = blob(4 << 20, 22);
    let digest = cluster.push(namespace, data.clone()).await;

    // 60 fake seeders at dead ports, announced with the cluster's own agent certificate (what
    // a compromised agent holds).
    let mut insider = tracker_client(&cluster.tls(Role::Agent), cluster.tracker_addr);
    let fake_ports = dead_ports(FAKES);
    for &port in &fake_ports {
        let fake = PeerInfo {
            peer_id: PeerId::random(),
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            complete: true,
            origin: false,
        };
        let reply = insider.announce(announce(namespace, &digest, &fake)).await;
        assert!(reply.is_ok(), "the fake is stored: {reply:?}");
    }

    // The poison reaches the agents: a newcomer is handed mostly fakes (complete peers come
    // first in the hand-out), so an agent that filled its slots from the list would never
    // reach the origin.
    let newcomer = PeerInfo {
        peer_id: PeerId::random(),
        addr: SocketAddr::from(([127, 0, 0, 1], dead_ports(1)[0])),
        complete: false,
        origin: false,
    };
    let handed = insider
        .announce(announce(namespace, &digest, &newcomer))
        .await
        .unwrap()
        .into_inner()
        .peers;
    let fakes_handed = handed
        .iter()
        .filter(|peer| {
            let addr = PeerInfo::try_from(*peer).unwrap().addr;
            fake_ports.contains(&addr.port())
        })
        .count();
    assert!(
        fakes_handed * 2 > handed.len(),
        "{fakes_handed} fakes in a hand-out of {}",
        handed.len()
    );

    // Another certificate holder announcing under a real agent's peer id: refused, so it
    // cannot redirect that agent's entry.
    let victim = *cluster.agents[0].peer();
    let thief = PeerInfo {
        addr: SocketAddr::from(([127, 0, 0, 1], dead_ports(1)[0])),
        complete: true,
        ..victim
    };
    let mut outsider = tracker_client(&another_agent_certificate(&cluster), cluster.tracker_addr);
    let status = outsider
        .announce(announce(namespace, &digest, &thief))
        .await
        .expect_err("a stolen peer id is refused");
    assert_eq!(status.code(), tonic::Code::PermissionDenied, "{status:?}");

    let poisoned_time = pull_everywhere(&cluster, namespace, &digest, &data).await;
    println!(
        "{} agents pulling 4 MiB: clean {clean_time:?}, with {FAKES} fake seeders {poisoned_time:?}",
        cluster.agents.len()
    );
    cluster.shutdown().await;
}
