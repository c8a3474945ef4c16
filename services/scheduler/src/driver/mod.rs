//! The async driver: runs the IO-free [`crate::core`] state machines over the QUIC transport
//! and the blob store.
//!
//! Shape: one task per blob ("torrent") owns that blob's swarm state and is the only writer of
//! it; connection tasks read control and piece streams and report to the torrent through a
//! bounded channel; a fixed pool of upload workers serves queued piece requests across all
//! blobs. Disk reads, writes and hashing happen in spawned tasks that report back, so a torrent
//! never waits on the disk.
//!
//! Lifecycle: [`Scheduler::bind`] makes a process a swarm member; every task it spawns is
//! tracked, and [`Scheduler::shutdown`] returns only once all of them have ended. A blob's
//! torrent is [`TorrentState::Downloading`], then [`TorrentState::Seeding`] once committed, and
//! [`TorrentState::Closing`] from the moment it fails, is removed or idles out until its task has
//! ended and its staging is gone; [`Scheduler::download`] waits out a closing torrent itself, so
//! callers see only [`BlobState::Stored`] or [`BlobState::Downloading`].
//!
//! # Lock order
//!
//! [`Inner`] has five `std::sync::Mutex`es. Today no code path holds two of them at once: every
//! critical section is a few map or state-machine calls with no `.await`, no channel send and no
//! call back into the driver. Keep it that way; if two must ever be held together, take them in
//! this order and never the reverse:
//!
//! 1. `torrents` (which blobs have a task; held while one is opened, so there is one per blob)
//! 2. `conns` (connection limits and blacklist, [`ConnState`])
//! 3. `uploads` (the upload queue, [`UploadQueue`])
//! 4. `upload_targets` (where a queued upload goes)
//! 5. `served` (connections whose streams are read)
//!
//! A torrent's own state is not behind a lock: its task is the only one that touches it.

mod link;
mod torrent;

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use kraken_config::scheduler::BandwidthConfig;
use kraken_core::sync::lock;
use kraken_core::{Digest, MetaInfo, Namespace, PeerId, PeerInfo};
use kraken_store::{BlobStore, DownloadHandle, DownloadState, StoreError};
use kraken_tls::TlsMaterial;
use kraken_transport::bandwidth::{BandwidthLimiter, BandwidthStats};
use kraken_transport::quic::{self, PeerEndpoint, QuicTuning, TransportError};
use quinn::Connection;
use tokio::sync::{Notify, mpsc, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

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

    /// [`Announcer::announce`], passing on what the torrent learnt about other peers since
    /// its last announce, so that the tracker ranks peers by what they did rather than what
    /// they claim. The driver always calls this one; announcers that cannot pass reports on
    /// (test doubles, fixed peer lists) need not implement it.
    async fn announce_reporting(
        &self,
        namespace: &Namespace,
        digest: &Digest,
        me: &PeerInfo,
        reports: &PeerReports,
    ) -> Result<AnnounceReply, AnnounceError> {
        let _ = reports;
        self.announce(namespace, digest, me).await
    }
}

/// What one torrent learnt about other peers since its last announce. Each list holds at
/// most [`PeerReports::MAX`] distinct peers (the tracker reads no more); origins are left out,
/// as the tracker ranks them by the ring rather than by reports.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PeerReports {
    /// Peers we could not connect to, whose handshake failed, or that sent bad data.
    pub failed: Vec<PeerId>,
    /// Peers that delivered at least one piece that verified.
    pub served: Vec<PeerId>,
}

impl PeerReports {
    /// Most peers per list.
    pub const MAX: usize = 32;

    /// Whether there is nothing to report.
    pub fn is_empty(&self) -> bool {
        self.failed.is_empty() && self.served.is_empty()
    }

    pub(crate) fn failed(&mut self, peer: PeerId) {
        note(&mut self.failed, peer);
    }

    pub(crate) fn served(&mut self, peer: PeerId) {
        note(&mut self.served, peer);
    }

    /// Puts back reports an announce that failed could not deliver, behind newer ones.
    pub(crate) fn restore(&mut self, older: PeerReports) {
        for peer in older.failed {
            self.failed(peer);
        }
        for peer in older.served {
            self.served(peer);
        }
    }
}

/// Adds `peer` to a report list unless it is there or the list is full (a linear scan of at
/// most 32 ids: cheaper than a set).
fn note(list: &mut Vec<PeerId>, peer: PeerId) {
    if list.len() < PeerReports::MAX && !list.contains(&peer) {
        list.push(peer);
    }
}

/// The tracker's answer to an announce.
#[derive(Debug, Clone)]
pub struct AnnounceReply {
    pub peers: Vec<PeerInfo>,
    pub interval: Duration,
}

/// An announce failed; the driver retries at the current interval. The source is the
/// announcer's own error (the tracker client's, in an agent).
#[derive(Debug, thiserror::Error)]
#[error("announce failed")]
pub struct AnnounceError(#[source] Box<dyn std::error::Error + Send + Sync + 'static>);

impl AnnounceError {
    pub fn new(source: impl Into<Box<dyn std::error::Error + Send + Sync + 'static>>) -> Self {
        Self(source.into())
    }
}

/// Why a download could not be started or did not finish.
#[derive(Debug, thiserror::Error)]
pub enum SchedulerError {
    #[error("the blob store refused the download of {digest}")]
    Store {
        digest: Digest,
        #[source]
        source: StoreError,
    },
    #[error("download of {digest} failed")]
    Failed {
        digest: Digest,
        #[source]
        source: DownloadError,
    },
    #[error("the scheduler is shut down")]
    ShutDown,
}

/// Why a started download ended without a committed blob. Cloned to every watcher of the
/// download, so the store's error is shared.
#[derive(Debug, Clone, thiserror::Error)]
pub enum DownloadError {
    /// Every piece arrived but the blob could not be committed: the whole did not match its
    /// digest, or the disk refused (full, read-only); the source says which.
    #[error("the blob could not be verified and committed")]
    Commit(#[source] Arc<StoreError>),
    /// No peer delivered a piece within `leecher_tti`.
    #[error("no piece received for {}", humantime::format_duration(*.0))]
    Idle(Duration),
    /// [`Scheduler::remove`] was called.
    #[error("the download was removed")]
    Removed,
    #[error("the scheduler shut down")]
    ShutDown,
    /// The torrent's task ended without a verdict (it panicked).
    #[error("the download ended without a result")]
    Abandoned,
}

/// Progress of one blob, as a watchable value.
#[derive(Debug, Clone)]
pub enum Status {
    Downloading {
        pieces: u32,
        total: u32,
    },
    /// Every piece held and the whole blob verified and committed.
    Complete,
    Failed(DownloadError),
}

/// Where a blob's torrent is in its life, as [`Scheduler::state`] reports it. One owner (the
/// torrent's task) moves it forward; it never goes back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TorrentState {
    /// Pieces are arriving into the store's staging.
    Downloading,
    /// The blob is committed; the torrent serves it to peers.
    Seeding,
    /// Failed, removed or idle: the task is ending and will drop the blob's staging. A new
    /// download of the blob starts once it is gone.
    Closing,
}

/// What [`Scheduler::download`] found or started.
#[derive(Debug)]
pub enum BlobState {
    /// The store holds the whole, verified blob: read it there.
    Stored,
    /// The blob is being downloaded through the swarm.
    Downloading(Download),
}

impl BlobState {
    /// Waits until the blob is stored (at once if it already is).
    pub async fn wait(&mut self) -> Result<(), SchedulerError> {
        match self {
            Self::Stored => Ok(()),
            Self::Downloading(download) => download.wait().await,
        }
    }
}

/// A download in progress: read pieces from `handle` as they arrive, or wait for the end.
#[derive(Debug, Clone)]
pub struct Download {
    pub digest: Digest,
    /// The store's download: verified pieces can be read while the rest arrive.
    pub handle: DownloadHandle,
    pub status: watch::Receiver<Status>,
}

impl Download {
    /// Waits until the blob is complete and committed, or the download failed.
    pub async fn wait(&mut self) -> Result<(), SchedulerError> {
        loop {
            let failed = match &*self.status.borrow_and_update() {
                Status::Complete => return Ok(()),
                Status::Failed(error) => Some(error.clone()),
                Status::Downloading { .. } => None,
            };
            let source = match failed {
                Some(error) => error,
                None if self.status.changed().await.is_ok() => continue,
                None => DownloadError::Abandoned,
            };
            return Err(SchedulerError::Failed {
                digest: self.digest,
                source,
            });
        }
    }
}

/// What makes a process a member of the swarm: where its QUIC peer endpoint listens, who it
/// says it is and how its driver behaves. [`Scheduler::bind`] turns it into a running member.
#[derive(Debug, Clone)]
pub struct SwarmMember {
    /// Where the QUIC peer endpoint binds (the config's `listen.p2p`; port 0 picks one).
    pub listen: SocketAddr,
    /// The IP peers dial. `None`: the bound IP when it is a specific one, else 127.0.0.1
    /// (right for a single-host cluster only; a warning says so).
    pub advertise_ip: Option<IpAddr>,
    pub peer_id: PeerId,
    /// Origins seed and never announce; agents download and announce.
    pub origin: bool,
    pub driver: DriverConfig,
    /// Caps on P2P traffic (`scheduler.conn.bandwidth`).
    pub bandwidth: BandwidthConfig,
    /// QUIC settings, with the component's `limits.p2p` applied.
    pub quic: QuicTuning,
}

/// The QUIC peer endpoint could not be bound.
#[derive(Debug, thiserror::Error)]
#[error("cannot bind the P2P port on {addr}")]
pub struct BindError {
    pub addr: SocketAddr,
    #[source]
    pub source: Box<TransportError>,
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
    /// Links closed for time since start (`conn_tti`, `conn_ttl`); not those closed because
    /// both ends were complete, a peer left or misbehaved.
    pub expired_links: u64,
    /// What the `scheduler.conn.bandwidth` caps passed and imposed (`None` per direction when
    /// uncapped).
    pub bandwidth: BandwidthStats,
    /// Piece payload bytes received from peers since start.
    pub bytes_received: u64,
    /// Piece payload bytes sent to peers since start.
    pub bytes_sent: u64,
}

/// How many finished downloads [`Scheduler::recent_downloads`] remembers.
pub const RECENT_DOWNLOADS: usize = 32;

/// A finished, verified download: where its bytes came from and how long it took.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DownloadReport {
    pub namespace: Namespace,
    pub digest: Digest,
    pub size: u64,
    /// Bytes of the pieces kept that came from other agents.
    pub bytes_from_peers: u64,
    /// Bytes of the pieces kept that came from origins.
    pub bytes_from_origins: u64,
    /// From the torrent's start to the verified blob.
    pub duration: Duration,
    pub finished: std::time::SystemTime,
}

/// The P2P scheduler of one process (agent or origin). Cloning shares it.
#[derive(Clone, Debug)]
pub struct Scheduler {
    inner: Arc<Inner>,
}

pub(crate) struct Inner {
    local: PeerInfo,
    /// Where the QUIC endpoint is bound.
    p2p_addr: SocketAddr,
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
    expired_links: AtomicU64,
    bytes_received: AtomicU64,
    bytes_sent: AtomicU64,
    /// The last [`RECENT_DOWNLOADS`] finished downloads, oldest first.
    recent: Mutex<std::collections::VecDeque<DownloadReport>>,
    shutdown: CancellationToken,
    /// Every task the driver spawns; [`Scheduler::shutdown`] waits for all of them.
    tasks: TaskTracker,
}

impl Inner {
    /// Remembers a finished download, forgetting the oldest beyond [`RECENT_DOWNLOADS`].
    pub(crate) fn record_download(&self, report: DownloadReport) {
        let mut recent = lock(&self.recent);
        if recent.len() == RECENT_DOWNLOADS {
            recent.pop_front();
        }
        recent.push_back(report);
    }

    pub(crate) fn count_received(&self, bytes: u64) {
        self.bytes_received.fetch_add(bytes, Ordering::Relaxed);
    }
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
    /// Cancelled to close the torrent ([`Scheduler::remove`], or a stale torrent in the way of
    /// a download); from then on it is [`TorrentState::Closing`].
    remove: CancellationToken,
    /// Cancelled when the torrent's task has ended (and its entry is gone from `torrents`).
    closed: CancellationToken,
}

impl TorrentHandle {
    fn state(&self) -> TorrentState {
        if self.remove.is_cancelled() || self.closed.is_cancelled() {
            return TorrentState::Closing;
        }
        match (&*self.status.borrow(), &self.download) {
            (Status::Complete, _) => TorrentState::Seeding,
            (Status::Downloading { .. }, Some(download))
                if matches!(
                    download.state(),
                    DownloadState::Downloading | DownloadState::Committed
                ) =>
            {
                TorrentState::Downloading
            }
            // Failed, or the store closed its staging under it.
            (Status::Failed(_) | Status::Downloading { .. }, _) => TorrentState::Closing,
        }
    }

    fn is(&self, other: &TorrentHandle) -> bool {
        self.events.same_channel(&other.events)
    }
}

#[derive(Clone)]
struct UploadTarget {
    connection: Connection,
    torrent: mpsc::Sender<Event>,
    metainfo: Arc<MetaInfo>,
}

impl Scheduler {
    /// Makes this process a swarm member: binds the QUIC peer endpoint on `member.listen`
    /// with `tls`, works out the address peers dial, and [`start`](Self::start)s the driver
    /// over `store`. Agents pass the tracker as `announcer`; origins pass none.
    ///
    /// Binding comes first, so a port conflict returns before any task is spawned.
    pub fn bind(
        member: SwarmMember,
        tls: &TlsMaterial,
        store: BlobStore,
        announcer: Option<Arc<dyn Announcer>>,
    ) -> Result<Self, BindError> {
        let bind_error = |source| BindError {
            addr: member.listen,
            source: Box::new(source),
        };
        let endpoint = PeerEndpoint::bind(member.listen, tls, &member.quic).map_err(bind_error)?;
        let bound = endpoint.local_addr().map_err(bind_error)?;
        let local = PeerInfo {
            peer_id: member.peer_id,
            addr: advertised_addr(member.advertise_ip, bound),
            complete: false,
            origin: member.origin,
        };
        let limiter = limiter(&member.bandwidth);
        Ok(Self::start(
            local,
            member.driver,
            endpoint,
            store,
            limiter,
            announcer,
        ))
    }

    /// Starts accepting peers on an endpoint the caller bound, and serving uploads. `local` is
    /// what we announce: our peer id, the address peers should dial, and whether we are an
    /// origin. Origins pass no announcer. [`bind`](Self::bind) is the usual way in.
    pub fn start(
        local: PeerInfo,
        config: DriverConfig,
        endpoint: PeerEndpoint,
        store: BlobStore,
        limiter: BandwidthLimiter,
        announcer: Option<Arc<dyn Announcer>>,
    ) -> Self {
        let p2p_addr = endpoint.local_addr().unwrap_or(local.addr);
        let inner = Arc::new(Inner {
            conns: Mutex::new(ConnState::new(local.peer_id, config.conn.clone())),
            uploads: Mutex::new(UploadQueue::new(
                config.super_seed,
                config.max_queued_per_peer,
            )),
            local,
            p2p_addr,
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
            expired_links: AtomicU64::new(0),
            bytes_received: AtomicU64::new(0),
            bytes_sent: AtomicU64::new(0),
            recent: Mutex::new(std::collections::VecDeque::with_capacity(RECENT_DOWNLOADS)),
            shutdown: CancellationToken::new(),
            tasks: TaskTracker::new(),
        });
        inner.tasks.spawn(accept_loop(inner.clone()));
        for _ in 0..inner.config.upload_slots.max(1) {
            inner.tasks.spawn(upload_worker(inner.clone()));
        }
        inner.tasks.spawn(housekeeping(inner.clone()));
        Self { inner }
    }

    /// Who we are in the swarm.
    pub fn local(&self) -> &PeerInfo {
        &self.inner.local
    }

    /// Where the QUIC peer endpoint is bound (the port peers dial).
    pub fn p2p_addr(&self) -> SocketAddr {
        self.inner.p2p_addr
    }

    /// The blob, stored or being downloaded through the swarm: starts a download, joins the one
    /// in progress, or waits for a closing torrent of the blob (failed, removed, or seeding a
    /// blob the store has since evicted) to end and then starts afresh. Never returns a torrent
    /// on its way out.
    pub async fn download(
        &self,
        namespace: &Namespace,
        metainfo: &MetaInfo,
    ) -> Result<BlobState, SchedulerError> {
        let digest = *metainfo.digest();
        loop {
            if self.inner.shutdown.is_cancelled() {
                return Err(SchedulerError::ShutDown);
            }
            let handle = match self.inner.torrent(&digest) {
                Some(handle) => handle,
                None if self.inner.store.contains(&digest) => return Ok(BlobState::Stored),
                None => match self.inner.store.begin_download(metainfo).await {
                    Ok(download) => {
                        self.inner
                            .open_torrent(namespace.clone(), metainfo.clone(), Some(download))
                    }
                    // Committed since we looked: the next round finds it stored.
                    Err(StoreError::AlreadyExists(_)) => continue,
                    Err(source) => return Err(SchedulerError::Store { digest, source }),
                },
            };
            match (handle.state(), &handle.download) {
                (TorrentState::Downloading, Some(download)) => {
                    return Ok(BlobState::Downloading(Download {
                        digest,
                        handle: download.clone(),
                        status: handle.status,
                    }));
                }
                (TorrentState::Seeding, _) if self.inner.store.contains(&digest) => {
                    return Ok(BlobState::Stored);
                }
                // Closing, or seeding a blob evicted from under it: see it out.
                _ => self.inner.close_and_wait(&digest, &handle).await?,
            }
        }
    }

    /// Where the blob's torrent is in its life; `None` when it has none.
    pub fn state(&self, digest: &Digest) -> Option<TorrentState> {
        self.inner.torrent(digest).map(|handle| handle.state())
    }

    /// Stops exchanging a blob: a download in progress fails and drops its staging; a
    /// committed blob stays in the store. From the return on, [`download`](Self::download) no
    /// longer hands out this torrent.
    pub fn remove(&self, digest: &Digest) {
        if let Some(handle) = self.inner.torrent(digest) {
            handle.remove.cancel();
        }
    }

    pub fn stats(&self) -> SchedulerStats {
        // One lock at a time (see the lock order above).
        let torrents = lock(&self.inner.torrents).len();
        let links = lock(&self.inner.upload_targets).len();
        SchedulerStats {
            torrents,
            links,
            bad_pieces: self.inner.bad_pieces.load(Ordering::Relaxed),
            blacklisted_peers: self.inner.blacklisted_peers.load(Ordering::Relaxed),
            expired_links: self.inner.expired_links.load(Ordering::Relaxed),
            bandwidth: self.inner.limiter.stats(),
            bytes_received: self.inner.bytes_received.load(Ordering::Relaxed),
            bytes_sent: self.inner.bytes_sent.load(Ordering::Relaxed),
        }
    }

    /// The last [`RECENT_DOWNLOADS`] finished downloads, newest first.
    pub fn recent_downloads(&self) -> Vec<DownloadReport> {
        lock(&self.inner.recent).iter().rev().cloned().collect()
    }

    /// Stops every task and closes every connection; returns once every task the scheduler
    /// spawned has ended (a piece being written or a blob being committed finishes first).
    pub async fn shutdown(&self) {
        self.inner.shutdown.cancel();
        self.inner.endpoint.close();
        self.inner.tasks.close();
        self.inner.tasks.wait().await;
    }
}

/// The address peers dial: `requested` or else the bound IP when it is a specific one, else
/// loopback; with the bound port.
fn advertised_addr(requested: Option<IpAddr>, bound: SocketAddr) -> SocketAddr {
    let ip = requested.unwrap_or_else(|| {
        if bound.ip().is_unspecified() {
            tracing::warn!(
                %bound,
                "advertising 127.0.0.1 to peers: set `peer_ip` unless the whole cluster is on \
                 this host"
            );
            IpAddr::V4(Ipv4Addr::LOCALHOST)
        } else {
            bound.ip()
        }
    });
    SocketAddr::new(ip, bound.port())
}

/// The bandwidth caps of `scheduler.conn.bandwidth`, or none when disabled.
fn limiter(config: &BandwidthConfig) -> BandwidthLimiter {
    if config.enable {
        BandwidthLimiter::new(
            Some(config.egress_bits_per_sec),
            Some(config.ingress_bits_per_sec),
        )
    } else {
        BandwidthLimiter::unlimited()
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
        let (remove, closed) = (CancellationToken::new(), CancellationToken::new());
        let (torrent, status) = Torrent::new(
            self.clone(),
            namespace,
            metainfo,
            download.clone(),
            (events.clone(), receiver),
            remove.clone(),
            closed.clone(),
        );
        let handle = TorrentHandle {
            events,
            status,
            download,
            remove,
            closed,
        };
        torrents.insert(digest, handle.clone());
        drop(torrents);
        self.tasks.spawn(torrent.run());
        metrics::gauge!(crate::metrics::TORRENTS).increment(1.0);
        handle
    }

    /// Asks a torrent to close (a closing one ignores it) and waits until its task has ended.
    async fn close_and_wait(
        &self,
        digest: &Digest,
        handle: &TorrentHandle,
    ) -> Result<(), SchedulerError> {
        handle.remove.cancel();
        tokio::select! {
            () = handle.closed.cancelled() => {}
            () = self.shutdown.cancelled() => return Err(SchedulerError::ShutDown),
        }
        // A task that panicked left its entry behind: drop it, or every download would wait on
        // it again.
        let mut torrents = lock(&self.torrents);
        if torrents.get(digest).is_some_and(|entry| entry.is(handle)) {
            torrents.remove(digest);
        }
        Ok(())
    }

    /// Spawns a task that [`Scheduler::shutdown`] waits for. `work` must end soon after
    /// `shutdown` is cancelled (or be bounded, like a disk write).
    fn spawn<F>(&self, work: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        self.tasks.spawn(work);
    }

    /// Spawns network work that is dropped at shutdown instead of awaited to its end.
    fn spawn_until_shutdown<F>(&self, work: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let shutdown = self.shutdown.clone();
        self.tasks.spawn(async move {
            tokio::select! {
                () = work => {}
                () = shutdown.cancelled() => {}
            }
        });
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
        self.tasks.spawn(async move {
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
        // A send can wait on the bandwidth limiter for a while: shutdown does not.
        let result = tokio::select! {
            result = send_one(&inner, &target, &digest, next.piece) => result,
            () = inner.shutdown.cancelled() => return,
        };
        match result {
            Ok(bytes) => {
                metrics::counter!(crate::metrics::PIECES_SENT).increment(1);
                metrics::counter!(crate::metrics::SENT_BYTES).increment(bytes);
                inner.bytes_sent.fetch_add(bytes, Ordering::Relaxed);
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

/// Whether `addr` can be dialled: specified, and of a family our socket can send to (a
/// tracker of a dual-stack fleet hands out both families; a single-stack host skips the other
/// one instead of failing to dial it and reporting a healthy peer as failed).
fn dialable(endpoint: &PeerEndpoint, addr: &SocketAddr) -> bool {
    !addr.ip().is_unspecified() && addr.port() != 0 && endpoint.reaches(*addr)
}

/// A peer id for log fields.
fn short(peer: &PeerId) -> String {
    peer.to_string()[..8].to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peers_are_told_the_requested_ip_else_the_bound_one_else_loopback() {
        let addr = |requested: Option<&str>, bound: &str| {
            advertised_addr(
                requested.map(|ip| ip.parse().unwrap()),
                bound.parse().unwrap(),
            )
            .to_string()
        };
        assert_eq!(addr(Some("10.0.0.9"), "0.0.0.0:15001"), "10.0.0.9:15001");
        assert_eq!(addr(None, "10.4.4.4:15001"), "10.4.4.4:15001");
        assert_eq!(addr(None, "0.0.0.0:15001"), "127.0.0.1:15001");
        assert_eq!(addr(None, "[::]:15001"), "127.0.0.1:15001");
    }

    #[test]
    fn peer_reports_are_distinct_bounded_and_restored_behind_newer_ones() {
        let ids: Vec<PeerId> = (0..40u8).map(|n| PeerId::from_array([n; 20])).collect();
        let mut reports = PeerReports::default();
        assert!(reports.is_empty());
        for id in ids.iter().chain(&ids) {
            reports.failed(*id);
        }
        reports.served(ids[0]);
        reports.served(ids[0]);
        assert_eq!(reports.failed, ids[..PeerReports::MAX]);
        assert_eq!(reports.served, vec![ids[0]]);

        let mut newer = PeerReports::default();
        newer.served(ids[1]);
        newer.restore(reports);
        assert_eq!(newer.served, vec![ids[1], ids[0]]);
        assert_eq!(newer.failed.len(), PeerReports::MAX);
    }
}
