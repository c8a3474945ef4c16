//! Passive health checking of upstream hosts, as a pure state machine (time is passed in):
//! `fails` network errors within `fail_timeout` take a host out of rotation for `fail_timeout`.
//! An unhealthy host is only tried when every host is unhealthy, so a total outage still gets
//! requests through the moment a host comes back.

use std::collections::VecDeque;
use std::time::Duration;

use tokio::time::Instant;

/// Health of every host of one upstream, indexed like the caller's host list.
#[derive(Debug)]
pub(crate) struct PassiveHealth {
    fails: u32,
    fail_timeout: Duration,
    hosts: Vec<HostHealth>,
}

#[derive(Debug, Default, Clone)]
struct HostHealth {
    /// Failures within the current window, oldest first.
    recent: VecDeque<Instant>,
    unhealthy_until: Option<Instant>,
    total_failures: u64,
}

impl PassiveHealth {
    pub(crate) fn new(hosts: usize, fails: u32, fail_timeout: Duration) -> Self {
        Self {
            fails: fails.max(1),
            fail_timeout,
            hosts: vec![HostHealth::default(); hosts],
        }
    }

    pub(crate) fn is_healthy(&self, host: usize, now: Instant) -> bool {
        self.hosts
            .get(host)
            .is_some_and(|h| h.unhealthy_until.is_none_or(|until| now >= until))
    }

    /// Failures recorded for `host` since start.
    pub(crate) fn total_failures(&self, host: usize) -> u64 {
        self.hosts.get(host).map_or(0, |h| h.total_failures)
    }

    /// Records a network error; returns whether it made the host unhealthy.
    pub(crate) fn failed(&mut self, host: usize, now: Instant) -> bool {
        let (fails, window) = (self.fails as usize, self.fail_timeout);
        let Some(state) = self.hosts.get_mut(host) else {
            return false;
        };
        state.total_failures += 1;
        while state
            .recent
            .front()
            .is_some_and(|at| now.saturating_duration_since(*at) >= window)
        {
            state.recent.pop_front();
        }
        state.recent.push_back(now);
        if state.recent.len() >= fails {
            state.recent.clear();
            state.unhealthy_until = Some(now + window);
            return true;
        }
        false
    }

    /// Records an answer from the host (any answer: it is reachable).
    pub(crate) fn succeeded(&mut self, host: usize) {
        if let Some(state) = self.hosts.get_mut(host) {
            state.recent.clear();
            state.unhealthy_until = None;
        }
    }

    /// The order to try hosts in: `ranked` (the caller's preference) with the healthy ones
    /// first, then the unhealthy ones, both keeping their relative order.
    pub(crate) fn order(
        &self,
        ranked: impl IntoIterator<Item = usize>,
        now: Instant,
    ) -> Vec<usize> {
        let (mut healthy, unhealthy): (Vec<usize>, Vec<usize>) = ranked
            .into_iter()
            .partition(|host| self.is_healthy(*host, now));
        healthy.extend(unhealthy);
        healthy
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const WINDOW: Duration = Duration::from_secs(60);

    #[test]
    fn fails_within_the_window_mark_a_host_unhealthy_for_the_window() {
        let start = Instant::now();
        let mut health = PassiveHealth::new(2, 3, WINDOW);
        assert!(!health.failed(0, start));
        assert!(!health.failed(0, start + Duration::from_secs(10)));
        assert!(health.is_healthy(0, start + Duration::from_secs(10)));
        let third = start + Duration::from_secs(20);
        assert!(health.failed(0, third));
        assert!(!health.is_healthy(0, third));
        assert!(!health.is_healthy(0, third + WINDOW - Duration::from_millis(1)));
        assert!(health.is_healthy(0, third + WINDOW));
        assert!(health.is_healthy(1, third), "other hosts are unaffected");
        assert_eq!(health.total_failures(0), 3);
    }

    #[test]
    fn failures_older_than_the_window_do_not_count() {
        let start = Instant::now();
        let mut health = PassiveHealth::new(1, 2, WINDOW);
        assert!(!health.failed(0, start));
        assert!(
            !health.failed(0, start + WINDOW),
            "the first failure expired"
        );
        assert!(health.failed(0, start + WINDOW + Duration::from_secs(1)));
    }

    #[test]
    fn an_answer_resets_the_count_and_heals() {
        let start = Instant::now();
        let mut health = PassiveHealth::new(1, 2, WINDOW);
        health.failed(0, start);
        health.succeeded(0);
        assert!(
            !health.failed(0, start),
            "count restarted after the success"
        );
        assert!(health.failed(0, start));
        health.succeeded(0);
        assert!(health.is_healthy(0, start));
    }

    #[test]
    fn unhealthy_hosts_go_last_but_are_still_tried() {
        let now = Instant::now();
        let mut health = PassiveHealth::new(3, 1, WINDOW);
        health.failed(1, now);
        assert_eq!(health.order([1, 0, 2], now), vec![0, 2, 1]);
        health.failed(0, now);
        health.failed(2, now);
        assert_eq!(
            health.order([1, 0, 2], now),
            vec![1, 0, 2],
            "all unhealthy: rank order"
        );
    }
}
