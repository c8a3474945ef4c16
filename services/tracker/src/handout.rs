//! Which peers an announcing peer is told to dial. Pure: no I/O and no clock, randomness
//! injected, so a test can drive any swarm deterministically.

use std::collections::{HashMap, HashSet};

use kraken_config::tracker::HandoutPriority;
use kraken_core::{PeerId, PeerInfo};
use rand::Rng;
use rand::seq::SliceRandom;

use crate::peerstore::PeerEntry;

/// The hand-out policy: at most `limit` peers, never the caller, origins always included.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HandoutPolicy {
    priority: HandoutPriority,
    limit: usize,
}

impl HandoutPolicy {
    /// A policy ordering by `priority` and returning at most `limit` peers.
    pub fn new(priority: HandoutPriority, limit: usize) -> Self {
        Self { priority, limit }
    }

    /// The most peers one hand-out holds.
    pub fn limit(&self) -> usize {
        self.limit
    }

    /// Chooses whom `caller` should dial among the `peers` that announced the blob and the
    /// `origins` that own it.
    ///
    /// - A complete caller gets nothing: seeders wait to be dialled.
    /// - The caller is left out by peer id (and by address, which catches an agent that
    ///   restarted under a new id while its old announce is still stored). Kraken compared
    ///   pointers here, so its trackers handed peers themselves.
    /// - Every peer appears once; a peer listed both as an origin and as an announcer is an
    ///   origin, and one listed twice is complete (proven, demoted) if either entry says so.
    /// - Origins are always included (up to `limit`): they are the seeders of last resort,
    ///   and a swarm of incomplete agents without them could stall. Agents fill the rest.
    /// - `completeness`: proven complete agents (another host said they served it), then
    ///   origins, then the other agents (complete or not), then demoted agents (another host
    ///   said they failed it). A claim of completeness alone earns nothing: anyone with a
    ///   certificate can make it, for peers at dead ports. Leechers still pull from agents
    ///   that have shown they serve before the origins, sparing them. Random within each
    ///   group; when there are more agents than room, earlier groups are kept.
    ///   `default`: a uniformly random order, except that demoted agents come last (and are
    ///   the first left out).
    pub fn select<R: Rng + ?Sized>(
        &self,
        caller: &PeerInfo,
        peers: &[PeerEntry],
        origins: &[PeerInfo],
        rng: &mut R,
    ) -> Vec<PeerInfo> {
        if caller.complete || self.limit == 0 {
            return Vec::new();
        }
        let is_caller = |peer_id: PeerId, addr| peer_id == caller.peer_id || addr == caller.addr;

        let mut origin_ids = HashSet::new();
        let mut chosen_origins: Vec<PeerInfo> = origins
            .iter()
            .filter(|o| !is_caller(o.peer_id, o.addr) && origin_ids.insert(o.peer_id))
            .map(|o| PeerInfo { origin: true, ..*o })
            .collect();

        let mut agents: Vec<(PeerInfo, Standing)> = Vec::with_capacity(peers.len());
        let mut agent_index: HashMap<PeerId, usize> = HashMap::with_capacity(peers.len());
        for peer in peers {
            if is_caller(peer.peer_id, peer.addr) || origin_ids.contains(&peer.peer_id) {
                continue;
            }
            if let Some(&index) = agent_index.get(&peer.peer_id) {
                let (agent, standing) = &mut agents[index];
                agent.complete |= peer.complete;
                standing.proven |= peer.proven;
                standing.demoted |= peer.demoted;
                continue;
            }
            agent_index.insert(peer.peer_id, agents.len());
            agents.push((
                PeerInfo {
                    peer_id: peer.peer_id,
                    addr: peer.addr,
                    complete: peer.complete,
                    origin: false,
                },
                Standing {
                    proven: peer.proven,
                    demoted: peer.demoted,
                },
            ));
        }

        chosen_origins.shuffle(rng);
        chosen_origins.truncate(self.limit);
        agents.shuffle(rng);
        let room = self.limit - chosen_origins.len();

        match self.priority {
            HandoutPriority::Completeness => {
                let rank = |(agent, standing): &(PeerInfo, Standing)| match standing {
                    Standing { demoted: true, .. } => Rank::Demoted,
                    Standing { proven: true, .. } if agent.complete => Rank::ProvenComplete,
                    _ => Rank::Unproven,
                };
                // A stable sort keeps the shuffled order within each group.
                agents.sort_by_key(rank);
                agents.truncate(room);
                let split = agents.partition_point(|agent| rank(agent) == Rank::ProvenComplete);
                let rest = agents.split_off(split);
                let mut handout: Vec<PeerInfo> = agents.into_iter().map(|(a, _)| a).collect();
                handout.extend(chosen_origins);
                handout.extend(rest.into_iter().map(|(a, _)| a));
                handout
            }
            HandoutPriority::Default => {
                agents.sort_by_key(|(_, standing)| standing.demoted);
                agents.truncate(room);
                let split = agents.partition_point(|(_, standing)| !standing.demoted);
                let demoted = agents.split_off(split);
                let mut handout = chosen_origins;
                handout.extend(agents.into_iter().map(|(a, _)| a));
                handout.shuffle(rng);
                handout.extend(demoted.into_iter().map(|(a, _)| a));
                handout
            }
        }
    }
}

/// What other peers reported about an agent (see [`PeerEntry`]).
#[derive(Debug, Clone, Copy, Default)]
struct Standing {
    proven: bool,
    demoted: bool,
}

/// The groups of the `completeness` priority, in hand-out order (origins go between the first
/// two).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Rank {
    ProvenComplete,
    Unproven,
    Demoted,
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    fn id(n: u16) -> PeerId {
        let mut bytes = [0u8; 20];
        bytes[..2].copy_from_slice(&n.to_be_bytes());
        PeerId::from_array(bytes)
    }

    fn addr(n: u16) -> std::net::SocketAddr {
        std::net::SocketAddr::from(([10, 0, (n >> 8) as u8, n as u8], 16001))
    }

    fn agent(n: u16, complete: bool) -> PeerEntry {
        PeerEntry::new(id(n), addr(n), complete)
    }

    /// A complete agent another host said served it.
    fn proven(n: u16) -> PeerEntry {
        PeerEntry {
            proven: true,
            ..agent(n, true)
        }
    }

    /// An agent another host said failed it.
    fn demoted(n: u16, complete: bool) -> PeerEntry {
        PeerEntry {
            demoted: true,
            ..agent(n, complete)
        }
    }

    fn origin(n: u16) -> PeerInfo {
        PeerInfo {
            peer_id: id(n),
            addr: addr(n),
            complete: true,
            origin: true,
        }
    }

    fn caller(n: u16) -> PeerInfo {
        PeerInfo {
            peer_id: id(n),
            addr: addr(n),
            complete: false,
            origin: false,
        }
    }

    fn ids(handout: &[PeerInfo]) -> Vec<PeerId> {
        handout.iter().map(|p| p.peer_id).collect()
    }

    #[test]
    fn never_hands_the_caller_to_itself() {
        let peers: Vec<_> = (0..10).map(|n| agent(n, n % 2 == 0)).collect();
        for priority in [HandoutPriority::Completeness, HandoutPriority::Default] {
            let policy = HandoutPolicy::new(priority, 50);
            for seed in 0..20 {
                let mut rng = StdRng::seed_from_u64(seed);
                let handout = policy.select(&caller(3), &peers, &[origin(100)], &mut rng);
                assert!(!ids(&handout).contains(&id(3)), "{priority:?}: {handout:?}");
                assert_eq!(handout.len(), 10, "9 other agents and the origin");
            }
        }
    }

    #[test]
    fn leaves_out_the_callers_address_under_another_id() {
        let mut stale = agent(1, true);
        stale.peer_id = id(999);
        let policy = HandoutPolicy::new(HandoutPriority::Completeness, 50);
        let handout = policy.select(
            &caller(1),
            &[stale, agent(2, false)],
            &[],
            &mut StdRng::seed_from_u64(1),
        );
        assert_eq!(ids(&handout), vec![id(2)]);
    }

    #[test]
    fn respects_the_limit_and_keeps_the_origins() {
        let peers: Vec<_> = (0..100).map(|n| agent(n, n % 3 == 0)).collect();
        let origins = [origin(200), origin(201), origin(202)];
        for priority in [HandoutPriority::Completeness, HandoutPriority::Default] {
            for limit in [1, 2, 3, 4, 10, 50] {
                let policy = HandoutPolicy::new(priority, limit);
                let handout = policy.select(
                    &caller(500),
                    &peers,
                    &origins,
                    &mut StdRng::seed_from_u64(7),
                );
                assert_eq!(handout.len(), limit, "{priority:?} limit {limit}");
                let origins_out = handout.iter().filter(|p| p.origin).count();
                assert_eq!(origins_out, limit.min(3), "{priority:?} limit {limit}");
            }
        }
        let policy = HandoutPolicy::new(HandoutPriority::Completeness, 0);
        assert!(
            policy
                .select(
                    &caller(500),
                    &peers,
                    &origins,
                    &mut StdRng::seed_from_u64(7)
                )
                .is_empty()
        );
    }

    #[test]
    fn completeness_orders_proven_complete_agents_then_origins_then_the_rest() {
        let peers: Vec<_> = (0..30)
            .map(|n| {
                if n % 4 == 0 {
                    proven(n)
                } else {
                    agent(n, false)
                }
            })
            .collect();
        let origins = [origin(100), origin(101)];
        let policy = HandoutPolicy::new(HandoutPriority::Completeness, 50);
        let mut first_orders = HashSet::new();
        for seed in 0..10 {
            let handout = policy.select(
                &caller(500),
                &peers,
                &origins,
                &mut StdRng::seed_from_u64(seed),
            );
            assert_eq!(handout.len(), 32);
            // Group rank: 0 complete agent, 1 origin, 2 incomplete agent; must not decrease.
            let ranks: Vec<u8> = handout
                .iter()
                .map(|p| match (p.origin, p.complete) {
                    (true, _) => 1,
                    (false, true) => 0,
                    (false, false) => 2,
                })
                .collect();
            assert!(ranks.is_sorted(), "{ranks:?}");
            assert_eq!(ranks.iter().filter(|r| **r == 0).count(), 8);
            first_orders.insert(ids(&handout[..8]));
        }
        assert!(first_orders.len() > 1, "random within a group");
    }

    #[test]
    fn completeness_prefers_proven_complete_agents_when_room_is_short() {
        let mut peers: Vec<_> = (0..40).map(|n| agent(n, false)).collect();
        peers.extend((40..45).map(proven));
        let policy = HandoutPolicy::new(HandoutPriority::Completeness, 8);
        let handout = policy.select(
            &caller(500),
            &peers,
            &[origin(100)],
            &mut StdRng::seed_from_u64(3),
        );
        assert_eq!(handout.len(), 8);
        assert!(handout[..5].iter().all(|p| p.complete && !p.origin));
        assert!(handout[5].origin);
        assert!(handout[6..].iter().all(|p| !p.complete && !p.origin));
    }

    /// Group rank under `completeness`: 0 proven complete agent, 1 origin, 2 other agent,
    /// 3 demoted agent.
    fn rank_of(p: &PeerInfo, proven_ids: &HashSet<PeerId>, demoted_ids: &HashSet<PeerId>) -> u8 {
        if p.origin {
            1
        } else if demoted_ids.contains(&p.peer_id) {
            3
        } else if proven_ids.contains(&p.peer_id) {
            0
        } else {
            2
        }
    }

    #[test]
    fn a_claim_of_completeness_alone_comes_after_the_origins_and_demoted_peers_last() {
        // 0..4 proven complete, 4..12 claim completeness unproven (fakes at dead ports, say),
        // 12..20 incomplete, 20..24 demoted (two of them also proven: the demotion wins).
        let mut peers: Vec<_> = (0..4).map(proven).collect();
        peers.extend((4..12).map(|n| agent(n, true)));
        peers.extend((12..20).map(|n| agent(n, false)));
        peers.extend((20..22).map(|n| demoted(n, true)));
        peers.extend((22..24).map(|n| PeerEntry {
            demoted: true,
            ..proven(n)
        }));
        let proven_ids: HashSet<_> = (0..4).map(id).collect();
        let demoted_ids: HashSet<_> = (20..24).map(id).collect();
        let origins = [origin(100), origin(101)];
        let policy = HandoutPolicy::new(HandoutPriority::Completeness, 50);
        let mut middle_orders = HashSet::new();
        for seed in 0..10 {
            let handout = policy.select(
                &caller(500),
                &peers,
                &origins,
                &mut StdRng::seed_from_u64(seed),
            );
            assert_eq!(handout.len(), 26);
            let ranks: Vec<u8> = handout
                .iter()
                .map(|p| rank_of(p, &proven_ids, &demoted_ids))
                .collect();
            assert!(ranks.is_sorted(), "{ranks:?}");
            assert_eq!(ranks[..6], [0, 0, 0, 0, 1, 1]);
            assert_eq!(ranks[22..], [3, 3, 3, 3]);
            // Unproven complete and incomplete agents are one group, in random order.
            middle_orders.insert(ids(&handout[6..22]));
        }
        assert!(middle_orders.len() > 1);
    }

    #[test]
    fn demoted_agents_are_the_first_left_out() {
        let mut peers: Vec<_> = (0..10).map(|n| demoted(n, true)).collect();
        peers.extend((10..14).map(|n| agent(n, n % 2 == 0)));
        for priority in [HandoutPriority::Completeness, HandoutPriority::Default] {
            let policy = HandoutPolicy::new(priority, 6);
            for seed in 0..10 {
                let handout = policy.select(
                    &caller(500),
                    &peers,
                    &[origin(100)],
                    &mut StdRng::seed_from_u64(seed),
                );
                assert_eq!(handout.len(), 6, "{priority:?}");
                // The origin, the 4 others, and one demoted agent, last.
                let last = handout[5].peer_id;
                assert!(
                    (0..10).map(id).any(|d| d == last),
                    "{priority:?}: {handout:?}"
                );
                assert!(
                    handout[..5]
                        .iter()
                        .all(|p| !(0..10).map(id).any(|d| d == p.peer_id)),
                    "{priority:?}: {handout:?}"
                );
            }
        }
    }

    #[test]
    fn default_policy_is_random_but_hands_demoted_agents_last() {
        let mut peers: Vec<_> = (0..10).map(|n| agent(n, n < 5)).collect();
        peers.extend((10..13).map(|n| demoted(n, false)));
        let demoted_ids: HashSet<_> = (10..13).map(id).collect();
        let policy = HandoutPolicy::new(HandoutPriority::Default, 50);
        let mut orders = HashSet::new();
        for seed in 0..20 {
            let handout = policy.select(
                &caller(500),
                &peers,
                &[origin(100)],
                &mut StdRng::seed_from_u64(seed),
            );
            assert_eq!(handout.len(), 14);
            let tail: HashSet<_> = ids(&handout[11..]).into_iter().collect();
            assert_eq!(tail, demoted_ids);
            orders.insert(ids(&handout[..11]));
        }
        assert!(orders.len() > 10, "orders vary: {}", orders.len());
    }

    #[test]
    fn default_policy_is_a_random_order() {
        let peers: Vec<_> = (0..10).map(|n| agent(n, n < 5)).collect();
        let policy = HandoutPolicy::new(HandoutPriority::Default, 50);
        let mut orders = HashSet::new();
        for seed in 0..20 {
            let handout = policy.select(
                &caller(500),
                &peers,
                &[origin(100)],
                &mut StdRng::seed_from_u64(seed),
            );
            assert_eq!(handout.len(), 11);
            orders.insert(ids(&handout));
        }
        assert!(orders.len() > 10, "orders vary: {}", orders.len());
    }

    #[test]
    fn deduplicates_and_prefers_the_origin_entry() {
        let mut peers = vec![
            agent(1, false),
            agent(1, true),
            PeerEntry {
                proven: true,
                ..agent(1, false)
            },
            agent(2, false),
            agent(2, false),
        ];
        // An origin that also announced like an agent.
        peers.push(agent(100, false));
        let origins = [origin(100), origin(100)];
        let policy = HandoutPolicy::new(HandoutPriority::Completeness, 50);
        let handout = policy.select(
            &caller(500),
            &peers,
            &origins,
            &mut StdRng::seed_from_u64(1),
        );
        assert_eq!(handout.len(), 3, "{handout:?}");
        let by_id: HashMap<_, _> = handout.iter().map(|p| (p.peer_id, *p)).collect();
        assert!(by_id[&id(1)].complete, "complete ORed across duplicates");
        assert!(!by_id[&id(2)].complete);
        assert!(by_id[&id(100)].origin);
        assert_eq!(
            ids(&handout)[0],
            id(1),
            "complete and proven, ORed across duplicates: first"
        );
    }

    #[test]
    fn a_complete_caller_gets_nothing() {
        let peers: Vec<_> = (0..10).map(|n| agent(n, false)).collect();
        let mut seeder = caller(500);
        seeder.complete = true;
        for priority in [HandoutPriority::Completeness, HandoutPriority::Default] {
            let handout = HandoutPolicy::new(priority, 50).select(
                &seeder,
                &peers,
                &[origin(100)],
                &mut StdRng::seed_from_u64(1),
            );
            assert!(handout.is_empty());
        }
    }

    #[test]
    fn an_origin_caller_gets_the_other_origins_but_not_itself() {
        let mut me = origin(100);
        me.complete = false;
        let policy = HandoutPolicy::new(HandoutPriority::Completeness, 50);
        let handout = policy.select(
            &me,
            &[agent(1, false)],
            &[origin(100), origin(101)],
            &mut StdRng::seed_from_u64(1),
        );
        assert_eq!(ids(&handout), vec![id(101), id(1)]);
    }

    #[test]
    fn a_thousand_peer_swarm_is_handled_quickly_and_fairly() {
        let peers: Vec<_> = (0..1000).map(|n| agent(n, n % 10 == 0)).collect();
        let origins = [origin(2000), origin(2001), origin(2002)];
        let policy = HandoutPolicy::new(HandoutPriority::Default, 50);
        let mut rng = StdRng::seed_from_u64(42);
        let mut times_handed = HashMap::new();
        for me in 0..1000u16 {
            let handout = policy.select(&caller(me), &peers, &origins, &mut rng);
            assert_eq!(handout.len(), 50);
            for p in handout.iter().filter(|p| !p.origin) {
                *times_handed.entry(p.peer_id).or_insert(0u32) += 1;
            }
        }
        // 47 agent slots × 1000 callers spread over 1000 agents: about 47 each.
        assert!(times_handed.len() > 990);
        assert!(times_handed.values().all(|n| *n < 120), "no hot spot");
    }
}
