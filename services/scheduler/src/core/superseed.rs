//! Super-seeding: how an origin makes its uplink carry each piece about once.
//!
//! A seeder that shows every peer its full bitfield gets asked for the same early pieces by
//! everyone, since each peer only sees what its own neighbours hold. Instead, the origin reveals
//! to each peer a small window of the pieces it has sent the fewest times (and revealed to the
//! fewest peers). Each time it finishes sending a piece to a peer, or learns the peer got one of
//! its revealed pieces elsewhere, it reveals another. Peers then spread the pieces among
//! themselves. Once every piece has left the origin at least once, hiding is pointless: the
//! origin reveals everything and behaves as a plain seeder, serving the swarm's stragglers.
//!
//! Which unsent piece is revealed next follows a [`RevealOrder`]: ascending, and with several
//! origins owning the blob, each owner starts with its own stripe (owner `r` of `n`: pieces
//! `r, r+n, r+2n, …`, then the other stripes). Owners that cannot coordinate otherwise then
//! reveal disjoint pieces instead of colliding at random, and a lone agent pulling from the
//! owners receives the blob nearly in order, so a client streaming it (a `docker pull`) gets
//! bytes as they arrive rather than all at the end.

use std::collections::{BTreeSet, HashMap};

use kraken_core::Bitfield;

use super::LinkId;

/// What the origin must tell a peer about the pieces it holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reveal {
    /// Send `Have { piece }` on this link.
    Have { link: LinkId, piece: u32 },
    /// Send `Complete` on this link: the peer may now ask for any piece.
    Complete { link: LinkId },
}

/// The order an origin reveals unsent pieces in: stripe `rank` of `stripes` first, ascending.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RevealOrder {
    pub rank: u32,
    pub stripes: u32,
}

impl Default for RevealOrder {
    /// Plain ascending order (a single owner).
    fn default() -> Self {
        Self {
            rank: 0,
            stripes: 1,
        }
    }
}

impl RevealOrder {
    /// Owner `rank` of `owners` (a `rank` past the owners, e.g. a stand-in origin, wraps).
    pub fn striped(rank: usize, owners: usize) -> Self {
        let stripes = u32::try_from(owners.max(1)).unwrap_or(u32::MAX);
        Self {
            rank: u32::try_from(rank).unwrap_or(0) % stripes,
            stripes,
        }
    }

    /// Sort key of `piece`: how far its stripe is from ours, then its index.
    fn key(&self, piece: u32) -> (u32, u32) {
        let stripes = self.stripes.max(1);
        let distance = (piece % stripes + stripes - self.rank % stripes) % stripes;
        (distance, piece)
    }
}

/// Super-seeding state of one blob on an origin.
///
/// Until every piece is in the swarm, each piece that has never left the origin is revealed to
/// at most one peer at a time, so the origin never sends a piece twice while another is still
/// missing from the swarm.
#[derive(Debug)]
pub struct SuperSeeder {
    window: usize,
    /// Per piece: whether the swarm has it (we sent it, or a peer showed up holding it).
    in_swarm: Bitfield,
    /// Pieces not in the swarm and not currently revealed to anyone, by [`RevealOrder::key`].
    revealable: BTreeSet<(u32, u32)>,
    order: RevealOrder,
    links: HashMap<LinkId, LinkView>,
    /// Links with room in their window, waiting for a piece to become revealable.
    hungry: BTreeSet<LinkId>,
    all_revealed: bool,
}

#[derive(Debug)]
struct LinkView {
    /// What the peer holds, from its handshake and `Have`s.
    holds: Bitfield,
    /// Pieces revealed to the peer that it does not hold yet.
    outstanding: Vec<u32>,
}

impl SuperSeeder {
    /// `window`: pieces revealed to one peer at a time (at most its origin pipeline limit).
    pub fn new(num_pieces: u32, window: usize, order: RevealOrder) -> Self {
        let revealable = (0..num_pieces).map(|piece| order.key(piece)).collect();
        Self {
            window: window.max(1),
            order,
            in_swarm: Bitfield::new(num_pieces),
            revealable,
            links: HashMap::new(),
            hungry: BTreeSet::new(),
            all_revealed: num_pieces == 0,
        }
    }

    /// Whether every piece has reached the swarm, after which nothing is hidden.
    pub fn fully_seeded(&self) -> bool {
        self.all_revealed
    }

    /// A peer connected holding `holds`. Returns the bitfield for our handshake, and reveals
    /// for other peers (pieces the newcomer holds no longer need the origin).
    pub fn add_link(&mut self, link: LinkId, holds: Bitfield) -> (Bitfield, Vec<Reveal>) {
        let num_pieces = self.in_swarm.len();
        let mut reveals = Vec::new();
        if holds.len() != num_pieces {
            // The swarm refuses this peer anyway; show it nothing special.
            return (Bitfield::full(num_pieces), reveals);
        }
        for piece in holds.iter_ones() {
            self.mark_in_swarm(piece, &mut reveals);
        }
        self.links.insert(
            link,
            LinkView {
                holds,
                outstanding: Vec::new(),
            },
        );
        if self.all_revealed {
            return (Bitfield::full(num_pieces), reveals);
        }
        self.hungry.insert(link);
        self.feed_hungry(&mut reveals);
        // Our handshake carries this link's reveals; the others go out as messages.
        let mut shown = Bitfield::new(num_pieces);
        reveals.retain(|reveal| match reveal {
            Reveal::Have { link: to, piece } if *to == link => {
                shown.set(*piece, true);
                false
            }
            _ => true,
        });
        (shown, reveals)
    }

    pub fn remove_link(&mut self, link: LinkId) -> Vec<Reveal> {
        let mut reveals = Vec::new();
        self.hungry.remove(&link);
        if let Some(view) = self.links.remove(&link) {
            for piece in view.outstanding {
                if !self.in_swarm.get(piece) {
                    self.revealable.insert(self.order.key(piece));
                }
            }
            self.feed_hungry(&mut reveals);
        }
        reveals
    }

    /// The peer announced a piece (it got it from us or from a neighbour).
    pub fn peer_has(&mut self, link: LinkId, piece: u32) -> Vec<Reveal> {
        let mut reveals = Vec::new();
        if piece >= self.in_swarm.len() {
            return reveals;
        }
        if let Some(view) = self.links.get_mut(&link) {
            view.holds.set(piece, true);
            if let Some(position) = view.outstanding.iter().position(|p| *p == piece) {
                view.outstanding.swap_remove(position);
                self.hungry.insert(link);
            }
        }
        self.mark_in_swarm(piece, &mut reveals);
        self.feed_hungry(&mut reveals);
        reveals
    }

    /// We finished sending `piece` to `link`.
    pub fn piece_sent(&mut self, link: LinkId, piece: u32) -> Vec<Reveal> {
        self.peer_has(link, piece)
    }

    fn mark_in_swarm(&mut self, piece: u32, reveals: &mut Vec<Reveal>) {
        if !self.in_swarm.set(piece, true) {
            return;
        }
        self.revealable.remove(&self.order.key(piece));
        if self.in_swarm.is_complete() && !self.all_revealed {
            self.all_revealed = true;
            self.hungry.clear();
            for link in self.links.keys() {
                reveals.push(Reveal::Complete { link: *link });
            }
        }
    }

    /// Gives hungry links pieces from the revealable pool, each to one link.
    fn feed_hungry(&mut self, reveals: &mut Vec<Reveal>) {
        if self.all_revealed {
            return;
        }
        let hungry: Vec<LinkId> = self.hungry.iter().copied().collect();
        for link in hungry {
            if self.revealable.is_empty() {
                return;
            }
            let Some(view) = self.links.get_mut(&link) else {
                self.hungry.remove(&link);
                continue;
            };
            while view.outstanding.len() < self.window {
                let Some(&key) = self.revealable.iter().find(|(_, p)| !view.holds.get(*p)) else {
                    break;
                };
                self.revealable.remove(&key);
                let piece = key.1;
                view.outstanding.push(piece);
                reveals.push(Reveal::Have { link, piece });
            }
            if view.outstanding.len() >= self.window {
                self.hungry.remove(&link);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn haves(reveals: &[Reveal], to: LinkId) -> Vec<u32> {
        reveals
            .iter()
            .filter_map(|r| match r {
                Reveal::Have { link, piece } if *link == to => Some(*piece),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn reveals_distinct_pieces_to_distinct_peers() {
        let mut seeder = SuperSeeder::new(10, 2, RevealOrder::default());
        let (a, _) = seeder.add_link(LinkId(1), Bitfield::new(10));
        let (b, _) = seeder.add_link(LinkId(2), Bitfield::new(10));
        assert_eq!(a.count(), 2);
        assert_eq!(b.count(), 2);
        assert!(!a.iter_ones().any(|p| b.get(p)), "overlap: {a:?} {b:?}");
    }

    #[test]
    fn reveals_another_piece_after_each_send() {
        let mut seeder = SuperSeeder::new(10, 1, RevealOrder::default());
        let (shown, _) = seeder.add_link(LinkId(1), Bitfield::new(10));
        let first = shown.iter_ones().next().unwrap();
        let next = haves(&seeder.piece_sent(LinkId(1), first), LinkId(1));
        assert_eq!(next.len(), 1);
        assert_ne!(next[0], first);
    }

    #[test]
    fn never_reveals_an_unsent_piece_to_two_peers_at_once() {
        let mut seeder = SuperSeeder::new(2, 1, RevealOrder::default());
        let (a, _) = seeder.add_link(LinkId(1), Bitfield::new(2));
        let (b, _) = seeder.add_link(LinkId(2), Bitfield::new(2));
        let (c, _) = seeder.add_link(LinkId(3), Bitfield::new(2));
        assert_eq!(
            a.count() + b.count() + c.count(),
            2,
            "two pieces, one peer each"
        );
        assert_eq!(c.count(), 0);
        // Peer 1 leaves without fetching its piece: the waiting peer 3 gets it.
        let piece = a.iter_ones().next().unwrap();
        assert_eq!(
            haves(&seeder.remove_link(LinkId(1)), LinkId(3)),
            vec![piece]
        );
    }

    #[test]
    fn reveals_everything_once_every_piece_reached_the_swarm() {
        let mut seeder = SuperSeeder::new(3, 1, RevealOrder::default());
        let (shown, _) = seeder.add_link(LinkId(1), Bitfield::new(3));
        seeder.add_link(LinkId(2), Bitfield::new(3));
        let mut next = shown.iter_ones().next();
        let mut completes = 0;
        while let Some(piece) = next.take() {
            for reveal in seeder.piece_sent(LinkId(1), piece) {
                match reveal {
                    Reveal::Have {
                        link: LinkId(1),
                        piece,
                    } => next = Some(piece),
                    Reveal::Complete { .. } => completes += 1,
                    Reveal::Have { .. } => {}
                }
            }
            if next.is_none() {
                // Link 2 holds the last piece; it is sent to link 2.
                let pending: Vec<u32> = (0..3).filter(|p| !seeder.in_swarm.get(*p)).collect();
                if let Some(piece) = pending.first() {
                    for reveal in seeder.piece_sent(LinkId(2), *piece) {
                        if matches!(reveal, Reveal::Complete { .. }) {
                            completes += 1;
                        }
                    }
                }
            }
        }
        assert!(seeder.fully_seeded());
        assert_eq!(completes, 2, "both links told to stop hiding");
        assert_eq!(
            seeder.add_link(LinkId(3), Bitfield::new(3)).0,
            Bitfield::full(3)
        );
    }

    #[test]
    fn owners_reveal_their_own_stripe_in_ascending_order_first() {
        let mut first = SuperSeeder::new(8, 1, RevealOrder::striped(0, 2));
        let mut second = SuperSeeder::new(8, 1, RevealOrder::striped(1, 2));
        let sequence = |seeder: &mut SuperSeeder| {
            let (shown, _) = seeder.add_link(LinkId(1), Bitfield::new(8));
            let mut order: Vec<u32> = shown.iter_ones().collect();
            while let Some(&last) = order.last() {
                match haves(&seeder.piece_sent(LinkId(1), last), LinkId(1))[..] {
                    [next] => order.push(next),
                    _ => break,
                }
            }
            order
        };
        assert_eq!(sequence(&mut first), [0, 2, 4, 6, 1, 3, 5, 7]);
        assert_eq!(sequence(&mut second), [1, 3, 5, 7, 0, 2, 4, 6]);
        assert_eq!(
            RevealOrder::striped(5, 2),
            RevealOrder {
                rank: 1,
                stripes: 2
            }
        );
        assert_eq!(RevealOrder::striped(0, 0), RevealOrder::default());
    }

    #[test]
    fn pieces_peers_already_hold_need_no_origin() {
        let mut seeder = SuperSeeder::new(2, 2, RevealOrder::default());
        let (shown, _) = seeder.add_link(LinkId(1), Bitfield::full(2));
        assert!(
            seeder.fully_seeded(),
            "a complete peer joined: the swarm has everything"
        );
        assert_eq!(shown, Bitfield::full(2));
        assert!(
            seeder.peer_has(LinkId(99), 0).is_empty(),
            "unknown links are ignored"
        );
        assert!(
            seeder.peer_has(LinkId(1), 7).is_empty(),
            "out of range is ignored"
        );
    }
}
