//! Super-seeding: how an origin makes its uplink carry each piece about once.
//!
//! A seeder that shows every peer its full bitfield gets asked for the same early pieces by
//! everyone, since each peer only sees what its own neighbours hold. Instead, the origin reveals
//! to each peer a small window of the pieces it has sent the fewest times (and revealed to the
//! fewest peers). Each time it finishes sending a piece to a peer, or learns the peer got one of
//! its revealed pieces elsewhere, it reveals another. Peers then spread the pieces among
//! themselves. Once every piece has left the origin at least once, hiding is pointless: the
//! origin reveals everything and behaves as a plain seeder, serving the swarm's stragglers.

use std::collections::{BTreeSet, HashMap};

use kraken_core::Bitfield;
use rand::SeedableRng;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;

use super::LinkId;

/// What the origin must tell a peer about the pieces it holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reveal {
    /// Send `Have { piece }` on this link.
    Have { link: LinkId, piece: u32 },
    /// Send `Complete` on this link: the peer may now ask for any piece.
    Complete { link: LinkId },
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
    /// Pieces not in the swarm and not currently revealed to anyone, in random order.
    revealable: Vec<u32>,
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
    pub fn new(num_pieces: u32, window: usize, seed: u64) -> Self {
        let mut revealable: Vec<u32> = (0..num_pieces).collect();
        revealable.shuffle(&mut StdRng::seed_from_u64(seed));
        Self {
            window: window.max(1),
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
                    self.revealable.push(piece);
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
        self.revealable.retain(|p| *p != piece);
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
                let Some(index) = self.revealable.iter().position(|p| !view.holds.get(*p)) else {
                    break;
                };
                let piece = self.revealable.swap_remove(index);
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
        let mut seeder = SuperSeeder::new(10, 2, 1);
        let (a, _) = seeder.add_link(LinkId(1), Bitfield::new(10));
        let (b, _) = seeder.add_link(LinkId(2), Bitfield::new(10));
        assert_eq!(a.count(), 2);
        assert_eq!(b.count(), 2);
        assert!(!a.iter_ones().any(|p| b.get(p)), "overlap: {a:?} {b:?}");
    }

    #[test]
    fn reveals_another_piece_after_each_send() {
        let mut seeder = SuperSeeder::new(10, 1, 1);
        let (shown, _) = seeder.add_link(LinkId(1), Bitfield::new(10));
        let first = shown.iter_ones().next().unwrap();
        let next = haves(&seeder.piece_sent(LinkId(1), first), LinkId(1));
        assert_eq!(next.len(), 1);
        assert_ne!(next[0], first);
    }

    #[test]
    fn never_reveals_an_unsent_piece_to_two_peers_at_once() {
        let mut seeder = SuperSeeder::new(2, 1, 1);
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
        let mut seeder = SuperSeeder::new(3, 1, 1);
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
    fn pieces_peers_already_hold_need_no_origin() {
        let mut seeder = SuperSeeder::new(2, 2, 1);
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
