//! Rendezvous (highest-random-weight) hashing: which members own a digest.
//!
//! Every member gets a score per digest, `-weight / ln(u)` with `u` a uniform hash of the
//! digest and the member's label; the highest scores own it. Adding or removing a member only
//! moves the digests it wins or held, and clients, trackers and origins that agree on the member
//! list agree on the owners without talking to each other.

use kraken_core::Digest;

/// A ring member: its label (the `host:port` it is reached at) and relative weight.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Member {
    pub label: String,
    pub weight: u32,
}

impl Member {
    pub fn new(label: impl Into<String>, weight: u32) -> Self {
        Self {
            label: label.into(),
            weight,
        }
    }
}

/// A fixed set of members. Membership changes build a new ring.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Ring {
    members: Vec<Member>,
}

impl Ring {
    /// Duplicate labels are kept once; zero weights are treated as 1.
    pub fn new(members: impl IntoIterator<Item = Member>) -> Self {
        let mut unique: Vec<Member> = Vec::new();
        for member in members {
            if !unique.iter().any(|m| m.label == member.label) {
                unique.push(Member {
                    weight: member.weight.max(1),
                    ..member
                });
            }
        }
        Self { members: unique }
    }

    pub fn members(&self) -> &[Member] {
        &self.members
    }

    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// Every member, highest score for `digest` first.
    pub fn ranked(&self, digest: &Digest) -> Vec<&Member> {
        let mut scored: Vec<(f64, &Member)> =
            self.members.iter().map(|m| (score(digest, m), m)).collect();
        scored.sort_by(|a, b| b.0.total_cmp(&a.0).then_with(|| a.1.label.cmp(&b.1.label)));
        scored.into_iter().map(|(_, m)| m).collect()
    }

    /// The `replicas` owners of `digest`, highest score first.
    pub fn owners(&self, digest: &Digest, replicas: usize) -> Vec<&Member> {
        let mut ranked = self.ranked(digest);
        ranked.truncate(replicas.max(1));
        ranked
    }

    /// Whether `label` is among the `replicas` owners of `digest`.
    pub fn owns(&self, label: &str, digest: &Digest, replicas: usize) -> bool {
        self.owners(digest, replicas)
            .iter()
            .any(|m| m.label == label)
    }
}

fn score(digest: &Digest, member: &Member) -> f64 {
    let mut hasher = blake3::Hasher::new();
    hasher.update(digest.as_bytes());
    hasher.update(member.label.as_bytes());
    let hash = hasher.finalize();
    let mut first = [0u8; 8];
    first.copy_from_slice(&hash.as_bytes()[..8]);
    // 53 bits give a uniform double in (0, 1); never 0, so ln(u) is finite and negative.
    let bits = u64::from_le_bytes(first) >> 11;
    let u = (bits as f64 + 0.5) / (1u64 << 53) as f64;
    -f64::from(member.weight) / u.ln()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ring(labels: &[&str]) -> Ring {
        Ring::new(labels.iter().map(|l| Member::new(*l, 100)))
    }

    fn digests(n: u32) -> Vec<Digest> {
        (0..n).map(|i| Digest::of(&i.to_le_bytes())).collect()
    }

    #[test]
    fn owners_are_stable_distinct_and_ordered() {
        let ring = ring(&["a:1", "b:1", "c:1"]);
        let digest = Digest::of(b"x");
        let owners = ring.owners(&digest, 2);
        assert_eq!(owners.len(), 2);
        assert_ne!(owners[0].label, owners[1].label);
        assert_eq!(owners, ring.owners(&digest, 2), "deterministic");
        assert_eq!(ring.ranked(&digest)[..2], owners[..]);
        assert!(ring.owns(&owners[0].label, &digest, 2));
        assert_eq!(ring.owners(&digest, 10).len(), 3);
    }

    #[test]
    fn load_spreads_evenly_and_by_weight() {
        let ring = Ring::new([
            Member::new("a", 100),
            Member::new("b", 100),
            Member::new("c", 200),
        ]);
        let mut counts = std::collections::HashMap::new();
        for digest in digests(4000) {
            *counts
                .entry(ring.owners(&digest, 1)[0].label.clone())
                .or_insert(0) += 1;
        }
        let (a, b, c) = (counts["a"], counts["b"], counts["c"]);
        assert!(
            (800..1200).contains(&a) && (800..1200).contains(&b),
            "{counts:?}"
        );
        assert!((1800..2200).contains(&c), "{counts:?}");
    }

    #[test]
    fn removing_a_member_only_moves_what_it_owned() {
        let full = ring(&["a", "b", "c", "d"]);
        let without_d = ring(&["a", "b", "c"]);
        for digest in digests(500) {
            let before = full.owners(&digest, 1)[0].label.clone();
            let after = without_d.owners(&digest, 1)[0].label.clone();
            if before != "d" {
                assert_eq!(before, after);
            }
        }
    }

    #[test]
    fn duplicates_and_zero_weights_are_tolerated() {
        let ring = Ring::new([Member::new("a", 0), Member::new("a", 5)]);
        assert_eq!(ring.members().len(), 1);
        assert_eq!(ring.members()[0].weight, 1);
        assert!(Ring::default().owners(&Digest::of(b""), 3).is_empty());
    }
}
