//! The in-process peer store: right for a single tracker, or trackers placed on a ring by
//! digest so that every announce of a blob reaches the same one.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use kraken_core::{Digest, PeerId};
use rand::seq::SliceRandom;
use tokio::time::Instant;

use super::{PeerEntry, PeerStore, PeerStoreError};

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
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    blobs: HashMap<Digest, HashMap<PeerId, Stored>>,
    next_purge: Instant,
}

#[derive(Debug, Clone, Copy)]
struct Stored {
    addr: std::net::SocketAddr,
    complete: bool,
    expires: Instant,
}

impl MemoryPeerStore {
    /// A store remembering each announce for `ttl`.
    pub fn new(ttl: Duration) -> Self {
        let purge_interval = ttl.min(MAX_PURGE_INTERVAL);
        Self {
            ttl,
            purge_interval,
            state: Mutex::new(State {
                blobs: HashMap::new(),
                next_purge: Instant::now() + purge_interval,
            }),
        }
    }

    /// Peers currently held, across all blobs, expired ones not yet purged included.
    pub fn len(&self) -> usize {
        self.lock().blobs.values().map(HashMap::len).sum()
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
}

impl State {
    fn purge_expired(&mut self, now: Instant) {
        self.blobs.retain(|_, peers| {
            peers.retain(|_, stored| stored.expires > now);
            !peers.is_empty()
        });
        let held: usize = self.blobs.values().map(HashMap::len).sum();
        metrics::gauge!(crate::metrics::MEMORY_PEERSTORE_PEERS).set(held as f64);
    }
}

#[async_trait::async_trait]
impl PeerStore for MemoryPeerStore {
    async fn update(&self, digest: &Digest, peer: &PeerEntry) -> Result<(), PeerStoreError> {
        let now = Instant::now();
        let mut state = self.lock();
        if now >= state.next_purge {
            state.purge_expired(now);
            state.next_purge = now + self.purge_interval;
        }
        let expires = now + self.ttl;
        state
            .blobs
            .entry(*digest)
            .or_default()
            .entry(peer.peer_id)
            .and_modify(|stored| {
                // A peer that expired keeps no memory of having been complete: it may have
                // restarted with an empty cache under the same id.
                stored.complete = peer.complete || (stored.complete && stored.expires > now);
                stored.addr = peer.addr;
                stored.expires = expires;
            })
            .or_insert(Stored {
                addr: peer.addr,
                complete: peer.complete,
                expires,
            });
        Ok(())
    }

    async fn get_peers(
        &self,
        digest: &Digest,
        limit: usize,
    ) -> Result<Vec<PeerEntry>, PeerStoreError> {
        let now = Instant::now();
        let mut live: Vec<PeerEntry> = {
            let state = self.lock();
            let Some(peers) = state.blobs.get(digest) else {
                return Ok(Vec::new());
            };
            peers
                .iter()
                .filter(|(_, stored)| stored.expires > now)
                .map(|(peer_id, stored)| PeerEntry {
                    peer_id: *peer_id,
                    addr: stored.addr,
                    complete: stored.complete,
                })
                .collect()
        };
        // A partial shuffle is a uniform random sample in random order, in O(limit) swaps.
        let (sample, _) = live.partial_shuffle(&mut rand::rng(), limit);
        Ok(sample.to_vec())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(n: u8, complete: bool) -> PeerEntry {
        PeerEntry {
            peer_id: PeerId::from_array([n; 20]),
            addr: format!("10.0.0.{n}:16001").parse().unwrap(),
            complete,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn entries_expire_after_the_ttl_and_reannounces_refresh_them() {
        let store = MemoryPeerStore::new(Duration::from_secs(10));
        let digest = Digest::of(b"blob");
        store.update(&digest, &entry(1, false)).await.unwrap();
        store.update(&digest, &entry(2, false)).await.unwrap();

        tokio::time::advance(Duration::from_secs(6)).await;
        // Peer 1 re-announces: its TTL restarts, peer 2's does not.
        store.update(&digest, &entry(1, false)).await.unwrap();
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
                .update(&Digest::of(&[n]), &entry(n, true))
                .await
                .unwrap();
        }
        assert_eq!(store.len(), 50);
        tokio::time::advance(Duration::from_secs(11)).await;
        // The next write sweeps everything that expired.
        store
            .update(&Digest::of(b"fresh"), &entry(99, false))
            .await
            .unwrap();
        assert_eq!(store.len(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn complete_only_goes_from_false_to_true() {
        let store = MemoryPeerStore::new(Duration::from_secs(10));
        let digest = Digest::of(b"blob");
        store.update(&digest, &entry(1, false)).await.unwrap();
        store.update(&digest, &entry(1, true)).await.unwrap();
        store.update(&digest, &entry(1, false)).await.unwrap();
        assert_eq!(
            store.get_peers(&digest, 10).await.unwrap(),
            vec![entry(1, true)]
        );

        // After expiry the flag is forgotten with the rest of the entry.
        tokio::time::advance(Duration::from_secs(11)).await;
        store.update(&digest, &entry(1, false)).await.unwrap();
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
            store.update(&digest, &entry(n, false)).await.unwrap();
            store.update(&digest, &entry(n, false)).await.unwrap();
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
}
