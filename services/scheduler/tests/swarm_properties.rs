//! Properties of the scheduler core, checked over many random adversarial runs (a seeded
//! generator: every failure names the seed that reproduces it).
//!
//! In each run one seeder holds every piece and always answers; the other peers hold random
//! parts, learn pieces, answer late or wrongly, fail requests, and leave. Whatever they do:
//!
//! - a piece is only ever requested from a peer the swarm was told holds it;
//! - a piece the swarm already holds is never requested;
//! - a piece is announced only after a verified copy of it arrived, and once;
//! - a peer that sent a bad piece is blacklisted;
//! - the download completes, exactly once.

// Test helpers outside `#[test]` functions: a panic here is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use kraken_core::Bitfield;
use kraken_scheduler::core::{Action, LinkId, Swarm, SwarmConfig};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const RUNS: u64 = 300;
/// A run that has not completed after this many steps is stuck.
const STEP_LIMIT: usize = 20_000;
const SEEDER: LinkId = LinkId(0);

/// What a run went through, summed over runs to show the generator reaches every path.
#[derive(Debug, Default)]
struct Exercised {
    blacklisted: usize,
    left: usize,
    failed_requests: usize,
    timeouts: u64,
    duplicates: u64,
}

/// What the test knows a peer holds (what it told the swarm).
struct Peer {
    bitfield: Bitfield,
}

fn run(seed: u64, exercised: &mut Exercised) {
    let mut rng = StdRng::seed_from_u64(seed);
    let pieces: u32 = rng.random_range(1..=40);
    let piece_length = 16u64;
    let length = u64::from(pieces - 1) * piece_length + rng.random_range(1..=piece_length);
    let config = SwarmConfig {
        seed,
        endgame: rng.random_bool(0.7),
        pipeline_limit: rng.random_range(1..=4),
        ..SwarmConfig::default()
    };
    let mut now = Instant::now();
    // Sometimes a restart: part of the blob is already held.
    let mut held = Bitfield::new(pieces);
    for piece in 0..pieces {
        if rng.random_bool(0.1) {
            held.set(piece, true);
        }
    }
    // A blob held whole has no download (the driver serves it from the store).
    if held.is_complete() {
        held.set(rng.random_range(0..pieces), false);
    }
    let mut swarm = Swarm::new(config, length, piece_length, held.clone());
    let mut verified: HashSet<u32> = (0..pieces).filter(|p| held.get(*p)).collect();
    let mut announced: HashSet<u32> = HashSet::new();
    let mut peers: HashMap<LinkId, Peer> = HashMap::new();
    let mut next_link = 1u64;
    let mut outstanding: Vec<(LinkId, u32)> = Vec::new();
    let mut completes = 0;
    let mut bad_senders: HashSet<LinkId> = HashSet::new();
    let mut blacklisted: HashSet<LinkId> = HashSet::new();

    let seeder_is_origin = rng.random_bool(0.5);
    swarm.add_peer(SEEDER, Bitfield::full(pieces), seeder_is_origin, now);
    peers.insert(
        SEEDER,
        Peer {
            bitfield: Bitfield::full(pieces),
        },
    );

    for _ in 0..STEP_LIMIT {
        // Everything the swarm decided, checked against what it was told.
        while let Some(action) = swarm.poll_action() {
            match action {
                Action::Request { link, piece } => {
                    let peer = peers
                        .get(&link)
                        .unwrap_or_else(|| panic!("seed {seed}: request to unknown {link:?}"));
                    assert!(
                        peer.bitfield.get(piece),
                        "seed {seed}: piece {piece} requested from {link:?}, which lacks it"
                    );
                    assert!(
                        !verified.contains(&piece),
                        "seed {seed}: piece {piece} requested though held"
                    );
                    outstanding.push((link, piece));
                }
                Action::Cancel { link, piece } => {
                    outstanding.retain(|r| *r != (link, piece));
                }
                Action::Announce { piece } => {
                    assert!(
                        verified.contains(&piece),
                        "seed {seed}: piece {piece} announced before a verified copy arrived"
                    );
                    assert!(
                        announced.insert(piece),
                        "seed {seed}: piece {piece} announced twice"
                    );
                }
                Action::Complete => completes += 1,
                Action::Blacklist { link, .. } => {
                    blacklisted.insert(link);
                    // The driver drops the link.
                    peers.remove(&link);
                    outstanding.retain(|(l, _)| *l != link);
                    swarm.remove_peer(link, now);
                }
            }
        }
        if swarm.is_complete() {
            assert_eq!(
                completes, 1,
                "seed {seed}: complete reported {completes} times"
            );
            assert!(
                bad_senders.is_subset(&blacklisted),
                "seed {seed}: bad senders {bad_senders:?}, blacklisted {blacklisted:?}"
            );
            for piece in 0..pieces {
                assert!(
                    held.get(piece) || announced.contains(&piece),
                    "seed {seed}: piece {piece} never announced"
                );
            }
            let stats = swarm.stats();
            exercised.blacklisted += blacklisted.len();
            exercised.timeouts += stats.timeouts;
            exercised.duplicates += stats.duplicate_pieces;
            return;
        }

        // The world moves: one random event.
        match rng.random_range(0..100) {
            // A new peer with a random part of the blob.
            0..=7 if peers.len() < 12 => {
                let link = LinkId(next_link);
                next_link += 1;
                let mut bitfield = Bitfield::new(pieces);
                for piece in 0..pieces {
                    if rng.random_bool(0.4) {
                        bitfield.set(piece, true);
                    }
                }
                swarm.add_peer(link, bitfield.clone(), false, now);
                peers.insert(link, Peer { bitfield });
            }
            // A peer (never the seeder) leaves.
            8..=11 => {
                let leaving: Vec<LinkId> = peers.keys().copied().filter(|l| *l != SEEDER).collect();
                if !leaving.is_empty() {
                    let link = leaving[rng.random_range(0..leaving.len())];
                    exercised.left += 1;
                    peers.remove(&link);
                    outstanding.retain(|(l, _)| *l != link);
                    swarm.remove_peer(link, now);
                }
            }
            // A peer learns a piece.
            12..=19 => {
                let links: Vec<LinkId> = peers.keys().copied().collect();
                let link = links[rng.random_range(0..links.len())];
                let piece = rng.random_range(0..pieces);
                if let Some(peer) = peers.get_mut(&link) {
                    peer.bitfield.set(piece, true);
                }
                swarm.peer_has(link, piece, now);
            }
            // Time passes: requests may time out.
            20..=27 => {
                now += Duration::from_secs(rng.random_range(1..=40));
                swarm.tick(now);
            }
            // An outstanding request is answered (or fails).
            _ if !outstanding.is_empty() => {
                let (link, piece) = outstanding.swap_remove(rng.random_range(0..outstanding.len()));
                if !peers.contains_key(&link) {
                    continue;
                }
                let roll = rng.random_range(0..100);
                if link == SEEDER || roll < 75 {
                    swarm.piece_started(link, piece, now);
                    verified.insert(piece);
                    swarm.piece_received(link, piece, true, now);
                    // Endgame: another copy already on its way lands before the cancel.
                    if let Some(at) = outstanding.iter().position(|(_, p)| *p == piece)
                        && rng.random_bool(0.5)
                    {
                        let (other, _) = outstanding.swap_remove(at);
                        if peers.contains_key(&other) {
                            swarm.piece_started(other, piece, now);
                            swarm.piece_received(other, piece, true, now);
                        }
                    }
                } else if roll < 85 {
                    bad_senders.insert(link);
                    swarm.piece_received(link, piece, false, now);
                } else {
                    exercised.failed_requests += 1;
                    swarm.request_failed(link, piece, now);
                }
            }
            _ => {
                now += Duration::from_millis(100);
                swarm.tick(now);
            }
        }
    }
    panic!(
        "seed {seed}: not complete after {STEP_LIMIT} steps with a live seeder ({} of {pieces} held, {} outstanding)",
        swarm.have().count(),
        outstanding.len()
    );
}

#[test]
fn whatever_peers_do_requests_and_announcements_stay_truthful_and_the_download_completes() {
    let mut exercised = Exercised::default();
    for seed in 0..RUNS {
        run(seed, &mut exercised);
    }
    // The runs went through every kind of trouble, so the properties above were tested
    // against it rather than against a quiet swarm.
    assert!(
        exercised.blacklisted > 0
            && exercised.left > 0
            && exercised.failed_requests > 0
            && exercised.timeouts > 0
            && exercised.duplicates > 0,
        "{exercised:?}"
    );
    println!("{RUNS} runs: {exercised:?}");
}
