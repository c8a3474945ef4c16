//! The async driver: runs the IO-free [`crate::core`] state machines over the QUIC transport
//! and the blob store.
//!
//! Shape: one task per blob ("torrent") owns that blob's swarm state and is the only writer of
//! it; connection tasks read control and piece streams and report to the torrent through a
//! bounded channel; a fixed pool of upload workers serves queued piece requests across all
//! blobs. Disk reads, writes and hashing happen in spawned tasks that report back, so a torrent
//! never waits on the disk.

mod link;
mod torrent;

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use kraken_core::{Digest, MetaInfo, Namespace, PeerId, PeerInfo};
use kraken_store::{BlobStore, DownloadHandle, StoreError};
use kraken_transport::bandwidth::BandwidthLimiter;
use kraken_transport::quic::{self, PeerEndpoint};
use quinn::Connection;
use tokio::sync::{Notify, mpsc, watch};
use tokio_util::sync::CancellationToken;

use crate::core::{
    ConnLimits, ConnState, LinkId, PiecePolicy, RevealOrder, SwarmConfig, UploadQueue,
};
use link::PieceSource;
use torrent::{Event, Torrent};

/// Runtime settings of the driver.
#[derive(Debug, Clone)]
pub struct DriverConfig {
    pub swarm: SwarmConfig,
    pub conn: ConnLimits,
    /// Close a seeding blob nobody asked for in this long (it reopens on demand).
    pub seeder_tti: Duration,
    /// Abandon a download that received nothing in this long.
    pub leecher_tti: Duration,
    /// Close a link that exchanged nothing in this long.
    pub conn_tti: Duration,
    /// Close links older than this, so the peer graph keeps mixing.
    pub conn_ttl: Duration,
    /// First announce interval; the tracker's replies set the next ones.
    pub announce_interval: Duration,
    /// Pieces sent concurrently across every blob.
    pub upload_slots: usize,
    pub max_queued_per_peer: usize,
    /// Reveal pieces a few at a time (origins).
    pub super_seed: bool,
    pub super_seed_window: usize,
    /// Which pieces a super-seeding origin reveals first, per blob.
    pub reveal: RevealPolicy,
    /// Time allowed for a peer to answer our handshake.
    pub handshake_timeout: Duration,
    /// How often each blob checks timeouts and TTIs.
    pub tick: Duration,
    /// Deliberate misbehaviour for tests; never set in production.
    pub faults: Faults,
}

/// How a super-seeding origin orders a blob's pieces ([`RevealOrder`]): origins derive it from
/// their place among the blob's owners on the ring, so owners reveal disjoint stripes; the
/// default is plain ascending order.
#[derive(Clone, Default)]
pub struct RevealPolicy(Option<Arc<RevealFn>>);

type RevealFn = dyn Fn(&Digest) -> RevealOrder + Send + Sync;

impl RevealPolicy {
    pub fn new(order: impl Fn(&Digest) -> RevealOrder + Send + Sync + 'static) -> Self {
        Self(Some(Arc::new(order)))
    }

    pub fn order(&self, digest: &Digest) -> RevealOrder {
        self.0
            .as_ref()
            .map(|order| order(digest))
            .unwrap_or_default()
    }
}

impl std::fmt::Debug for RevealPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_some() {
            "RevealPolicy(striped)"
        } else {
            "RevealPolicy(ascending)"
        })
    }
}

/// Faults a test peer can be told to commit, to prove the others detect them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Faults {
    /// Flip a byte in every piece we send.
    pub corrupt_uploads: bool,
}

impl DriverConfig {
    /// From the `scheduler:` section of an agent's (`origin = false`) or origin's config.
    pub fn from_config(config: &kraken_config::scheduler::SchedulerConfig, origin: bool) -> Self {
        let dispatch = &config.dispatch;
        Self {
            swarm: SwarmConfig {
                piece_policy: match dispatch.piece_policy {
                    kraken_config::scheduler::PiecePolicy::RarestFirst => PiecePolicy::RarestFirst,
                    kraken_config::scheduler::PiecePolicy::Random => PiecePolicy::Random,
                },
                pipeline_limit: dispatch.pipeline_limit as u32,
                origin_pipeline_limit: dispatch.origin_pipeline_limit as u32,
                piece_request_min_timeout: dispatch.piece_request_min_timeout,
                piece_request_timeout_per_mb: dispatch.piece_request_timeout_per_mb,
                piece_request_queue_timeout: dispatch.piece_request_queue_timeout,
                endgame: !dispatch.disable_endgame,
                endgame_threshold: dispatch.endgame_threshold as u32,
                seed: rand::random(),
            },
            conn: ConnLimits {
                max_open_conn: config.connstate.max_open_conn,
                max_mutual_conn: config.connstate.max_mutual_conn,
                blacklist_duration: config.connstate.blacklist_duration,
                ..ConnLimits::default()
            },
            seeder_tti: config.seeder_tti,
            leecher_tti: config.leecher_tti,
            conn_tti: config.conn_tti,
            conn_ttl: config.conn_ttl,
            announce_interval: config.announce_interval,
            upload_slots: config.upload.slots.unwrap_or(if origin { 16 } else { 8 }),
            max_queued_per_peer: config.upload.max_queued_per_peer,
            super_seed: config.upload.super_seed.unwrap_or(origin),
            super_seed_window: config.upload.super_seed_window,
            reveal: RevealPolicy::default(),
            handshake_timeout: Duration::from_secs(5),
            tick: Duration::from_millis(250),
            faults: Faults::default(),
        }
    }
}

impl Default for DriverConfig {
    fn default() -> Self {
        Self::from_config(&kraken_config::scheduler::SchedulerConfig::default(), false)
    }
}

/// The tracker, as the driver sees it.
#[async_trait]
pub trait Announcer: Send + Sync + 'static {
    /// Records `me` as a peer of the blob and returns peers to connect to.
    async fn announce(
        &self,
        namespace: &Namespace,
        digest: &Digest,
        me: &PeerInfo,
    ) -> Result<AnnounceReply, AnnounceError>;
}

/// The tracker's answer to an announce.
#[derive(Debug, Clone)]
pub struct AnnounceReply {
    pub peers: Vec<PeerInfo>,
    pub interval: Duration,
}

/// An announce failed; the driver retries at the current interval.
#[derive(Debug, Clone, thiserror::Error)]
#[error("announce failed: {0}")]
pub struct AnnounceError(pub String);

/// Why a download could not be started or did not finish.
#[derive(Debug, Clone, thiserror::Error)]
pub enum SchedulerError {
    #[error("blob {0} is already stored")]
    AlreadyStored(Digest),
    #[error("the blob store refused the download: {0}")]
    Store(String),
    #[error("download of {digest} failed: {reason}")]
    Failed { digest: Digest, reason: String },
    #[error("the scheduler is shut down")]
    ShutDown,
}

/// Progress of one blob, as a watchable value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Status {
    Downloading {
        pieces: u32,
        total: u32,
    },
    /// Every piece held and the whole blob verified and committed.
    Complete,
    Failed(String),
}

/// A download in progress: read pieces from `handle` as they arrive, or wait for the end.
#[derive(Debug, Clone)]
pub struct Download {
    pub digest: Digest,
    /// The store's download: verified pieces can be read while the rest arrive. `None` when
    /// the blob was already complete and seeding.
    pub handle: Option<DownloadHandle>,
    pub status: watch::Receiver<Status>,
}

impl Download {
    /// Waits until the blob is complete and committed, or the download failed.
    pub async fn wait(&mut self) -> Result<(), SchedulerError> {
        loop {
            match &*self.status.borrow_and_update() {
                Status::Complete => return Ok(()),
                Status::Failed(reason) => {
                    return Err(SchedulerError::Failed {
                        digest: self.digest,
                        reason: reason.clone(),
                    });
                }
                Status::Downloading { .. } => {}
            }
            if self.status.changed().await.is_err() {
                return Err(SchedulerError::Failed {
                    digest: self.digest,
                    reason: "the download was dropped".into(),
                });
            }
        }
    }
}

/// Counts for metrics and tests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SchedulerStats {
    pub torrents: usize,
    pub links: usize,
    /// Pieces that failed verification since start.
    pub bad_pieces: u64,
    /// Peers blacklisted for sending bad data since start.
    pub blacklisted_peers: u64,
}

/// The P2P scheduler of one process (agent or origin). Cloning shares it.
#[derive(Clone, Debug)]
pub struct Scheduler {
    inner: Arc<Inner>,
}

pub(crate) struct Inner {
    local: PeerInfo,
    config: DriverConfig,
    endpoint: PeerEndpoint,
    store: BlobStore,
    limiter: BandwidthLimiter,
    announcer: Option<Arc<dyn Announcer>>,
    torrents: Mutex<HashMap<Digest, TorrentHandle>>,
    conns: Mutex<ConnState<Digest>>,
    uploads: Mutex<UploadQueue<Digest>>,
    upload_ready: Notify,
    /// Where to send a queued upload: the link's connection and blob.
    upload_targets: Mutex<HashMap<LinkId, UploadTarget>>,
    /// Connections whose streams we already read.
    served: Mutex<HashSet<usize>>,
    next_link: AtomicU64,
    bad_pieces: AtomicU64,
    blacklisted_peers: AtomicU64,
    shutdown: CancellationToken,
}

impl std::fmt::Debug for Inner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Scheduler")
            .field("local", &self.local)
            .finish_non_exhaustive()
    }
}

#[derive(Clone)]
struct TorrentHandle {
    events: mpsc::Sender<Event>,
    status: watch::Receiver<Status>,
    download: Option<DownloadHandle>,
}

#[derive(Clone)]
struct UploadTarget {
    connection: Connection,
    torrent: mpsc::Sender<Event>,
    metainfo: Arc<MetaInfo>,
}

/// Locks a std mutex, recovering from poisoning: every critical section here leaves the state
/// consistent before anything that could panic.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    match mutex.lock() {
        Ok(guard) => guard,
        Err(poisoned) => poisoned.into_inner(),
    }
}

impl Scheduler {
    /// Starts accepting peers on `endpoint` and serving uploads. `local` is what we announce:
    /// our peer id, the address peers should dial, and whether we are an origin. Origins pass
    /// no announcer.
    pub fn start(
        local: PeerInfo,
        config: DriverConfig,
        endpoint: PeerEndpoint,
        store: BlobStore,
        limiter: BandwidthLimiter,
        announcer: Option<Arc<dyn Announcer>>,
    ) -> Self {
        let inner = Arc::new(Inner {
            conns: Mutex::new(ConnState::new(local.peer_id, config.conn.clone())),
            uploads: Mutex::new(UploadQueue::new(
                config.super_seed,
                config.max_queued_per_peer,
            )),
            local,
            config,
            endpoint,
            store,
            limiter,
            announcer,
            torrents: Mutex::new(HashMap::new()),
            upload_ready: Notify::new(),
            upload_targets: Mutex::new(HashMap::new()),
            served: Mutex::new(HashSet::new()),
            next_link: AtomicU64::new(1),
            bad_pieces: AtomicU64::new(0),
            blacklisted_peers: AtomicU64::new(0),
            shutdown: CancellationToken::new(),
        });
        tokio::spawn(accept_loop(inner.clone()));
        for _ in 0..inner.config.upload_slots.max(1) {
            tokio::spawn(upload_worker(inner.clone()));
        }
        tokio::spawn(housekeeping(inner.clone()));
        Self { inner }
    }

    /// Who we are in the swarm.
    pub fn local(&self) -> &PeerInfo {
        &self.inner.local
    }

    /// Starts downloading a blob through the swarm, or joins the download in progress.
    pub async fn download(
        &self,
        namespace: &Namespace,
        metainfo: &MetaInfo,
    ) -> Result<Download, SchedulerError> {
        let digest = *metainfo.digest();
        if let Some(handle) = self.inner.torrent(&digest) {
            return Ok(Download {
                digest,
                handle: handle.download,
                status: handle.status,
            });
        }
        if self.inner.store.contains(&digest) {
            return Err(SchedulerError::AlreadyStored(digest));
        }
        let download = self
            .inner
            .store
            .begin_download(metainfo)
            .await
            .map_err(|e| SchedulerError::Store(e.to_string()))?;
        let handle = self
            .inner
            .open_torrent(namespace.clone(), metainfo.clone(), Some(download));
        Ok(Download {
            digest,
            handle: handle.download,
            status: handle.status,
        })
    }

    /// Stops exchanging a blob (the store keeps it).
    pub fn remove(&self, digest: &Digest) {
        if let Some(handle) = self.inner.torrent(digest) {
            let _ = handle.events.try_send(Event::Remove);
        }
    }

    pub fn stats(&self) -> SchedulerStats {
        SchedulerStats {
            torrents: lock(&self.inner.torrents).len(),
            links: lock(&self.inner.upload_targets).len(),
            bad_pieces: self.inner.bad_pieces.load(Ordering::Relaxed),
            blacklisted_peers: self.inner.blacklisted_peers.load(Ordering::Relaxed),
        }
    }

    /// Stops every task and closes every connection.
    pub async fn shutdown(&self) {
        self.inner.shutdown.cancel();
        self.inner.endpoint.close();
    }
}

impl Inner {
    fn torrent(&self, digest: &Digest) -> Option<TorrentHandle> {
        lock(&self.torrents).get(digest).cloned()
    }

    fn new_link_id(&self) -> LinkId {
        LinkId(self.next_link.fetch_add(1, Ordering::Relaxed))
    }

    /// Opens a torrent for a blob (downloading if `download` is given, else seeding from the
    /// store), or returns the one already open.
    fn open_torrent(
        self: &Arc<Self>,
        namespace: Namespace,
        metainfo: MetaInfo,
        download: Option<DownloadHandle>,
    ) -> TorrentHandle {
        let digest = *metainfo.digest();
        let mut torrents = lock(&self.torrents);
        if let Some(existing) = torrents.get(&digest) {
            return existing.clone();
        }
        let (events, receiver) = mpsc::channel(1024);
        let (torrent, status) = Torrent::new(
            self.clone(),
            namespace,
            metainfo,
            download.clone(),
            events.clone(),
            receiver,
        );
        let handle = TorrentHandle {
            events,
            status,
            download,
        };
        torrents.insert(digest, handle.clone());
        drop(torrents);
        tokio::spawn(torrent.run());
        metrics::gauge!(crate::metrics::TORRENTS).increment(1.0);
        handle
    }

    /// Called by a torrent task when it ends.
    fn torrent_closed(&self, digest: &Digest) {
        lock(&self.torrents).remove(digest);
        lock(&self.conns).remove_blob(digest);
        lock(&self.uploads).remove_blob(digest);
        metrics::gauge!(crate::metrics::TORRENTS).decrement(1.0);
    }

    /// A peer opened a control stream for a blob we have no torrent for: open a seeding torrent
    /// if the store holds it.
    async fn torrent_for_incoming(
        self: &Arc<Self>,
        namespace: &Namespace,
        digest: &Digest,
    ) -> Option<TorrentHandle> {
        if let Some(handle) = self.torrent(digest) {
            return Some(handle);
        }
        let metainfo = self.store.metainfo(digest).await.ok().flatten()?;
        if !self.store.contains(digest) {
            return None;
        }
        Some(self.open_torrent(namespace.clone(), metainfo, None))
    }

    /// Starts reading a connection's incoming streams, once per connection.
    fn serve_connection(self: &Arc<Self>, connection: &Connection) {
        if !lock(&self.served).insert(connection.stable_id()) {
            return;
        }
        metrics::gauge!(crate::metrics::CONNECTIONS).increment(1.0);
        let inner = self.clone();
        let connection = connection.clone();
        tokio::spawn(async move {
            let controls = link::accept_controls(inner.clone(), connection.clone());
            let pieces = link::accept_pieces(inner.clone(), connection.clone());
            tokio::select! {
                _ = controls => {}
                _ = pieces => {}
                _ = inner.shutdown.cancelled() => {}
            }
            lock(&inner.served).remove(&connection.stable_id());
            metrics::gauge!(crate::metrics::CONNECTIONS).decrement(1.0);
        });
    }

    fn register_upload_target(&self, link: LinkId, target: UploadTarget) {
        lock(&self.upload_targets).insert(link, target);
    }

    fn forget_link(&self, link: LinkId) {
        lock(&self.upload_targets).remove(&link);
        lock(&self.uploads).remove_link(link);
    }

    /// Queues a peer's request; `false` if refused (queue full or duplicate).
    fn queue_upload(&self, digest: Digest, link: LinkId, piece: u32) -> bool {
        let queued = lock(&self.uploads).push(digest, link, piece).is_ok();
        if queued {
            self.upload_ready.notify_one();
        }
        queued
    }

    fn cancel_upload(&self, digest: &Digest, link: LinkId, piece: u32) {
        lock(&self.uploads).cancel(digest, link, piece);
    }
}

async fn accept_loop(inner: Arc<Inner>) {
    loop {
        let connection = tokio::select! {
            connection = inner.endpoint.accept() => connection,
            _ = inner.shutdown.cancelled() => return,
        };
        let Some(connection) = connection else { return };
        inner.serve_connection(&connection);
    }
}

/// Serves queued requests one piece at a time; `upload_slots` of these run concurrently.
async fn upload_worker(inner: Arc<Inner>) {
    loop {
        let next = lock(&inner.uploads).pop();
        let Some(next) = next else {
            tokio::select! {
                _ = inner.upload_ready.notified() => continue,
                _ = inner.shutdown.cancelled() => return,
            }
        };
        // Wake another worker in case more is queued.
        inner.upload_ready.notify_one();
        let Some(target) = lock(&inner.upload_targets).get(&next.link).cloned() else {
            continue;
        };
        let digest = next.blob;
        let result = send_one(&inner, &target, &digest, next.piece).await;
        match result {
            Ok(bytes) => {
                metrics::counter!(crate::metrics::PIECES_SENT).increment(1);
                metrics::counter!(crate::metrics::SENT_BYTES).increment(bytes);
                let event = Event::PieceSent {
                    link: next.link,
                    piece: next.piece,
                };
                let _ = target.torrent.send(event).await;
            }
            Err(error) => {
                tracing::debug!(%digest, piece = next.piece, %error, "upload failed");
                metrics::counter!(crate::metrics::UPLOAD_FAILURES).increment(1);
            }
        }
    }
}

async fn send_one(
    inner: &Inner,
    target: &UploadTarget,
    digest: &Digest,
    piece: u32,
) -> Result<u64, String> {
    let source = PieceSource::for_blob(&inner.store, digest);
    let mut data = source
        .read(&target.metainfo, piece)
        .await
        .map_err(|e| e.to_string())?;
    if inner.config.faults.corrupt_uploads && !data.is_empty() {
        let mut corrupted = data.to_vec();
        corrupted[0] ^= 0xff;
        data = Bytes::from(corrupted);
    }
    let len = data.len() as u64;
    let header = kraken_proto::p2p::v1::PieceHeader {
        digest: Bytes::copy_from_slice(digest.as_bytes()),
        piece,
        offset: 0,
        length: len,
    };
    inner.limiter.egress(data.len()).await;
    quic::send_piece(&target.connection, &header, data)
        .await
        .map_err(|e| e.to_string())?;
    Ok(len)
}

/// Expires blacklist entries now and then.
async fn housekeeping(inner: Arc<Inner>) {
    let mut interval = tokio::time::interval(Duration::from_secs(10));
    loop {
        tokio::select! {
            _ = interval.tick() => {}
            _ = inner.shutdown.cancelled() => return,
        }
        lock(&inner.conns).expire(tokio::time::Instant::now().into_std());
    }
}

/// Reads a piece for a peer: from the download in progress, or from the committed blob.
impl PieceSource {
    fn for_blob(store: &BlobStore, digest: &Digest) -> Self {
        match store.download(digest) {
            Some(handle) => PieceSource::Downloading(handle),
            None => PieceSource::Committed(store.clone(), *digest),
        }
    }

    async fn read(&self, metainfo: &MetaInfo, piece: u32) -> Result<Bytes, StoreError> {
        match self {
            PieceSource::Downloading(handle) => handle.read_piece(piece).await,
            PieceSource::Committed(store, digest) => {
                let len = metainfo.piece_len(piece)?;
                store
                    .read_range(digest, metainfo.piece_offset(piece), len)
                    .await
            }
        }
    }
}

/// Whether `addr` can be dialled (not unspecified).
fn dialable(addr: &SocketAddr) -> bool {
    !addr.ip().is_unspecified() && addr.port() != 0
}

/// A peer id for log fields.
fn short(peer: &PeerId) -> String {
    peer.to_string()[..8].to_owned()
}
