//! The upload side: requests peers made of us, waiting for an upload slot.
//!
//! Uploads are served a few at a time rather than all at once, so each piece leaves at full
//! link speed and can be re-shared by its receiver sooner. On an origin (`super_seed`), the
//! queue serves first the pieces it has sent the fewest times: the seeder's uplink then carries
//! distinct pieces to distinct peers, who trade them among themselves, instead of many copies of
//! the same early pieces. Requests for already-sent pieces wait, and are usually cancelled
//! because the requester got the piece from a neighbour meanwhile.

use std::collections::HashMap;
use std::hash::Hash;

use super::LinkId;

/// A request waiting to be served.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueuedUpload<B> {
    pub blob: B,
    pub link: LinkId,
    pub piece: u32,
    seq: u64,
}

/// Why a request was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum UploadQueueError {
    #[error("peer already has {limit} requests queued; wait for some to be served")]
    LinkQueueFull { limit: usize },
    #[error("piece {piece} is already queued for this peer")]
    AlreadyQueued { piece: u32 },
}

/// Pending uploads across every blob this process serves.
#[derive(Debug)]
pub struct UploadQueue<B> {
    pending: Vec<QueuedUpload<B>>,
    served: HashMap<(B, u32), u32>,
    per_link: HashMap<LinkId, usize>,
    super_seed: bool,
    max_per_link: usize,
    seq: u64,
}

impl<B: Clone + Eq + Hash> UploadQueue<B> {
    /// `super_seed`: serve least-sent pieces first (origins). `max_per_link`: requests one peer
    /// may have queued, so a single peer cannot hog the queue.
    pub fn new(super_seed: bool, max_per_link: usize) -> Self {
        Self {
            pending: Vec::new(),
            served: HashMap::new(),
            per_link: HashMap::new(),
            super_seed,
            max_per_link: max_per_link.max(1),
            seq: 0,
        }
    }

    pub fn len(&self) -> usize {
        self.pending.len()
    }

    pub fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }

    /// Queues a request.
    pub fn push(&mut self, blob: B, link: LinkId, piece: u32) -> Result<(), UploadQueueError> {
        let queued = self.per_link.get(&link).copied().unwrap_or(0);
        if queued >= self.max_per_link {
            return Err(UploadQueueError::LinkQueueFull {
                limit: self.max_per_link,
            });
        }
        if self
            .pending
            .iter()
            .any(|q| q.link == link && q.piece == piece && q.blob == blob)
        {
            return Err(UploadQueueError::AlreadyQueued { piece });
        }
        self.seq += 1;
        self.pending.push(QueuedUpload {
            blob,
            link,
            piece,
            seq: self.seq,
        });
        *self.per_link.entry(link).or_default() += 1;
        Ok(())
    }

    /// Withdraws a queued request; returns whether it was still queued.
    pub fn cancel(&mut self, blob: &B, link: LinkId, piece: u32) -> bool {
        let before = self.pending.len();
        self.pending
            .retain(|q| !(q.link == link && q.piece == piece && &q.blob == blob));
        let removed = before - self.pending.len();
        self.release(link, removed);
        removed > 0
    }

    /// Drops every request of a closed link.
    pub fn remove_link(&mut self, link: LinkId) {
        self.pending.retain(|q| q.link != link);
        self.per_link.remove(&link);
    }

    /// Drops every request for a blob we stopped serving, and its served counts.
    pub fn remove_blob(&mut self, blob: &B) {
        let mut released: HashMap<LinkId, usize> = HashMap::new();
        self.pending.retain(|q| {
            let keep = &q.blob != blob;
            if !keep {
                *released.entry(q.link).or_default() += 1;
            }
            keep
        });
        for (link, count) in released {
            self.release(link, count);
        }
        self.served.retain(|(b, _), _| b != blob);
    }

    /// The next request to serve.
    pub fn pop(&mut self) -> Option<QueuedUpload<B>> {
        let index = if self.super_seed {
            self.pending
                .iter()
                .enumerate()
                .min_by_key(|(_, q)| {
                    let sent = self
                        .served
                        .get(&(q.blob.clone(), q.piece))
                        .copied()
                        .unwrap_or(0);
                    (sent, q.seq)
                })
                .map(|(index, _)| index)?
        } else {
            self.pending
                .iter()
                .enumerate()
                .min_by_key(|(_, q)| q.seq)
                .map(|(index, _)| index)?
        };
        let next = self.pending.swap_remove(index);
        self.release(next.link, 1);
        if self.super_seed {
            *self
                .served
                .entry((next.blob.clone(), next.piece))
                .or_default() += 1;
        }
        Some(next)
    }

    fn release(&mut self, link: LinkId, count: usize) {
        if let Some(queued) = self.per_link.get_mut(&link) {
            *queued = queued.saturating_sub(count);
            if *queued == 0 {
                self.per_link.remove(&link);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fifo_without_super_seeding() {
        let mut queue = UploadQueue::new(false, 8);
        queue.push("a", LinkId(1), 5).unwrap();
        queue.push("a", LinkId(2), 5).unwrap();
        queue.push("a", LinkId(1), 6).unwrap();
        let order: Vec<_> = std::iter::from_fn(|| queue.pop())
            .map(|q| (q.link, q.piece))
            .collect();
        assert_eq!(order, vec![(LinkId(1), 5), (LinkId(2), 5), (LinkId(1), 6)]);
    }

    #[test]
    fn super_seeding_serves_unsent_pieces_first() {
        let mut queue = UploadQueue::new(true, 8);
        queue.push("a", LinkId(1), 0).unwrap();
        queue.push("a", LinkId(2), 0).unwrap();
        queue.push("a", LinkId(3), 0).unwrap();
        queue.push("a", LinkId(2), 1).unwrap();
        queue.push("a", LinkId(3), 2).unwrap();
        let order: Vec<_> = std::iter::from_fn(|| queue.pop())
            .map(|q| (q.link, q.piece))
            .collect();
        assert_eq!(
            order,
            vec![
                (LinkId(1), 0),
                (LinkId(2), 1),
                (LinkId(3), 2),
                (LinkId(2), 0),
                (LinkId(3), 0)
            ]
        );
    }

    #[test]
    fn per_link_limit_cancel_and_cleanup() {
        let mut queue = UploadQueue::new(true, 2);
        queue.push("a", LinkId(1), 0).unwrap();
        assert_eq!(
            queue.push("a", LinkId(1), 0),
            Err(UploadQueueError::AlreadyQueued { piece: 0 })
        );
        queue.push("a", LinkId(1), 1).unwrap();
        assert_eq!(
            queue.push("a", LinkId(1), 2),
            Err(UploadQueueError::LinkQueueFull { limit: 2 })
        );
        assert!(queue.cancel(&"a", LinkId(1), 0));
        assert!(!queue.cancel(&"a", LinkId(1), 0));
        queue.push("a", LinkId(1), 2).unwrap();
        queue.push("b", LinkId(2), 0).unwrap();
        queue.remove_link(LinkId(1));
        assert_eq!(queue.len(), 1);
        queue.remove_blob(&"b");
        assert!(queue.is_empty());
        queue.push("a", LinkId(2), 0).unwrap();
        queue.push("a", LinkId(2), 1).unwrap();
    }
}
