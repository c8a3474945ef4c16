//! The driver over real QUIC connections with real mutual TLS on loopback: an origin seeds, agents
//! download through each other, a lying peer is caught. The tracker is an in-process fake here
//! (the real one is exercised by the cluster tests in `tests/`).

// Test helpers outside `#[test]` functions: a panic there is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use kraken_config::scheduler::BandwidthConfig;
use kraken_config::store::StoreConfig;
use kraken_core::{Digest, MetaInfo, Namespace, PeerId, PeerInfo};
use kraken_scheduler::{
    AnnounceError, AnnounceReply, Announcer, BlobState, DownloadError, DriverConfig, Faults,
    PeerReports, Scheduler, SchedulerError, SchedulerStats, SwarmMember, TorrentState,
};
use kraken_store::{BlobStore, CommitOptions};
use kraken_tls::{DevCa, LeafOptions, Role, TlsMaterial};

/// Every announcer gets every other peer, complete ones first, then the origins. It keeps
/// each announce's reports.
#[derive(Default)]
struct FakeTracker {
    peers: Mutex<HashMap<Digest, HashMap<PeerId, PeerInfo>>>,
    origins: Mutex<Vec<PeerInfo>>,
    reports: Mutex<Vec<(PeerId, PeerReports)>>,
    /// Set: each peer is told of each other one once, so a link that closed is not dialled
    /// again and what closed it stays visible.
    introduce_once: bool,
    introduced: Mutex<HashSet<(PeerId, PeerId)>>,
}

impl FakeTracker {
    /// Whether `reporter` has reported `peer` failing (`failed`) or serving (`!failed`).
    fn reported(&self, reporter: PeerId, peer: PeerId, failed: bool) -> bool {
        self.reports.lock().unwrap().iter().any(|(from, reports)| {
            let list = if failed {
                &reports.failed
            } else {
                &reports.served
            };
            *from == reporter && list.contains(&peer)
        })
    }
}

#[async_trait]
impl Announcer for FakeTracker {
    async fn announce_reporting(
        &self,
        namespace: &Namespace,
        digest: &Digest,
        me: &PeerInfo,
        reports: &PeerReports,
    ) -> Result<AnnounceReply, AnnounceError> {
        self.reports
            .lock()
            .unwrap()
            .push((me.peer_id, reports.clone()));
        self.announce(namespace, digest, me).await
    }

    async fn announce(
        &self,
        _namespace: &Namespace,
        digest: &Digest,
        me: &PeerInfo,
    ) -> Result<AnnounceReply, AnnounceError> {
        let mut peers = self.peers.lock().unwrap();
        let swarm = peers.entry(*digest).or_default();
        swarm.insert(me.peer_id, *me);
        let mut others: Vec<PeerInfo> = swarm
            .values()
            .filter(|p| p.peer_id != me.peer_id)
            .copied()
            .collect();
        if self.introduce_once {
            let mut introduced = self.introduced.lock().unwrap();
            others.retain(|p| introduced.insert((me.peer_id, p.peer_id)));
        }
        others.sort_by_key(|p| !p.complete);
        others.extend(self.origins.lock().unwrap().iter().copied());
        Ok(AnnounceReply {
            peers: others,
            interval: Duration::from_millis(200),
        })
    }
}

struct Node {
    scheduler: Scheduler,
    store: BlobStore,
    _dir: tempfile::TempDir,
}

impl FakeTracker {
    /// Hands `origin` out with every announce, as the real tracker does with a blob's owners.
    fn add_origin(&self, origin: &Node) {
        self.origins.lock().unwrap().push(*origin.scheduler.local());
    }
}

async fn node(
    ca: &DevCa,
    role: Role,
    origin: bool,
    tracker: Option<Arc<FakeTracker>>,
    faults: Faults,
) -> Node {
    node_with(ca, role, origin, tracker, faults, |_| {}).await
}

async fn node_with(
    ca: &DevCa,
    role: Role,
    origin: bool,
    tracker: Option<Arc<FakeTracker>>,
    faults: Faults,
    configure: impl FnOnce(&mut kraken_config::scheduler::SchedulerConfig),
) -> Node {
    let issued = ca.issue(role, &LeafOptions::default()).unwrap();
    let tls = TlsMaterial::from_pem(ca.cert_pem(), &issued.cert_pem, &issued.key_pem).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let store = BlobStore::open(StoreConfig {
        dir: dir.path().to_owned(),
        ..StoreConfig::default()
    })
    .await
    .unwrap();
    let mut config = kraken_config::scheduler::SchedulerConfig {
        conn_tti: Duration::from_secs(60),
        ..Default::default()
    };
    configure(&mut config);
    let mut driver = DriverConfig::from_config(&config, origin);
    driver.faults = faults;
    let member = SwarmMember {
        listen: "127.0.0.1:0".parse().unwrap(),
        advertise_ip: None,
        peer_id: PeerId::random(),
        origin,
        driver,
        bandwidth: config.conn.bandwidth.clone(),
        quic: kraken_transport::quic::QuicTuning::default(),
    };
    let announcer = tracker.map(|t| t as Arc<dyn Announcer>);
    let scheduler = Scheduler::bind(member, &tls, store.clone(), announcer).unwrap();
    assert_eq!(scheduler.local().addr, scheduler.p2p_addr());
    Node {
        scheduler,
        store,
        _dir: dir,
    }
}

/// An honest agent announcing to `tracker`.
async fn agent(ca: &DevCa, tracker: &Arc<FakeTracker>) -> Node {
    node(
        ca,
        Role::Agent,
        false,
        Some(tracker.clone()),
        Faults::default(),
    )
    .await
}

fn blob(len: usize) -> Bytes {
    let mut state = 0x1234_5678_u32;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 17;
            state ^= state << 5;
            state as u8
        })
        .collect::<Vec<_>>()
        .into()
}

async fn seed(node: &Node, data: &Bytes) -> MetaInfo {
    let digest = Digest::of(data);
    node.store
        .put_bytes(&digest, data.clone(), &CommitOptions::default())
        .await
        .unwrap()
        .metainfo()
        .clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_download_a_blob_from_an_origin_and_each_other() {
    kraken_tls::install_crypto_provider();
    let ca = DevCa::new().unwrap();
    let tracker = Arc::new(FakeTracker::default());
    let origin = node(&ca, Role::Origin, true, None, Faults::default()).await;
    tracker.add_origin(&origin);
    let data = blob(6 << 20);
    let metainfo = seed(&origin, &data).await;
    assert!(
        metainfo.num_pieces() > 50,
        "many pieces: {}",
        metainfo.num_pieces()
    );

    let mut agents = Vec::new();
    for _ in 0..5 {
        agents.push(agent(&ca, &tracker).await);
    }
    let namespace: Namespace = "library/test".parse().unwrap();
    let mut downloads = Vec::new();
    for agent in &agents {
        downloads.push(
            agent
                .scheduler
                .download(&namespace, &metainfo)
                .await
                .unwrap(),
        );
    }
    for download in &mut downloads {
        tokio::time::timeout(Duration::from_secs(60), download.wait())
            .await
            .expect("download finished in time")
            .unwrap();
    }
    for agent in &agents {
        let stored = agent
            .store
            .read_range(metainfo.digest(), 0, data.len() as u64)
            .await
            .unwrap();
        assert_eq!(stored, data);
    }
    // A second request for a complete blob finds it stored.
    let again = agents[0]
        .scheduler
        .download(&namespace, &metainfo)
        .await
        .unwrap();
    assert!(matches!(again, BlobState::Stored), "{again:?}");
    for agent in &agents {
        agent.scheduler.shutdown().await;
    }
    origin.scheduler.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_serving_corrupt_pieces_is_blacklisted_and_the_download_still_succeeds() {
    kraken_tls::install_crypto_provider();
    let ca = DevCa::new().unwrap();
    let tracker = Arc::new(FakeTracker::default());
    let origin = node(&ca, Role::Origin, true, None, Faults::default()).await;
    tracker.add_origin(&origin);
    let data = blob(2 << 20);
    let metainfo = seed(&origin, &data).await;

    // A complete agent that corrupts everything it sends, announced as complete so it is
    // handed out first.
    let liar = node(
        &ca,
        Role::Agent,
        false,
        Some(tracker.clone()),
        Faults {
            corrupt_uploads: true,
        },
    )
    .await;
    seed(&liar, &data).await;
    let namespace: Namespace = "library/test".parse().unwrap();
    let mut liar_info = *liar.scheduler.local();
    liar_info.complete = true;
    tracker
        .announce(&namespace, metainfo.digest(), &liar_info)
        .await
        .unwrap();

    let victim = agent(&ca, &tracker).await;
    let mut download = victim
        .scheduler
        .download(&namespace, &metainfo)
        .await
        .unwrap();
    tokio::time::timeout(Duration::from_secs(60), download.wait())
        .await
        .expect("download finished in time")
        .unwrap();
    let stored = victim
        .store
        .read_range(metainfo.digest(), 0, data.len() as u64)
        .await
        .unwrap();
    assert_eq!(stored, data, "only verified pieces were kept");
    let stats = victim.scheduler.stats();
    assert!(
        stats.bad_pieces >= 1,
        "the liar's pieces were caught: {stats:?}"
    );
    assert_eq!(
        stats.blacklisted_peers, 1,
        "and the liar blacklisted: {stats:?}"
    );
    // ... and reported to the tracker as having failed us.
    let victim_id = victim.scheduler.local().peer_id;
    within("the liar's report", async {
        while !tracker.reported(victim_id, liar_info.peer_id, true) {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    victim.scheduler.shutdown().await;
    liar.scheduler.shutdown().await;
    origin.scheduler.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_download_is_seen_out_and_the_next_request_starts_afresh() {
    kraken_tls::install_crypto_provider();
    let ca = DevCa::new().unwrap();
    let tracker = Arc::new(FakeTracker::default());
    let origin = node(&ca, Role::Origin, true, None, Faults::default()).await;
    let data = blob(1 << 20);
    let metainfo = seed(&origin, &data).await;
    let digest = *metainfo.digest();
    let namespace: Namespace = "library/test".parse().unwrap();
    // Nobody to download from yet: the download waits for peers.
    let agent = agent(&ca, &tracker).await;
    let BlobState::Downloading(mut first) = agent
        .scheduler
        .download(&namespace, &metainfo)
        .await
        .unwrap()
    else {
        panic!("an empty store holds the blob");
    };
    assert_eq!(
        agent.scheduler.state(&digest),
        Some(TorrentState::Downloading)
    );

    agent.scheduler.remove(&digest);
    // No polling: download() waits for the removed torrent to close, then starts a new one.
    let BlobState::Downloading(mut second) = agent
        .scheduler
        .download(&namespace, &metainfo)
        .await
        .unwrap()
    else {
        panic!("a removed download left the blob stored");
    };
    match first.wait().await {
        Err(SchedulerError::Failed {
            source: DownloadError::Removed,
            ..
        }) => {}
        other => panic!("the removed download ended with {other:?}"),
    }
    tracker.add_origin(&origin);
    tokio::time::timeout(Duration::from_secs(60), second.wait())
        .await
        .expect("download finished in time")
        .unwrap();
    assert!(matches!(
        agent
            .scheduler
            .download(&namespace, &metainfo)
            .await
            .unwrap(),
        BlobState::Stored
    ));
    agent.scheduler.shutdown().await;
    origin.scheduler.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_fails_running_downloads_and_waits_for_every_task() {
    kraken_tls::install_crypto_provider();
    let ca = DevCa::new().unwrap();
    let tracker = Arc::new(FakeTracker::default());
    let agent = agent(&ca, &tracker).await;
    let data = blob(1 << 20);
    let metainfo =
        MetaInfo::generate(&data[..], 64 << 10, kraken_core::PieceHashAlgorithm::Blake3).unwrap();
    let namespace: Namespace = "library/test".parse().unwrap();
    let BlobState::Downloading(mut download) = agent
        .scheduler
        .download(&namespace, &metainfo)
        .await
        .unwrap()
    else {
        panic!("an empty store holds the blob");
    };
    tokio::time::timeout(Duration::from_secs(10), agent.scheduler.shutdown())
        .await
        .expect("shutdown returned");
    // Every task has ended, the torrent's included: nothing is left open.
    assert_eq!(agent.scheduler.stats().torrents, 0);
    assert_eq!(agent.scheduler.state(metainfo.digest()), None);
    match download.wait().await {
        Err(SchedulerError::Failed {
            source: DownloadError::ShutDown,
            ..
        }) => {}
        other => panic!("the download ended with {other:?}"),
    }
    assert!(matches!(
        agent.scheduler.download(&namespace, &metainfo).await,
        Err(SchedulerError::ShutDown)
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_download_nobody_serves_gives_up_at_its_leecher_tti() {
    kraken_tls::install_crypto_provider();
    let ca = DevCa::new().unwrap();
    let issued = ca.issue(Role::Agent, &LeafOptions::default()).unwrap();
    let tls = TlsMaterial::from_pem(ca.cert_pem(), &issued.cert_pem, &issued.key_pem).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let store = BlobStore::open(StoreConfig {
        dir: dir.path().to_owned(),
        ..StoreConfig::default()
    })
    .await
    .unwrap();
    let tti = Duration::from_millis(300);
    let config = kraken_config::scheduler::SchedulerConfig {
        leecher_tti: tti,
        ..Default::default()
    };
    let member = SwarmMember {
        listen: "127.0.0.1:0".parse().unwrap(),
        advertise_ip: None,
        peer_id: PeerId::random(),
        origin: false,
        driver: DriverConfig::from_config(&config, false),
        bandwidth: config.conn.bandwidth.clone(),
        quic: kraken_transport::quic::QuicTuning::default(),
    };
    let tracker: Arc<dyn Announcer> = Arc::new(FakeTracker::default());
    let agent = Scheduler::bind(member, &tls, store.clone(), Some(tracker)).unwrap();
    let data = blob(256 << 10);
    let metainfo =
        MetaInfo::generate(&data[..], 64 << 10, kraken_core::PieceHashAlgorithm::Blake3).unwrap();
    let namespace: Namespace = "library/test".parse().unwrap();
    let BlobState::Downloading(mut download) = agent.download(&namespace, &metainfo).await.unwrap()
    else {
        panic!("an empty store holds the blob");
    };
    // The torrent sleeps until its deadline: no tick has to come round first. (The bound is a
    // hang guard; the error below says it was the idle deadline that ended the download.)
    let result = tokio::time::timeout(Duration::from_secs(5), download.wait())
        .await
        .expect("the download gave up in time");
    match result {
        Err(SchedulerError::Failed {
            source: DownloadError::Idle(after),
            ..
        }) => assert_eq!(after, tti),
        other => panic!("the download ended with {other:?}"),
    }
    // Its staging is gone and a new request starts a new download.
    let again = agent.download(&namespace, &metainfo).await.unwrap();
    assert!(matches!(again, BlobState::Downloading(_)), "{again:?}");
    agent.shutdown().await;
}

/// Waits until `condition` holds for every node (the bound is a hang guard).
async fn until_all(what: &str, nodes: &[&Node], condition: impl Fn(SchedulerStats) -> bool) {
    within(what, async {
        while !nodes.iter().all(|n| condition(n.scheduler.stats())) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
}

/// Two pairs of agents link up over blobs nobody holds, so no piece ever moves and no link can
/// close because a transfer completed: the pair `configure`d with a short limit must drop its
/// link for time while the pair with the defaults keeps its own. What is compared is the
/// order of events and what closed the link (the driver's count of links closed for time),
/// not a clock.
async fn only_the_short_limit_closes_an_idle_link(
    configure: impl Fn(&mut kraken_config::scheduler::SchedulerConfig) + Copy,
) {
    kraken_tls::install_crypto_provider();
    let ca = DevCa::new().unwrap();
    let tracker = Arc::new(FakeTracker {
        introduce_once: true,
        ..FakeTracker::default()
    });
    let namespace: Namespace = "library/linger".parse().unwrap();
    let unheld = |len| {
        MetaInfo::generate(
            &blob(len)[..],
            64 << 10,
            kraken_core::PieceHashAlgorithm::Blake3,
        )
        .unwrap()
    };
    let start = async |node: &Node, metainfo: &MetaInfo| match node
        .scheduler
        .download(&namespace, metainfo)
        .await
        .unwrap()
    {
        BlobState::Downloading(download) => download,
        BlobState::Stored => panic!("an empty store holds the blob"),
    };

    // The patient pair first, on one blob: linked, and staying so.
    let patient = [agent(&ca, &tracker).await, agent(&ca, &tracker).await];
    let theirs = unheld(320 << 10);
    for node in &patient {
        start(node, &theirs).await;
    }
    let [p0, p1] = &patient;
    until_all("the patient pair linked", &[p0, p1], |s| s.links == 1).await;

    // Then the short-lived pair, on another.
    let mut short = Vec::new();
    for _ in 0..2 {
        short.push(
            node_with(
                &ca,
                Role::Agent,
                false,
                Some(tracker.clone()),
                Faults::default(),
                configure,
            )
            .await,
        );
    }
    let ours = unheld(256 << 10);
    let mut downloads = Vec::new();
    for node in &short {
        downloads.push(start(node, &ours).await);
    }
    let [s0, s1] = [&short[0], &short[1]];
    within("the short limit closed their link", async {
        loop {
            let (a, b) = (s0.scheduler.stats(), s1.scheduler.stats());
            if a.expired_links + b.expired_links > 0 && a.links == 0 && b.links == 0 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    for node in &patient {
        let stats = node.scheduler.stats();
        assert_eq!(stats.links, 1, "the defaults have not passed: {stats:?}");
        assert_eq!(stats.expired_links, 0, "{stats:?}");
    }
    // Only the link closed: the downloads still wait for a peer that holds the blob.
    for node in &short {
        assert_eq!(
            node.scheduler.state(ours.digest()),
            Some(TorrentState::Downloading)
        );
    }
    assert!(downloads.iter().all(|d| matches!(
        *d.status.borrow(),
        kraken_scheduler::Status::Downloading { .. }
    )));
    for node in [p0, p1, s0, s1] {
        node.scheduler.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_link_that_exchanges_nothing_closes_at_its_conn_tti() {
    only_the_short_limit_closes_an_idle_link(|config| {
        config.conn_tti = Duration::from_millis(300);
        config.conn_ttl = Duration::from_secs(3600);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_link_closes_at_its_conn_ttl_even_when_its_conn_tti_is_far_off() {
    only_the_short_limit_closes_an_idle_link(|config| {
        config.conn_tti = Duration::from_secs(3600);
        config.conn_ttl = Duration::from_millis(300);
    })
    .await;
}

/// Fails the test instead of hanging it.
async fn within<T>(what: &str, future: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(30), future)
        .await
        .unwrap_or_else(|_| panic!("hang guard: {what}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unrequested_and_longer_than_requested_pieces_are_refused_before_the_body() {
    use kraken_proto::p2p::v1::{self as pb, message::Kind};
    use kraken_transport::quic::{self, PeerEndpoint, QuicTuning};

    kraken_tls::install_crypto_provider();
    let ca = DevCa::new().unwrap();
    let tracker = Arc::new(FakeTracker::default());
    let data = blob(1 << 20);
    let metainfo =
        MetaInfo::generate(&data[..], 64 << 10, kraken_core::PieceHashAlgorithm::Blake3).unwrap();
    let namespace: Namespace = "library/test".parse().unwrap();

    // A hand-driven peer that claims the whole blob.
    let issued = ca.issue(Role::Agent, &LeafOptions::default()).unwrap();
    let tls = TlsMaterial::from_pem(ca.cert_pem(), &issued.cert_pem, &issued.key_pem).unwrap();
    let rogue =
        PeerEndpoint::bind("127.0.0.1:0".parse().unwrap(), &tls, &QuicTuning::default()).unwrap();
    let rogue_info = PeerInfo {
        peer_id: PeerId::random(),
        addr: rogue.local_addr().unwrap(),
        complete: true,
        origin: false,
    };
    tracker
        .announce(&namespace, metainfo.digest(), &rogue_info)
        .await
        .unwrap();

    let victim = agent(&ca, &tracker).await;
    let _download = victim
        .scheduler
        .download(&namespace, &metainfo)
        .await
        .unwrap();

    let connection = within("the victim's dial", rogue.accept()).await.unwrap();
    let (send, recv) = within("a control stream", connection.accept_bi())
        .await
        .unwrap();
    let (mut tx, mut rx) = quic::control_stream(send, recv);
    let theirs = within("the handshake", rx.recv()).await.unwrap().unwrap();
    assert!(
        matches!(theirs.kind, Some(Kind::Handshake(_))),
        "{theirs:?}"
    );
    let num_pieces = metainfo.num_pieces();
    tx.send(&pb::Message {
        kind: Some(Kind::Handshake(pb::Handshake {
            peer_id: Bytes::copy_from_slice(rogue_info.peer_id.as_bytes()),
            namespace: namespace.to_string(),
            digest: metainfo.digest().to_string(),
            bitfield: kraken_core::Bitfield::full(num_pieces).to_bytes().into(),
            num_pieces,
            neighbor_peer_ids: Vec::new(),
            origin: false,
        })),
    })
    .await
    .unwrap();
    let request = within("a request", async {
        loop {
            if let Some(Kind::Request(request)) = rx.recv().await.unwrap().unwrap().kind {
                return request;
            }
        }
    })
    .await;
    assert!(request.piece < num_pieces);

    // A piece nobody asked for is refused on its header alone.
    let unrequested = pb::PieceHeader {
        digest: Bytes::copy_from_slice(metainfo.digest().as_bytes()),
        piece: num_pieces + 5,
        offset: 0,
        length: 64 << 10,
    };
    let mut stream = quic::open_piece_stream(&connection, &unrequested)
        .await
        .unwrap();
    let _ = stream.write_all(&data[..4096]).await;
    let stopped = within("the refusal", stream.stopped()).await.unwrap();
    assert_eq!(stopped, Some(quic::PIECE_REFUSED.into()));

    // Announce 32 MiB for the requested piece, send a little and leave the stream open: the
    // victim can only answer by refusing the header, not by reading the body.
    let header = pb::PieceHeader {
        digest: Bytes::copy_from_slice(metainfo.digest().as_bytes()),
        piece: request.piece,
        offset: 0,
        length: 32 << 20,
    };
    let mut stream = quic::open_piece_stream(&connection, &header).await.unwrap();
    let _ = stream.write_all(&data[..4096]).await;
    // The stream is stopped, or the whole connection closed if the blacklisting got there
    // first; the body is never awaited.
    match within("the refusal", stream.stopped()).await {
        Ok(code) => assert_eq!(code, Some(quic::PIECE_REFUSED.into())),
        Err(quinn::StoppedError::ConnectionLost(_)) => {}
        Err(other) => panic!("{other:?}"),
    }
    within("the blacklisting", async {
        while victim.scheduler.stats().blacklisted_peers == 0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert!(victim.scheduler.stats().bad_pieces >= 1);
    victim.scheduler.shutdown().await;
    rogue.close();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_dial_and_a_peer_that_served_are_reported_with_the_next_announces() {
    kraken_tls::install_crypto_provider();
    let ca = DevCa::new().unwrap();
    let tracker = Arc::new(FakeTracker::default());
    let data = blob(1 << 20);
    let namespace: Namespace = "library/test".parse().unwrap();

    // An honest complete agent, and a "complete" peer at a port nothing listens on.
    let seeder = agent(&ca, &tracker).await;
    let metainfo = seed(&seeder, &data).await;
    let mut seeder_info = *seeder.scheduler.local();
    seeder_info.complete = true;
    tracker
        .announce(&namespace, metainfo.digest(), &seeder_info)
        .await
        .unwrap();
    let dead_port = std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let dead = PeerInfo {
        peer_id: PeerId::random(),
        addr: std::net::SocketAddr::from(([127, 0, 0, 1], dead_port)),
        complete: true,
        origin: false,
    };
    tracker
        .announce(&namespace, metainfo.digest(), &dead)
        .await
        .unwrap();

    let downloader = agent(&ca, &tracker).await;
    let me = downloader.scheduler.local().peer_id;
    let mut download = downloader
        .scheduler
        .download(&namespace, &metainfo)
        .await
        .unwrap();
    within("the download", download.wait()).await.unwrap();
    // The torrent keeps announcing as a seeder: the pieces it verified from the seeder, and
    // the dial that failed (after the connect timeout), reach the tracker with its announces.
    within("the reports", async {
        while !(tracker.reported(me, seeder_info.peer_id, false)
            && tracker.reported(me, dead.peer_id, true))
        {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    assert!(
        !tracker.reported(me, dead.peer_id, false),
        "the dead peer served nothing"
    );
    assert!(!tracker.reported(me, seeder_info.peer_id, true));
    // Each report is sent once: lists are cleared after a delivered announce.
    let sent = tracker
        .reports
        .lock()
        .unwrap()
        .iter()
        .filter(|(from, reports)| *from == me && reports.failed.contains(&dead.peer_id))
        .count();
    assert_eq!(sent, 1);
    downloader.scheduler.shutdown().await;
    seeder.scheduler.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn configured_bandwidth_caps_are_on_the_data_path_in_both_directions() {
    kraken_tls::install_crypto_provider();
    let ca = DevCa::new().unwrap();
    let tracker = Arc::new(FakeTracker::default());
    // 4 Mbit/s (~500 KB/s): the origin's upload, and the agent's download.
    let cap = 4_000_000;
    let capped = |egress: bool| {
        move |config: &mut kraken_config::scheduler::SchedulerConfig| {
            config.conn.bandwidth = BandwidthConfig {
                enable: true,
                egress_bits_per_sec: if egress { cap } else { 0 },
                ingress_bits_per_sec: if egress { 0 } else { cap },
            };
        }
    };
    let origin = node_with(
        &ca,
        Role::Origin,
        true,
        None,
        Faults::default(),
        capped(true),
    )
    .await;
    tracker.add_origin(&origin);
    let capped_agent = node_with(
        &ca,
        Role::Agent,
        false,
        Some(tracker.clone()),
        Faults::default(),
        capped(false),
    )
    .await;
    // An uncapped agent beside it, for contrast.
    let free = agent(&ca, &tracker).await;
    let data = blob(1 << 20);
    let metainfo = seed(&origin, &data).await;
    let namespace: Namespace = "library/capped".parse().unwrap();
    let mut download = capped_agent
        .scheduler
        .download(&namespace, &metainfo)
        .await
        .unwrap();
    tokio::time::timeout(Duration::from_secs(120), download.wait())
        .await
        .expect("hang guard: the capped download")
        .unwrap();

    // Every byte the origin sent went through its egress cap, every byte the agent received
    // through its ingress cap, and the caps made them wait (1 MiB at ~500 KB/s is far beyond
    // the 64 KiB burst; loopback alone would move it in milliseconds).
    let sent = origin.scheduler.stats().bandwidth;
    let egress = sent.egress.expect("the origin's egress is capped");
    assert_eq!(egress.bits_per_sec, cap);
    assert!(egress.bytes >= data.len() as u64, "{egress:?}");
    assert!(egress.delay > Duration::ZERO, "{egress:?}");
    assert_eq!(sent.ingress, None, "the origin's ingress is not capped");
    let received = capped_agent.scheduler.stats().bandwidth;
    let ingress = received.ingress.expect("the agent's ingress is capped");
    assert!(ingress.bytes >= data.len() as u64, "{ingress:?}");
    assert_eq!(received.egress, None, "the agent's egress is not capped");
    // Caps off (the default): nothing is counted, nothing waits.
    assert_eq!(free.scheduler.stats().bandwidth, Default::default());
    for node in [&capped_agent, &free, &origin] {
        node.scheduler.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_seeder_closes_after_its_seeder_tti_and_one_with_the_default_does_not() {
    kraken_tls::install_crypto_provider();
    let ca = DevCa::new().unwrap();
    let tracker = Arc::new(FakeTracker::default());
    let origin = node(&ca, Role::Origin, true, None, Faults::default()).await;
    tracker.add_origin(&origin);
    // `brief` has a 300 ms seeder_tti, `patient` the default (minutes). What is compared is the
    // order of events (one has closed its seeder while the other still seeds), not a clock.
    let brief = node_with(
        &ca,
        Role::Agent,
        false,
        Some(tracker.clone()),
        Faults::default(),
        |config| config.seeder_tti = Duration::from_millis(300),
    )
    .await;
    let patient = agent(&ca, &tracker).await;
    let data = blob(1 << 20);
    let metainfo = seed(&origin, &data).await;
    let namespace: Namespace = "library/ttis".parse().unwrap();
    for node in [&brief, &patient] {
        let mut download = node
            .scheduler
            .download(&namespace, &metainfo)
            .await
            .unwrap();
        tokio::time::timeout(Duration::from_secs(60), download.wait())
            .await
            .expect("hang guard: download")
            .unwrap();
    }
    assert_eq!(
        patient.scheduler.stats().torrents,
        1,
        "seeding after the download"
    );

    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while brief.scheduler.stats().torrents > 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "hang guard: the idle seeder never closed: {:?}",
            brief.scheduler.stats()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(brief.scheduler.state(metainfo.digest()), None);
    let stats = patient.scheduler.stats();
    assert_eq!(
        stats.torrents, 1,
        "the default seeder_tti has not passed: {stats:?}"
    );
    assert!(patient.scheduler.state(metainfo.digest()).is_some());
    // A closed seeder is only closed: the blob stays stored and is served again on request.
    let again = brief
        .scheduler
        .download(&namespace, &metainfo)
        .await
        .unwrap();
    assert!(matches!(again, BlobState::Stored), "{again:?}");
    for node in [&brief, &patient, &origin] {
        node.scheduler.shutdown().await;
    }
}
