//! Per-digest async locks: operations that change one blob (commit, delete, evict, metadata
//! rewrites) serialise per digest, so unrelated blobs never wait on each other.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use kraken_core::Digest;
use tokio::sync::OwnedMutexGuard;

type Slot = Arc<tokio::sync::Mutex<()>>;

#[derive(Debug, Default)]
pub(crate) struct DigestLocks {
    // Entries exist only while someone holds or waits for the lock; the guard removes them.
    slots: Mutex<HashMap<Digest, Slot>>,
}

/// Holds the lock of one digest until dropped.
#[derive(Debug)]
pub(crate) struct DigestGuard<'a> {
    locks: &'a DigestLocks,
    digest: Digest,
    guard: Option<OwnedMutexGuard<()>>,
}

impl DigestLocks {
    pub(crate) async fn lock(&self, digest: Digest) -> DigestGuard<'_> {
        let slot = self.slot(digest);
        let guard = slot.lock_owned().await;
        DigestGuard {
            locks: self,
            digest,
            guard: Some(guard),
        }
    }

    /// For background work (eviction, cleanup) that should skip a busy blob, not wait for it.
    pub(crate) fn try_lock(&self, digest: Digest) -> Option<DigestGuard<'_>> {
        let slot = self.slot(digest);
        match slot.try_lock_owned() {
            Ok(guard) => Some(DigestGuard {
                locks: self,
                digest,
                guard: Some(guard),
            }),
            Err(_) => None,
        }
    }

    /// Drops entries left behind by waiters that were cancelled before getting the lock.
    pub(crate) fn prune(&self) {
        self.map().retain(|_, slot| Arc::strong_count(slot) > 1);
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.map().len()
    }

    fn slot(&self, digest: Digest) -> Slot {
        self.map().entry(digest).or_default().clone()
    }

    fn map(&self) -> MutexGuard<'_, HashMap<Digest, Slot>> {
        kraken_core::sync::lock(&self.slots)
    }
}

impl Drop for DigestGuard<'_> {
    fn drop(&mut self) {
        // Release under the map lock so no one can clone the slot between the release and the
        // count check; a count of 1 then means only the map still refers to it.
        let mut map = self.locks.map();
        drop(self.guard.take());
        if map
            .get(&self.digest)
            .is_some_and(|slot| Arc::strong_count(slot) == 1)
        {
            map.remove(&self.digest);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn serialises_one_digest_and_cleans_up() {
        let locks = DigestLocks::default();
        let a = Digest::of(b"a");
        let guard = locks.lock(a).await;
        assert!(locks.try_lock(a).is_none());
        assert!(
            locks.try_lock(Digest::of(b"b")).is_some(),
            "other digests are independent"
        );
        drop(guard);
        assert!(locks.try_lock(a).is_some());
        assert_eq!(locks.len(), 0);
        locks.prune();
    }
}
