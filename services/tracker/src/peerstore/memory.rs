//! The in-process peer store: right for a single tracker, or trackers placed on a ring by
//! digest so that every announce of a blob reaches the same one.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use kraken_config::tracker::MemoryPeerStoreConfig;
use kraken_core::{Digest, PeerId};
use rand::seq::{IteratorRandom, SliceRandom};
use tokio::time::Instant;

use super::{
    CapExceeded, CertIdentity, MAX_REPORTED_PEERS, PeerEntry, PeerLimits, PeerReport, PeerStore,
    PeerStoreError, ReportOutcome,
};

/// Expired entries are swept at most this often (and at least once per TTL), so memory stays
/// bounded by the announces of the last TTL without a scan on every call.
const MAX_PURGE_INTERVAL: Duration = Duration::from_secs(60);

/// Announces kept in memory for `ttl` after the last one from each peer.
///
/// Time comes from [`tokio::time::Instant`], so tests drive expiry with
/// `tokio::time::pause()` and `advance()`.
#[derive(Debug)]
pub struct MemoryPeerStore {
    ttl: Duration,
    purge_interval: Duration,
    /// Most announces held, and separately most peer-id bindings: expired ones count until
    /// the next sweep, which keeps a full store from sweeping on every refused announce.
    max_entries: usize,
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    blobs: HashMap<Digest, Blob>,
    /// Announces held across `blobs`, expired ones not yet purged included.
    entries: usize,
    /// Which certificate each peer id belongs to.
    owners: HashMap<PeerId, Owner>,
    next_purge: Instant,
}

/// One blob's announces, with a count per IP so the per-address cap costs no scan.
#[derive(Debug, Default)]
struct Blob {
    peers: HashMap<PeerId, Stored>,
    per_ip: HashMap<IpAddr, usize>,
}

#[derive(Debug, Clone, Copy)]
struct Stored {
    addr: SocketAddr,
    complete: bool,
    /// Another host reported that it served pieces; see [`PeerEntry::proven`].
    proven: bool,
    /// Until when another host's failure report holds; see [`PeerEntry::demoted`]. Kept on
    /// its own clock rather than the entry's, so that re-announcing does not shorten it.
    demoted_until: Option<Instant>,
    expires: Instant,
}

impl Stored {
    fn demoted(&self, now: Instant) -> bool {
        self.demoted_until.is_some_and(|until| until > now)
    }
}

#[derive(Debug, Clone, Copy)]
struct Owner {
    identity: CertIdentity,
    expires: Instant,
}

impl MemoryPeerStore {
    /// A store remembering each announce for `ttl`, holding at most the default
    /// `peerstore.memory.max_entries`.
    pub fn new(ttl: Duration) -> Self {
        let purge_interval = ttl.min(MAX_PURGE_INTERVAL);
        Self {
            ttl,
            purge_interval,
            max_entries: MemoryPeerStoreConfig::default().max_entries,
            state: Mutex::new(State {
                blobs: HashMap::new(),
                entries: 0,
                owners: HashMap::new(),
                next_purge: Instant::now() + purge_interval,
            }),
        }
    }

    /// The store, holding at most `max_entries` announces (and peer-id bindings).
    pub fn with_max_entries(mut self, max_entries: usize) -> Self {
        self.max_entries = max_entries;
        self
    }

    /// Peers currently held, across all blobs, expired ones not yet purged included.
    pub fn len(&self) -> usize {
        self.lock().entries
    }

    /// Whether no peer is held.
    pub fn is_empty(&self) -> bool {
        self.lock().blobs.is_empty()
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // The critical sections only move plain data and cannot leave it half-updated, so a
        // panic elsewhere while holding the lock is no reason to stop serving.
        kraken_core::sync::lock(&self.state)
    }

    /// Locks the state, first sweeping expired entries when a sweep is due.
    fn lock_swept(&self, now: Instant) -> MutexGuard<'_, State> {
        let mut state = self.lock();
        if now >= state.next_purge {
            state.purge_expired(now);
            state.next_purge = now + self.purge_interval;
        }
        state
    }
}

impl State {
    fn purge_expired(&mut self, now: Instant) {
        let mut removed = 0;
        self.blobs.retain(|_, blob| {
            removed += blob.purge_expired(now);
            !blob.peers.is_empty()
        });
        self.entries = self.entries.saturating_sub(removed);
        self.owners.retain(|_, owner| owner.expires > now);
        metrics::gauge!(crate::metrics::MEMORY_PEERSTORE_PEERS).set(self.entries as f64);
    }
}

impl Blob {
    /// Drops the expired announces, returning how many.
    fn purge_expired(&mut self, now: Instant) -> usize {
        let before = self.peers.len();
        let per_ip = &mut self.per_ip;
        self.peers.retain(|_, stored| {
            let live = stored.expires > now;
            if !live {
                release(per_ip, stored.addr.ip());
            }
            live
        });
        before - self.peers.len()
    }

    /// The live entry of a peer another host reports about: none if the reporter shares its
    /// IP (see `PeerReport::reporter_ip`).
    fn reported(
        &mut self,
        peer_id: &PeerId,
        reporter_ip: IpAddr,
        now: Instant,
    ) -> Option<&mut Stored> {
        self.peers
            .get_mut(peer_id)
            .filter(|stored| stored.expires > now && stored.addr.ip() != reporter_ip)
    }

    fn at_ip(&self, ip: IpAddr) -> usize {
        self.per_ip.get(&ip).copied().unwrap_or(0)
    }

    /// Which cap a new peer at `ip` would exceed.
    fn cap_exceeded(&self, ip: IpAddr, limits: PeerLimits) -> Option<CapExceeded> {
        if self.peers.len() >= limits.per_blob {
            Some(CapExceeded::Blob {
                limit: limits.per_blob,
            })
        } else if self.at_ip(ip) >= limits.per_address {
            Some(CapExceeded::Address {
                ip,
                limit: limits.per_address,
            })
        } else {
            None
        }
    }
}

fn release(per_ip: &mut HashMap<IpAddr, usize>, ip: IpAddr) {
    if let Some(count) = per_ip.get_mut(&ip) {
        *count = count.saturating_sub(1);
        if *count == 0 {
            per_ip.remove(&ip);
        }
    }
}

#[async_trait::async_trait]
impl PeerStore for MemoryPeerStore {
    async fn update(
        &self,
        digest: &Digest,
        peer: &PeerEntry,
        limits: PeerLimits,
    ) -> Result<(), PeerStoreError> {
        let now = Instant::now();
        let expires = now + self.ttl;
        let mut guard = self.lock_swept(now);
        let state = &mut *guard;

        // A known peer id is refreshed whatever the caps say: a flood of newcomers must not
        // push out the peers already serving the blob.
        if let Some(blob) = state.blobs.get_mut(digest)
            && let Some(stored) = blob.peers.get_mut(&peer.peer_id)
        {
            // A peer that expired keeps no memory of having been complete (it may have
            // restarted with an empty cache under the same id), nor of having served.
            let live = stored.expires > now;
            stored.complete = peer.complete || (stored.complete && live);
            stored.proven &= live;
            let old_ip = stored.addr.ip();
            stored.addr = peer.addr;
            stored.expires = expires;
            if old_ip != peer.addr.ip() {
                release(&mut blob.per_ip, old_ip);
                *blob.per_ip.entry(peer.addr.ip()).or_default() += 1;
            }
            return Ok(());
        }

        if state.entries >= self.max_entries {
            return Err(CapExceeded::Store {
                limit: self.max_entries,
            }
            .into());
        }
        let ip = peer.addr.ip();
        let blob = state.blobs.entry(*digest).or_default();
        if blob.cap_exceeded(ip, limits).is_some() {
            // Expired announces still count until the periodic sweep; at a cap, sweep this
            // blob now so that departed peers make room (the cost is paid only at the cap).
            state.entries = state.entries.saturating_sub(blob.purge_expired(now));
            if let Some(exceeded) = blob.cap_exceeded(ip, limits) {
                if blob.peers.is_empty() {
                    state.blobs.remove(digest);
                }
                return Err(exceeded.into());
            }
        }
        blob.peers.insert(
            peer.peer_id,
            Stored {
                addr: peer.addr,
                complete: peer.complete,
                proven: false,
                demoted_until: None,
                expires,
            },
        );
        *blob.per_ip.entry(ip).or_default() += 1;
        state.entries += 1;
        Ok(())
    }

    async fn get_peers(
        &self,
        digest: &Digest,
        limit: usize,
    ) -> Result<Vec<PeerEntry>, PeerStoreError> {
        let now = Instant::now();
        let mut rng = rand::rng();
        let mut sample = {
            let state = self.lock();
            let Some(blob) = state.blobs.get(digest) else {
                return Ok(Vec::new());
            };
            // Reservoir sampling: one pass under the lock, copying only `limit` peers, however
            // large the swarm.
            blob.peers
                .iter()
                .filter(|(_, stored)| stored.expires > now)
                .map(|(peer_id, stored)| PeerEntry {
                    peer_id: *peer_id,
                    addr: stored.addr,
                    complete: stored.complete,
                    proven: stored.proven,
                    demoted: stored.demoted(now),
                })
                .choose_multiple(&mut rng, limit)
        };
        // The reservoir is a uniform sample but not in random order.
        sample.shuffle(&mut rng);
        Ok(sample)
    }

    async fn report(
        &self,
        digest: &Digest,
        report: &PeerReport<'_>,
    ) -> Result<ReportOutcome, PeerStoreError> {
        let now = Instant::now();
        let mut outcome = ReportOutcome::default();
        let mut state = self.lock();
        let Some(blob) = state.blobs.get_mut(digest) else {
            return Ok(outcome);
        };
        for peer_id in report.served_by.iter().take(MAX_REPORTED_PEERS) {
            if let Some(stored) = blob.reported(peer_id, report.reporter_ip, now)
                && !stored.proven
                && !stored.demoted(now)
            {
                stored.proven = true;
                outcome.proven += 1;
            }
        }
        for peer_id in report.failed.iter().take(MAX_REPORTED_PEERS) {
            if let Some(stored) = blob.reported(peer_id, report.reporter_ip, now) {
                if !stored.demoted(now) {
                    outcome.demoted += 1;
                }
                stored.proven = false;
                stored.demoted_until = Some(now + self.ttl);
            }
        }
        Ok(outcome)
    }

    async fn bind_identity(
        &self,
        peer_id: &PeerId,
        identity: &CertIdentity,
    ) -> Result<bool, PeerStoreError> {
        let now = Instant::now();
        let expires = now + self.ttl;
        let mut state = self.lock_swept(now);
        let held = state.owners.len();
        match state.owners.get_mut(peer_id) {
            Some(owner) if owner.expires > now && owner.identity != *identity => Ok(false),
            // Ours, or a binding that lapsed with the peer's announces: (re)claim it.
            Some(owner) => {
                *owner = Owner {
                    identity: *identity,
                    expires,
                };
                Ok(true)
            }
            None if held >= self.max_entries => Err(CapExceeded::Store {
                limit: self.max_entries,
            }
            .into()),
            None => {
                state.owners.insert(
                    *peer_id,
                    Owner {
                        identity: *identity,
                        expires,
                    },
                );
                Ok(true)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(n: u8, complete: bool) -> PeerEntry {
        PeerEntry::new(
            PeerId::from_array([n; 20]),
            format!("10.0.0.{n}:16001").parse().unwrap(),
            complete,
        )
    }

    #[tokio::test(start_paused = true)]
    async fn entries_expire_after_the_ttl_and_reannounces_refresh_them() {
        let store = MemoryPeerStore::new(Duration::from_secs(10));
        let digest = Digest::of(b"blob");
        store
            .update(&digest, &entry(1, false), PeerLimits::UNLIMITED)
            .await
            .unwrap();
        store
            .update(&digest, &entry(2, false), PeerLimits::UNLIMITED)
            .await
            .unwrap();

        tokio::time::advance(Duration::from_secs(6)).await;
        // Peer 1 re-announces: its TTL restarts, peer 2's does not.
        store
            .update(&digest, &entry(1, false), PeerLimits::UNLIMITED)
            .await
            .unwrap();
        assert_eq!(store.get_peers(&digest, 10).await.unwrap().len(), 2);

        tokio::time::advance(Duration::from_secs(5)).await;
        let peers = store.get_peers(&digest, 10).await.unwrap();
        assert_eq!(peers, vec![entry(1, false)], "peer 2 expired at 10 s");

        tokio::time::advance(Duration::from_secs(5)).await;
        assert!(store.get_peers(&digest, 10).await.unwrap().is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn expired_entries_are_purged_so_memory_stays_bounded() {
        let store = MemoryPeerStore::new(Duration::from_secs(10));
        for n in 0..50u8 {
            store
                .update(&Digest::of(&[n]), &entry(n, true), PeerLimits::UNLIMITED)
                .await
                .unwrap();
        }
        assert_eq!(store.len(), 50);
        tokio::time::advance(Duration::from_secs(11)).await;
        // The next write sweeps everything that expired.
        store
            .update(
                &Digest::of(b"fresh"),
                &entry(99, false),
                PeerLimits::UNLIMITED,
            )
            .await
            .unwrap();
        assert_eq!(store.len(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn complete_only_goes_from_false_to_true() {
        let store = MemoryPeerStore::new(Duration::from_secs(10));
        let digest = Digest::of(b"blob");
        store
            .update(&digest, &entry(1, false), PeerLimits::UNLIMITED)
            .await
            .unwrap();
        store
            .update(&digest, &entry(1, true), PeerLimits::UNLIMITED)
            .await
            .unwrap();
        store
            .update(&digest, &entry(1, false), PeerLimits::UNLIMITED)
            .await
            .unwrap();
        assert_eq!(
            store.get_peers(&digest, 10).await.unwrap(),
            vec![entry(1, true)]
        );

        // After expiry the flag is forgotten with the rest of the entry.
        tokio::time::advance(Duration::from_secs(11)).await;
        store
            .update(&digest, &entry(1, false), PeerLimits::UNLIMITED)
            .await
            .unwrap();
        assert_eq!(
            store.get_peers(&digest, 10).await.unwrap(),
            vec![entry(1, false)]
        );
    }

    #[tokio::test]
    async fn returns_a_random_sample_of_at_most_limit_distinct_peers() {
        let store = MemoryPeerStore::new(Duration::from_secs(60));
        let digest = Digest::of(b"blob");
        for n in 0..20 {
            store
                .update(&digest, &entry(n, false), PeerLimits::UNLIMITED)
                .await
                .unwrap();
            store
                .update(&digest, &entry(n, false), PeerLimits::UNLIMITED)
                .await
                .unwrap();
        }
        let mut seen = std::collections::HashSet::new();
        for _ in 0..20 {
            let peers = store.get_peers(&digest, 5).await.unwrap();
            assert_eq!(peers.len(), 5);
            let ids: std::collections::HashSet<_> = peers.iter().map(|p| p.peer_id).collect();
            assert_eq!(ids.len(), 5, "no duplicates");
            seen.extend(ids);
        }
        assert!(seen.len() > 5, "samples differ between calls");
        assert_eq!(store.get_peers(&digest, 100).await.unwrap().len(), 20);
        assert!(
            store
                .get_peers(&Digest::of(b"other"), 5)
                .await
                .unwrap()
                .is_empty()
        );
    }

    fn at(n: u8, ip: [u8; 4]) -> PeerEntry {
        PeerEntry::new(
            PeerId::from_array([n; 20]),
            SocketAddr::from((ip, 16000 + u16::from(n))),
            false,
        )
    }

    fn refused(result: Result<(), PeerStoreError>) -> CapExceeded {
        match result {
            Err(PeerStoreError::Full(exceeded)) => exceeded,
            other => panic!("expected a cap refusal, got {other:?}"),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn caps_refuse_new_peers_but_known_ones_keep_refreshing() {
        // A TTL above the sweep interval, so that the cap's own sweep is what makes room.
        let store = MemoryPeerStore::new(Duration::from_secs(100));
        let digest = Digest::of(b"blob");
        let limits = PeerLimits {
            per_blob: 5,
            per_address: 3,
        };
        for n in 0..3 {
            store
                .update(&digest, &at(n, [10, 0, 0, 1]), limits)
                .await
                .unwrap();
        }
        let ip = "10.0.0.1".parse().unwrap();
        assert_eq!(
            refused(store.update(&digest, &at(3, [10, 0, 0, 1]), limits).await),
            CapExceeded::Address { ip, limit: 3 }
        );
        // Another address still fits, up to the blob's cap.
        store
            .update(&digest, &at(4, [10, 0, 0, 2]), limits)
            .await
            .unwrap();
        store
            .update(&digest, &at(5, [10, 0, 0, 3]), limits)
            .await
            .unwrap();
        assert_eq!(
            refused(store.update(&digest, &at(6, [10, 0, 0, 4]), limits).await),
            CapExceeded::Blob { limit: 5 }
        );
        // Known peers refresh, even moving to a full address; other blobs are unaffected.
        store
            .update(&digest, &at(0, [10, 0, 0, 1]), limits)
            .await
            .unwrap();
        store
            .update(&digest, &at(4, [10, 0, 0, 1]), limits)
            .await
            .unwrap();
        store
            .update(&Digest::of(b"other"), &at(3, [10, 0, 0, 1]), limits)
            .await
            .unwrap();
        assert_eq!(store.get_peers(&digest, 100).await.unwrap().len(), 5);
        assert_eq!(store.len(), 6);

        // Peer 4 moved away from 10.0.0.2, so that address has room again... but the blob
        // does not until someone expires.
        assert_eq!(
            refused(store.update(&digest, &at(7, [10, 0, 0, 2]), limits).await),
            CapExceeded::Blob { limit: 5 }
        );
        // The periodic sweep runs at 61 s (nothing has expired yet) and next at 121 s.
        tokio::time::advance(Duration::from_secs(61)).await;
        store
            .update(&digest, &at(0, [10, 0, 0, 1]), limits)
            .await
            .unwrap();
        tokio::time::advance(Duration::from_secs(40)).await;
        // Only peer 0 is live; the cap sweeps the blob's expired ones instead of refusing.
        for n in 10..12 {
            store
                .update(&digest, &at(n, [10, 0, 0, 1]), limits)
                .await
                .unwrap();
        }
        assert_eq!(
            refused(store.update(&digest, &at(12, [10, 0, 0, 1]), limits).await),
            CapExceeded::Address { ip, limit: 3 }
        );
        assert_eq!(store.get_peers(&digest, 100).await.unwrap().len(), 3);
        // Peers 0, 10, 11, and the other blob's expired entry still awaiting its sweep.
        assert_eq!(store.len(), 4);
    }

    #[tokio::test(start_paused = true)]
    async fn the_store_holds_at_most_max_entries() {
        let store = MemoryPeerStore::new(Duration::from_secs(10)).with_max_entries(3);
        for n in 0..3u8 {
            store
                .update(&Digest::of(&[n]), &entry(n, false), PeerLimits::UNLIMITED)
                .await
                .unwrap();
        }
        assert_eq!(
            refused(
                store
                    .update(&Digest::of(b"x"), &entry(9, false), PeerLimits::UNLIMITED)
                    .await
            ),
            CapExceeded::Store { limit: 3 }
        );
        // Refreshing is still allowed, and the periodic sweep makes room again.
        store
            .update(&Digest::of(&[0]), &entry(0, true), PeerLimits::UNLIMITED)
            .await
            .unwrap();
        tokio::time::advance(Duration::from_secs(11)).await;
        store
            .update(&Digest::of(b"x"), &entry(9, false), PeerLimits::UNLIMITED)
            .await
            .unwrap();
        assert_eq!(store.len(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_peer_id_stays_with_the_first_certificate_while_it_announces() {
        let store = MemoryPeerStore::new(Duration::from_secs(10)).with_max_entries(2);
        let (mine, theirs) = (
            CertIdentity::of_certificate(b"mine"),
            CertIdentity::of_certificate(b"theirs"),
        );
        let id = PeerId::from_array([1; 20]);
        assert!(store.bind_identity(&id, &mine).await.unwrap());
        assert!(!store.bind_identity(&id, &theirs).await.unwrap());
        // Each announce of the owner restarts the binding's TTL.
        for _ in 0..3 {
            tokio::time::advance(Duration::from_secs(8)).await;
            assert!(store.bind_identity(&id, &mine).await.unwrap());
            assert!(!store.bind_identity(&id, &theirs).await.unwrap());
        }
        // Once the owner has been silent for the TTL its id is free again.
        tokio::time::advance(Duration::from_secs(11)).await;
        assert!(store.bind_identity(&id, &theirs).await.unwrap());
        assert!(!store.bind_identity(&id, &mine).await.unwrap());

        // Bindings are capped like announces.
        assert!(
            store
                .bind_identity(&PeerId::from_array([2; 20]), &mine)
                .await
                .unwrap()
        );
        assert!(matches!(
            store
                .bind_identity(&PeerId::from_array([3; 20]), &mine)
                .await,
            Err(PeerStoreError::Full(CapExceeded::Store { limit: 2 }))
        ));
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

    #[tokio::test(start_paused = true)]
    async fn reports_from_another_ip_prove_and_demote_peers() {
        let store = MemoryPeerStore::new(Duration::from_secs(10));
        let digest = Digest::of(b"blob");
        let one = PeerId::from_array([1; 20]);
        let unknown = PeerId::from_array([77; 20]);
        store
            .update(&digest, &entry(1, true), PeerLimits::UNLIMITED)
            .await
            .unwrap();

        // From its own IP: no proof. Unknown peers and other blobs are left alone.
        let outcome = store
            .report(&digest, &report("10.0.0.1", &[one], &[]))
            .await
            .unwrap();
        assert_eq!(outcome, ReportOutcome::default());
        let outcome = store
            .report(&digest, &report("10.0.0.2", &[unknown], &[unknown]))
            .await
            .unwrap();
        assert_eq!(outcome, ReportOutcome::default());
        let peers = store.get_peers(&digest, 10).await.unwrap();
        assert_eq!(standing(&peers, 1), (false, false));

        // From another host: proven, once.
        let outcome = store
            .report(&digest, &report("10.0.0.2", &[one], &[]))
            .await
            .unwrap();
        assert_eq!(outcome.proven, 1);
        let outcome = store
            .report(&digest, &report("10.0.0.3", &[one], &[]))
            .await
            .unwrap();
        assert_eq!(outcome.proven, 0, "already proven");
        // Refreshed with the entry, whatever the peer's announce says.
        tokio::time::advance(Duration::from_secs(8)).await;
        store
            .update(&digest, &entry(1, false), PeerLimits::UNLIMITED)
            .await
            .unwrap();
        tokio::time::advance(Duration::from_secs(8)).await;
        let peers = store.get_peers(&digest, 10).await.unwrap();
        assert_eq!(standing(&peers, 1), (true, false));

        // A failure report from its own IP changes nothing; from another host it demotes and
        // takes the proof away, and a served report does not lift the demotion.
        store
            .report(&digest, &report("10.0.0.1", &[], &[one]))
            .await
            .unwrap();
        assert_eq!(
            standing(&store.get_peers(&digest, 10).await.unwrap(), 1),
            (true, false)
        );
        let outcome = store
            .report(&digest, &report("10.0.0.2", &[one], &[one]))
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
            .report(&digest, &report("10.0.0.3", &[one], &[]))
            .await
            .unwrap();
        assert_eq!(
            standing(&store.get_peers(&digest, 10).await.unwrap(), 1),
            (false, true)
        );

        // The demotion lapses after a TTL even while the peer keeps announcing; then it can
        // be proven again.
        tokio::time::advance(Duration::from_secs(6)).await;
        store
            .update(&digest, &entry(1, true), PeerLimits::UNLIMITED)
            .await
            .unwrap();
        tokio::time::advance(Duration::from_secs(5)).await;
        assert_eq!(
            standing(&store.get_peers(&digest, 10).await.unwrap(), 1),
            (false, false)
        );
        let outcome = store
            .report(&digest, &report("10.0.0.2", &[one], &[]))
            .await
            .unwrap();
        assert_eq!(outcome.proven, 1);

        // A peer that expired forgets its proof with the rest of its entry.
        tokio::time::advance(Duration::from_secs(11)).await;
        store
            .update(&digest, &entry(1, true), PeerLimits::UNLIMITED)
            .await
            .unwrap();
        assert_eq!(
            standing(&store.get_peers(&digest, 10).await.unwrap(), 1),
            (false, false)
        );
    }

    #[tokio::test]
    async fn at_most_32_reported_ids_are_read() {
        let store = MemoryPeerStore::new(Duration::from_secs(60));
        let digest = Digest::of(b"blob");
        let ids: Vec<PeerId> = (1..=40u8).map(|n| PeerId::from_array([n; 20])).collect();
        for n in 1..=40u8 {
            store
                .update(&digest, &entry(n, true), PeerLimits::UNLIMITED)
                .await
                .unwrap();
        }
        let outcome = store
            .report(&digest, &report("10.9.9.9", &ids, &ids))
            .await
            .unwrap();
        assert_eq!(
            outcome,
            ReportOutcome {
                proven: 32,
                demoted: 32
            }
        );
    }
}
