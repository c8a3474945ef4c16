//! The agent end to end over real mutual TLS on loopback: AgentService over gRPC, downloads
//! through a real QUIC seeder, and an in-test tracker (the real tracker is another crate).

// Test helpers outside `#[test]` functions: a panic there is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod harness;

use std::time::Duration;

use futures::StreamExt;
use harness::{
    FakeTracker, Pki, RunningTracker, Seeder, TestAgent, blob, dead_addr, get_blob, read_all,
    tracker_for, within,
};
use kraken_agent::{BlobSource, TrackerClient, TrackerClientOptions};
use kraken_config::cluster::{PassiveHealthCheckConfig, UpstreamConfig};
use kraken_core::{Digest, Namespace, PeerId, PeerInfo};
use kraken_proto::agent::v1::agent_service_client::AgentServiceClient;
use kraken_proto::agent::v1::{
    EvictRequest, GetBlobRequest, GetBlobResponse, PreloadProgress, PreloadRequest, StatRequest,
    preload_request::Target,
};
use kraken_proto::common::v1::BlobRef;
use kraken_store::CommitOptions;
use kraken_tls::Role;
use tonic::Code;

const NS: &str = "library/test";

fn stat(digest: &Digest) -> StatRequest {
    StatRequest {
        namespace: NS.into(),
        digest: digest.to_string(),
    }
}

fn preload(digest: &Digest) -> PreloadRequest {
    PreloadRequest {
        target: Some(Target::Blob(BlobRef {
            namespace: NS.into(),
            digest: digest.to_string(),
        })),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_blob_through_the_swarm_is_byte_identical_whole_and_by_range() {
    let pki = Pki::new();
    let seeder = Seeder::start(&pki).await;
    let data = blob(6 << 20, 1);
    let metainfo = seeder.seed(&data).await;
    let digest = *metainfo.digest();
    let tracker = tracker_for(&pki, &seeder, &metainfo).await;
    tracker.fake.state.lock().unwrap().pending_answers = 2;

    let first = TestAgent::start(&pki, &[tracker.addr]).await;
    let mut client = pki.client(Role::Client, &first);
    let got = within(60, read_all(&mut client, get_blob(NS, &digest)))
        .await
        .unwrap();
    assert!(got == data[..], "whole blob differs");
    // Two UNAVAILABLE answers with a retry hint, then the metainfo.
    assert_eq!(tracker.fake.metainfo_calls(&digest), 3);
    assert!(
        tracker
            .fake
            .announcers(&digest)
            .contains(&first.peer().peer_id)
    );
    assert!(first.store().contains(&digest), "verified and committed");

    // A range through the swarm on a second agent, cut across piece boundaries.
    let second = TestAgent::start(&pki, &[tracker.addr]).await;
    let mut client2 = pki.client(Role::Client, &second);
    let (offset, length) = (1_234_567_u64, 2_000_001_u64);
    let request = GetBlobRequest {
        offset,
        length: Some(length),
        ..get_blob(NS, &digest)
    };
    let got = within(60, read_all(&mut client2, request)).await.unwrap();
    assert!(got == data[offset as usize..(offset + length) as usize]);

    // From the store: a range, the tail, and one past the end.
    let request = GetBlobRequest {
        offset: 5,
        length: Some(10),
        ..get_blob(NS, &digest)
    };
    assert!(read_all(&mut client, request).await.unwrap() == data[5..15]);
    let request = GetBlobRequest {
        offset: data.len() as u64 - 3,
        ..get_blob(NS, &digest)
    };
    assert!(read_all(&mut client, request).await.unwrap() == data[data.len() - 3..]);
    for (offset, length) in [(data.len() as u64 + 1, None), (10, Some(data.len() as u64))] {
        let request = GetBlobRequest {
            offset,
            length,
            ..get_blob(NS, &digest)
        };
        let error = read_all(&mut client, request).await.unwrap_err();
        assert_eq!(error.code(), Code::OutOfRange, "{error:?}");
    }
    // Past the end of a blob not held: refused before any download starts.
    let third = TestAgent::start(&pki, &[tracker.addr]).await;
    let mut client3 = pki.client(Role::Client, &third);
    let request = GetBlobRequest {
        offset: data.len() as u64 + 1,
        ..get_blob(NS, &digest)
    };
    let error = read_all(&mut client3, request).await.unwrap_err();
    assert_eq!(error.code(), Code::OutOfRange, "{error:?}");
    assert!(third.store().download(&digest).is_none());

    let status = client.stat(stat(&digest)).await.unwrap().into_inner();
    assert_eq!(status.size, data.len() as u64);
    assert!(status.complete);
    assert_eq!(status.pieces_total, metainfo.num_pieces());
    assert_eq!(status.pieces_held, metainfo.num_pieces());

    first.stop().await;
    second.stop().await;
    third.stop().await;
    seeder.stop().await;
    tracker.stop().await;
}

/// A seeder of the whole of `data` (not yet handed out), and one holding only the pieces of
/// its first half, which `tracker` hands out: a pull through it stays mid-transfer until the
/// test calls `tracker.add_seeder(&whole)`. (Half, not one piece: a GetBlob stream holds its
/// latest chunk back until the blob verified, so the first one leaves only once a second
/// is ready, and chunks are up to a MiB.)
async fn partly_seeded(
    pki: &Pki,
    data: &bytes::Bytes,
) -> (Seeder, Seeder, kraken_core::MetaInfo, RunningTracker) {
    let whole = Seeder::start(pki).await;
    let metainfo = whole.seed(data).await;
    let half = metainfo.num_pieces() / 2;
    assert!(
        metainfo.piece_offset(half) > 2 * kraken_agent::STREAM_CHUNK as u64,
        "more than two chunks before the missing half: {} pieces",
        metainfo.num_pieces()
    );
    let part = Seeder::start(pki).await;
    part.hold_first(&metainfo, data, half).await;
    let tracker = tracker_for(pki, &part, &metainfo).await;
    (whole, part, metainfo, tracker)
}

/// The first message of a GetBlob stream.
async fn first_chunk(
    client: &mut AgentServiceClient<kraken_transport::observe::ObservedChannel>,
    digest: &Digest,
) -> (tonic::Streaming<GetBlobResponse>, Vec<u8>) {
    let mut stream = within(30, client.get_blob(get_blob(NS, digest)))
        .await
        .unwrap()
        .into_inner();
    let first = within(30, stream.message()).await.unwrap().unwrap();
    assert!(!first.chunk.is_empty());
    (stream, first.chunk.to_vec())
}

/// Reads the rest of a GetBlob stream after `got`.
async fn rest(mut stream: tonic::Streaming<GetBlobResponse>, mut got: Vec<u8>) -> Vec<u8> {
    while let Some(message) = within(60, stream.message()).await.unwrap() {
        got.extend_from_slice(&message.chunk);
    }
    got
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_get_blobs_share_one_download() {
    let pki = Pki::new();
    let data = blob(6 << 20, 2);
    let (whole, part, metainfo, tracker) = partly_seeded(&pki, &data).await;
    let digest = *metainfo.digest();
    tracker.fake.state.lock().unwrap().pending_answers = 2;
    let agent = TestAgent::start(&pki, &[tracker.addr]).await;
    let mut a = pki.client(Role::Client, &agent);
    let mut b = pki.client(Role::Client, &agent);

    // Both streams are under way while the download cannot finish (nobody holds the rest).
    let ((a_stream, a_got), (b_stream, b_got)) =
        tokio::join!(first_chunk(&mut a, &digest), first_chunk(&mut b, &digest));
    assert!(
        !agent.store().contains(&digest),
        "the blob cannot be whole yet"
    );
    tracker.add_seeder(&whole);
    let (one, two) = tokio::join!(rest(a_stream, a_got), rest(b_stream, b_got));
    assert!(one == data[..]);
    assert!(two == data[..]);
    // One metainfo lookup (two pending answers, then the metainfo) for both requests, one
    // peer in the swarm, one torrent.
    assert_eq!(tracker.fake.metainfo_calls(&digest), 3);
    assert_eq!(
        tracker.fake.announcers(&digest),
        [agent.peer().peer_id].into()
    );
    assert_eq!(agent.scheduler().stats().torrents, 1);

    agent.stop().await;
    for seeder in [whole, part] {
        seeder.stop().await;
    }
    tracker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_stream_starts_before_the_whole_blob_has_arrived() {
    let pki = Pki::new();
    let data = blob(6 << 20, 3);
    // Only the first half can arrive until the whole blob's seeder is handed out.
    let (whole, part, metainfo, tracker) = partly_seeded(&pki, &data).await;
    let digest = *metainfo.digest();
    let agent = TestAgent::start(&pki, &[tracker.addr]).await;
    let mut client = pki.client(Role::Client, &agent);

    let (stream, first) = first_chunk(&mut client, &digest).await;
    let status = client.stat(stat(&digest)).await.unwrap().into_inner();
    assert!(
        !status.complete,
        "first chunk arrived only after the download: {status:?}"
    );
    assert!(status.pieces_held < status.pieces_total, "{status:?}");
    assert_eq!(status.size, data.len() as u64);

    tracker.add_seeder(&whole);
    let got = rest(stream, first).await;
    assert!(got == data[..]);
    let status = client.stat(stat(&digest)).await.unwrap().into_inner();
    assert!(status.complete);

    agent.stop().await;
    for seeder in [whole, part] {
        seeder.stop().await;
    }
    tracker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stored_blob_is_served_without_the_tracker() {
    let pki = Pki::new();
    let agent = TestAgent::start(&pki, &[dead_addr().await]).await;
    let data = blob(3 << 20, 4);
    let digest = Digest::of(&data);
    agent
        .store()
        .put_bytes(&digest, data.clone(), &CommitOptions::default())
        .await
        .unwrap();
    let mut client = pki.client(Role::Client, &agent);
    assert!(read_all(&mut client, get_blob(NS, &digest)).await.unwrap() == data[..]);

    // The library API the registry surface uses.
    let namespace: Namespace = NS.parse().unwrap();
    let stream = agent.fetch(&namespace, &digest).await.unwrap();
    assert_eq!(stream.source(), BlobSource::Store);
    assert_eq!(
        (stream.blob_size(), stream.len()),
        (data.len() as u64, data.len() as u64)
    );
    let chunks: Vec<_> = stream.collect().await;
    let got: Vec<u8> = chunks
        .into_iter()
        .flat_map(|chunk| chunk.unwrap().to_vec())
        .collect();
    assert!(got == data[..]);
    let stream = agent
        .fetch_range(&namespace, &digest, 100, Some(50))
        .await
        .unwrap();
    assert_eq!(stream.len(), 50);

    // Not stored, and the only tracker is down: UNAVAILABLE.
    let other = Digest::of(b"not here");
    let error = read_all(&mut client, get_blob(NS, &other))
        .await
        .unwrap_err();
    assert_eq!(error.code(), Code::Unavailable, "{error:?}");
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_blobs_and_bad_requests_get_precise_codes() {
    let pki = Pki::new();
    let tracker = RunningTracker::start(&pki, FakeTracker::default()).await;
    let agent = TestAgent::start(&pki, &[tracker.addr]).await;
    let mut client = pki.client(Role::Client, &agent);
    let unknown = Digest::of(b"nobody has this");

    let error = read_all(&mut client, get_blob(NS, &unknown))
        .await
        .unwrap_err();
    assert_eq!(error.code(), Code::NotFound, "{error:?}");
    assert_eq!(
        tracker.fake.metainfo_calls(&unknown),
        1,
        "NOT_FOUND is not retried"
    );
    let error = client.stat(stat(&unknown)).await.unwrap_err();
    assert_eq!(error.code(), Code::NotFound);
    let error = client
        .evict(EvictRequest {
            digest: unknown.to_string(),
        })
        .await
        .unwrap_err();
    assert_eq!(error.code(), Code::NotFound);
    let error = client.preload(preload(&unknown)).await.unwrap_err();
    assert_eq!(error.code(), Code::NotFound);

    for (namespace, digest) in [
        (NS, "sha256:1234"),
        (NS, "md5:d41d8cd98f00b204e9800998ecf8427e"),
        ("UPPER/case", &unknown.to_string()[..]),
        ("", &unknown.to_string()[..]),
    ] {
        let request = GetBlobRequest {
            namespace: namespace.into(),
            digest: digest.into(),
            offset: 0,
            length: None,
        };
        let error = read_all(&mut client, request).await.unwrap_err();
        assert_eq!(error.code(), Code::InvalidArgument, "{namespace} {digest}");
    }
    let error = client
        .preload(PreloadRequest {
            target: Some(Target::Tag("library/test:latest".into())),
        })
        .await
        .unwrap_err();
    assert_eq!(error.code(), Code::FailedPrecondition);
    assert!(
        error.message().contains("build-index"),
        "{}",
        error.message()
    );
    let error = client
        .preload(PreloadRequest { target: None })
        .await
        .unwrap_err();
    assert_eq!(error.code(), Code::InvalidArgument);

    agent.stop().await;
    tracker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn preload_streams_progress_and_ends_with_done() {
    let pki = Pki::new();
    let data = blob(6 << 20, 5);
    let (whole, part, metainfo, tracker) = partly_seeded(&pki, &data).await;
    let digest = *metainfo.digest();
    let agent = TestAgent::start(&pki, &[tracker.addr]).await;
    let mut client = pki.client(Role::Client, &agent);

    let mut stream = client.preload(preload(&digest)).await.unwrap().into_inner();
    // Progress before the end: the download cannot finish until the whole blob's seeder is
    // handed out, after the first update that counts bytes.
    let mut updates: Vec<PreloadProgress> = Vec::new();
    while updates.last().is_none_or(|u| u.bytes_done == 0) {
        let update = within(30, stream.message()).await.unwrap();
        updates.push(update.expect("the preload ended before the download could"));
    }
    tracker.add_seeder(&whole);
    while let Some(update) = within(60, stream.message()).await.unwrap() {
        updates.push(update);
    }
    let total = data.len() as u64;
    let (last, progress) = updates.split_last().unwrap();
    assert!(last.done);
    assert_eq!((last.bytes_done, last.bytes_total), (total, total));
    assert_eq!(last.digest, digest.to_string());
    assert!(
        !progress.is_empty(),
        "a download in progress reports progress before it ends"
    );
    assert!(progress.iter().all(|p| !p.done && p.bytes_total == total));
    assert!(
        progress
            .windows(2)
            .all(|w| w[0].bytes_done < w[1].bytes_done),
        "progress only moves forward"
    );
    assert!(agent.store().contains(&digest));
    assert!(
        client
            .stat(stat(&digest))
            .await
            .unwrap()
            .into_inner()
            .complete
    );

    // Already held: one final message.
    let again: Vec<_> = client
        .preload(preload(&digest))
        .await
        .unwrap()
        .into_inner()
        .collect()
        .await;
    assert_eq!(again.len(), 1);
    let only = again[0].as_ref().unwrap();
    assert!(only.done && only.bytes_done == total);

    agent.stop().await;
    for seeder in [whole, part] {
        seeder.stop().await;
    }
    tracker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stat_and_evict() {
    let pki = Pki::new();
    let seeder = Seeder::start(&pki).await;
    let data = blob(2 << 20, 6);
    let metainfo = seeder.seed(&data).await;
    let digest = *metainfo.digest();
    let tracker = tracker_for(&pki, &seeder, &metainfo).await;
    let agent = TestAgent::start(&pki, &[tracker.addr]).await;
    let mut client = pki.client(Role::Client, &agent);
    assert!(
        within(60, read_all(&mut client, get_blob(NS, &digest)))
            .await
            .unwrap()
            == data[..]
    );

    let status = client.stat(stat(&digest)).await.unwrap().into_inner();
    assert!(status.complete);
    assert_eq!(status.size, data.len() as u64);

    let evict = || EvictRequest {
        digest: digest.to_string(),
    };
    let error = pki
        .client(Role::Agent, &agent)
        .evict(evict())
        .await
        .unwrap_err();
    assert_eq!(
        error.code(),
        Code::PermissionDenied,
        "only the host's tooling evicts"
    );
    client.evict(evict()).await.unwrap();
    assert!(!agent.store().contains(&digest));
    let error = client.stat(stat(&digest)).await.unwrap_err();
    assert_eq!(error.code(), Code::NotFound);
    assert_eq!(
        client.evict(evict()).await.unwrap_err().code(),
        Code::NotFound
    );

    // Asked for again, it comes back through the swarm.
    assert!(
        within(60, read_all(&mut client, get_blob(NS, &digest)))
            .await
            .unwrap()
            == data[..]
    );

    agent.stop().await;
    seeder.stop().await;
    tracker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passive_health_check_skips_a_dead_tracker() {
    let pki = Pki::new();
    let live = RunningTracker::start(&pki, FakeTracker::default()).await;
    let dead = dead_addr().await;
    let upstream = UpstreamConfig {
        healthcheck: PassiveHealthCheckConfig {
            fails: 2,
            fail_timeout: Duration::from_secs(60),
        },
        ..UpstreamConfig::of([dead.to_string(), live.addr.to_string()])
    };
    let client = TrackerClient::new(
        &upstream,
        &pki.tls(Role::Agent),
        TrackerClientOptions::default(),
    )
    .unwrap();
    let namespace: Namespace = NS.parse().unwrap();
    let me = PeerInfo {
        peer_id: PeerId::random(),
        addr: "127.0.0.1:16001".parse().unwrap(),
        complete: false,
        origin: false,
    };
    // Blobs whose home tracker is the dead one.
    let homeless: Vec<Digest> = (0u32..)
        .map(|i| Digest::of(&i.to_le_bytes()))
        .filter(|d| client.home_of(d) == dead.to_string())
        .take(6)
        .collect();
    for digest in &homeless {
        within(20, client.announce(&namespace, digest, &me))
            .await
            .expect("fails over to the live tracker");
    }
    assert_eq!(live.fake.announce_count(), homeless.len());
    let hosts = client.hosts();
    let dead_status = hosts.iter().find(|h| h.host == dead.to_string()).unwrap();
    assert!(!dead_status.healthy);
    assert_eq!(
        dead_status.failures, 2,
        "tried until marked unhealthy, then skipped"
    );
    assert!(
        hosts
            .iter()
            .find(|h| h.host == live.addr.to_string())
            .unwrap()
            .healthy
    );
    live.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_announce_of_a_blob_reaches_its_home_tracker() {
    let pki = Pki::new();
    let one = RunningTracker::start(&pki, FakeTracker::default()).await;
    let two = RunningTracker::start(&pki, FakeTracker::default()).await;
    let upstream = UpstreamConfig::of([one.addr.to_string(), two.addr.to_string()]);
    let namespace: Namespace = NS.parse().unwrap();
    let digests: Vec<Digest> = (0u32..32).map(|i| Digest::of(&i.to_le_bytes())).collect();
    // Several agents (separate clients) announce every blob a few times. 32 blobs: with 8, all
    // landed on one tracker about once in 128 runs (the ports, hence the hashes, are random),
    // failing "load spreads".
    for _ in 0..3 {
        let client =
            TrackerClient::new(&upstream, &pki.tls(Role::Agent), Default::default()).unwrap();
        let me = PeerInfo {
            peer_id: PeerId::random(),
            addr: "127.0.0.1:16001".parse().unwrap(),
            complete: false,
            origin: false,
        };
        for digest in &digests {
            client.announce(&namespace, digest, &me).await.unwrap();
        }
    }
    for digest in &digests {
        let (at_one, at_two) = (one.fake.announcers(digest), two.fake.announcers(digest));
        assert!(
            (at_one.len(), at_two.len()) == (3, 0) || (at_one.len(), at_two.len()) == (0, 3),
            "{digest}: {} at one, {} at two",
            at_one.len(),
            at_two.len()
        );
    }
    assert!(
        one.fake.announce_count() > 0 && two.fake.announce_count() > 0,
        "load spreads"
    );
    one.stop().await;
    two.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn callers_need_a_permitted_role() {
    let pki = Pki::new();
    let tracker = RunningTracker::start(&pki, FakeTracker::default()).await;
    let agent = TestAgent::start(&pki, &[tracker.addr]).await;
    let digest = Digest::of(b"x");
    for role in [Role::Proxy, Role::Origin] {
        let mut client = pki.client(role, &agent);
        let error = read_all(&mut client, get_blob(NS, &digest))
            .await
            .unwrap_err();
        assert_eq!(error.code(), Code::PermissionDenied, "{role}: {error:?}");
        assert_eq!(
            client.stat(stat(&digest)).await.unwrap_err().code(),
            Code::PermissionDenied
        );
        assert_eq!(
            client.preload(preload(&digest)).await.unwrap_err().code(),
            Code::PermissionDenied
        );
        let error = client
            .evict(EvictRequest {
                digest: digest.to_string(),
            })
            .await
            .unwrap_err();
        assert_eq!(error.code(), Code::PermissionDenied);
    }
    assert_eq!(
        tracker.fake.metainfo_calls(&digest),
        0,
        "refused before any work"
    );
    // Agents may read (here: NOT_FOUND, past the role check).
    let error = pki
        .client(Role::Agent, &agent)
        .stat(stat(&digest))
        .await
        .unwrap_err();
    assert_eq!(error.code(), Code::NotFound);

    // Health and reflection come with the server.
    let channel = kraken_transport::grpc::channel(
        &pki.tls(Role::Client),
        &agent.grpc_addr().to_string(),
        None,
        Role::Agent,
    )
    .unwrap();
    let health = tonic_health::pb::health_client::HealthClient::new(channel)
        .check(tonic_health::pb::HealthCheckRequest {
            service: "kraken.agent.v1.AgentService".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        health.status(),
        tonic_health::pb::health_check_response::ServingStatus::Serving
    );

    agent.stop().await;
    tracker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metainfo_waits_end_at_the_configured_timeout() {
    let pki = Pki::new();
    let seeder = Seeder::start(&pki).await;
    let data = blob(64 << 10, 7);
    let metainfo = seeder.seed(&data).await;
    let digest = *metainfo.digest();
    let tracker = tracker_for(&pki, &seeder, &metainfo).await;
    // The origin never finishes fetching.
    tracker.fake.state.lock().unwrap().pending_answers = u32::MAX;
    let agent = TestAgent::start_with(&pki, &[tracker.addr], |config| {
        config.metainfo_timeout = Duration::from_millis(400);
    })
    .await;
    let mut client = pki.client(Role::Client, &agent);
    // `within` is the hang guard; the answer itself says the metainfo deadline was hit.
    let error = within(20, read_all(&mut client, get_blob(NS, &digest)))
        .await
        .unwrap_err();
    assert_eq!(error.code(), Code::DeadlineExceeded, "{error:?}");
    let calls = tracker.fake.metainfo_calls(&digest);
    assert!(
        (2..=10).contains(&calls),
        "retried at the 50 ms hint: {calls} calls"
    );
    agent.stop().await;
    seeder.stop().await;
    tracker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_ends_streams_in_flight() {
    let pki = Pki::new();
    let data = blob(6 << 20, 8);
    // The whole blob's seeder is never handed out: the stream is mid-way at shutdown.
    let (whole, part, metainfo, tracker) = partly_seeded(&pki, &data).await;
    let digest = *metainfo.digest();
    let agent = TestAgent::start(&pki, &[tracker.addr]).await;
    let mut client = pki.client(Role::Client, &agent);
    let (mut stream, first) = first_chunk(&mut client, &digest).await;
    let mut got = first.len();
    within(15, agent.stop()).await;
    let ended = within(15, async {
        loop {
            match stream.message().await {
                Ok(Some(message)) => got += message.chunk.len(),
                Ok(None) => return Ok(()),
                Err(status) => return Err(status),
            }
        }
    })
    .await;
    assert!(
        ended.is_err(),
        "a stream cut short must not end successfully"
    );
    assert!(got < data.len());
    for seeder in [whole, part] {
        seeder.stop().await;
    }
    tracker.stop().await;
}

/// An agent whose tracker is on another host refuses to start advertising loopback (the
/// tracker would hand 127.0.0.1 to every other host), and says what to set. Nothing is sent:
/// the check runs before any connection.
#[tokio::test]
async fn an_agent_refuses_to_advertise_loopback_to_a_tracker_on_another_host() {
    let pki = Pki::new();
    let dir = tempfile::tempdir().unwrap();
    // TEST-NET-1 (RFC 5737): never routed, and never dialled by this test.
    let remote_tracker = "192.0.2.10:15003";
    let config = kraken_config::agent::AgentConfig {
        peer_ip: Some("127.0.0.1".parse().unwrap()),
        listen: kraken_config::agent::AgentListenConfig {
            p2p: "127.0.0.1:0".parse().unwrap(),
            ..Default::default()
        },
        tracker: UpstreamConfig::of([remote_tracker]),
        store: kraken_config::store::StoreConfig {
            dir: dir.path().to_owned(),
            ..Default::default()
        },
        ..Default::default()
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let Err(error) = kraken_agent::Agent::start(config, pki.tls(Role::Agent), listener).await
    else {
        panic!("start must fail");
    };
    let message = error.to_string();
    assert!(
        message.contains("127.0.0.1") && message.contains(remote_tracker),
        "{message}"
    );
    assert!(message.contains("peer_ip"), "says what to set: {message}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn announces_carry_the_schedulers_peer_reports() {
    use kraken_scheduler::{Announcer, PeerReports};
    let pki = Pki::new();
    let tracker = RunningTracker::start(&pki, FakeTracker::default()).await;
    let upstream = UpstreamConfig::of([tracker.addr.to_string()]);
    let client = TrackerClient::new(&upstream, &pki.tls(Role::Agent), Default::default()).unwrap();
    let namespace: Namespace = NS.parse().unwrap();
    let digest = Digest::of(b"blob");
    let me = PeerInfo {
        peer_id: PeerId::random(),
        addr: "127.0.0.1:16001".parse().unwrap(),
        complete: false,
        origin: false,
    };
    let (failed, served) = (PeerId::random(), PeerId::random());
    let reports = PeerReports {
        failed: vec![failed],
        served: vec![served],
    };
    Announcer::announce_reporting(&client, &namespace, &digest, &me, &reports)
        .await
        .unwrap();
    client.announce(&namespace, &digest, &me).await.unwrap();
    let sent = tracker.fake.state.lock().unwrap().reports.clone();
    let bytes = |id: PeerId| bytes::Bytes::copy_from_slice(id.as_bytes());
    assert_eq!(
        sent,
        vec![
            (vec![bytes(failed)], vec![bytes(served)]),
            (Vec::new(), Vec::new())
        ]
    );
    tracker.stop().await;
}
