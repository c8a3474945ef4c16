//! The download side of one blob: which piece to request from which connected peer.
//!
//! Policy, in order of importance:
//! - **Agents before origins.** Every request slot to an agent peer is filled first, and an
//!   origin is only asked for pieces no connected agent holds (unless a request for that piece
//!   already failed or timed out elsewhere). An origin's uplink is the scarcest resource in a
//!   swarm: each byte it sends should be a piece the swarm does not have yet.
//! - **Rarest first with random ties**, so peers that start together diverge at once and the
//!   pieces they fetch are immediately worth trading.
//! - **Bounded pipelines per peer** (deeper for origins), adapted on timeouts: a peer that times
//!   out gets fewer concurrent requests until it delivers again.
//! - **Endgame**: with few pieces left and all of them requested, a piece may be requested
//!   from a second peer; the first copy to arrive wins and the other request is cancelled.
//! - A peer whose piece fails verification, or who sends an out-of-range index, is reported for
//!   blacklisting and dropped.

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

use kraken_core::Bitfield;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// One peer's link for this blob, numbered by the driver.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LinkId(pub u64);

/// How to choose among the pieces a peer can give us.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PiecePolicy {
    /// Fewest holders among our neighbours first, random among equals.
    #[default]
    RarestFirst,
    /// Uniformly random.
    Random,
}

/// Tuning of the download side.
#[derive(Debug, Clone)]
pub struct SwarmConfig {
    pub piece_policy: PiecePolicy,
    /// Concurrent piece requests to one agent peer.
    pub pipeline_limit: u32,
    /// Concurrent piece requests to one origin.
    pub origin_pipeline_limit: u32,
    /// Once a piece starts arriving, its request is abandoned (and the piece re-requested
    /// elsewhere) after `max(min_timeout, timeout_per_mb × piece MiB)`.
    pub piece_request_min_timeout: Duration,
    pub piece_request_timeout_per_mb: Duration,
    /// How long a request may wait in the peer's upload queue before its piece starts
    /// arriving. Queueing is normal on a busy uploader; timing it like a stalled transfer made
    /// requesters re-request pieces that were about to come, doubling traffic.
    pub piece_request_queue_timeout: Duration,
    /// Whether duplicate requests are allowed near the end.
    pub endgame: bool,
    /// Endgame starts once at most this many pieces are missing.
    pub endgame_threshold: u32,
    /// Seed for tie-breaking; fixed in tests for determinism.
    pub seed: u64,
}

impl Default for SwarmConfig {
    fn default() -> Self {
        Self {
            piece_policy: PiecePolicy::RarestFirst,
            pipeline_limit: 3,
            origin_pipeline_limit: 5,
            piece_request_min_timeout: Duration::from_secs(4),
            piece_request_timeout_per_mb: Duration::from_secs(4),
            piece_request_queue_timeout: Duration::from_secs(30),
            endgame: true,
            endgame_threshold: 16,
            seed: rand::random(),
        }
    }
}

/// What the driver must do after feeding an event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Ask `link` for `piece`.
    Request { link: LinkId, piece: u32 },
    /// Withdraw an earlier request (another copy arrived, or it timed out).
    Cancel { link: LinkId, piece: u32 },
    /// Tell every link we now hold `piece` (it has been verified and written).
    Announce { piece: u32 },
    /// Every piece is held: verify the whole blob and switch to seeding.
    Complete,
    /// The peer misbehaved: drop the link and blacklist the peer.
    Blacklist { link: LinkId, reason: Misbehaviour },
}

/// Why a peer is no longer trusted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Misbehaviour {
    #[error("sent piece {piece}, which failed hash verification")]
    BadPiece { piece: u32 },
    #[error("announced piece {piece}, but the blob has only {count} pieces")]
    PieceOutOfRange { piece: u32, count: u32 },
    #[error("sent a bitfield of {got} pieces for a blob of {expected}")]
    BitfieldLength { expected: u32, got: u32 },
}

/// Counters for metrics and tests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SwarmStats {
    pub requests_sent: u64,
    pub pieces_received: u64,
    /// Copies that arrived after the piece was already held (endgame or late replies).
    pub duplicate_pieces: u64,
    pub bad_pieces: u64,
    pub timeouts: u64,
    /// Of `timeouts`, requests whose piece never started arriving (stuck in a queue).
    pub queue_timeouts: u64,
    /// Pieces received from origins.
    pub pieces_from_origins: u64,
    /// Bytes of the pieces kept (first copies only) that came from origins.
    pub bytes_from_origins: u64,
    /// Bytes of the pieces kept that came from other agents: the swarm's share of the work.
    pub bytes_from_peers: u64,
}

/// Download state of one blob.
#[derive(Debug)]
pub struct Swarm {
    config: SwarmConfig,
    piece_length: u64,
    length: u64,
    have: Bitfield,
    peers: BTreeMap<LinkId, Peer>,
    /// Per piece: how many connected *agent* peers hold it. Origins hold everything, so
    /// counting them would make every piece look equally common.
    availability: Vec<u32>,
    /// Per piece: outstanding requests.
    inflight: Vec<Vec<Inflight>>,
    /// Pieces with at least one outstanding request.
    requested: u32,
    /// Per piece: a request for it failed or timed out, so an origin may be asked even if an
    /// agent neighbour claims to hold it.
    origin_fallback: Bitfield,
    rng: StdRng,
    rotation: usize,
    actions: VecDeque<Action>,
    stats: SwarmStats,
    completed: bool,
}

#[derive(Debug)]
struct Peer {
    bitfield: Bitfield,
    origin: bool,
    inflight: u32,
    /// Current request limit: starts at the configured pipeline, halves on a timeout, grows
    /// back by one per delivered piece.
    limit: u32,
    max_limit: u32,
}

#[derive(Debug, Clone, Copy)]
struct Inflight {
    link: LinkId,
    deadline: Instant,
    started: bool,
}

impl Swarm {
    /// Starts a download of a blob of `length` bytes in pieces of `piece_length`, already
    /// holding the pieces in `have` (e.g. after a restart or for a seeder).
    pub fn new(config: SwarmConfig, length: u64, piece_length: u64, have: Bitfield) -> Self {
        let pieces = have.len() as usize;
        let completed = have.is_complete();
        Self {
            rng: StdRng::seed_from_u64(config.seed),
            config,
            piece_length: piece_length.max(1),
            length,
            availability: vec![0; pieces],
            inflight: vec![Vec::new(); pieces],
            requested: 0,
            origin_fallback: Bitfield::new(have.len()),
            have,
            peers: BTreeMap::new(),
            rotation: 0,
            actions: VecDeque::new(),
            stats: SwarmStats::default(),
            completed,
        }
    }

    /// Pieces held.
    pub fn have(&self) -> &Bitfield {
        &self.have
    }

    pub fn is_complete(&self) -> bool {
        self.have.is_complete()
    }

    pub fn stats(&self) -> SwarmStats {
        self.stats
    }

    /// Number of connected peers.
    pub fn peer_count(&self) -> usize {
        self.peers.len()
    }

    /// The next action for the driver, if any.
    pub fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    /// A peer's handshake completed. A bitfield of the wrong length is a protocol violation.
    pub fn add_peer(&mut self, link: LinkId, bitfield: Bitfield, origin: bool, now: Instant) {
        if bitfield.len() != self.have.len() {
            let reason = Misbehaviour::BitfieldLength {
                expected: self.have.len(),
                got: bitfield.len(),
            };
            self.actions.push_back(Action::Blacklist { link, reason });
            return;
        }
        self.remove_peer(link, now);
        if !origin {
            for piece in bitfield.iter_ones() {
                self.availability[piece as usize] += 1;
            }
        }
        let max_limit = if origin {
            self.config.origin_pipeline_limit
        } else {
            self.config.pipeline_limit
        }
        .max(1);
        self.peers.insert(
            link,
            Peer {
                bitfield,
                origin,
                inflight: 0,
                limit: max_limit,
                max_limit,
            },
        );
        self.schedule(now);
    }

    /// A link closed. Its outstanding requests become requestable from others.
    pub fn remove_peer(&mut self, link: LinkId, now: Instant) {
        let Some(peer) = self.peers.remove(&link) else {
            return;
        };
        if !peer.origin {
            for piece in peer.bitfield.iter_ones() {
                self.availability[piece as usize] -= 1;
            }
        }
        for piece in 0..self.inflight.len() {
            self.drop_inflight(piece as u32, |r| r.link == link);
        }
        self.schedule(now);
    }

    /// A peer announced a new piece.
    pub fn peer_has(&mut self, link: LinkId, piece: u32, now: Instant) {
        let count = self.have.len();
        let Some(peer) = self.peers.get_mut(&link) else {
            return;
        };
        if piece >= count {
            let reason = Misbehaviour::PieceOutOfRange { piece, count };
            self.actions.push_back(Action::Blacklist { link, reason });
            self.remove_peer(link, now);
            return;
        }
        if peer.bitfield.set(piece, true) && !peer.origin {
            self.availability[piece as usize] += 1;
        }
        self.schedule(now);
    }

    /// A peer announced it holds the whole blob.
    pub fn peer_complete(&mut self, link: LinkId, now: Instant) {
        let Some(peer) = self.peers.get_mut(&link) else {
            return;
        };
        if !peer.origin {
            for piece in peer.bitfield.iter_zeros() {
                self.availability[piece as usize] += 1;
            }
        }
        peer.bitfield = Bitfield::full(self.have.len());
        self.schedule(now);
    }

    /// A piece arrived from `link` and the driver checked it against the metainfo (`valid`).
    /// A valid piece must be written to disk before this is called: the swarm announces it.
    pub fn piece_received(&mut self, link: LinkId, piece: u32, valid: bool, now: Instant) {
        if piece >= self.have.len() {
            let reason = Misbehaviour::PieceOutOfRange {
                piece,
                count: self.have.len(),
            };
            self.actions.push_back(Action::Blacklist { link, reason });
            self.remove_peer(link, now);
            return;
        }
        if !valid {
            self.stats.bad_pieces += 1;
            let reason = Misbehaviour::BadPiece { piece };
            self.actions.push_back(Action::Blacklist { link, reason });
            self.origin_fallback.set(piece, true);
            self.remove_peer(link, now);
            return;
        }
        let from_origin = self.peers.get(&link).is_some_and(|p| p.origin);
        if let Some(peer) = self.peers.get_mut(&link)
            && peer.limit < peer.max_limit
        {
            peer.limit += 1;
        }
        if self.have.get(piece) {
            self.stats.duplicate_pieces += 1;
            self.drop_inflight(piece, |r| r.link == link);
            self.schedule(now);
            return;
        }
        self.stats.pieces_received += 1;
        let len = self.piece_len(piece);
        if from_origin {
            self.stats.pieces_from_origins += 1;
            self.stats.bytes_from_origins += len;
        } else {
            self.stats.bytes_from_peers += len;
        }
        self.have.set(piece, true);
        // Release every request for this piece; the other holders are told to stop sending.
        let others: Vec<LinkId> = self.inflight[piece as usize]
            .iter()
            .map(|r| r.link)
            .filter(|l| *l != link)
            .collect();
        self.drop_inflight(piece, |_| true);
        for other in others {
            self.actions
                .push_back(Action::Cancel { link: other, piece });
        }
        self.actions.push_back(Action::Announce { piece });
        if self.have.is_complete() && !self.completed {
            self.completed = true;
            self.actions.push_back(Action::Complete);
        }
        self.schedule(now);
    }

    /// Whether `piece` has an outstanding request to `link`: only then may its bytes arrive.
    pub fn is_requested(&self, link: LinkId, piece: u32) -> bool {
        self.inflight
            .get(piece as usize)
            .is_some_and(|requests| requests.iter().any(|r| r.link == link))
    }

    /// The bytes of `piece` started arriving from `link`: from now on the request is timed as
    /// a transfer, no longer as a queued request.
    pub fn piece_started(&mut self, link: LinkId, piece: u32, now: Instant) {
        let Some(timeout) = self
            .inflight
            .get(piece as usize)
            .map(|_| self.timeout_for(piece))
        else {
            return;
        };
        if let Some(request) = self.inflight[piece as usize]
            .iter_mut()
            .find(|r| r.link == link && !r.started)
        {
            request.started = true;
            request.deadline = now + timeout;
        }
    }

    /// `link` could not serve `piece` (it answered with an error, or the stream broke). The
    /// peer evidently does not hold it after all.
    pub fn request_failed(&mut self, link: LinkId, piece: u32, now: Instant) {
        if piece >= self.have.len() {
            return;
        }
        self.drop_inflight(piece, |r| r.link == link);
        self.origin_fallback.set(piece, true);
        if let Some(peer) = self.peers.get_mut(&link)
            && peer.bitfield.set(piece, false)
            && !peer.origin
        {
            self.availability[piece as usize] -= 1;
        }
        self.schedule(now);
    }

    /// Expires overdue requests and fills free request slots. Call it periodically.
    pub fn tick(&mut self, now: Instant) {
        for piece in 0..self.inflight.len() {
            let piece = piece as u32;
            let expired: Vec<(LinkId, bool)> = self.inflight[piece as usize]
                .iter()
                .filter(|r| r.deadline <= now)
                .map(|r| (r.link, r.started))
                .collect();
            for (link, started) in expired {
                self.stats.timeouts += 1;
                if !started {
                    self.stats.queue_timeouts += 1;
                }
                self.drop_inflight(piece, |r| r.link == link);
                self.origin_fallback.set(piece, true);
                if let Some(peer) = self.peers.get_mut(&link) {
                    peer.limit = (peer.limit / 2).max(1);
                }
                self.actions.push_back(Action::Cancel { link, piece });
            }
        }
        self.schedule(now);
    }

    /// The earliest request deadline, so the driver knows when to call [`Swarm::tick`].
    pub fn next_deadline(&self) -> Option<Instant> {
        // The driver asks after every event: skip the scan when nothing is requested.
        if self.requested == 0 {
            return None;
        }
        self.inflight.iter().flatten().map(|r| r.deadline).min()
    }

    /// Endgame: few pieces left and every one of them already requested, so idle request slots
    /// may duplicate outstanding requests instead of sitting idle while a slow peer finishes.
    fn in_endgame(&self) -> bool {
        let missing = self.have.len() - self.have.count();
        self.config.endgame && missing <= self.config.endgame_threshold && self.requested == missing
    }

    /// Fills free request slots: agents first, then origins, starting from a rotating peer so
    /// no peer is always served last.
    fn schedule(&mut self, now: Instant) {
        if self.have.is_complete() || self.peers.is_empty() {
            return;
        }
        let links: Vec<(LinkId, bool)> = self.peers.iter().map(|(l, p)| (*l, p.origin)).collect();
        self.rotation = self.rotation.wrapping_add(1);
        let start = self.rotation % links.len();
        for want_origin in [false, true] {
            for offset in 0..links.len() {
                let (link, origin) = links[(start + offset) % links.len()];
                if origin != want_origin {
                    continue;
                }
                while self.peers.get(&link).is_some_and(|p| p.inflight < p.limit) {
                    let endgame = self.in_endgame();
                    let Some(piece) = self.pick(link, endgame) else {
                        break;
                    };
                    self.send_request(link, piece, now);
                }
            }
        }
    }

    fn pick(&mut self, link: LinkId, endgame: bool) -> Option<u32> {
        let peer = self.peers.get(&link)?;
        let mut best: Option<u32> = None;
        let mut best_rank = u32::MAX;
        let mut ties = 0u32;
        for piece in peer.bitfield.iter_difference(&self.have) {
            let inflight = &self.inflight[piece as usize];
            if inflight.iter().any(|r| r.link == link) {
                continue;
            }
            if !(inflight.is_empty() || endgame && inflight.len() < 2) {
                continue;
            }
            let holders = self.availability[piece as usize];
            // Even in endgame: duplicating onto the origin would multiply its load by the
            // number of agents finishing at once.
            if peer.origin && holders > 0 && !self.origin_fallback.get(piece) {
                continue;
            }
            // Pieces nobody has asked for rank before endgame duplicates.
            let rank = match self.config.piece_policy {
                PiecePolicy::RarestFirst => holders.saturating_mul(2),
                PiecePolicy::Random => 0,
            } + u32::from(!inflight.is_empty());
            if rank < best_rank {
                best_rank = rank;
                best = Some(piece);
                ties = 1;
            } else if rank == best_rank {
                ties += 1;
                if self.rng.random_range(0..ties) == 0 {
                    best = Some(piece);
                }
            }
        }
        best
    }

    fn send_request(&mut self, link: LinkId, piece: u32, now: Instant) {
        let deadline = now
            + self
                .config
                .piece_request_queue_timeout
                .max(self.timeout_for(piece));
        let slot = &mut self.inflight[piece as usize];
        if slot.is_empty() {
            self.requested += 1;
        }
        slot.push(Inflight {
            link,
            deadline,
            started: false,
        });
        if let Some(peer) = self.peers.get_mut(&link) {
            peer.inflight += 1;
        }
        self.stats.requests_sent += 1;
        self.actions.push_back(Action::Request { link, piece });
    }

    /// The length of `piece` (the last one may be short).
    fn piece_len(&self, piece: u32) -> u64 {
        let offset = u64::from(piece) * self.piece_length;
        self.piece_length.min(self.length.saturating_sub(offset))
    }

    fn timeout_for(&self, piece: u32) -> Duration {
        let len = self.piece_len(piece);
        let per_mb =
            self.config.piece_request_timeout_per_mb.as_secs_f64() * len as f64 / (1024.0 * 1024.0);
        self.config
            .piece_request_min_timeout
            .max(Duration::from_secs_f64(per_mb))
    }

    fn drop_inflight(&mut self, piece: u32, mut matches: impl FnMut(&Inflight) -> bool) {
        let slot = &mut self.inflight[piece as usize];
        let was_requested = !slot.is_empty();
        let mut released = Vec::new();
        slot.retain(|r| {
            let drop = matches(r);
            if drop {
                released.push(r.link);
            }
            !drop
        });
        if was_requested && slot.is_empty() {
            self.requested -= 1;
        }
        for link in released {
            if let Some(peer) = self.peers.get_mut(&link) {
                peer.inflight = peer.inflight.saturating_sub(1);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> SwarmConfig {
        SwarmConfig {
            seed: 7,
            ..SwarmConfig::default()
        }
    }

    fn drain(swarm: &mut Swarm) -> Vec<Action> {
        std::iter::from_fn(|| swarm.poll_action()).collect()
    }

    fn requests(actions: &[Action]) -> Vec<(LinkId, u32)> {
        actions
            .iter()
            .filter_map(|a| match a {
                Action::Request { link, piece } => Some((*link, *piece)),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn fills_pipeline_and_never_requests_a_piece_twice_outside_endgame() {
        let now = Instant::now();
        let mut swarm = Swarm::new(
            SwarmConfig {
                endgame: false,
                ..config()
            },
            100 * 10,
            10,
            Bitfield::new(100),
        );
        swarm.add_peer(LinkId(1), Bitfield::full(100), false, now);
        swarm.add_peer(LinkId(2), Bitfield::full(100), false, now);
        let reqs = requests(&drain(&mut swarm));
        assert_eq!(reqs.len(), 6, "3 per agent peer");
        let mut pieces: Vec<u32> = reqs.iter().map(|(_, p)| *p).collect();
        pieces.sort();
        pieces.dedup();
        assert_eq!(pieces.len(), 6, "no duplicates: {reqs:?}");
    }

    #[test]
    fn prefers_rarest_pieces() {
        let now = Instant::now();
        let cfg = SwarmConfig {
            endgame: false,
            pipeline_limit: 1,
            ..config()
        };
        let mut swarm = Swarm::new(cfg, 60, 10, Bitfield::new(6));
        let mut common = Bitfield::new(6);
        for piece in 0..5 {
            common.set(piece, true);
        }
        swarm.add_peer(LinkId(1), common.clone(), false, now);
        swarm.add_peer(LinkId(2), common, false, now);
        drain(&mut swarm);
        // Piece 5 is held by one peer, the others by three.
        swarm.add_peer(LinkId(3), Bitfield::full(6), false, now);
        assert_eq!(requests(&drain(&mut swarm)), vec![(LinkId(3), 5)]);
    }

    #[test]
    fn origin_is_only_asked_for_pieces_no_agent_holds() {
        let now = Instant::now();
        let mut swarm = Swarm::new(config(), 100, 10, Bitfield::new(10));
        let mut agent = Bitfield::new(10);
        for piece in 0..5 {
            agent.set(piece, true);
        }
        swarm.add_peer(LinkId(1), agent, false, now);
        swarm.add_peer(LinkId(9), Bitfield::full(10), true, now);
        let reqs = requests(&drain(&mut swarm));
        for (link, piece) in &reqs {
            if *link == LinkId(9) {
                assert!(
                    *piece >= 5,
                    "origin asked for piece {piece} an agent holds: {reqs:?}"
                );
            }
        }
        assert_eq!(reqs.iter().filter(|(l, _)| *l == LinkId(9)).count(), 5);
    }

    #[test]
    fn bytes_are_counted_by_source_once_per_piece_with_the_short_last_piece() {
        let now = Instant::now();
        // 25 bytes in pieces of 10: the last is 5 long.
        let mut swarm = Swarm::new(config(), 25, 10, Bitfield::new(3));
        swarm.add_peer(LinkId(1), Bitfield::full(3), false, now);
        swarm.add_peer(LinkId(9), Bitfield::full(3), true, now);
        drain(&mut swarm);
        swarm.piece_received(LinkId(1), 0, true, now);
        swarm.piece_received(LinkId(9), 2, true, now);
        swarm.piece_received(LinkId(9), 0, true, now);
        swarm.piece_received(LinkId(1), 1, false, now);
        let stats = swarm.stats();
        assert_eq!(
            stats.bytes_from_peers, 10,
            "piece 0 from the agent; the bad piece is not counted"
        );
        assert_eq!(
            stats.bytes_from_origins, 5,
            "the short last piece from the origin"
        );
        assert_eq!(
            stats.duplicate_pieces, 1,
            "the origin's late copy of piece 0"
        );
    }

    #[test]
    fn timeout_re_requests_elsewhere_and_shrinks_pipeline() {
        let start = Instant::now();
        let mut swarm = Swarm::new(config(), 10, 10, Bitfield::new(1));
        swarm.add_peer(LinkId(1), Bitfield::full(1), false, start);
        assert_eq!(requests(&drain(&mut swarm)), vec![(LinkId(1), 0)]);
        swarm.add_peer(LinkId(2), Bitfield::full(1), true, start);
        assert!(
            requests(&drain(&mut swarm)).is_empty(),
            "origin not asked while an agent has it"
        );
        let deadline = swarm.next_deadline().unwrap();
        swarm.tick(deadline);
        let actions = drain(&mut swarm);
        assert!(actions.contains(&Action::Cancel {
            link: LinkId(1),
            piece: 0
        }));
        assert!(!requests(&actions).is_empty(), "re-requested: {actions:?}");
        assert_eq!(swarm.stats().timeouts, 1);
    }

    #[test]
    fn queued_requests_get_longer_than_started_transfers() {
        let start = Instant::now();
        let config = SwarmConfig {
            piece_request_min_timeout: Duration::from_secs(4),
            piece_request_queue_timeout: Duration::from_secs(30),
            ..config()
        };
        let mut swarm = Swarm::new(config, 20, 10, Bitfield::new(2));
        swarm.add_peer(LinkId(1), Bitfield::full(2), false, start);
        drain(&mut swarm);
        assert_eq!(swarm.next_deadline(), Some(start + Duration::from_secs(30)));
        let later = start + Duration::from_secs(10);
        swarm.piece_started(LinkId(1), 0, later);
        assert_eq!(swarm.next_deadline(), Some(later + Duration::from_secs(4)));
        swarm.tick(later + Duration::from_secs(5));
        assert_eq!(swarm.stats().timeouts, 1, "the started transfer stalled");
    }

    #[test]
    fn bad_piece_blacklists_and_re_requests() {
        let now = Instant::now();
        let mut swarm = Swarm::new(config(), 20, 10, Bitfield::new(2));
        swarm.add_peer(LinkId(1), Bitfield::full(2), false, now);
        drain(&mut swarm);
        swarm.piece_received(LinkId(1), 0, false, now);
        let actions = drain(&mut swarm);
        assert_eq!(
            actions[0],
            Action::Blacklist {
                link: LinkId(1),
                reason: Misbehaviour::BadPiece { piece: 0 }
            }
        );
        assert_eq!(swarm.peer_count(), 0);
        swarm.add_peer(LinkId(2), Bitfield::full(2), false, now);
        let reqs = requests(&drain(&mut swarm));
        assert!(reqs.contains(&(LinkId(2), 0)));
    }

    #[test]
    fn out_of_range_input_is_misbehaviour() {
        let now = Instant::now();
        let mut swarm = Swarm::new(config(), 20, 10, Bitfield::new(2));
        swarm.add_peer(LinkId(1), Bitfield::new(3), false, now);
        assert!(matches!(
            drain(&mut swarm)[0],
            Action::Blacklist {
                reason: Misbehaviour::BitfieldLength { .. },
                ..
            }
        ));
        swarm.add_peer(LinkId(2), Bitfield::new(2), false, now);
        swarm.peer_has(LinkId(2), 2, now);
        assert!(matches!(
            drain(&mut swarm)[0],
            Action::Blacklist {
                reason: Misbehaviour::PieceOutOfRange { piece: 2, count: 2 },
                ..
            }
        ));
        swarm.piece_received(LinkId(3), 99, true, now);
        assert!(matches!(drain(&mut swarm)[0], Action::Blacklist { .. }));
    }

    #[test]
    fn endgame_duplicates_then_cancels() {
        let now = Instant::now();
        let mut swarm = Swarm::new(config(), 10, 10, Bitfield::new(1));
        swarm.add_peer(LinkId(1), Bitfield::full(1), false, now);
        swarm.add_peer(LinkId(2), Bitfield::full(1), false, now);
        let reqs = requests(&drain(&mut swarm));
        assert_eq!(
            reqs.len(),
            2,
            "one piece left: asked of both peers: {reqs:?}"
        );
        swarm.piece_received(LinkId(2), 0, true, now);
        let actions = drain(&mut swarm);
        assert!(actions.contains(&Action::Cancel {
            link: LinkId(1),
            piece: 0
        }));
        assert!(actions.contains(&Action::Announce { piece: 0 }));
        assert_eq!(actions.last(), Some(&Action::Complete));
        swarm.piece_received(LinkId(1), 0, true, now);
        assert_eq!(swarm.stats().duplicate_pieces, 1);
        assert!(drain(&mut swarm).is_empty(), "complete is reported once");
    }

    #[test]
    fn request_failure_marks_piece_missing_at_that_peer() {
        let now = Instant::now();
        let mut swarm = Swarm::new(config(), 10, 10, Bitfield::new(1));
        swarm.add_peer(LinkId(1), Bitfield::full(1), false, now);
        drain(&mut swarm);
        swarm.request_failed(LinkId(1), 0, now);
        assert!(
            requests(&drain(&mut swarm)).is_empty(),
            "not re-asked of a peer that lacks it"
        );
        swarm.peer_has(LinkId(1), 0, now);
        assert_eq!(requests(&drain(&mut swarm)), vec![(LinkId(1), 0)]);
    }
}
