//! When a link is closed for time rather than for something the peer did.
//!
//! Two limits apply (`scheduler.conn_tti` and `scheduler.conn_ttl`): a link that exchanged
//! nothing for `tti` is idle and costs a connection slot for nothing; a link older than `ttl`
//! is closed even while busy, so that the peer graph keeps mixing instead of settling into the
//! first links every peer made. The clock is passed in, so tests choose the time.

use std::time::{Duration, Instant};

/// The two time limits on a link.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LinkLimits {
    /// Close a link that exchanged nothing for this long (`conn_tti`).
    pub tti: Duration,
    /// Close a link this long after it opened, busy or not (`conn_ttl`).
    pub ttl: Duration,
}

/// When one link opened and last exchanged something.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LinkClock {
    opened: Instant,
    last_activity: Instant,
}

impl LinkClock {
    /// A link that opened at `now`.
    pub fn opened(now: Instant) -> Self {
        Self {
            opened: now,
            last_activity: now,
        }
    }

    /// Something was exchanged at `now` (a message in, a piece out): the idle limit starts
    /// again. The age limit does not.
    pub fn active(&mut self, now: Instant) {
        self.last_activity = self.last_activity.max(now);
    }

    /// When the link is to close: the earlier of `tti` after its last exchange and `ttl` after
    /// it opened; `None` only when both lie beyond what an [`Instant`] holds.
    pub fn deadline(&self, limits: LinkLimits) -> Option<Instant> {
        let idle = self.last_activity.checked_add(limits.tti);
        let old = self.opened.checked_add(limits.ttl);
        [idle, old].into_iter().flatten().min()
    }

    /// Whether the link is due to close at `now`.
    pub fn expired(&self, limits: LinkLimits, now: Instant) -> bool {
        self.deadline(limits)
            .is_some_and(|deadline| now >= deadline)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: LinkLimits = LinkLimits {
        tti: Duration::from_secs(30),
        ttl: Duration::from_secs(3600),
    };

    fn secs(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    #[test]
    fn an_idle_link_closes_at_its_tti_and_an_active_one_does_not() {
        let start = Instant::now();
        let idle = LinkClock::opened(start);
        let mut active = LinkClock::opened(start);
        active.active(start + secs(20));

        assert_eq!(idle.deadline(LIMITS), Some(start + secs(30)));
        assert!(!idle.expired(LIMITS, start + secs(29)));
        assert!(idle.expired(LIMITS, start + secs(30)));
        // Twenty seconds of silence since its last exchange: ten to go.
        assert!(!active.expired(LIMITS, start + secs(30)));
        assert_eq!(active.deadline(LIMITS), Some(start + secs(50)));
        assert!(active.expired(LIMITS, start + secs(50)));
    }

    #[test]
    fn a_link_older_than_its_ttl_closes_even_while_busy() {
        let start = Instant::now();
        let mut busy = LinkClock::opened(start);
        // An exchange every ten seconds: never idle for `tti`.
        let mut now = start;
        while now < start + secs(3590) {
            now += secs(10);
            busy.active(now);
            assert!(!busy.expired(LIMITS, now), "closed at {:?}", now - start);
        }
        assert_eq!(busy.deadline(LIMITS), Some(start + secs(3600)));
        busy.active(start + secs(3600));
        assert!(busy.expired(LIMITS, start + secs(3600)));
    }

    #[test]
    fn activity_reported_out_of_order_never_moves_the_idle_deadline_back() {
        // A caller holding an older `now` (taken before an await, say) cannot shorten a link's
        // life.
        let start = Instant::now();
        let mut clock = LinkClock::opened(start);
        clock.active(start + secs(20));
        clock.active(start + secs(5));
        assert_eq!(clock.deadline(LIMITS), Some(start + secs(50)));
    }

    #[test]
    fn limits_too_far_out_to_represent_never_expire() {
        let start = Instant::now();
        let clock = LinkClock::opened(start);
        let forever = LinkLimits {
            tti: Duration::MAX,
            ttl: Duration::MAX,
        };
        assert_eq!(clock.deadline(forever), None);
        assert!(!clock.expired(forever, start + secs(1 << 30)));
        // One limit still applies when the other cannot be represented.
        let ttl_only = LinkLimits {
            tti: Duration::MAX,
            ttl: secs(60),
        };
        assert_eq!(clock.deadline(ttl_only), Some(start + secs(60)));
    }
}
