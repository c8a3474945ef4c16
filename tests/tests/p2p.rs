//! The P2P core end to end: a real tracker, origins and agents on loopback, blobs pulled through
//! the QUIC swarm with mutual TLS.

// Test helpers outside `#[test]` functions: a panic there is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use kraken_agent::{TrackerClient, TrackerClientOptions};
use kraken_config::cluster::UpstreamConfig;
use kraken_config::store::StoreConfig;
use kraken_core::{Digest, MetaInfo, Namespace, PeerId, PeerInfo};
use kraken_scheduler::{
    AnnounceError, AnnounceReply, Announcer, BlobState, DriverConfig, Faults, Scheduler, Status,
};
use kraken_store::BlobStore;
use kraken_tests::{Cluster, blob};
use kraken_tls::{DevPkiOptions, Role, TlsMaterial, generate_dev_pki};
use kraken_transport::bandwidth::BandwidthLimiter;
use kraken_transport::quic::{PeerEndpoint, QuicTuning};

const NS: &str = "library/p2p-test";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_origin_and_ten_agents_pull_a_64_mib_blob_concurrently() {
    let cluster = Cluster::builder().origins(1).agents(10).start().await;
    let data = blob(64 << 20, 1);
    let digest = cluster.push(NS, data.clone()).await;

    let pulls = (0..10).map(|i| {
        let cluster = &cluster;
        async move { (i, cluster.pull(i, NS, &digest).await) }
    });
    let results = tokio::time::timeout(Duration::from_secs(300), futures::future::join_all(pulls))
        .await
        .expect("every pull finished");
    for (i, result) in results {
        let copy = result.unwrap_or_else(|status| panic!("agent {i}: {status}"));
        assert_eq!(copy.len(), data.len(), "agent {i}");
        assert_eq!(
            Digest::of(&copy),
            digest,
            "agent {i}'s copy matches the digest"
        );
        assert!(
            cluster.agents[i].store().contains(&digest),
            "agent {i} keeps it to seed"
        );
    }
    cluster.shutdown().await;
}

/// A complete peer that corrupts every piece it sends.
async fn liar(cluster: &Cluster, digest: &Digest) -> Scheduler {
    let tls = cluster.tls(Role::Agent);
    let endpoint =
        PeerEndpoint::bind("127.0.0.1:0".parse().unwrap(), &tls, &QuicTuning::default()).unwrap();
    let store = BlobStore::open(StoreConfig {
        dir: cluster.path("liar"),
        ..StoreConfig::default()
    })
    .await
    .unwrap();
    let tracker = TrackerClient::new(
        &UpstreamConfig::of([cluster.tracker_addr.to_string()]),
        &tls,
        TrackerClientOptions::default(),
    )
    .unwrap();
    let namespace: Namespace = NS.parse().unwrap();
    let metainfo = tracker.get_metainfo(&namespace, digest).await.unwrap();
    let local = PeerInfo {
        peer_id: PeerId::random(),
        addr: endpoint.local_addr().unwrap(),
        complete: false,
        origin: false,
    };
    let config = DriverConfig {
        faults: Faults {
            corrupt_uploads: true,
        },
        ..DriverConfig::default()
    };
    let scheduler = Scheduler::start(
        local,
        config,
        endpoint,
        store,
        BandwidthLimiter::unlimited(),
        Some(Arc::new(tracker)),
    );
    // It downloads honestly from the origin, then seeds garbage.
    scheduler
        .download(&namespace, &metainfo)
        .await
        .unwrap()
        .wait()
        .await
        .unwrap();
    scheduler
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_serving_corrupt_pieces_is_blacklisted_while_pulls_succeed() {
    let cluster = Cluster::builder().origins(1).agents(4).start().await;
    let data = blob(8 << 20, 2);
    let digest = cluster.push(NS, data.clone()).await;
    let liar = liar(&cluster, &digest).await;

    let pulls = (0..4).map(|i| {
        let cluster = &cluster;
        async move { cluster.pull(i, NS, &digest).await }
    });
    for copy in futures::future::join_all(pulls).await {
        assert_eq!(copy.unwrap(), data);
    }
    let (bad, blacklisted) = cluster.agents.iter().fold((0, 0), |(bad, listed), agent| {
        let stats = agent.scheduler().stats();
        (bad + stats.bad_pieces, listed + stats.blacklisted_peers)
    });
    assert!(
        bad >= 1,
        "the tracker hands the liar out with the other agents, so it was tried"
    );
    assert!(blacklisted >= 1, "and blacklisted once caught");
    liar.shutdown().await;
    cluster.shutdown().await;
}

/// Hands out exactly the given peers, no tracker involved.
struct StaticPeers(Vec<PeerInfo>);

#[async_trait]
impl Announcer for StaticPeers {
    async fn announce(
        &self,
        _: &Namespace,
        _: &Digest,
        _: &PeerInfo,
    ) -> Result<AnnounceReply, AnnounceError> {
        Ok(AnnounceReply {
            peers: self.0.clone(),
            interval: Duration::from_millis(200),
        })
    }
}

/// A failure in the TLS handshake over certificates (either side's CA unknown), not a timeout
/// or a handler's answer.
#[track_caller]
fn assert_certificate_refusal(chain: &str) {
    assert!(
        chain.contains("UnknownIssuer") || chain.contains("UnknownCA"),
        "expected a certificate refusal: {chain}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_without_a_valid_certificate_gets_nothing() {
    let cluster = Cluster::builder().origins(1).agents(1).start().await;
    let data = blob(1 << 20, 3);
    let digest = cluster.push(NS, data.clone()).await;
    let namespace: Namespace = NS.parse().unwrap();
    let metainfo: MetaInfo = cluster
        .origin_client(&cluster.origins[0])
        .get_metainfo(&namespace, &digest)
        .await
        .unwrap();

    // A host with a certificate from a CA the cluster does not trust, which knows exactly where
    // the origin is.
    let rogue_dir = tempfile::tempdir().unwrap();
    let rogue_pki = generate_dev_pki(rogue_dir.path(), &DevPkiOptions::default()).unwrap();
    let rogue_tls = TlsMaterial::load(&rogue_pki.tls_config(Role::Agent)).unwrap();

    // Over gRPC: the tracker and the origin refuse the handshake.
    let tracker = TrackerClient::new(
        &UpstreamConfig::of([cluster.tracker_addr.to_string()]),
        &rogue_tls,
        TrackerClientOptions {
            request_timeout: Duration::from_secs(3),
            ..Default::default()
        },
    )
    .unwrap();
    let refused = tracker.get_metainfo(&namespace, &digest).await.unwrap_err();
    assert_certificate_refusal(&format!("{refused:?}"));
    let origin = kraken_originclient::OriginClient::connect(
        &rogue_tls,
        &cluster.origins[0].grpc_addr().to_string(),
    )
    .unwrap();
    let Err(refused) = origin.download(&namespace, &digest).await else {
        panic!("origin served a stranger");
    };
    assert_certificate_refusal(&format!("{refused:?}"));

    // Over QUIC: dialling the origin's peer port never yields a piece.
    let endpoint = PeerEndpoint::bind(
        "127.0.0.1:0".parse().unwrap(),
        &rogue_tls,
        &QuicTuning::default(),
    )
    .unwrap();
    let store = BlobStore::open(StoreConfig {
        dir: rogue_dir.path().join("store"),
        ..StoreConfig::default()
    })
    .await
    .unwrap();
    let local = PeerInfo {
        peer_id: PeerId::random(),
        addr: endpoint.local_addr().unwrap(),
        complete: false,
        origin: false,
    };
    let rogue = Scheduler::start(
        local,
        DriverConfig::default(),
        endpoint,
        store.clone(),
        BandwidthLimiter::unlimited(),
        Some(Arc::new(StaticPeers(vec![*cluster.origins[0].peer()]))),
    );
    let BlobState::Downloading(download) = rogue.download(&namespace, &metainfo).await.unwrap()
    else {
        panic!("a stranger's empty store holds the blob");
    };
    // Several announce rounds and dial attempts.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let status = download.status.borrow().clone();
    assert!(
        matches!(status, Status::Downloading { pieces: 0, total } if total == metainfo.num_pieces()),
        "a stranger received pieces: {status:?}"
    );
    assert!(!store.contains(&digest));
    rogue.shutdown().await;

    // The cluster's own agent is unaffected.
    assert_eq!(cluster.pull(0, NS, &digest).await.unwrap(), data);
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_origin_without_the_blob_answers_not_found_clearly() {
    let cluster = Cluster::builder().origins(1).agents(1).start().await;
    let namespace: Namespace = NS.parse().unwrap();
    let missing = Digest::of(b"never uploaded");

    let error = cluster
        .origin_client(&cluster.origins[0])
        .get_metainfo(&namespace, &missing)
        .await
        .unwrap_err();
    assert_eq!(error.code(), Some(tonic::Code::NotFound), "{error}");
    let message = error.to_string();
    assert!(
        message.contains(&missing.to_string()) && message.contains(NS),
        "{message}"
    );

    let status = cluster.pull(0, NS, &missing).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::NotFound, "{status:?}");
    assert!(
        status.message().contains(&missing.to_string()),
        "{status:?}"
    );
    cluster.shutdown().await;
}
