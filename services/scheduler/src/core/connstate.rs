//! Which peers we are connected to for each blob, and which we refuse.
//!
//! Limits keep the swarm a well-mixed random graph rather than cliques: at most
//! `max_open_conn` peers per blob, and an incoming peer is refused when too many of its
//! neighbours are already ours (`max_mutual_conn`). Peers that failed a handshake are
//! blacklisted for that blob; peers that sent bad data are blacklisted for every blob, for
//! longer, since they lied rather than merely failed.

use std::collections::{HashMap, HashSet};
use std::hash::Hash;
use std::time::{Duration, Instant};

use kraken_core::PeerId;

/// Connection limits (Kraken's `scheduler.connstate`).
#[derive(Debug, Clone)]
pub struct ConnLimits {
    pub max_open_conn: usize,
    pub max_mutual_conn: usize,
    pub blacklist_duration: Duration,
    /// How much longer a peer that sent bad data stays blacklisted.
    pub misbehaviour_multiplier: u32,
}

impl Default for ConnLimits {
    fn default() -> Self {
        Self {
            max_open_conn: 10,
            max_mutual_conn: 5,
            blacklist_duration: Duration::from_secs(30),
            misbehaviour_multiplier: 10,
        }
    }
}

/// Why a connection is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ConnRefusal {
    #[error("peer is ourselves")]
    Itself,
    #[error("peer is blacklisted for this blob")]
    Blacklisted,
    #[error("already connected to this peer for this blob")]
    AlreadyConnected,
    #[error("at the limit of {limit} connections for this blob")]
    TooManyConnections { limit: usize },
    #[error("{mutual} of the peer's neighbours are already ours (limit {limit})")]
    TooManyMutual { mutual: usize, limit: usize },
}

/// What a dialler does with the next peer of a tracker's hand-out; see [`slot_decision`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SlotDecision {
    /// Dial it.
    Dial,
    /// Pass over it: the last free slot is kept for an origin further down the hand-out.
    KeepForOrigin,
    /// No slot is free: stop.
    Full,
}

/// Whether the next peer of a hand-out may take one of the `free_slots` connection slots.
///
/// `origin_wanted`: the hand-out holds an origin we could dial (not blacklisted) and no origin
/// is linked or being dialled for the blob. Then the last free slot belongs to an origin,
/// because the hand-out lists complete agents before the origins: a tracker poisoned with
/// fake seeders at a dead address would otherwise fill every slot with them, leaving the
/// blob's one guaranteed source undialled for as long as they keep getting handed out. The
/// dialler passes over (rather than stops at) agents then, so the origin later in the list
/// still gets the slot.
pub fn slot_decision(free_slots: usize, is_origin: bool, origin_wanted: bool) -> SlotDecision {
    if free_slots == 0 {
        SlotDecision::Full
    } else if is_origin || !origin_wanted || free_slots > 1 {
        SlotDecision::Dial
    } else {
        SlotDecision::KeepForOrigin
    }
}

/// Connection bookkeeping for every blob of one process.
#[derive(Debug)]
pub struct ConnState<B> {
    limits: ConnLimits,
    local: PeerId,
    blobs: HashMap<B, BlobConns>,
    blacklist: HashMap<(PeerId, Option<B>), Instant>,
}

#[derive(Debug, Default)]
struct BlobConns {
    active: HashSet<PeerId>,
    pending: HashSet<PeerId>,
}

impl BlobConns {
    fn count(&self) -> usize {
        self.active.len() + self.pending.len()
    }
}

impl<B: Clone + Eq + Hash> ConnState<B> {
    pub fn new(local: PeerId, limits: ConnLimits) -> Self {
        Self {
            limits,
            local,
            blobs: HashMap::new(),
            blacklist: HashMap::new(),
        }
    }

    pub fn limits(&self) -> &ConnLimits {
        &self.limits
    }

    /// Reserves a slot to dial `peer` for `blob`.
    pub fn start_dial(&mut self, blob: &B, peer: PeerId, now: Instant) -> Result<(), ConnRefusal> {
        self.check_common(blob, peer, now)?;
        self.blobs
            .entry(blob.clone())
            .or_default()
            .pending
            .insert(peer);
        Ok(())
    }

    /// Which peers of a tracker's hand-out to dial for `blob`, in hand-out order, reserving a
    /// slot for each as [`start_dial`](Self::start_dial) does. `handout` holds (peer, is
    /// origin) for the peers the dialler can reach and has no link or dial to;
    /// `origin_linked`: an origin is linked or being dialled for the blob. Peers that are
    /// blacklisted, or would exceed the blob's limit, are passed over; so are agents while the
    /// last free slot is kept for an origin (see [`slot_decision`]).
    pub fn plan_dials(
        &mut self,
        blob: &B,
        handout: &[(PeerId, bool)],
        origin_linked: bool,
        now: Instant,
    ) -> Vec<PeerId> {
        let mut origin_wanted = !origin_linked
            && handout
                .iter()
                .any(|(peer, origin)| *origin && !self.is_blacklisted(blob, *peer, now));
        let mut dialled = Vec::new();
        for (peer, origin) in handout {
            match slot_decision(self.free_slots(blob), *origin, origin_wanted) {
                SlotDecision::Full => break,
                SlotDecision::KeepForOrigin => continue,
                SlotDecision::Dial => {}
            }
            if self.start_dial(blob, *peer, now).is_ok() {
                dialled.push(*peer);
                origin_wanted &= !*origin;
            }
        }
        dialled
    }

    /// A dial or handshake failed: release the slot and blacklist the peer for this blob.
    pub fn dial_failed(&mut self, blob: &B, peer: PeerId, now: Instant) {
        if let Some(conns) = self.blobs.get_mut(blob) {
            conns.pending.remove(&peer);
        }
        self.blacklist.insert(
            (peer, Some(blob.clone())),
            now + self.limits.blacklist_duration,
        );
    }

    /// A dial was politely refused (e.g. both sides dialled at once and the other link won):
    /// release the slot without blacklisting. An established link to the peer is kept.
    pub fn dial_abandoned(&mut self, blob: &B, peer: PeerId) {
        if let Some(conns) = self.blobs.get_mut(blob) {
            conns.pending.remove(&peer);
        }
    }

    /// Whether we have a dial to `peer` in progress for `blob`.
    pub fn is_dialing(&self, blob: &B, peer: PeerId) -> bool {
        self.blobs
            .get(blob)
            .is_some_and(|c| c.pending.contains(&peer))
    }

    /// Whether an incoming peer may join, given its neighbours for this blob.
    pub fn check_accept(
        &self,
        blob: &B,
        peer: PeerId,
        their_neighbors: &[PeerId],
        now: Instant,
    ) -> Result<(), ConnRefusal> {
        self.check_common(blob, peer, now)?;
        if let Some(conns) = self.blobs.get(blob) {
            let mutual = their_neighbors
                .iter()
                .filter(|n| conns.active.contains(n))
                .count();
            if mutual > self.limits.max_mutual_conn {
                return Err(ConnRefusal::TooManyMutual {
                    mutual,
                    limit: self.limits.max_mutual_conn,
                });
            }
        }
        Ok(())
    }

    /// A handshake completed (dialled or accepted).
    pub fn established(&mut self, blob: &B, peer: PeerId) {
        let conns = self.blobs.entry(blob.clone()).or_default();
        conns.pending.remove(&peer);
        conns.active.insert(peer);
    }

    /// A link closed normally.
    pub fn closed(&mut self, blob: &B, peer: PeerId) {
        if let Some(conns) = self.blobs.get_mut(blob) {
            conns.active.remove(&peer);
            conns.pending.remove(&peer);
        }
    }

    /// The peer sent bad data: refuse it for every blob, for longer.
    pub fn blacklist_misbehaving(&mut self, peer: PeerId, now: Instant) {
        let duration = self.limits.blacklist_duration * self.limits.misbehaviour_multiplier;
        self.blacklist.insert((peer, None), now + duration);
        for conns in self.blobs.values_mut() {
            conns.active.remove(&peer);
            conns.pending.remove(&peer);
        }
    }

    pub fn is_blacklisted(&self, blob: &B, peer: PeerId, now: Instant) -> bool {
        let until = |key: &(PeerId, Option<B>)| self.blacklist.get(key).is_some_and(|t| *t > now);
        until(&(peer, None)) || until(&(peer, Some(blob.clone())))
    }

    /// Peers currently connected for `blob`.
    pub fn neighbors(&self, blob: &B) -> Vec<PeerId> {
        self.blobs
            .get(blob)
            .map(|c| c.active.iter().copied().collect())
            .unwrap_or_default()
    }

    /// Free connection slots for `blob`.
    pub fn free_slots(&self, blob: &B) -> usize {
        let used = self.blobs.get(blob).map(BlobConns::count).unwrap_or(0);
        self.limits.max_open_conn.saturating_sub(used)
    }

    /// Forgets a blob (download finished or dropped), including per-blob blacklist entries:
    /// a peer that failed us while downloading may serve others fine as a seeder.
    pub fn remove_blob(&mut self, blob: &B) {
        self.blobs.remove(blob);
        self.blacklist.retain(|(_, b), _| b.as_ref() != Some(blob));
    }

    /// Drops expired blacklist entries.
    pub fn expire(&mut self, now: Instant) {
        self.blacklist.retain(|_, until| *until > now);
    }

    fn check_common(&self, blob: &B, peer: PeerId, now: Instant) -> Result<(), ConnRefusal> {
        if peer == self.local {
            return Err(ConnRefusal::Itself);
        }
        if self.is_blacklisted(blob, peer, now) {
            return Err(ConnRefusal::Blacklisted);
        }
        let conns = self.blobs.get(blob);
        if conns.is_some_and(|c| c.active.contains(&peer) || c.pending.contains(&peer)) {
            return Err(ConnRefusal::AlreadyConnected);
        }
        if conns.map(BlobConns::count).unwrap_or(0) >= self.limits.max_open_conn {
            return Err(ConnRefusal::TooManyConnections {
                limit: self.limits.max_open_conn,
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(max_open_conn: usize) -> ConnState<&'static str> {
        ConnState::new(
            PeerId::from_name("me"),
            ConnLimits {
                max_open_conn,
                max_mutual_conn: 1,
                ..ConnLimits::default()
            },
        )
    }

    #[test]
    fn limits_connections_per_blob() {
        let now = Instant::now();
        let mut conns = state(2);
        let (a, b, c) = (
            PeerId::from_name("a"),
            PeerId::from_name("b"),
            PeerId::from_name("c"),
        );
        conns.start_dial(&"x", a, now).unwrap();
        assert_eq!(
            conns.start_dial(&"x", a, now),
            Err(ConnRefusal::AlreadyConnected)
        );
        conns.start_dial(&"x", b, now).unwrap();
        assert_eq!(
            conns.start_dial(&"x", c, now),
            Err(ConnRefusal::TooManyConnections { limit: 2 })
        );
        conns.start_dial(&"y", c, now).unwrap();
        assert_eq!(
            conns.start_dial(&"x", PeerId::from_name("me"), now),
            Err(ConnRefusal::Itself)
        );
        conns.closed(&"x", a);
        conns.start_dial(&"x", c, now).unwrap();
    }

    #[test]
    fn failed_dials_blacklist_for_a_while() {
        let now = Instant::now();
        let mut conns = state(5);
        let a = PeerId::from_name("a");
        conns.start_dial(&"x", a, now).unwrap();
        assert!(conns.is_dialing(&"x", a));
        conns.dial_abandoned(&"x", a);
        assert!(!conns.is_dialing(&"x", a));
        assert!(
            conns.start_dial(&"x", a, now).is_ok(),
            "abandoning does not blacklist"
        );
        conns.dial_failed(&"x", a, now);
        assert_eq!(
            conns.start_dial(&"x", a, now),
            Err(ConnRefusal::Blacklisted)
        );
        assert!(conns.start_dial(&"y", a, now).is_ok(), "only for that blob");
        let later = now + Duration::from_secs(31);
        assert!(conns.start_dial(&"x", a, later).is_ok());
    }

    #[test]
    fn misbehaving_peer_is_refused_everywhere_for_longer() {
        let now = Instant::now();
        let mut conns = state(5);
        let a = PeerId::from_name("a");
        conns.established(&"x", a);
        conns.blacklist_misbehaving(a, now);
        assert!(conns.neighbors(&"x").is_empty());
        assert_eq!(
            conns.start_dial(&"y", a, now),
            Err(ConnRefusal::Blacklisted)
        );
        assert!(conns.is_blacklisted(&"z", a, now + Duration::from_secs(299)));
        assert!(!conns.is_blacklisted(&"z", a, now + Duration::from_secs(301)));
    }

    #[test]
    fn refuses_peers_sharing_too_many_neighbours() {
        let now = Instant::now();
        let mut conns = state(10);
        let (a, b, c) = (
            PeerId::from_name("a"),
            PeerId::from_name("b"),
            PeerId::from_name("c"),
        );
        conns.established(&"x", a);
        conns.established(&"x", b);
        assert!(conns.check_accept(&"x", c, &[a], now).is_ok());
        assert_eq!(
            conns.check_accept(&"x", c, &[a, b], now),
            Err(ConnRefusal::TooManyMutual {
                mutual: 2,
                limit: 1
            })
        );
    }

    #[test]
    fn the_last_free_slot_waits_for_a_wanted_origin() {
        use SlotDecision::*;
        assert_eq!(slot_decision(0, true, true), Full);
        assert_eq!(slot_decision(0, false, false), Full);
        assert_eq!(slot_decision(2, false, true), Dial);
        assert_eq!(slot_decision(1, false, true), KeepForOrigin);
        assert_eq!(slot_decision(1, true, true), Dial);
        assert_eq!(
            slot_decision(1, false, false),
            Dial,
            "no origin to wait for"
        );
    }

    #[test]
    fn a_handout_is_dialled_in_order_up_to_the_limit_past_refused_peers() {
        let now = Instant::now();
        let mut conns = state(3);
        let [me, a, b, c, d] = ["me", "a", "b", "c", "d"].map(PeerId::from_name);
        // `b` failed a dial for this blob a moment ago.
        conns.dial_failed(&"x", b, now);
        let handout = [
            (me, false),
            (a, false),
            (b, false),
            (a, false),
            (c, false),
            (d, false),
        ];
        assert_eq!(conns.plan_dials(&"x", &handout, false, now), vec![a, c, d]);
        assert!([a, c, d].iter().all(|p| conns.is_dialing(&"x", *p)));
        // Every slot is taken by a dial in flight: the next hand-out dials no one.
        assert!(conns.plan_dials(&"x", &handout, false, now).is_empty());

        // `c` fails too, freeing its slot; both stay refused until their blacklisting ends,
        // then the freed slot goes to the first of them in the hand-out.
        conns.dial_failed(&"x", c, now);
        let retry = [(c, false), (b, false)];
        assert!(conns.plan_dials(&"x", &retry, false, now).is_empty());
        let later = now + ConnLimits::default().blacklist_duration;
        assert_eq!(conns.plan_dials(&"x", &retry, false, later), vec![c]);
        // Another blob has its own slots and its own blacklist.
        assert_eq!(conns.plan_dials(&"y", &[(b, false)], false, now), vec![b]);
    }

    #[test]
    fn fake_seeders_ahead_of_the_origins_leave_an_origin_a_slot() {
        let now = Instant::now();
        let mut conns = state(10);
        // The completeness order: 60 "complete agents" (fakes at a dead address), then the
        // blob's two origins.
        let fakes: Vec<(PeerId, bool)> = (0..60)
            .map(|n| (PeerId::from_name(&format!("fake{n}")), false))
            .collect();
        let origins = [
            (PeerId::from_name("origin1"), true),
            (PeerId::from_name("origin2"), true),
        ];
        let handout: Vec<_> = fakes.iter().chain(&origins).copied().collect();
        let dialled = conns.plan_dials(&"x", &handout, false, now);
        assert_eq!(dialled.len(), 10);
        assert_eq!(
            &dialled[..9],
            &handout[..9].iter().map(|p| p.0).collect::<Vec<_>>()[..]
        );
        assert_eq!(dialled[9], origins[0].0, "the last slot went to an origin");

        // The fakes fail and are blacklisted; with an origin linked, the next hand-out may
        // fill the other slots with agents.
        for fake in &dialled[..9] {
            conns.dial_failed(&"x", *fake, now);
        }
        conns.established(&"x", origins[0].0);
        let dialled = conns.plan_dials(&"x", &handout, true, now);
        assert_eq!(dialled.len(), 9);
        assert!(
            dialled
                .iter()
                .all(|peer| !origins.iter().any(|o| o.0 == *peer))
        );

        // With every origin blacklisted there is nothing to wait for: agents take all slots.
        let mut conns = state(10);
        for (origin, _) in &origins {
            conns.dial_failed(&"x", *origin, now);
        }
        let dialled = conns.plan_dials(&"x", &handout, false, now);
        assert_eq!(dialled.len(), 10);
        assert!(
            dialled
                .iter()
                .all(|peer| !origins.iter().any(|o| o.0 == *peer))
        );
    }
}
