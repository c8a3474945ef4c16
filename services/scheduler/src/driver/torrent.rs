//! One blob's task: the only owner of its swarm state, links and super-seeding state.
//!
//! Everything that reaches it is an [`Event`]; it never awaits anything but its event channel
//! and its next deadline (the earliest of the swarm's request timeouts, the idle and link
//! timeouts and the next announce: no fixed tick), so a slow disk or a slow peer can delay a
//! piece but never the blob's other links. Work that takes time (writing and hashing a piece,
//! committing the blob, announcing, dialling) runs in spawned tasks that report back with
//! another event.
//!
//! Why one file of this size: it is one actor's event loop, and each handler reads and writes
//! the same state (swarm, links, seeder, status). Split across files, the handlers of one
//! event kind would lose sight of the invariants the others keep; the protocol logic itself
//! already lives in the IO-free `core` and is not repeated here.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use kraken_core::sync::lock;
use kraken_core::{Bitfield, Digest, MetaInfo, Namespace, PeerId, PeerInfo, PieceError};
use kraken_proto::p2p::v1::{self as pb, error::Code, message::Kind};
use kraken_store::{DownloadHandle, StoreError};
use quinn::Connection;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;
use tokio_util::sync::{CancellationToken, DropGuard};

use super::link::{self, DialError, LinkTasks, PeerHandshake, PendingLink};
use super::{
    AnnounceError, AnnounceReply, DownloadError, Inner, PeerReports, Status, UploadTarget,
    dialable, short,
};
use crate::core::{Action, ConnState, LinkClock, LinkId, LinkLimits, Reveal, SuperSeeder, Swarm};

/// Everything a torrent reacts to.
pub(super) enum Event {
    /// A peer opened a control stream for this blob.
    Incoming {
        handshake: pb::Handshake,
        connection: Connection,
        sender: kraken_transport::quic::ControlSender,
        receiver: kraken_transport::quic::ControlReceiver,
    },
    /// A dial we started finished.
    Dialed {
        peer: PeerInfo,
        result: Result<PendingLink, DialError>,
    },
    Message {
        link: LinkId,
        message: pb::Message,
    },
    LinkClosed {
        link: LinkId,
    },
    /// A piece stream's header arrived: the peer started sending. The torrent answers with
    /// the length of the piece if it requested it from that peer, else `None` and the stream
    /// is refused before its payload is read.
    PieceStarted {
        connection_id: usize,
        piece: u32,
        expected: oneshot::Sender<Option<u64>>,
    },
    PieceArrived {
        connection_id: usize,
        piece: u32,
        data: Bytes,
    },
    /// A requested piece's stream was refused: the peer announced or sent another length than
    /// the piece has. Treated like a corrupt piece.
    PieceRefused {
        connection_id: usize,
        piece: u32,
    },
    PieceWritten {
        link: LinkId,
        piece: u32,
        result: Result<bool, StoreError>,
    },
    PieceSent {
        link: LinkId,
        piece: u32,
    },
    Committed(Result<(), StoreError>),
    /// An announce finished; the reports it carried come back to be sent again if it failed.
    Announced(Result<AnnounceReply, AnnounceError>, PeerReports),
}

struct Link {
    peer: PeerId,
    origin: bool,
    connection: Connection,
    tasks: LinkTasks,
    /// When it opened and last exchanged something (`conn_tti`, `conn_ttl`).
    clock: LinkClock,
    /// What the peer holds, as far as it told us.
    peer_bits: Bitfield,
}

/// A dial in flight.
struct PendingDial {
    /// The bitfield our handshake showed.
    told: Bitfield,
    /// Whether the hand-out named the peer an origin.
    origin: bool,
}

pub(super) struct Torrent {
    inner: Arc<Inner>,
    namespace: Namespace,
    digest: Digest,
    metainfo: Arc<MetaInfo>,
    /// While downloading: the store's staging and the swarm state.
    download: Option<DownloadHandle>,
    swarm: Option<Swarm>,
    seeder: Option<SuperSeeder>,
    links: HashMap<LinkId, Link>,
    by_connection: HashMap<usize, LinkId>,
    /// Dials in flight.
    pending_dials: HashMap<PeerId, PendingDial>,
    events_tx: mpsc::Sender<Event>,
    events: mpsc::Receiver<Event>,
    status: watch::Sender<Status>,
    last_activity: Instant,
    /// When the torrent started: a download's duration runs from here.
    started: Instant,
    last_piece: Instant,
    committing: bool,
    announce_at: Instant,
    announce_interval: Duration,
    announcing: bool,
    /// What other peers did since the last announce, passed on with the next one.
    reports: PeerReports,
    done: bool,
    /// A failed or removed download's staging, dropped before the task ends.
    aborting: Option<DownloadHandle>,
    /// Cancelled when the torrent is to close ([`super::Scheduler::remove`]).
    remove: CancellationToken,
    /// Tells waiters the task has ended, when the torrent is dropped (also on a panic).
    _closed: DropGuard,
}

/// The shortest wait between two wake-ups, so a deadline that is already due cannot make the
/// task spin.
const MIN_WAIT: Duration = Duration::from_millis(1);
/// How long a torrent with no deadline at all sleeps before looking again.
const IDLE_WAIT: Duration = Duration::from_secs(3600);

impl Torrent {
    pub(super) fn new(
        inner: Arc<Inner>,
        namespace: Namespace,
        metainfo: MetaInfo,
        download: Option<DownloadHandle>,
        (events_tx, events): (mpsc::Sender<Event>, mpsc::Receiver<Event>),
        remove: CancellationToken,
        closed: CancellationToken,
    ) -> (Self, watch::Receiver<Status>) {
        let num_pieces = metainfo.num_pieces();
        let now = Instant::now();
        let (swarm, initial) = match &download {
            Some(handle) => {
                let have = handle.bitfield();
                let status = Status::Downloading {
                    pieces: have.count(),
                    total: num_pieces,
                };
                let swarm = Swarm::new(
                    crate::core::SwarmConfig {
                        seed: rand::random(),
                        ..inner.config.swarm.clone()
                    },
                    metainfo.length(),
                    metainfo.piece_length(),
                    have,
                );
                (Some(swarm), status)
            }
            None => (None, Status::Complete),
        };
        let seeder = (download.is_none() && inner.config.super_seed).then(|| {
            let order = inner.config.reveal.order(metainfo.digest());
            SuperSeeder::new(num_pieces, inner.config.super_seed_window, order)
        });
        let (status, watcher) = watch::channel(initial);
        let announce_interval = inner.config.announce_interval;
        let torrent = Self {
            digest: *metainfo.digest(),
            metainfo: Arc::new(metainfo),
            inner,
            namespace,
            download,
            swarm,
            seeder,
            links: HashMap::new(),
            by_connection: HashMap::new(),
            pending_dials: HashMap::new(),
            events_tx,
            events,
            status,
            last_activity: now,
            started: now,
            last_piece: now,
            committing: false,
            announce_at: now,
            announce_interval,
            announcing: false,
            reports: PeerReports::default(),
            done: false,
            aborting: None,
            remove,
            _closed: closed.drop_guard(),
        };
        (torrent, watcher)
    }

    pub(super) async fn run(mut self) {
        tracing::debug!(digest = %self.digest, downloading = self.download.is_some(), "torrent opened");
        // An empty blob has nothing to fetch: commit at once.
        if self.swarm.as_ref().is_some_and(Swarm::is_complete) {
            self.commit();
        }
        let (shutdown, remove) = (self.inner.shutdown.clone(), self.remove.clone());
        while !self.done {
            let now = Instant::now();
            let wake = self
                .next_deadline()
                .unwrap_or(now + IDLE_WAIT)
                .max(now + MIN_WAIT);
            tokio::select! {
                event = self.events.recv() => match event {
                    Some(event) => self.handle(event),
                    None => break,
                },
                () = tokio::time::sleep_until(wake) => self.on_deadline(),
                () = remove.cancelled() => {
                    self.fail(DownloadError::Removed);
                    self.done = true;
                }
                () = shutdown.cancelled() => break,
            }
            self.apply_swarm_actions();
        }
        self.close().await;
    }

    fn num_pieces(&self) -> u32 {
        self.metainfo.num_pieces()
    }

    fn handle(&mut self, event: Event) {
        let now = Instant::now();
        match event {
            Event::Incoming {
                handshake,
                connection,
                sender,
                receiver,
            } => self.on_incoming(handshake, connection, sender, receiver),
            Event::Dialed { peer, result } => self.on_dialed(peer, result),
            Event::Message { link, message } => self.on_message(link, message),
            Event::LinkClosed { link } => self.remove_link(link),
            Event::PieceStarted {
                connection_id,
                piece,
                expected,
            } => {
                let mut length = None;
                if let (Some(&link), Some(swarm)) =
                    (self.by_connection.get(&connection_id), &mut self.swarm)
                {
                    length = requested_length(swarm, &self.metainfo, link, piece);
                    if length.is_some() {
                        swarm.piece_started(link, piece, now.into_std());
                    }
                }
                let _ = expected.send(length);
            }
            Event::PieceArrived {
                connection_id,
                piece,
                data,
            } => self.on_piece_arrived(connection_id, piece, data),
            Event::PieceRefused {
                connection_id,
                piece,
            } => {
                if let (Some(&link), Some(swarm)) =
                    (self.by_connection.get(&connection_id), &mut self.swarm)
                {
                    tracing::warn!(digest = %self.digest, piece, "peer sent a piece of the wrong length");
                    metrics::counter!("kraken_p2p_bad_pieces_total").increment(1);
                    self.inner
                        .bad_pieces
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    swarm.piece_received(link, piece, false, now.into_std());
                }
            }
            Event::PieceWritten {
                link,
                piece,
                result,
            } => self.on_piece_written(link, piece, result),
            Event::PieceSent { link, piece } => {
                self.last_activity = now;
                if let Some(l) = self.links.get_mut(&link) {
                    l.clock.active(now.into_std());
                }
                if let Some(seeder) = &mut self.seeder {
                    let reveals = seeder.piece_sent(link, piece);
                    self.apply_reveals(reveals);
                }
            }
            Event::Committed(result) => self.on_committed(result),
            Event::Announced(result, reports) => self.on_announced(result, reports),
        }
    }

    // ---- links ---------------------------------------------------------------------------

    fn on_incoming(
        &mut self,
        handshake: pb::Handshake,
        connection: Connection,
        sender: kraken_transport::quic::ControlSender,
        receiver: kraken_transport::quic::ControlReceiver,
    ) {
        let now = Instant::now().into_std();
        let local = self.inner.local.peer_id;
        let refuse =
            |mut sender: kraken_transport::quic::ControlSender, code: Code, why: String| {
                self.inner.spawn_until_shutdown(async move {
                    let _ = sender.send(&link::error(code, 0, why)).await;
                    sender.finish().await;
                });
            };
        if self.done {
            return refuse(sender, Code::BlobUnknown, "closing".into());
        }
        let peer = match link::parse_handshake(&handshake, &connection, self.num_pieces()) {
            Ok(peer) => peer,
            Err(why) => return refuse(sender, Code::BadRequest, why),
        };
        let peer_id = peer.peer_id;
        if peer_id == local || self.links.values().any(|l| l.peer == peer_id) {
            return refuse(
                sender,
                Code::DuplicateConnection,
                "already connected".into(),
            );
        }
        {
            let mut conns = lock(&self.inner.conns);
            // Both sides dialled at once: keep the link dialled by the lower peer id.
            if conns.is_dialing(&self.digest, peer_id) {
                if peer_id < local {
                    conns.dial_abandoned(&self.digest, peer_id);
                } else {
                    drop(conns);
                    return refuse(sender, Code::DuplicateConnection, "dialling you".into());
                }
            }
            if let Err(refusal) = conns.check_accept(&self.digest, peer_id, &peer.neighbors, now) {
                drop(conns);
                metrics::counter!(crate::metrics::REFUSED_LINKS).increment(1);
                return refuse(sender, Code::TooManyConnections, refusal.to_string());
            }
            conns.established(&self.digest, peer_id);
        }
        let link = self.inner.new_link_id();
        let told = self.our_bitfield_for(link, &peer.bitfield);
        let neighbors = lock(&self.inner.conns).neighbors(&self.digest);
        let ours = link::handshake(
            &self.inner.local,
            &self.namespace,
            &self.digest,
            &told,
            &neighbors,
        );
        self.add_link(link, peer, connection, sender, receiver, Some(ours), told);
    }

    fn on_dialed(&mut self, peer: PeerInfo, result: Result<PendingLink, DialError>) {
        let told = self
            .pending_dials
            .remove(&peer.peer_id)
            .map(|dial| dial.told);
        let now = Instant::now().into_std();
        match result {
            Ok(pending) => {
                let duplicate = self.links.values().any(|l| l.peer == peer.peer_id);
                if self.done || duplicate || told.is_none() {
                    lock(&self.inner.conns).dial_abandoned(&self.digest, peer.peer_id);
                    self.inner.spawn_until_shutdown(pending.sender.finish());
                    return;
                }
                lock(&self.inner.conns).established(&self.digest, peer.peer_id);
                let link = self.inner.new_link_id();
                let told = told.unwrap_or_else(|| Bitfield::new(self.num_pieces()));
                let PendingLink {
                    connection,
                    sender,
                    receiver,
                    peer: handshake,
                } = pending;
                self.add_link(link, handshake, connection, sender, receiver, None, told);
            }
            Err(DialError::Duplicate) => {
                lock(&self.inner.conns).dial_abandoned(&self.digest, peer.peer_id);
            }
            Err(DialError::Failed(why)) => {
                tracing::debug!(digest = %self.digest, peer = %short(&peer.peer_id), %why, "dial failed");
                metrics::counter!(crate::metrics::DIAL_FAILURES).increment(1);
                // The tracker hands out last the peers other hosts cannot reach (a certificate
                // holder's fake seeders at dead ports, say).
                peer_failed(
                    &mut lock(&self.inner.conns),
                    &mut self.reports,
                    &self.digest,
                    (peer.peer_id, peer.origin),
                    Failure::Dial,
                    now,
                );
            }
        }
    }

    /// What our handshake shows a new peer: a super-seeding origin's reveals, our pieces while
    /// downloading, everything once complete.
    fn our_bitfield_for(&mut self, link: LinkId, theirs: &Bitfield) -> Bitfield {
        if let Some(seeder) = &mut self.seeder {
            let (shown, reveals) = seeder.add_link(link, theirs.clone());
            self.apply_reveals(reveals);
            return shown;
        }
        match &self.download {
            Some(download) => download.bitfield(),
            None => Bitfield::full(self.num_pieces()),
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn add_link(
        &mut self,
        link: LinkId,
        peer: PeerHandshake,
        connection: Connection,
        sender: kraken_transport::quic::ControlSender,
        receiver: kraken_transport::quic::ControlReceiver,
        first: Option<pb::Message>,
        told: Bitfield,
    ) {
        let now = Instant::now();
        self.inner.serve_connection(&connection);
        let tasks = LinkTasks::spawn(
            &self.inner,
            link,
            sender,
            receiver,
            first,
            self.events_tx.clone(),
        );
        self.by_connection.insert(connection.stable_id(), link);
        self.inner.register_upload_target(
            link,
            UploadTarget {
                connection: connection.clone(),
                torrent: self.events_tx.clone(),
                metainfo: self.metainfo.clone(),
            },
        );
        if let Some(swarm) = &mut self.swarm {
            swarm.add_peer(link, peer.bitfield.clone(), peer.origin, now.into_std());
        }
        // Pieces verified between our handshake snapshot and now.
        if self.seeder.is_none()
            && let Some(download) = &self.download
        {
            for piece in download.bitfield().iter_difference(&told) {
                let _ = tasks.outbox.try_send(have(piece));
            }
        }
        tracing::debug!(digest = %self.digest, peer = %short(&peer.peer_id), origin = peer.origin, "link up");
        metrics::gauge!(crate::metrics::LINKS).increment(1.0);
        self.links.insert(
            link,
            Link {
                peer: peer.peer_id,
                origin: peer.origin,
                connection,
                tasks,
                clock: LinkClock::opened(now.into_std()),
                peer_bits: peer.bitfield,
            },
        );
    }

    fn remove_link(&mut self, link: LinkId) {
        let Some(removed) = self.links.remove(&link) else {
            return;
        };
        let now = Instant::now().into_std();
        self.by_connection.remove(&removed.connection.stable_id());
        self.inner.forget_link(link);
        lock(&self.inner.conns).closed(&self.digest, removed.peer);
        if let Some(swarm) = &mut self.swarm {
            swarm.remove_peer(link, now);
        }
        if let Some(seeder) = &mut self.seeder {
            let reveals = seeder.remove_link(link);
            self.apply_reveals(reveals);
        }
        metrics::gauge!(crate::metrics::LINKS).decrement(1.0);
    }

    /// Queues a message on a link; a peer that does not drain its control stream is dropped.
    fn send(&mut self, link: LinkId, message: pb::Message) {
        let Some(l) = self.links.get(&link) else {
            return;
        };
        if l.tasks.outbox.try_send(message).is_err() {
            tracing::debug!(digest = %self.digest, peer = %short(&l.peer), "peer not reading; dropping link");
            self.remove_link(link);
        }
    }

    // ---- messages ------------------------------------------------------------------------

    fn on_message(&mut self, link: LinkId, message: pb::Message) {
        let now = Instant::now();
        let num_pieces = self.num_pieces();
        let Some(l) = self.links.get_mut(&link) else {
            return;
        };
        l.clock.active(now.into_std());
        match message.kind {
            Some(Kind::Have(pb::Have { piece })) => {
                if piece < num_pieces {
                    l.peer_bits.set(piece, true);
                }
                if let Some(swarm) = &mut self.swarm {
                    swarm.peer_has(link, piece, now.into_std());
                }
                if let Some(seeder) = &mut self.seeder {
                    let reveals = seeder.peer_has(link, piece);
                    self.apply_reveals(reveals);
                }
            }
            Some(Kind::Request(request)) => self.on_request(link, request),
            Some(Kind::Cancel(cancel)) => {
                self.inner.cancel_upload(&self.digest, link, cancel.piece)
            }
            Some(Kind::Complete(_)) => {
                l.peer_bits = Bitfield::full(num_pieces);
                if let Some(swarm) = &mut self.swarm {
                    swarm.peer_complete(link, now.into_std());
                } else {
                    // Both complete: nothing left to exchange.
                    self.remove_link(link);
                    return;
                }
                if let Some(seeder) = &mut self.seeder {
                    let reveals = seeder.remove_link(link);
                    self.apply_reveals(reveals);
                }
            }
            Some(Kind::Error(error)) => {
                if error.code == Code::PieceUnavailable as i32 {
                    if let Some(swarm) = &mut self.swarm {
                        swarm.request_failed(link, error.piece, now.into_std());
                    }
                } else {
                    tracing::debug!(digest = %self.digest, code = error.code, message = %error.message, "peer error");
                }
            }
            Some(Kind::Handshake(_)) | None => {
                tracing::debug!(digest = %self.digest, "protocol violation: unexpected message");
                self.remove_link(link);
            }
        }
    }

    fn on_request(&mut self, link: LinkId, request: pb::Request) {
        let piece = request.piece;
        let Ok(len) = self.metainfo.piece_len(piece) else {
            return self.send(link, link::error(Code::BadRequest, piece, "no such piece"));
        };
        // Only whole pieces are served: a piece is the unit of verification.
        if request.offset != 0 || (request.length != 0 && request.length != len) {
            return self.send(
                link,
                link::error(Code::BadRequest, piece, "whole pieces only"),
            );
        }
        let held = self.download.as_ref().is_none_or(|d| d.has_piece(piece));
        if !held {
            return self.send(link, link::error(Code::PieceUnavailable, piece, "not held"));
        }
        self.last_activity = Instant::now();
        if !self.inner.queue_upload(self.digest, link, piece) {
            self.send(
                link,
                link::error(Code::PieceUnavailable, piece, "too many queued requests"),
            );
        }
    }

    // ---- pieces --------------------------------------------------------------------------

    fn on_piece_arrived(&mut self, connection_id: usize, piece: u32, data: Bytes) {
        let Some(&link) = self.by_connection.get(&connection_id) else {
            return;
        };
        let Some(download) = self.download.clone() else {
            return;
        };
        if download.has_piece(piece) {
            if let Some(swarm) = &mut self.swarm {
                swarm.piece_received(link, piece, true, Instant::now().into_std());
            }
            return;
        }
        let events = self.events_tx.clone();
        self.inner.spawn(async move {
            let result = download.write_piece(piece, data).await;
            let _ = events
                .send(Event::PieceWritten {
                    link,
                    piece,
                    result,
                })
                .await;
        });
    }

    fn on_piece_written(&mut self, link: LinkId, piece: u32, result: Result<bool, StoreError>) {
        let now = Instant::now();
        let Some(swarm) = &mut self.swarm else { return };
        match result {
            Ok(_) => {
                self.last_piece = now;
                self.last_activity = now;
                metrics::counter!(crate::metrics::PIECES_RECEIVED).increment(1);
                // The piece verified: the tracker may trust the sender's claims from now on.
                if let Some(l) = self.links.get(&link)
                    && !l.origin
                {
                    self.reports.served(l.peer);
                }
                swarm.piece_received(link, piece, true, now.into_std());
                let held = swarm.have().count();
                self.status.send_replace(Status::Downloading {
                    pieces: held,
                    total: self.num_pieces(),
                });
            }
            Err(StoreError::Piece(
                error @ (PieceError::HashMismatch { .. } | PieceError::WrongLength { .. }),
            )) => {
                tracing::warn!(digest = %self.digest, %error, "peer sent a corrupt piece");
                metrics::counter!(crate::metrics::BAD_PIECES).increment(1);
                self.inner
                    .bad_pieces
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                swarm.piece_received(link, piece, false, now.into_std());
            }
            Err(error) => {
                tracing::warn!(digest = %self.digest, piece, %error, "could not store piece");
                swarm.request_failed(link, piece, now.into_std());
            }
        }
    }

    fn apply_swarm_actions(&mut self) {
        let Some(swarm) = &mut self.swarm else { return };
        let actions: Vec<Action> = std::iter::from_fn(|| swarm.poll_action()).collect();
        for action in actions {
            match action {
                Action::Request { link, piece } => self.send(
                    link,
                    message(Kind::Request(pb::Request {
                        piece,
                        offset: 0,
                        length: 0,
                    })),
                ),
                Action::Cancel { link, piece } => self.send(
                    link,
                    message(Kind::Cancel(pb::Cancel {
                        piece,
                        offset: 0,
                        length: 0,
                    })),
                ),
                Action::Announce { piece } => {
                    let targets: Vec<LinkId> = self
                        .links
                        .iter()
                        // Origins track our pieces to reveal new ones; agents need only news.
                        .filter(|(_, l)| l.origin || !l.peer_bits.get(piece))
                        .map(|(id, _)| *id)
                        .collect();
                    for link in targets {
                        self.send(link, have(piece));
                    }
                }
                Action::Complete => self.commit(),
                Action::Blacklist { link, reason } => {
                    let Some(l) = self.links.get(&link) else {
                        continue;
                    };
                    tracing::warn!(digest = %self.digest, peer = %l.peer, %reason, "blacklisting peer");
                    metrics::counter!(crate::metrics::BLACKLISTED_PEERS).increment(1);
                    self.inner
                        .blacklisted_peers
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    peer_failed(
                        &mut lock(&self.inner.conns),
                        &mut self.reports,
                        &self.digest,
                        (l.peer, l.origin),
                        Failure::Lied,
                        Instant::now().into_std(),
                    );
                    // The peer lied: it is not trusted for any blob.
                    l.connection.close(2u32.into(), b"sent bad data");
                    self.remove_link(link);
                }
            }
        }
    }

    fn apply_reveals(&mut self, reveals: Vec<Reveal>) {
        for reveal in reveals {
            match reveal {
                Reveal::Have { link, piece } => self.send(link, have(piece)),
                Reveal::Complete { link } => {
                    self.send(link, message(Kind::Complete(pb::Complete {})))
                }
            }
        }
    }

    // ---- completion ------------------------------------------------------------------------

    fn commit(&mut self) {
        if self.committing {
            return;
        }
        let Some(download) = self.download.clone() else {
            return;
        };
        self.committing = true;
        let events = self.events_tx.clone();
        self.inner.spawn(async move {
            let result = download.complete().await.map(|_| ());
            let _ = events.send(Event::Committed(result)).await;
        });
    }

    fn on_committed(&mut self, result: Result<(), StoreError>) {
        match result {
            Ok(()) => {
                // One line per download, saying where its bytes came from: the answer to
                // "is P2P working?" for this blob.
                let stats = self.swarm.as_ref().map(Swarm::stats).unwrap_or_default();
                tracing::info!(
                    digest = %self.digest,
                    bytes_from_peers = stats.bytes_from_peers,
                    bytes_from_origins = stats.bytes_from_origins,
                    pieces = stats.pieces_received,
                    duplicate_pieces = stats.duplicate_pieces,
                    "download complete and verified"
                );
                metrics::counter!(crate::metrics::DOWNLOADS_COMPLETED).increment(1);
                if let Some(swarm) = &self.swarm {
                    record_swarm_stats(swarm);
                }
                self.inner.record_download(super::DownloadReport {
                    namespace: self.namespace.clone(),
                    digest: self.digest,
                    size: self.metainfo.length(),
                    bytes_from_peers: stats.bytes_from_peers,
                    bytes_from_origins: stats.bytes_from_origins,
                    duration: self.started.elapsed(),
                    finished: std::time::SystemTime::now(),
                });
                self.swarm = None;
                self.download = None;
                self.status.send_replace(Status::Complete);
                let links: Vec<LinkId> = self.links.keys().copied().collect();
                for link in links {
                    let complete = self
                        .links
                        .get(&link)
                        .is_some_and(|l| l.peer_bits.is_complete());
                    if complete {
                        self.remove_link(link);
                    } else {
                        self.send(link, message(Kind::Complete(pb::Complete {})));
                    }
                }
                // Tell the tracker at once that we now seed.
                self.announce_at = Instant::now();
            }
            Err(error) => {
                tracing::error!(digest = %self.digest, %error, "download failed verification");
                metrics::counter!(crate::metrics::DOWNLOADS_FAILED).increment(1);
                self.status
                    .send_replace(Status::Failed(DownloadError::Commit(Arc::new(error))));
                self.done = true;
            }
        }
    }

    /// Marks an unfinished download failed; its staging is dropped when the task ends.
    fn fail(&mut self, error: DownloadError) {
        if let Some(download) = self.download.take() {
            self.swarm = None;
            self.status.send_replace(Status::Failed(error));
            self.aborting = Some(download);
        }
    }

    // ---- time ----------------------------------------------------------------------------

    /// When the torrent next has something to do without an event: the earliest of the
    /// swarm's request timeouts, giving up on an idle download, closing an idle seeder, closing
    /// idle or old links, and the next announce.
    fn next_deadline(&self) -> Option<Instant> {
        let config = &self.inner.config;
        let swarm = self
            .swarm
            .as_ref()
            .and_then(Swarm::next_deadline)
            .map(Instant::from_std);
        let idle = if self.download.is_some() {
            (!self.committing)
                .then(|| after(self.last_piece, config.leecher_tti))
                .flatten()
        } else {
            after(self.last_activity, config.seeder_tti)
        };
        let limits = link_limits(config);
        let links = self
            .links
            .values()
            .filter_map(|l| l.clock.deadline(limits))
            .min()
            .map(Instant::from_std);
        let announce =
            (self.inner.announcer.is_some() && !self.announcing).then_some(self.announce_at);
        [swarm, idle, links, announce].into_iter().flatten().min()
    }

    /// A deadline passed: does whatever is due.
    fn on_deadline(&mut self) {
        let now = Instant::now();
        if let Some(swarm) = &mut self.swarm
            && swarm
                .next_deadline()
                .is_some_and(|due| due <= now.into_std())
        {
            swarm.tick(now.into_std());
        }
        let config = &self.inner.config;
        let due = |deadline: Option<Instant>| deadline.is_some_and(|deadline| now >= deadline);
        if self.download.is_some()
            && !self.committing
            && due(after(self.last_piece, config.leecher_tti))
        {
            tracing::warn!(digest = %self.digest, "no piece received within leecher_tti; giving up");
            self.fail(DownloadError::Idle(config.leecher_tti));
            self.done = true;
            return;
        }
        if self.download.is_none() && due(after(self.last_activity, config.seeder_tti)) {
            tracing::debug!(digest = %self.digest, "idle seeder closed (seeder_tti)");
            self.done = true;
            return;
        }
        let limits = link_limits(config);
        let stale: Vec<LinkId> = self
            .links
            .iter()
            .filter(|(_, l)| l.clock.expired(limits, now.into_std()))
            .map(|(id, _)| *id)
            .collect();
        for link in stale {
            metrics::counter!(crate::metrics::EXPIRED_LINKS).increment(1);
            self.inner
                .expired_links
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            self.remove_link(link);
        }
        if self.inner.announcer.is_some() && !self.announcing && now >= self.announce_at {
            self.start_announce();
        }
    }

    fn start_announce(&mut self) {
        let Some(announcer) = self.inner.announcer.clone() else {
            return;
        };
        self.announcing = true;
        let me = PeerInfo {
            complete: self.download.is_none(),
            ..self.inner.local
        };
        let (namespace, digest, events) =
            (self.namespace.clone(), self.digest, self.events_tx.clone());
        let reports = std::mem::take(&mut self.reports);
        self.inner.spawn_until_shutdown(async move {
            let result = announcer
                .announce_reporting(&namespace, &digest, &me, &reports)
                .await;
            let _ = events.send(Event::Announced(result, reports)).await;
        });
    }

    fn on_announced(&mut self, result: Result<AnnounceReply, AnnounceError>, reports: PeerReports) {
        self.announcing = false;
        if result.is_err() {
            // Not delivered: sent with the next announce, within the same bounds.
            self.reports.restore(reports);
        }
        match result {
            Ok(reply) => {
                self.announce_interval = next_announce_interval(reply.interval);
                if self.download.is_some() {
                    self.dial(reply.peers);
                }
            }
            Err(error) => {
                tracing::debug!(digest = %self.digest, error = ?error, "announce failed")
            }
        }
        self.announce_at = Instant::now() + self.announce_interval;
    }

    /// Dials the peers of a tracker's hand-out that [`ConnState::plan_dials`] picks.
    fn dial(&mut self, peers: Vec<PeerInfo>) {
        let now = Instant::now().into_std();
        let local = self.inner.local.peer_id;
        let peers: Vec<PeerInfo> = peers
            .into_iter()
            .filter(|peer| {
                peer.peer_id != local
                    && dialable(&self.inner.endpoint, &peer.addr)
                    && !self.pending_dials.contains_key(&peer.peer_id)
                    && !self.links.values().any(|l| l.peer == peer.peer_id)
            })
            .collect();
        let handout: Vec<(PeerId, bool)> = peers.iter().map(|p| (p.peer_id, p.origin)).collect();
        let origin_linked =
            self.links.values().any(|l| l.origin) || self.pending_dials.values().any(|d| d.origin);
        let chosen = lock(&self.inner.conns).plan_dials(&self.digest, &handout, origin_linked, now);
        for id in chosen {
            // The first entry of a peer the hand-out lists twice is the one planned.
            let Some(peer) = peers.iter().find(|p| p.peer_id == id).copied() else {
                continue;
            };
            let told = match &self.download {
                Some(download) => download.bitfield(),
                None => Bitfield::full(self.num_pieces()),
            };
            let neighbors = lock(&self.inner.conns).neighbors(&self.digest);
            let ours = link::handshake(
                &self.inner.local,
                &self.namespace,
                &self.digest,
                &told,
                &neighbors,
            );
            self.pending_dials.insert(
                peer.peer_id,
                PendingDial {
                    told,
                    origin: peer.origin,
                },
            );
            self.inner.spawn_until_shutdown(link::dial(
                self.inner.clone(),
                self.events_tx.clone(),
                peer,
                ours,
                self.num_pieces(),
            ));
        }
    }

    /// Ends the torrent: a download still running fails, links close, a failed download's
    /// staging is dropped, and only then does the blob's entry go, so a new download of it
    /// starts from a clean store.
    async fn close(mut self) {
        if self.download.is_some() && !matches!(*self.status.borrow(), Status::Failed(_)) {
            self.status
                .send_replace(Status::Failed(DownloadError::ShutDown));
        }
        let links: Vec<LinkId> = self.links.keys().copied().collect();
        for link in links {
            self.remove_link(link);
        }
        for peer in self.pending_dials.keys() {
            lock(&self.inner.conns).dial_abandoned(&self.digest, *peer);
        }
        if let Some(download) = self.aborting.take()
            && let Err(error) = download.abort().await
        {
            tracing::debug!(digest = %self.digest, %error, "could not drop the staging");
        }
        self.inner.torrent_closed(&self.digest);
        tracing::debug!(digest = %self.digest, "torrent closed");
    }
}

/// `start + wait`, or `None` when that lies beyond what an `Instant` holds (never).
fn after(start: Instant, wait: Duration) -> Option<Instant> {
    start.checked_add(wait)
}

/// How a peer failed us.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Failure {
    /// It could not be dialled, refused us or failed the handshake.
    Dial,
    /// It sent data that did not verify, or claims that cannot be true.
    Lied,
}

/// Records that `peer` (with whether it is an origin) failed us: a failed dial blacklists it
/// for this blob for a while, a lie for every blob and longer. Either way the tracker hears of
/// it with the next announce, except of origins: it ranks those by the ring, not by reports.
fn peer_failed(
    conns: &mut ConnState<Digest>,
    reports: &mut PeerReports,
    digest: &Digest,
    (peer, origin): (PeerId, bool),
    failure: Failure,
    now: std::time::Instant,
) {
    match failure {
        Failure::Dial => conns.dial_failed(digest, peer, now),
        Failure::Lied => conns.blacklist_misbehaving(peer, now),
    }
    if !origin {
        reports.failed(peer);
    }
}

/// How much of a piece stream a peer started on `link` is read: the piece's length if we
/// requested that piece from that peer, else nothing (the stream is refused before its
/// payload, so an unrequested piece costs us no bandwidth and the length the peer announces
/// buys it nothing).
fn requested_length(swarm: &Swarm, metainfo: &MetaInfo, link: LinkId, piece: u32) -> Option<u64> {
    if swarm.is_requested(link, piece) {
        metainfo.piece_len(piece).ok()
    } else {
        None
    }
}

/// The wait before the next announce, from the interval the tracker asked for: Kraken resets
/// absurd intervals to a default; we clamp them, so neither a zero (an announce storm) nor an
/// hour (a download stuck with the peers it has) gets through.
fn next_announce_interval(asked: Duration) -> Duration {
    asked.clamp(Duration::from_secs(1), Duration::from_secs(60))
}

/// The time limits on this driver's links.
fn link_limits(config: &super::DriverConfig) -> LinkLimits {
    LinkLimits {
        tti: config.conn_tti,
        ttl: config.conn_ttl,
    }
}

/// Adds a finished download's counters to the process metrics.
fn record_swarm_stats(swarm: &Swarm) {
    let stats = swarm.stats();
    metrics::counter!(crate::metrics::REQUESTS).increment(stats.requests_sent);
    metrics::counter!(crate::metrics::DUPLICATE_PIECES).increment(stats.duplicate_pieces);
    metrics::counter!(crate::metrics::REQUEST_TIMEOUTS).increment(stats.timeouts);
    metrics::counter!(crate::metrics::REQUEST_QUEUE_TIMEOUTS).increment(stats.queue_timeouts);
    metrics::counter!(crate::metrics::PIECES_FROM_ORIGINS).increment(stats.pieces_from_origins);
    metrics::counter!(crate::metrics::DOWNLOADED_BYTES, "source" => "origin")
        .increment(stats.bytes_from_origins);
    metrics::counter!(crate::metrics::DOWNLOADED_BYTES, "source" => "peer")
        .increment(stats.bytes_from_peers);
}

fn message(kind: Kind) -> pb::Message {
    pb::Message { kind: Some(kind) }
}

fn have(piece: u32) -> pb::Message {
    message(Kind::Have(pb::Have { piece }))
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use kraken_core::PieceHashAlgorithm;

    use super::*;
    use crate::core::{ConnLimits, ConnRefusal, SwarmConfig};

    const PIECE: u64 = 64 << 10;

    /// A blob of four pieces, the last one short.
    fn metainfo() -> MetaInfo {
        let data = vec![7u8; 3 * PIECE as usize + 1000];
        MetaInfo::generate(&data[..], PIECE, PieceHashAlgorithm::Blake3).unwrap()
    }

    fn conns() -> ConnState<Digest> {
        ConnState::new(PeerId::from_name("me"), ConnLimits::default())
    }

    #[test]
    fn a_failed_dial_blacklists_the_peer_for_this_blob_and_reports_it_unless_an_origin() {
        let now = Instant::now();
        let (x, y) = (Digest::of(b"x"), Digest::of(b"y"));
        let (mut conns, mut reports) = (conns(), PeerReports::default());
        let [agent, origin] = ["agent", "origin"].map(PeerId::from_name);
        for peer in [agent, origin] {
            conns.start_dial(&x, peer, now).unwrap();
        }
        peer_failed(
            &mut conns,
            &mut reports,
            &x,
            (agent, false),
            Failure::Dial,
            now,
        );
        peer_failed(
            &mut conns,
            &mut reports,
            &x,
            (origin, true),
            Failure::Dial,
            now,
        );

        for peer in [agent, origin] {
            assert!(!conns.is_dialing(&x, peer), "the slot is free again");
            assert_eq!(
                conns.start_dial(&x, peer, now),
                Err(ConnRefusal::Blacklisted)
            );
            assert!(!conns.is_blacklisted(&y, peer, now), "only for this blob");
        }
        // Until the blacklisting ends.
        let later = now + ConnLimits::default().blacklist_duration;
        assert!(!conns.is_blacklisted(&x, agent, later));
        // The tracker ranks origins by the ring: only the agent is reported.
        assert_eq!(reports.failed, vec![agent]);
        assert!(reports.served.is_empty());
    }

    #[test]
    fn a_peer_that_lied_is_dropped_and_refused_for_every_blob_for_longer() {
        let now = Instant::now();
        let (x, y) = (Digest::of(b"x"), Digest::of(b"y"));
        let (mut conns, mut reports) = (conns(), PeerReports::default());
        let [liar, lying_origin] = ["liar", "lying origin"].map(PeerId::from_name);
        for peer in [liar, lying_origin] {
            conns.established(&x, peer);
        }
        peer_failed(
            &mut conns,
            &mut reports,
            &x,
            (liar, false),
            Failure::Lied,
            now,
        );
        peer_failed(
            &mut conns,
            &mut reports,
            &x,
            (lying_origin, true),
            Failure::Lied,
            now,
        );

        assert!(conns.neighbors(&x).is_empty(), "both links' slots are free");
        let dial_blacklisting = ConnLimits::default().blacklist_duration;
        for peer in [liar, lying_origin] {
            for blob in [&x, &y] {
                assert!(conns.is_blacklisted(blob, peer, now + dial_blacklisting));
            }
        }
        assert_eq!(reports.failed, vec![liar]);
    }

    #[test]
    fn only_a_piece_requested_from_that_peer_is_read_and_only_as_long_as_the_piece() {
        let now = Instant::now();
        let metainfo = metainfo();
        let mut swarm = Swarm::new(
            SwarmConfig {
                seed: 7,
                ..SwarmConfig::default()
            },
            metainfo.length(),
            metainfo.piece_length(),
            Bitfield::new(metainfo.num_pieces()),
        );
        let (asked, other) = (LinkId(1), LinkId(2));
        // Only `asked` has pieces to give: every request goes to it.
        swarm.add_peer(asked, Bitfield::full(metainfo.num_pieces()), false, now);
        swarm.add_peer(other, Bitfield::new(metainfo.num_pieces()), false, now);
        let requested: Vec<u32> = std::iter::from_fn(|| swarm.poll_action())
            .filter_map(|action| match action {
                Action::Request { link, piece } if link == asked => Some(piece),
                _ => None,
            })
            .collect();
        assert!(!requested.is_empty());

        for piece in 0..metainfo.num_pieces() {
            let expected = requested
                .contains(&piece)
                .then(|| metainfo.piece_len(piece).unwrap());
            assert_eq!(requested_length(&swarm, &metainfo, asked, piece), expected);
            // Another peer sending the same piece was not asked for it.
            assert_eq!(requested_length(&swarm, &metainfo, other, piece), None);
        }
        // A piece index past the blob's end is never read.
        assert_eq!(requested_length(&swarm, &metainfo, asked, 99), None);
        // Once it arrived, a second copy is not read either.
        let first = requested[0];
        swarm.piece_received(asked, first, true, now);
        assert_eq!(requested_length(&swarm, &metainfo, asked, first), None);
    }

    #[test]
    fn the_trackers_announce_interval_is_clamped_to_between_a_second_and_a_minute() {
        let secs = Duration::from_secs;
        assert_eq!(next_announce_interval(Duration::ZERO), secs(1));
        assert_eq!(next_announce_interval(Duration::from_millis(200)), secs(1));
        assert_eq!(next_announce_interval(secs(7)), secs(7));
        assert_eq!(next_announce_interval(secs(3600)), secs(60));
    }
}
