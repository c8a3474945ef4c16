//! The in-memory index of committed blobs: sizes, pins and recency. Pure bookkeeping with no I/O,
//! so eviction and idle policies are tested directly.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, SystemTime};

use kraken_core::Digest;

/// What the index knows about one committed blob.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct IndexEntry {
    pub(crate) size: u64,
    pub(crate) pinned: bool,
    pub(crate) last_access: SystemTime,
    /// The last access time written to the blob's metadata file.
    pub(crate) persisted_access: SystemTime,
    /// Recency rank: larger is more recent. A counter rather than the clock so ties (coarse
    /// clocks, a paused test clock) still have a strict LRU order.
    seq: u64,
}

#[derive(Debug, Default)]
pub(crate) struct Index {
    entries: HashMap<Digest, IndexEntry>,
    /// Unpinned blobs by recency, oldest first. Pinned blobs stay out so eviction never even
    /// looks at them, however many there are.
    lru: BTreeMap<u64, Digest>,
    next_seq: u64,
    total_bytes: u64,
}

impl Index {
    /// Adds (or replaces) a blob as the most recently used.
    pub(crate) fn insert(
        &mut self,
        digest: Digest,
        size: u64,
        pinned: bool,
        last_access: SystemTime,
    ) {
        self.remove(&digest);
        let seq = self.bump();
        if !pinned {
            self.lru.insert(seq, digest);
        }
        self.total_bytes += size;
        self.entries.insert(
            digest,
            IndexEntry {
                size,
                pinned,
                last_access,
                persisted_access: last_access,
                seq,
            },
        );
    }

    pub(crate) fn get(&self, digest: &Digest) -> Option<&IndexEntry> {
        self.entries.get(digest)
    }

    pub(crate) fn contains(&self, digest: &Digest) -> bool {
        self.entries.contains_key(digest)
    }

    /// Records a read: the blob becomes the most recently used. Returns its size.
    pub(crate) fn touch(&mut self, digest: &Digest, now: SystemTime) -> Option<u64> {
        let seq = self.bump();
        let entry = self.entries.get_mut(digest)?;
        if !entry.pinned {
            self.lru.remove(&entry.seq);
            self.lru.insert(seq, *digest);
        }
        entry.seq = seq;
        entry.last_access = entry.last_access.max(now);
        Some(entry.size)
    }

    /// Pins or unpins; an unpinned blob keeps its place in the recency order. Returns whether
    /// the blob is known.
    pub(crate) fn set_pinned(&mut self, digest: &Digest, pinned: bool) -> bool {
        let Some(entry) = self.entries.get_mut(digest) else {
            return false;
        };
        if entry.pinned != pinned {
            entry.pinned = pinned;
            if pinned {
                self.lru.remove(&entry.seq);
            } else {
                self.lru.insert(entry.seq, *digest);
            }
        }
        true
    }

    pub(crate) fn remove(&mut self, digest: &Digest) -> Option<IndexEntry> {
        let entry = self.entries.remove(digest)?;
        self.lru.remove(&entry.seq);
        self.total_bytes -= entry.size;
        Some(entry)
    }

    /// Unpinned blobs to evict, least recently used first, until the total fits in `capacity`.
    /// `protect` (the blob a commit just stored) is never chosen: evicting what a caller was
    /// just told is stored would make every commit a race against its own eviction.
    pub(crate) fn eviction_candidates(
        &self,
        capacity: u64,
        protect: Option<&Digest>,
    ) -> Vec<Digest> {
        let mut excess = self.total_bytes.saturating_sub(capacity);
        let mut chosen = Vec::new();
        for digest in self.lru.values() {
            if excess == 0 {
                break;
            }
            if Some(digest) == protect {
                continue;
            }
            let size = self.entries.get(digest).map_or(0, |entry| entry.size);
            excess = excess.saturating_sub(size);
            chosen.push(*digest);
        }
        chosen
    }

    /// Unpinned blobs last read before `cutoff`.
    pub(crate) fn idle_before(&self, cutoff: SystemTime) -> Vec<Digest> {
        self.lru
            .values()
            .filter(|digest| {
                self.entries
                    .get(digest)
                    .is_some_and(|e| e.last_access < cutoff)
            })
            .copied()
            .collect()
    }

    /// Blobs whose in-memory last access is at least `granularity` newer than the persisted one.
    pub(crate) fn stale_access_times(&self, granularity: Duration) -> Vec<(Digest, SystemTime)> {
        self.entries
            .iter()
            .filter(|(_, entry)| {
                entry
                    .last_access
                    .duration_since(entry.persisted_access)
                    .is_ok_and(|ahead| ahead >= granularity)
            })
            .map(|(digest, entry)| (*digest, entry.last_access))
            .collect()
    }

    pub(crate) fn mark_access_persisted(&mut self, digest: &Digest, at: SystemTime) {
        if let Some(entry) = self.entries.get_mut(digest) {
            entry.persisted_access = entry.persisted_access.max(at);
        }
    }

    pub(crate) fn total_bytes(&self) -> u64 {
        self.total_bytes
    }

    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }

    pub(crate) fn digests(&self) -> Vec<Digest> {
        let mut digests: Vec<Digest> = self.entries.keys().copied().collect();
        digests.sort();
        digests
    }

    fn bump(&mut self) -> u64 {
        self.next_seq += 1;
        self.next_seq
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(n: u8) -> Digest {
        Digest::of(&[n])
    }

    fn t(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(secs)
    }

    #[test]
    fn evicts_least_recently_used_until_under_capacity() {
        let mut index = Index::default();
        for n in 0..4 {
            index.insert(d(n), 10, false, t(0));
        }
        index.touch(&d(0), t(0));
        // Order now (oldest first): 1, 2, 3, 0.
        assert_eq!(index.eviction_candidates(40, None), Vec::<Digest>::new());
        assert_eq!(index.eviction_candidates(35, None), vec![d(1)]);
        assert_eq!(index.eviction_candidates(20, None), vec![d(1), d(2)]);
        assert_eq!(index.eviction_candidates(20, Some(&d(1))), vec![d(2), d(3)]);
        assert_eq!(index.total_bytes(), 40);
    }

    #[test]
    fn pinned_blobs_are_never_candidates_and_keep_their_rank_when_unpinned() {
        let mut index = Index::default();
        index.insert(d(0), 10, true, t(0));
        index.insert(d(1), 10, false, t(0));
        assert_eq!(index.eviction_candidates(0, None), vec![d(1)]);
        assert!(index.idle_before(t(100)) == vec![d(1)]);
        assert!(index.set_pinned(&d(0), false));
        assert_eq!(index.eviction_candidates(0, None), vec![d(0), d(1)]);
        index.set_pinned(&d(1), true);
        index.touch(&d(1), t(5));
        assert_eq!(index.eviction_candidates(0, None), vec![d(0)]);
        assert!(!index.set_pinned(&d(9), true));
    }

    #[test]
    fn remove_updates_totals_and_idle_uses_last_access() {
        let mut index = Index::default();
        index.insert(d(0), 7, false, t(10));
        index.insert(d(1), 5, false, t(10));
        index.touch(&d(1), t(50));
        assert_eq!(index.idle_before(t(30)), vec![d(0)]);
        assert_eq!(index.remove(&d(0)).map(|e| e.size), Some(7));
        assert_eq!(index.total_bytes(), 5);
        assert_eq!(index.len(), 1);
        assert!(index.remove(&d(0)).is_none());
    }

    #[test]
    fn access_times_are_persisted_coarsely() {
        let mut index = Index::default();
        index.insert(d(0), 1, false, t(0));
        index.touch(&d(0), t(30));
        assert!(index.stale_access_times(Duration::from_secs(60)).is_empty());
        index.touch(&d(0), t(90));
        assert_eq!(
            index.stale_access_times(Duration::from_secs(60)),
            vec![(d(0), t(90))]
        );
        index.mark_access_persisted(&d(0), t(90));
        assert!(index.stale_access_times(Duration::from_secs(60)).is_empty());
    }
}
