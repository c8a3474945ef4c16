//! `TrackerService` over real mTLS, with an in-process fake of the origins.

use std::sync::Arc;
use std::time::Duration;

use kraken_config::tracker::HandoutPriority;
use kraken_core::{Digest, PeerId, PeerInfo};
use kraken_proto::common::v1 as pb;
use kraken_proto::tracker::v1::tracker_service_client::TrackerServiceClient;
use kraken_proto::tracker::v1::{AnnounceRequest, GetMetaInfoRequest};
use kraken_tls::Role;
use kraken_tracker::{
    HandoutPolicy, MemoryPeerStore, OriginError, RETRY_AFTER_MS, Tracker, TrackerSettings,
};
use kraken_transport::grpc::{GrpcServer, GrpcServerLimits};
use kraken_transport::observe::ObservedChannel;

use crate::support::{
    FakeOrigins, Pki, ServerGuard, metainfo_of, peer, tracker_client, tracker_client_with, wire,
};

const NAMESPACE: &str = "library/ubuntu";

struct Fixture {
    pki: Pki,
    fake: Arc<FakeOrigins>,
    server: ServerGuard,
}

impl Fixture {
    async fn start(fake: Arc<FakeOrigins>, limit: usize) -> Self {
        Self::start_with(fake, limit, TrackerSettings::default()).await
    }

    /// A tracker with `settings`, but the hand-out `limit` and the timings of every test here.
    async fn start_with(fake: Arc<FakeOrigins>, limit: usize, settings: TrackerSettings) -> Self {
        let pki = Pki::new();
        let tracker = Tracker::new(
            Arc::new(MemoryPeerStore::new(Duration::from_secs(3600))),
            fake.clone(),
            TrackerSettings {
                policy: HandoutPolicy::new(HandoutPriority::Completeness, limit),
                announce_interval: Duration::from_millis(2500),
                metainfo_cache_ttl: Duration::from_secs(300),
                ..settings
            },
        );
        let tls = pki.tls(Role::Tracker);
        let server = ServerGuard::spawn(move |listener, shutdown| async move {
            GrpcServer::new(&tls, GrpcServerLimits::default())?
                .add_service(tracker.into_server())
                .serve(listener, shutdown)
                .await
        })
        .await;
        Self { pki, fake, server }
    }

    fn client(&self, role: Role) -> TrackerServiceClient<ObservedChannel> {
        tracker_client(&self.pki, role, self.server.addr)
    }
}

fn origins() -> Vec<PeerInfo> {
    (200..202)
        .map(|n| PeerInfo {
            origin: true,
            ..peer(n, 15001, true)
        })
        .collect()
}

fn announce(digest: &Digest, me: &PeerInfo) -> AnnounceRequest {
    AnnounceRequest {
        namespace: NAMESPACE.into(),
        digest: digest.to_string(),
        peer: Some(wire(me)),
        ..AnnounceRequest::default()
    }
}

fn ids(peers: &[pb::PeerInfo]) -> Vec<PeerId> {
    peers
        .iter()
        .map(|p| PeerId::from_slice(&p.peer_id).unwrap())
        .collect()
}

#[tokio::test]
async fn a_second_peer_is_handed_the_first_and_the_origins_but_never_itself() {
    let fixture = Fixture::start(FakeOrigins::with_owners(origins()), 50).await;
    let mut client = fixture.client(Role::Agent);
    let blob = Digest::of(b"layer");
    let (a, b) = (peer(1, 16001, false), peer(2, 16002, false));

    let first = client
        .announce(announce(&blob, &a))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        first.interval,
        Some(prost_types::Duration {
            seconds: 2,
            nanos: 500_000_000
        })
    );
    let handed = ids(&first.peers);
    assert_eq!(handed.len(), 2, "only the origins so far: {handed:?}");
    assert!(first.peers.iter().all(|p| p.origin));

    let second = client
        .announce(announce(&blob, &b))
        .await
        .unwrap()
        .into_inner();
    let handed = ids(&second.peers);
    assert!(
        !handed.contains(&b.peer_id),
        "the caller is never handed to itself"
    );
    assert_eq!(handed.len(), 3, "{handed:?}");
    let first_peer = second
        .peers
        .iter()
        .find(|p| p.peer_id.as_ref() == a.peer_id.as_bytes())
        .expect("the first peer is handed out");
    assert_eq!(
        (first_peer.ip.as_str(), first_peer.port, first_peer.origin),
        ("127.0.0.1", 16001, false)
    );
    for origin in origins() {
        assert!(handed.contains(&origin.peer_id));
    }

    // Re-announcing does not make the caller appear either, and another blob is separate.
    let again = client
        .announce(announce(&blob, &a))
        .await
        .unwrap()
        .into_inner();
    assert!(!ids(&again.peers).contains(&a.peer_id));
    assert!(ids(&again.peers).contains(&b.peer_id));
    let other = client
        .announce(announce(&Digest::of(b"other"), &b))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(ids(&other.peers).len(), 2, "only origins for a fresh blob");
}

#[tokio::test]
async fn the_limit_holds_and_complete_callers_get_nothing() {
    let fixture = Fixture::start(FakeOrigins::with_owners(origins()), 4).await;
    let mut client = fixture.client(Role::Agent);
    let blob = Digest::of(b"layer");
    // Every announce comes from 127.0.0.1, where the tracker records it: distinct ports keep
    // the peers' addresses apart (the hand-out leaves out peers at the caller's address).
    for n in 1..=10 {
        client
            .announce(announce(&blob, &peer(n, 16000 + u16::from(n), n <= 3)))
            .await
            .unwrap();
    }
    let handout = client
        .announce(announce(&blob, &peer(20, 16020, false)))
        .await
        .unwrap()
        .into_inner()
        .peers;
    assert_eq!(handout.len(), 4);
    assert_eq!(
        handout.iter().filter(|p| p.origin).count(),
        2,
        "origins always fit"
    );
    // Completeness order: no agent here has been reported serving by another host, so a
    // claim of completeness earns nothing and the origins come first.
    assert!(handout[..2].iter().all(|p| p.origin), "{handout:?}");

    let fresh = Digest::of(b"fresh");
    let seeder = peer(30, 16030, true);
    let reply = client
        .announce(announce(&fresh, &seeder))
        .await
        .unwrap()
        .into_inner();
    assert!(
        reply.peers.is_empty(),
        "a complete caller waits to be dialled"
    );
    assert!(reply.interval.is_some());
    // ... but it was recorded, and leechers are sent to it after the origins until another
    // host reports that it served (see `a_fake_seeder_comes_after_the_origins_...`).
    let handout = client
        .announce(announce(&fresh, &peer(21, 16021, false)))
        .await
        .unwrap()
        .into_inner()
        .peers;
    assert_eq!(handout.len(), 3);
    assert_eq!(ids(&handout[2..]), vec![seeder.peer_id]);
    assert!(handout[2].complete && !handout[2].origin);
}

#[tokio::test]
async fn announces_still_work_when_the_origins_cannot_be_asked() {
    let fake = FakeOrigins::with_owners(origins());
    *fake.owners_fail.lock().unwrap() = true;
    let fixture = Fixture::start(fake, 50).await;
    let mut client = fixture.client(Role::Origin);
    let blob = Digest::of(b"layer");
    client
        .announce(announce(&blob, &peer(1, 16001, false)))
        .await
        .unwrap();
    let handout = client
        .announce(announce(&blob, &peer(2, 16002, false)))
        .await
        .unwrap()
        .into_inner()
        .peers;
    assert_eq!(ids(&handout), vec![PeerId::from_array([1; 20])]);
}

#[tokio::test]
async fn invalid_requests_are_refused_naming_the_field() {
    let fixture = Fixture::start(FakeOrigins::with_owners(origins()), 50).await;
    let mut client = fixture.client(Role::Agent);
    let blob = Digest::of(b"layer");
    let good = announce(&blob, &peer(1, 16001, false));

    let mut bad_port = good.clone();
    bad_port.peer.as_mut().unwrap().port = 0;
    let mut bad_ip = good.clone();
    bad_ip.peer.as_mut().unwrap().ip = "not-an-ip".into();
    let mut bad_id = good.clone();
    bad_id.peer.as_mut().unwrap().peer_id = bytes::Bytes::from_static(b"short");
    let cases = [
        (
            AnnounceRequest {
                digest: "sha256:nothex".into(),
                ..good.clone()
            },
            "digest",
        ),
        (
            AnnounceRequest {
                digest: String::new(),
                ..good.clone()
            },
            "digest",
        ),
        (
            AnnounceRequest {
                namespace: "Library/Ubuntu".into(),
                ..good.clone()
            },
            "namespace",
        ),
        (
            AnnounceRequest {
                namespace: String::new(),
                ..good.clone()
            },
            "namespace",
        ),
        (
            AnnounceRequest {
                peer: None,
                ..good.clone()
            },
            "peer",
        ),
        (bad_port, "port"),
        (bad_ip, "ip"),
        (bad_id, "peer_id"),
    ];
    for (request, field) in cases {
        let status = client.announce(request).await.unwrap_err();
        assert_eq!(
            status.code(),
            tonic::Code::InvalidArgument,
            "{field}: {status:?}"
        );
        assert!(
            status.message().contains(&format!("`{field}`")),
            "{field}: {}",
            status.message()
        );
    }

    let status = client
        .get_meta_info(GetMetaInfoRequest {
            namespace: NAMESPACE.into(),
            digest: "md5:abc".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    assert!(
        status.message().contains("`digest`"),
        "{}",
        status.message()
    );
    let status = client
        .get_meta_info(GetMetaInfoRequest {
            namespace: "/bad".into(),
            digest: blob.to_string(),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    assert!(
        status.message().contains("`namespace`"),
        "{}",
        status.message()
    );
    assert_eq!(fixture.fake.metainfo_calls(), 0);
}

#[tokio::test]
async fn only_swarm_members_may_announce() {
    let fixture = Fixture::start(FakeOrigins::with_owners(origins()), 50).await;
    let blob = Digest::of(b"layer");
    for role in [Role::Proxy, Role::Client, Role::BuildIndex, Role::Tracker] {
        let status = fixture
            .client(role)
            .announce(announce(&blob, &peer(1, 16001, false)))
            .await
            .unwrap_err();
        assert_eq!(status.code(), tonic::Code::PermissionDenied, "{role}");
        assert!(
            status.message().contains(role.as_str()),
            "{}",
            status.message()
        );
    }
    // The refused announce was not recorded.
    let handout = fixture
        .client(Role::Agent)
        .announce(announce(&blob, &peer(2, 16002, false)))
        .await
        .unwrap()
        .into_inner()
        .peers;
    assert!(handout.iter().all(|p| p.origin), "{handout:?}");

    let status = fixture
        .client(Role::BuildIndex)
        .get_meta_info(GetMetaInfoRequest {
            namespace: NAMESPACE.into(),
            digest: blob.to_string(),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::PermissionDenied);
}

#[tokio::test]
async fn metainfo_failures_pass_through_and_only_successes_are_cached() {
    let fake = FakeOrigins::with_owners(origins());
    let content = vec![42u8; 5000];
    let metainfo = metainfo_of(&content);
    let present = *metainfo.digest();
    let missing = Digest::of(b"missing");
    let fetching = Digest::of(b"fetching");
    let broken = Digest::of(b"broken");
    fake.answer(present, Ok(metainfo.clone()));
    fake.answer(
        missing,
        Err(OriginError::NotFound {
            digest: missing,
            origin: "origin1:15002".into(),
            message: "no backend has it".into(),
        }),
    );
    fake.answer(
        fetching,
        Err(OriginError::Fetching {
            digest: fetching,
            origin: "origin1:15002".into(),
            retry_after: Duration::from_millis(2500),
        }),
    );
    fake.answer(
        broken,
        Err(OriginError::Call {
            origin: "origin2:15002".into(),
            status: tonic::Status::unavailable("connection refused"),
        }),
    );
    let fixture = Fixture::start(fake, 50).await;
    let mut client = fixture.client(Role::Agent);
    let ask = |digest: Digest| GetMetaInfoRequest {
        namespace: NAMESPACE.into(),
        digest: digest.to_string(),
    };

    for _ in 0..2 {
        let status = client.get_meta_info(ask(missing)).await.unwrap_err();
        assert_eq!(status.code(), tonic::Code::NotFound);
        assert!(
            status.message().contains("not found"),
            "{}",
            status.message()
        );
        assert!(
            status.message().contains(&missing.to_string()),
            "{}",
            status.message()
        );
    }
    assert_eq!(
        fixture.fake.metainfo_calls(),
        2,
        "NOT_FOUND is never cached"
    );

    for _ in 0..2 {
        let status = client.get_meta_info(ask(fetching)).await.unwrap_err();
        assert_eq!(status.code(), tonic::Code::Unavailable);
        assert_eq!(status.metadata().get(RETRY_AFTER_MS).unwrap(), "2500");
    }
    assert_eq!(
        fixture.fake.metainfo_calls(),
        4,
        "UNAVAILABLE is never cached"
    );

    let status = client.get_meta_info(ask(broken)).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unavailable);
    assert!(
        status.message().contains("origin2:15002"),
        "{}",
        status.message()
    );
    assert_eq!(status.metadata().get(RETRY_AFTER_MS).unwrap(), "1000");
    assert_eq!(fixture.fake.metainfo_calls(), 5);

    for _ in 0..3 {
        let reply = client
            .get_meta_info(ask(present))
            .await
            .unwrap()
            .into_inner();
        let wire = reply.metainfo.unwrap();
        assert_eq!(kraken_core::MetaInfo::try_from(&wire).unwrap(), metainfo);
    }
    // Another namespace asking for the same content hits the cache too.
    let mut other_namespace = ask(present);
    other_namespace.namespace = "team/app".into();
    client.get_meta_info(other_namespace).await.unwrap();
    assert_eq!(
        fixture.fake.metainfo_calls(),
        6,
        "a success is fetched once"
    );
}

#[tokio::test]
async fn concurrent_metainfo_requests_share_one_origin_call() {
    let fake = FakeOrigins::with_owners(origins());
    let metainfo = metainfo_of(&[7u8; 3000]);
    fake.answer(*metainfo.digest(), Ok(metainfo.clone()));
    let fixture = Fixture::start(fake, 50).await;
    let client = fixture.client(Role::Agent);
    let requests = (0..20).map(|_| {
        let mut client = client.clone();
        let digest = metainfo.digest().to_string();
        async move {
            client
                .get_meta_info(GetMetaInfoRequest {
                    namespace: NAMESPACE.into(),
                    digest,
                })
                .await
        }
    });
    for reply in futures::future::join_all(requests).await {
        reply.unwrap();
    }
    assert_eq!(fixture.fake.metainfo_calls(), 1);
}

// ---------------------------------------------------------------------------------------------
// A certificate holder cannot poison the swarm.

/// The hand-out a fresh leecher gets, as (peer id, ip, port) of the non-origin peers.
async fn handed_agents(
    client: &mut TrackerServiceClient<ObservedChannel>,
    blob: &Digest,
    me: u8,
) -> Vec<(PeerId, String, u32)> {
    let mut peers: Vec<_> = client
        .announce(announce(blob, &peer(me, 17000, false)))
        .await
        .unwrap()
        .into_inner()
        .peers
        .into_iter()
        .filter(|p| !p.origin)
        .map(|p| (PeerId::from_slice(&p.peer_id).unwrap(), p.ip, p.port))
        .collect();
    peers.sort();
    peers
}

#[tokio::test]
async fn a_peer_id_announced_from_another_certificate_is_refused() {
    let fixture = Fixture::start(FakeOrigins::with_owners(origins()), 50).await;
    let mut owner = fixture.client(Role::Agent);
    let mut thief = tracker_client_with(&fixture.pki.another(Role::Agent), fixture.server.addr);
    let blob = Digest::of(b"layer");
    let victim = peer(1, 16001, false);
    owner.announce(announce(&blob, &victim)).await.unwrap();

    // Same role, same CA, another certificate: it may not speak for peer 1, complete or not,
    // on this blob or any other.
    for (digest, complete) in [(blob, true), (blob, false), (Digest::of(b"other"), true)] {
        let stolen = PeerInfo {
            complete,
            ..peer(1, 16666, false)
        };
        let status = thief
            .announce(announce(&digest, &stolen))
            .await
            .unwrap_err();
        assert_eq!(status.code(), tonic::Code::PermissionDenied, "{status:?}");
        assert!(
            status.message().contains("another certificate")
                && status.message().contains(&victim.peer_id.to_string()),
            "{}",
            status.message()
        );
    }
    // An origin certificate is another identity too.
    let status = fixture
        .client(Role::Origin)
        .announce(announce(&blob, &peer(1, 16666, true)))
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::PermissionDenied);

    // Peer 1 is still where its owner said, and still incomplete.
    let handed = handed_agents(&mut owner, &blob, 9).await;
    assert_eq!(
        handed,
        vec![(victim.peer_id, "127.0.0.1".to_owned(), 16001)]
    );
    let reply = owner
        .announce(announce(&blob, &peer(8, 17000, false)))
        .await
        .unwrap();
    assert!(
        reply
            .into_inner()
            .peers
            .iter()
            .all(|p| !p.complete || p.origin)
    );

    // The thief's own peer ids are its own.
    thief
        .announce(announce(&blob, &peer(2, 16002, false)))
        .await
        .unwrap();
    let status = owner
        .announce(announce(&blob, &peer(2, 16002, false)))
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::PermissionDenied);
}

#[tokio::test]
async fn a_claimed_address_of_another_host_is_replaced_by_the_source() {
    let fixture = Fixture::start(FakeOrigins::with_owners(origins()), 50).await;
    let mut client = fixture.client(Role::Agent);
    let blob = Digest::of(b"layer");
    let elsewhere = PeerInfo {
        addr: "10.9.9.9:16001".parse().unwrap(),
        ..peer(1, 16001, true)
    };
    client.announce(announce(&blob, &elsewhere)).await.unwrap();
    assert_eq!(
        handed_agents(&mut client, &blob, 9).await,
        vec![(elsewhere.peer_id, "127.0.0.1".to_owned(), 16001)],
        "recorded at the connection's source IP, with the claimed port"
    );

    // A trusted source (a NAT, a sidecar) names the address itself.
    let trusting = Fixture::start_with(
        FakeOrigins::with_owners(origins()),
        50,
        TrackerSettings {
            trust_claimed_address_from: vec!["127.0.0.0/8".parse().unwrap()],
            ..TrackerSettings::default()
        },
    )
    .await;
    let mut client = trusting.client(Role::Agent);
    client.announce(announce(&blob, &elsewhere)).await.unwrap();
    assert_eq!(
        handed_agents(&mut client, &blob, 9).await,
        vec![(elsewhere.peer_id, "10.9.9.9".to_owned(), 16001)]
    );
}

#[tokio::test]
async fn unusable_addresses_are_refused() {
    let fixture = Fixture::start(FakeOrigins::with_owners(origins()), 50).await;
    let mut client = fixture.client(Role::Agent);
    let blob = Digest::of(b"layer");
    for (n, ip, problem) in [
        (1, "0.0.0.0", "unspecified"),
        (2, "::", "unspecified"),
        (3, "255.255.255.255", "broadcast"),
        (4, "224.0.0.1", "multicast"),
        (5, "ff02::1", "multicast"),
    ] {
        let mut request = announce(&blob, &peer(n, 16001, true));
        request.peer.as_mut().unwrap().ip = ip.into();
        let status = client.announce(request).await.unwrap_err();
        assert_eq!(
            status.code(),
            tonic::Code::InvalidArgument,
            "{ip}: {status:?}"
        );
        assert!(
            status.message().contains("claimed peer address") && status.message().contains(problem),
            "{ip}: {}",
            status.message()
        );
    }
    assert!(handed_agents(&mut client, &blob, 9).await.is_empty());
}

#[tokio::test]
async fn the_per_address_cap_refuses_the_33rd_fake_while_known_peers_refresh() {
    let fixture = Fixture::start(FakeOrigins::with_owners(origins()), 50).await;
    let mut client = fixture.client(Role::Agent);
    let blob = Digest::of(b"layer");
    // Fake seeders, all from this host (the default cap is 32 per address per blob).
    for n in 1..=32 {
        client
            .announce(announce(&blob, &peer(n, 16000 + u16::from(n), true)))
            .await
            .unwrap();
    }
    let status = client
        .announce(announce(&blob, &peer(33, 16033, true)))
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{status:?}");
    assert!(
        status.message().contains("32 peers at 127.0.0.1"),
        "{}",
        status.message()
    );
    // Known peers refresh at the cap (a flood cannot push them out)...
    for n in 1..=32 {
        client
            .announce(announce(&blob, &peer(n, 16000 + u16::from(n), true)))
            .await
            .unwrap();
    }
    // ... and other blobs have their own cap.
    client
        .announce(announce(&Digest::of(b"other"), &peer(33, 16033, true)))
        .await
        .unwrap();
    let status = client
        .announce(announce(&blob, &peer(34, 16034, false)))
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::ResourceExhausted);
}

/// Who a hand-out names, in order: origins as 0, agents by their first peer-id byte.
fn handout_order(reply: &kraken_proto::tracker::v1::AnnounceResponse) -> Vec<u8> {
    reply
        .peers
        .iter()
        .map(|p| if p.origin { 0 } else { p.peer_id[0] })
        .collect()
}

/// `me`'s announce, reporting the peers numbered `served` and `failed`.
fn reporting(digest: &Digest, me: &PeerInfo, served: &[u8], failed: &[u8]) -> AnnounceRequest {
    let id = |n: &u8| bytes::Bytes::copy_from_slice(PeerId::from_array([*n; 20]).as_bytes());
    AnnounceRequest {
        served_by: served.iter().map(id).collect(),
        failed_peers: failed.iter().map(id).collect(),
        ..announce(digest, me)
    }
}

#[tokio::test]
async fn a_fake_seeder_comes_after_the_origins_until_another_host_says_it_served() {
    // Trusted claimed addresses give each peer its own host (127.0.0.n) over one loopback.
    let fixture = Fixture::start_with(
        FakeOrigins::with_owners(origins()),
        50,
        TrackerSettings {
            trust_claimed_address_from: vec!["127.0.0.0/8".parse().unwrap()],
            ..TrackerSettings::default()
        },
    )
    .await;
    let mut client = fixture.client(Role::Agent);
    let blob = Digest::of(b"layer");
    // A "complete" peer at a dead port, and an honest leecher.
    client
        .announce(announce(&blob, &peer(9, 16009, true)))
        .await
        .unwrap();
    client
        .announce(announce(&blob, &peer(4, 16004, false)))
        .await
        .unwrap();

    let reply = client
        .announce(announce(&blob, &peer(2, 16002, false)))
        .await
        .unwrap()
        .into_inner();
    let order = handout_order(&reply);
    assert_eq!(order[..2], [0, 0], "origins before a bare claim: {order:?}");
    assert_eq!(order.len(), 4);

    // The fake vouching for itself from its own host earns nothing.
    client
        .announce(reporting(&blob, &peer(9, 16009, true), &[9], &[]))
        .await
        .unwrap();
    let reply = client
        .announce(announce(&blob, &peer(3, 16003, false)))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(handout_order(&reply)[..2], [0, 0]);

    // Another host got verified pieces from peer 9: it now goes first (were it honest).
    client
        .announce(reporting(&blob, &peer(2, 16002, false), &[9], &[]))
        .await
        .unwrap();
    let reply = client
        .announce(announce(&blob, &peer(3, 16003, false)))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(handout_order(&reply)[..3], [9, 0, 0]);

    // Another host could not reach it: last, behind every other agent.
    client
        .announce(reporting(&blob, &peer(3, 16003, false), &[], &[9]))
        .await
        .unwrap();
    let reply = client
        .announce(announce(&blob, &peer(5, 16005, false)))
        .await
        .unwrap()
        .into_inner();
    let order = handout_order(&reply);
    assert_eq!(order[..2], [0, 0], "{order:?}");
    assert_eq!(order.last(), Some(&9), "{order:?}");

    // Malformed and excess reports are ignored, never refused.
    let mut request = reporting(&blob, &peer(6, 16006, false), &[], &[]);
    request.served_by = vec![bytes::Bytes::from_static(b"short"); 100];
    request.failed_peers = vec![bytes::Bytes::new(); 100];
    client.announce(request).await.unwrap();
}

#[tokio::test]
async fn reports_from_the_reported_peers_own_source_address_are_ignored() {
    // Every client connects from 127.0.0.1 and is recorded there: one host.
    let fixture = Fixture::start(FakeOrigins::with_owners(origins()), 50).await;
    let mut client = fixture.client(Role::Agent);
    let blob = Digest::of(b"layer");
    client
        .announce(announce(&blob, &peer(9, 16009, true)))
        .await
        .unwrap();
    client
        .announce(reporting(&blob, &peer(2, 16002, false), &[9], &[]))
        .await
        .unwrap();
    let reply = client
        .announce(announce(&blob, &peer(3, 16003, false)))
        .await
        .unwrap()
        .into_inner();
    let order = handout_order(&reply);
    assert_eq!(order[..2], [0, 0], "a sybil cannot vouch: {order:?}");
}
