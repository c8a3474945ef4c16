//! `RedisPeerStore` against a real `redis-server`.

use std::sync::Arc;
use std::time::Duration;

use kraken_config::Secret;
use kraken_config::tracker::{PeerStoreBackend, PeerStoreConfig, RedisPeerStoreConfig};
use kraken_core::{Digest, PeerId};
use kraken_tracker::{
    CapExceeded, CertIdentity, PeerEntry, PeerLimits, PeerReport, PeerStore, PeerStoreError,
    RedisPeerStore, ReportOutcome, build_peer_store,
};
use redis::AsyncCommands;

use crate::support::{ManualClock, RedisServer, WindowClock, refusing_addr};

fn config(addr: String, window: Duration, windows: u32) -> RedisPeerStoreConfig {
    RedisPeerStoreConfig {
        addr,
        dial_timeout: Duration::from_secs(2),
        peer_set_window_size: window,
        max_peer_set_windows: windows,
        ..RedisPeerStoreConfig::default()
    }
}

const UNLIMITED: PeerLimits = PeerLimits::UNLIMITED;

fn entry(n: u8, complete: bool) -> PeerEntry {
    PeerEntry::new(
        PeerId::from_array([n; 20]),
        format!("10.0.0.{n}:{}", 16000 + u16::from(n))
            .parse()
            .unwrap(),
        complete,
    )
}

fn sorted(mut peers: Vec<PeerEntry>) -> Vec<PeerEntry> {
    peers.sort_by_key(|p| p.peer_id);
    peers
}

#[tokio::test]
async fn announces_are_returned_by_digest() {
    let redis = RedisServer::start().await;
    let store = RedisPeerStore::connect(&config(redis.addr(), Duration::from_secs(3600), 5))
        .await
        .unwrap();
    let blob = Digest::of(b"blob");
    let ipv6 = PeerEntry::new(
        PeerId::from_array([9; 20]),
        "[2001:db8::9]:16009".parse().unwrap(),
        true,
    );
    for peer in [entry(1, false), entry(2, true), ipv6] {
        store.update(&blob, &peer, UNLIMITED).await.unwrap();
    }
    store
        .update(&Digest::of(b"other"), &entry(3, false), UNLIMITED)
        .await
        .unwrap();

    let peers = store.get_peers(&blob, 10).await.unwrap();
    assert_eq!(sorted(peers), vec![entry(1, false), entry(2, true), ipv6]);
    assert!(
        store
            .get_peers(&Digest::of(b"unknown"), 10)
            .await
            .unwrap()
            .is_empty()
    );
    assert!(store.get_peers(&blob, 0).await.unwrap().is_empty());
}

#[tokio::test]
async fn the_complete_flag_is_ored_across_windows() {
    let redis = RedisServer::start().await;
    let window = Duration::from_secs(60);
    let clock = ManualClock::at_window_start(window);
    let store = RedisPeerStore::connect_with_clock(&config(redis.addr(), window, 3), clock.clone())
        .await
        .unwrap();
    let blob = Digest::of(b"blob");

    // Peer 1 finishes in the next window; peer 2 finished first and then (late, reordered)
    // sent an incomplete announce; peer 3 flips within one window.
    store
        .update(&blob, &entry(1, false), UNLIMITED)
        .await
        .unwrap();
    store
        .update(&blob, &entry(2, true), UNLIMITED)
        .await
        .unwrap();
    store
        .update(&blob, &entry(3, false), UNLIMITED)
        .await
        .unwrap();
    store
        .update(&blob, &entry(3, true), UNLIMITED)
        .await
        .unwrap();
    clock.advance(window);
    store
        .update(&blob, &entry(1, true), UNLIMITED)
        .await
        .unwrap();
    store
        .update(&blob, &entry(2, false), UNLIMITED)
        .await
        .unwrap();

    let peers = sorted(store.get_peers(&blob, 10).await.unwrap());
    assert_eq!(peers, vec![entry(1, true), entry(2, true), entry(3, true)]);

    // The sets really are per window: two keys for the blob.
    let mut raw = redis.raw(None).await;
    let keys: Vec<String> = raw.keys(format!("peerset:{}:*", blob.hex())).await.unwrap();
    assert_eq!(keys.len(), 2, "{keys:?}");
}

#[tokio::test]
async fn announces_expire_when_their_window_rolls_out() {
    let redis = RedisServer::start().await;
    let window = Duration::from_millis(500);
    let clock = ManualClock::at_window_start(window);
    let store = RedisPeerStore::connect_with_clock(&config(redis.addr(), window, 2), clock.clone())
        .await
        .unwrap();
    let blob = Digest::of(b"blob");
    let first_window = clock.window_start_ms(window);
    store
        .update(&blob, &entry(1, true), UNLIMITED)
        .await
        .unwrap();

    // Read side: the previous window is still read, the one before is not.
    clock.advance(window);
    store
        .update(&blob, &entry(2, false), UNLIMITED)
        .await
        .unwrap();
    assert_eq!(
        sorted(store.get_peers(&blob, 10).await.unwrap()),
        vec![entry(1, true), entry(2, false)]
    );
    clock.advance(window);
    assert_eq!(
        store.get_peers(&blob, 10).await.unwrap(),
        vec![entry(2, false)],
        "peer 1's window is out of range"
    );
    clock.advance(window);
    assert!(store.get_peers(&blob, 10).await.unwrap().is_empty());

    // Redis side: the key expires after window × max_windows (1 s) of real time.
    let key = format!("peerset:{}:{first_window}", blob.hex());
    let mut raw = redis.raw(None).await;
    let ttl_ms: i64 = redis::cmd("PTTL")
        .arg(&key)
        .query_async(&mut raw)
        .await
        .unwrap();
    assert!(ttl_ms > 0 && ttl_ms <= 1000, "PTTL {ttl_ms}");
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let exists: bool = raw.exists(&key).await.unwrap();
    assert!(!exists, "{key} outlived its expiry");
}

#[tokio::test]
async fn reads_stop_at_the_limit_and_deduplicate_peers() {
    let redis = RedisServer::start().await;
    let window = Duration::from_secs(60);
    let clock = ManualClock::at_window_start(window);
    let store = RedisPeerStore::connect_with_clock(&config(redis.addr(), window, 3), clock.clone())
        .await
        .unwrap();
    let blob = Digest::of(b"blob");
    // Every peer announces in each of three windows.
    for round in 0..3 {
        if round > 0 {
            clock.advance(window);
        }
        for n in 1..=20 {
            store
                .update(&blob, &entry(n, false), UNLIMITED)
                .await
                .unwrap();
        }
    }

    let all = store.get_peers(&blob, 100).await.unwrap();
    assert_eq!(all.len(), 20, "one entry per peer across 3 windows");
    let mut seen = std::collections::HashSet::new();
    for _ in 0..10 {
        let some = store.get_peers(&blob, 5).await.unwrap();
        assert_eq!(some.len(), 5);
        let ids: std::collections::HashSet<_> = some.iter().map(|p| p.peer_id).collect();
        assert_eq!(ids.len(), 5, "distinct peers");
        seen.extend(ids);
    }
    assert!(seen.len() > 5, "samples vary");
}

#[tokio::test]
async fn authenticates_with_a_password_inline_or_from_a_file() {
    let redis = RedisServer::start_with_password("s3cret pass").await;
    let blob = Digest::of(b"blob");

    let mut inline = config(redis.addr(), Duration::from_secs(60), 2);
    inline.password = Some(Secret::new("s3cret pass"));
    let store = RedisPeerStore::connect(&inline).await.unwrap();
    store
        .update(&blob, &entry(1, false), UNLIMITED)
        .await
        .unwrap();

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("redis-password");
    std::fs::write(&file, "s3cret pass\n").unwrap();
    let mut from_file = config(redis.addr(), Duration::from_secs(60), 2);
    from_file.password_file = Some(file);
    let store = RedisPeerStore::connect(&from_file).await.unwrap();
    assert_eq!(
        store.get_peers(&blob, 10).await.unwrap(),
        vec![entry(1, false)]
    );

    let anonymous = config(redis.addr(), Duration::from_secs(60), 2);
    let error = RedisPeerStore::connect(&anonymous).await.unwrap_err();
    assert!(
        matches!(error, PeerStoreError::RedisConnect { .. }),
        "{error:?}"
    );
    let text = format!("{error}: {:?}", std::error::Error::source(&error));
    assert!(text.contains(&redis.addr()), "{text}");
    assert!(text.contains("Redis"), "{text}");

    let mut wrong = config(redis.addr(), Duration::from_secs(60), 2);
    wrong.password = Some(Secret::new("nope"));
    let error = RedisPeerStore::connect(&wrong).await.unwrap_err();
    let text = format!("{error}: {:?}", std::error::Error::source(&error));
    assert!(
        matches!(error, PeerStoreError::RedisConnect { .. }),
        "{error:?}"
    );
    assert!(
        text.contains("AuthenticationFailed"),
        "the refusal must say the password is wrong: {text}"
    );
}

#[tokio::test]
async fn a_missing_password_file_is_a_clear_error() {
    // Never dialed: the password file is read first.
    let (addr, _held) = refusing_addr();
    let mut config = config(addr.to_string(), Duration::from_secs(60), 2);
    config.password_file = Some("/nonexistent/redis-password".into());
    let error = RedisPeerStore::connect(&config).await.unwrap_err();
    assert!(matches!(error, PeerStoreError::Password(_)), "{error:?}");
}

#[tokio::test]
async fn fails_clearly_and_quickly_when_redis_is_down() {
    // Nothing listens: start-up fails naming Redis and the address.
    let (addr, _held) = refusing_addr();
    let addr = addr.to_string();
    let error = RedisPeerStore::connect(&config(addr.clone(), Duration::from_secs(60), 2))
        .await
        .unwrap_err();
    assert!(
        matches!(error, PeerStoreError::RedisConnect { .. }),
        "{error:?}"
    );
    assert!(error.to_string().contains(&addr), "{error}");
    assert!(error.to_string().contains("Redis"), "{error}");

    // Redis dies under a running store: calls fail (they do not hang) with a typed error,
    // which the service maps to UNAVAILABLE naming Redis.
    let mut redis = RedisServer::start().await;
    let store = RedisPeerStore::connect(&config(redis.addr(), Duration::from_secs(60), 2))
        .await
        .unwrap();
    let blob = Digest::of(b"blob");
    store
        .update(&blob, &entry(1, false), UNLIMITED)
        .await
        .unwrap();
    redis.stop().await;

    // Each call is bounded by a hang guard only: a call that hangs fails the test by name,
    // and nothing here depends on how fast the machine is.
    let update = tokio::time::timeout(
        Duration::from_secs(10),
        store.update(&blob, &entry(2, false), UNLIMITED),
    )
    .await
    .expect("update must not hang while Redis is down");
    let error = update.unwrap_err();
    assert!(matches!(error, PeerStoreError::Redis { .. }), "{error:?}");
    let read = tokio::time::timeout(Duration::from_secs(10), store.get_peers(&blob, 10))
        .await
        .expect("get_peers must not hang while Redis is down");
    let read = read.unwrap_err();
    assert!(matches!(read, PeerStoreError::Redis { .. }), "{read:?}");

    let status = tonic::Status::from(kraken_tracker::ServiceError::PeerStore(error));
    assert_eq!(status.code(), tonic::Code::Unavailable);
    assert!(status.message().contains("Redis"), "{}", status.message());
    assert!(
        status.message().contains(&redis.addr()),
        "{}",
        status.message()
    );
}

#[tokio::test]
async fn build_peer_store_selects_the_backend() {
    let redis = RedisServer::start().await;
    let mut config = PeerStoreConfig {
        backend: PeerStoreBackend::Redis,
        ..PeerStoreConfig::default()
    };
    config.redis.addr = redis.addr();
    let store: Arc<dyn PeerStore> = build_peer_store(&config).await.unwrap();
    let blob = Digest::of(b"blob");
    store
        .update(&blob, &entry(4, true), UNLIMITED)
        .await
        .unwrap();
    let mut raw = redis.raw(None).await;
    let keys: Vec<String> = raw.keys("peerset:*").await.unwrap();
    assert_eq!(keys.len(), 1, "the announce went to Redis");

    let memory = build_peer_store(&PeerStoreConfig::default()).await.unwrap();
    memory
        .update(&blob, &entry(5, false), UNLIMITED)
        .await
        .unwrap();
    assert_eq!(
        memory.get_peers(&blob, 10).await.unwrap(),
        vec![entry(5, false)]
    );
}

fn at(n: u8, ip: [u8; 4], complete: bool) -> PeerEntry {
    PeerEntry::new(
        PeerId::from_array([n; 20]),
        std::net::SocketAddr::from((ip, 16000 + u16::from(n))),
        complete,
    )
}

fn refusal(result: Result<(), PeerStoreError>) -> CapExceeded {
    match result {
        Err(PeerStoreError::Full(exceeded)) => exceeded,
        other => panic!("expected a cap refusal, got {other:?}"),
    }
}

#[tokio::test]
async fn caps_count_peers_not_members_and_known_peers_always_refresh() {
    let redis = RedisServer::start().await;
    let window = Duration::from_secs(60);
    let clock = ManualClock::at_window_start(window);
    let store = RedisPeerStore::connect_with_clock(&config(redis.addr(), window, 2), clock.clone())
        .await
        .unwrap();
    let blob = Digest::of(b"blob");
    let limits = PeerLimits {
        per_blob: 4,
        per_address: 2,
    };
    let lan = [10, 0, 0, 1];
    store
        .update(&blob, &at(1, lan, false), limits)
        .await
        .unwrap();
    store
        .update(&blob, &at(2, lan, false), limits)
        .await
        .unwrap();
    // Completing adds a member, not a peer: still two at this address.
    store
        .update(&blob, &at(1, lan, true), limits)
        .await
        .unwrap();
    assert_eq!(
        refusal(store.update(&blob, &at(3, lan, false), limits).await),
        CapExceeded::Address {
            ip: "10.0.0.1".parse().unwrap(),
            limit: 2
        }
    );
    store
        .update(&blob, &at(4, [10, 0, 0, 2], false), limits)
        .await
        .unwrap();
    store
        .update(&blob, &at(5, [10, 0, 0, 3], false), limits)
        .await
        .unwrap();
    assert_eq!(
        refusal(
            store
                .update(&blob, &at(6, [10, 0, 0, 4], false), limits)
                .await
        ),
        CapExceeded::Blob { limit: 4 }
    );
    store
        .update(&blob, &at(2, lan, true), limits)
        .await
        .unwrap();
    // Other blobs have their own caps.
    store
        .update(&Digest::of(b"other"), &at(6, [10, 0, 0, 4], false), limits)
        .await
        .unwrap();
    assert_eq!(store.get_peers(&blob, 100).await.unwrap().len(), 4);

    // A new window starts empty, but the peers of the previous one are known there: they
    // refresh first-come, and newcomers are counted against the same caps.
    clock.advance(window);
    store
        .update(&blob, &at(7, lan, false), limits)
        .await
        .unwrap();
    store
        .update(&blob, &at(8, lan, false), limits)
        .await
        .unwrap();
    for n in [1, 2] {
        store
            .update(&blob, &at(n, lan, true), limits)
            .await
            .unwrap();
    }
    assert!(matches!(
        refusal(
            store
                .update(&blob, &at(9, [10, 0, 0, 9], false), limits)
                .await
        ),
        CapExceeded::Blob { .. }
    ));
    // Peers 4 and 5, known from the previous window, still refresh.
    store
        .update(&blob, &at(4, [10, 0, 0, 2], false), limits)
        .await
        .unwrap();
    store
        .update(&blob, &at(5, [10, 0, 0, 3], false), limits)
        .await
        .unwrap();

    // The companion keys expire with the window's member set.
    let mut raw = redis.raw(None).await;
    for kind in ["peerids", "peeraddrs"] {
        let keys: Vec<String> = raw.keys(format!("{kind}:{}:*", blob.hex())).await.unwrap();
        assert_eq!(keys.len(), 2, "{kind}: {keys:?}");
        for key in keys {
            let ttl_ms: i64 = redis::cmd("PTTL")
                .arg(&key)
                .query_async(&mut raw)
                .await
                .unwrap();
            assert!(ttl_ms > 0 && ttl_ms <= 120_000, "{key}: PTTL {ttl_ms}");
        }
    }
}

#[tokio::test]
async fn peer_ids_are_bound_to_one_certificate_across_trackers() {
    let redis = RedisServer::start().await;
    let cfg = config(redis.addr(), Duration::from_millis(300), 2);
    // Two trackers sharing the server.
    let first = RedisPeerStore::connect(&cfg).await.unwrap();
    let second = RedisPeerStore::connect(&cfg).await.unwrap();
    let (mine, theirs) = (
        CertIdentity::of_certificate(b"mine"),
        CertIdentity::of_certificate(b"theirs"),
    );
    let id = PeerId::from_array([1; 20]);
    assert!(first.bind_identity(&id, &mine).await.unwrap());
    assert!(second.bind_identity(&id, &mine).await.unwrap());
    assert!(!second.bind_identity(&id, &theirs).await.unwrap());
    assert!(!first.bind_identity(&id, &theirs).await.unwrap());

    let mut raw = redis.raw(None).await;
    let key = format!("peerowner:{id}");
    let stored: String = raw.get(&key).await.unwrap();
    assert_eq!(stored, mine.hex());
    let ttl_ms: i64 = redis::cmd("PTTL")
        .arg(&key)
        .query_async(&mut raw)
        .await
        .unwrap();
    assert!(ttl_ms > 0 && ttl_ms <= 600, "PTTL {ttl_ms}");

    // The owner's announces keep the binding alive past its TTL...
    for _ in 0..4 {
        tokio::time::sleep(Duration::from_millis(250)).await;
        assert!(first.bind_identity(&id, &mine).await.unwrap());
    }
    assert!(!second.bind_identity(&id, &theirs).await.unwrap());
    // ... and once it stops announcing, the id is free again.
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert!(second.bind_identity(&id, &theirs).await.unwrap());
    assert!(!first.bind_identity(&id, &mine).await.unwrap());
}

fn standing(peers: &[PeerEntry], n: u8) -> (bool, bool) {
    let peer = peers
        .iter()
        .find(|p| p.peer_id == PeerId::from_array([n; 20]))
        .unwrap();
    (peer.proven, peer.demoted)
}

fn report<'a>(ip: &str, served_by: &'a [PeerId], failed: &'a [PeerId]) -> PeerReport<'a> {
    PeerReport {
        reporter_ip: ip.parse().unwrap(),
        served_by,
        failed,
    }
}

#[tokio::test]
async fn reports_from_another_ip_prove_and_demote_peers_across_windows() {
    let redis = RedisServer::start().await;
    let window = Duration::from_secs(60);
    let clock = ManualClock::at_window_start(window);
    let store = RedisPeerStore::connect_with_clock(&config(redis.addr(), window, 3), clock.clone())
        .await
        .unwrap();
    let blob = Digest::of(b"blob");
    let one = PeerId::from_array([1; 20]);
    let unknown = PeerId::from_array([77; 20]);
    store
        .update(&blob, &entry(1, true), UNLIMITED)
        .await
        .unwrap();
    store
        .update(&blob, &entry(2, false), UNLIMITED)
        .await
        .unwrap();

    // From the peer's own IP (10.0.0.1): no proof, no demotion. Unknown peers: nothing.
    let outcome = store
        .report(&blob, &report("10.0.0.1", &[one], &[]))
        .await
        .unwrap();
    assert_eq!(outcome, ReportOutcome::default());
    store
        .report(&blob, &report("10.0.0.1", &[], &[one]))
        .await
        .unwrap();
    let outcome = store
        .report(&blob, &report("10.0.0.2", &[unknown], &[unknown]))
        .await
        .unwrap();
    assert_eq!(outcome, ReportOutcome::default());
    let peers = store.get_peers(&blob, 10).await.unwrap();
    assert_eq!(standing(&peers, 1), (false, false));

    // From another host: proven, once; another blob is unaffected.
    let outcome = store
        .report(&blob, &report("10.0.0.2", &[one], &[]))
        .await
        .unwrap();
    assert_eq!(
        outcome,
        ReportOutcome {
            proven: 1,
            demoted: 0
        }
    );
    let outcome = store
        .report(&blob, &report("10.0.0.3", &[one], &[]))
        .await
        .unwrap();
    assert_eq!(outcome.proven, 0, "already proven");
    assert!(
        store
            .report(&Digest::of(b"other"), &report("10.0.0.2", &[one], &[]))
            .await
            .unwrap()
            == ReportOutcome::default()
    );

    // The proof follows the peer's announces from window to window, after the window it was
    // made in has rolled out of reach.
    for _ in 0..3 {
        clock.advance(window);
        store
            .update(&blob, &entry(1, false), UNLIMITED)
            .await
            .unwrap();
        store
            .update(&blob, &entry(2, false), UNLIMITED)
            .await
            .unwrap();
    }
    let peers = store.get_peers(&blob, 10).await.unwrap();
    assert_eq!(standing(&peers, 1), (true, false));
    assert_eq!(standing(&peers, 2), (false, false));

    // A failure report from another host demotes it and takes the proof away; a served report
    // does not lift the demotion.
    let outcome = store
        .report(&blob, &report("10.0.0.2", &[one], &[one]))
        .await
        .unwrap();
    assert_eq!(
        outcome,
        ReportOutcome {
            proven: 0,
            demoted: 1
        }
    );
    store
        .report(&blob, &report("10.0.0.3", &[one], &[]))
        .await
        .unwrap();
    let peers = store.get_peers(&blob, 10).await.unwrap();
    assert_eq!(standing(&peers, 1), (false, true));

    // The demotion lapses with its window even though the peer keeps announcing; then a
    // served report proves it again.
    for _ in 0..3 {
        clock.advance(window);
        store
            .update(&blob, &entry(1, true), UNLIMITED)
            .await
            .unwrap();
    }
    let peers = store.get_peers(&blob, 10).await.unwrap();
    assert_eq!(standing(&peers, 1), (false, false));
    let outcome = store
        .report(&blob, &report("10.0.0.2", &[one], &[]))
        .await
        .unwrap();
    assert_eq!(outcome.proven, 1);

    // Every key the reports wrote expires with the windows.
    let mut raw = redis.raw(None).await;
    let keys: Vec<String> = raw.keys("peer*").await.unwrap();
    for key in keys.iter().filter(|k| !k.starts_with("peerowner")) {
        let ttl_ms: i64 = redis::cmd("PTTL")
            .arg(key)
            .query_async(&mut raw)
            .await
            .unwrap();
        assert!(ttl_ms > 0, "{key} has no expiry ({ttl_ms})");
    }
    assert!(
        keys.iter().any(|k| k.starts_with("peerdemoted:")),
        "{keys:?}"
    );
    assert!(
        keys.iter().any(|k| k.starts_with("peerproven:")),
        "{keys:?}"
    );
}

#[tokio::test]
async fn at_most_32_reported_ids_are_read_by_redis() {
    let redis = RedisServer::start().await;
    let store = RedisPeerStore::connect(&config(redis.addr(), Duration::from_secs(60), 2))
        .await
        .unwrap();
    let blob = Digest::of(b"blob");
    let ids: Vec<PeerId> = (1..=40u8).map(|n| PeerId::from_array([n; 20])).collect();
    for n in 1..=40u8 {
        store
            .update(&blob, &entry(n, true), UNLIMITED)
            .await
            .unwrap();
    }
    let outcome = store
        .report(&blob, &report("10.9.9.9", &ids, &ids))
        .await
        .unwrap();
    assert_eq!(
        outcome,
        ReportOutcome {
            proven: 32,
            demoted: 32
        }
    );
    let peers = store.get_peers(&blob, 50).await.unwrap();
    assert_eq!(peers.iter().filter(|p| p.demoted).count(), 32);
    assert_eq!(peers.iter().filter(|p| p.proven).count(), 0);
}
