//! Health of the hosts a component talks to, as pure state machines (time is passed in, no
//! sockets inside), shared by every client and by the origins' cluster monitor:
//!
//! - [`PassiveHealth`]: clients watch their own requests. `fails` network errors within
//!   `fail_timeout` take a host out of rotation for `fail_timeout`; any answer heals it. Used by
//!   agent → tracker, tracker → origin and proxy → origin.
//! - [`ActiveHealth`]: origins probe each other. `fails` consecutive failed probes mark a host
//!   unhealthy, `passes` consecutive successful ones mark it healthy again; every host starts
//!   healthy.
//!
//! Neither ever drops a host for good: an unhealthy host goes to the back of the line, so a
//! total outage still gets requests through the moment a host comes back.

use std::collections::{HashMap, VecDeque};
use std::hash::Hash;
use std::time::Duration;

use tokio::time::Instant;
use tonic::{Code, Status};

pub use kraken_proto::wire::RETRY_AFTER_MS;

/// The "come back in this many milliseconds" hint a server attached to a status
/// ([`RETRY_AFTER_MS`]), if any and well-formed.
pub fn retry_after(status: &Status) -> Option<Duration> {
    status
        .metadata()
        .get(RETRY_AFTER_MS)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.trim().parse::<u64>().ok())
        .map(Duration::from_millis)
}

/// `UNAVAILABLE` with `message` and a [`RETRY_AFTER_MS`] hint of `after` (whole milliseconds,
/// at least 1): "not yet, ask again then".
pub fn unavailable_retry_after(message: impl Into<String>, after: Duration) -> Status {
    let mut status = Status::unavailable(message);
    let millis = u64::try_from(after.as_millis()).unwrap_or(u64::MAX).max(1);
    status
        .metadata_mut()
        .insert(RETRY_AFTER_MS, tonic::metadata::MetadataValue::from(millis));
    status
}

/// Whether a status means the host could not be reached, did not answer in time or shed the
/// request, as opposed to an answer about the request. Only these count against a host's
/// passive health and make a client fail over to the next host.
pub fn is_network_error(status: &Status) -> bool {
    match status.code() {
        Code::Unavailable => status.metadata().get(RETRY_AFTER_MS).is_none(),
        Code::DeadlineExceeded => true,
        // tonic reports a broken connection as UNKNOWN/INTERNAL/CANCELLED with the transport
        // error as the source; a handler's own INTERNAL has no such source.
        Code::Unknown | Code::Internal | Code::Cancelled => {
            std::error::Error::source(status).is_some_and(|s| s.is::<tonic::transport::Error>())
        }
        _ => false,
    }
}

/// Passive health of a set of hosts, keyed by whatever the caller names hosts with (a
/// `host:port` label, an index into its host list).
#[derive(Debug, Clone)]
pub struct PassiveHealth<K> {
    fails: usize,
    fail_timeout: Duration,
    hosts: HashMap<K, PassiveState>,
}

#[derive(Debug, Default, Clone)]
struct PassiveState {
    /// Network errors within the current window, oldest first.
    recent: VecDeque<Instant>,
    unhealthy_until: Option<Instant>,
    total_failures: u64,
}

impl<K: Hash + Eq + Clone> PassiveHealth<K> {
    /// `fails` (at least 1) network errors within `fail_timeout` mark a host unhealthy for
    /// `fail_timeout`.
    pub fn new(fails: u32, fail_timeout: Duration) -> Self {
        Self {
            fails: usize::try_from(fails.max(1)).unwrap_or(usize::MAX),
            fail_timeout,
            hosts: HashMap::new(),
        }
    }

    /// Unknown hosts are healthy.
    pub fn is_healthy(&self, host: &K, now: Instant) -> bool {
        self.hosts
            .get(host)
            .is_none_or(|h| h.unhealthy_until.is_none_or(|until| now >= until))
    }

    /// Network errors recorded for `host` since start.
    pub fn total_failures(&self, host: &K) -> u64 {
        self.hosts.get(host).map_or(0, |h| h.total_failures)
    }

    /// Records a network error; returns whether it made the host unhealthy.
    pub fn failed(&mut self, host: K, now: Instant) -> bool {
        let (fails, window) = (self.fails, self.fail_timeout);
        let state = self.hosts.entry(host).or_default();
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
    pub fn succeeded(&mut self, host: &K) {
        if let Some(state) = self.hosts.get_mut(host) {
            state.recent.clear();
            state.unhealthy_until = None;
        }
    }

    /// `ranked` (the caller's preference) with the healthy hosts first, then the unhealthy
    /// ones, both keeping their relative order.
    pub fn order(&self, ranked: impl IntoIterator<Item = K>, now: Instant) -> Vec<K> {
        let (mut healthy, unhealthy): (Vec<K>, Vec<K>) = ranked
            .into_iter()
            .partition(|host| self.is_healthy(host, now));
        healthy.extend(unhealthy);
        healthy
    }

    /// Forgets hosts `keep` rejects (members that left the cluster).
    pub fn retain(&mut self, mut keep: impl FnMut(&K) -> bool) {
        self.hosts.retain(|host, _| keep(host));
    }
}

/// What the active checks know about one host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ActiveStatus {
    pub healthy: bool,
    /// Failed probes in a row (0 after a success).
    pub consecutive_failures: u32,
    /// Successful probes in a row (0 after a failure).
    pub consecutive_passes: u32,
    /// Probes since start.
    pub probes: u64,
}

impl Default for ActiveStatus {
    /// Every host starts healthy, before the first probe.
    fn default() -> Self {
        Self {
            healthy: true,
            consecutive_failures: 0,
            consecutive_passes: 0,
            probes: 0,
        }
    }
}

/// Active health of a set of hosts: the hysteresis filter of `cluster.healthcheck.filter`.
#[derive(Debug, Clone)]
pub struct ActiveHealth<K> {
    fails: u32,
    passes: u32,
    hosts: HashMap<K, ActiveStatus>,
}

impl<K: Hash + Eq + Clone> ActiveHealth<K> {
    /// `fails` (at least 1) failed probes in a row mark a host unhealthy, `passes` (at least 1)
    /// successful ones healthy again.
    pub fn new(fails: u32, passes: u32) -> Self {
        Self {
            fails: fails.max(1),
            passes: passes.max(1),
            hosts: HashMap::new(),
        }
    }

    /// Unknown (never probed) hosts are healthy.
    pub fn is_healthy(&self, host: &K) -> bool {
        self.hosts.get(host).is_none_or(|h| h.healthy)
    }

    pub fn status(&self, host: &K) -> ActiveStatus {
        self.hosts.get(host).copied().unwrap_or_default()
    }

    /// Records a probe's result; returns the new health if this probe changed it.
    pub fn record(&mut self, host: K, passed: bool) -> Option<bool> {
        let (fails, passes) = (self.fails, self.passes);
        let state = self.hosts.entry(host).or_default();
        state.probes += 1;
        if passed {
            state.consecutive_failures = 0;
            state.consecutive_passes = state.consecutive_passes.saturating_add(1);
            if !state.healthy && state.consecutive_passes >= passes {
                state.healthy = true;
                return Some(true);
            }
        } else {
            state.consecutive_passes = 0;
            state.consecutive_failures = state.consecutive_failures.saturating_add(1);
            if state.healthy && state.consecutive_failures >= fails {
                state.healthy = false;
                return Some(false);
            }
        }
        None
    }

    /// Forgets hosts `keep` rejects (members that left the cluster).
    pub fn retain(&mut self, mut keep: impl FnMut(&K) -> bool) {
        self.hosts.retain(|host, _| keep(host));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const WINDOW: Duration = Duration::from_secs(60);

    #[test]
    fn fails_within_the_window_mark_a_host_unhealthy_for_the_window() {
        let start = Instant::now();
        let mut health = PassiveHealth::new(3, WINDOW);
        assert!(!health.failed("a", start));
        assert!(!health.failed("a", start + Duration::from_secs(10)));
        assert!(health.is_healthy(&"a", start + Duration::from_secs(10)));
        let third = start + Duration::from_secs(20);
        assert!(health.failed("a", third));
        assert!(!health.is_healthy(&"a", third));
        assert!(!health.is_healthy(&"a", third + WINDOW - Duration::from_millis(1)));
        assert!(health.is_healthy(&"a", third + WINDOW));
        assert!(health.is_healthy(&"b", third), "other hosts are unaffected");
        assert_eq!(health.total_failures(&"a"), 3);
    }

    #[test]
    fn failures_older_than_the_window_do_not_count() {
        let start = Instant::now();
        let mut health = PassiveHealth::new(2, WINDOW);
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
        let mut health = PassiveHealth::new(2, WINDOW);
        health.failed(0, start);
        health.succeeded(&0);
        assert!(
            !health.failed(0, start),
            "count restarted after the success"
        );
        assert!(health.failed(0, start));
        health.succeeded(&0);
        assert!(health.is_healthy(&0, start));
    }

    #[test]
    fn unhealthy_hosts_go_last_but_are_still_tried() {
        let now = Instant::now();
        let mut health = PassiveHealth::new(1, WINDOW);
        health.failed(1, now);
        assert_eq!(health.order([1, 0, 2], now), vec![0, 2, 1]);
        health.failed(0, now);
        health.failed(2, now);
        assert_eq!(
            health.order([1, 0, 2], now),
            vec![1, 0, 2],
            "all unhealthy: rank order"
        );
        health.retain(|host| *host != 1);
        assert!(health.is_healthy(&1, now), "a forgotten host starts over");
    }

    #[test]
    fn active_checks_need_fails_in_a_row_to_fall_and_passes_in_a_row_to_rise() {
        let mut health = ActiveHealth::new(3, 2);
        assert!(health.is_healthy(&"a"), "every host starts healthy");
        assert_eq!(health.record("a", false), None);
        assert_eq!(health.record("a", false), None);
        // A success in between restarts the count.
        assert_eq!(health.record("a", true), None);
        assert_eq!(health.record("a", false), None);
        assert_eq!(health.record("a", false), None);
        assert!(health.is_healthy(&"a"));
        assert_eq!(
            health.record("a", false),
            Some(false),
            "third failure in a row"
        );
        assert!(!health.is_healthy(&"a"));
        assert_eq!(health.status(&"a").consecutive_failures, 3);
        assert_eq!(health.record("a", false), None, "already unhealthy");

        assert_eq!(health.record("a", true), None);
        assert_eq!(
            health.record("a", false),
            None,
            "a failure restarts the passes"
        );
        assert_eq!(health.record("a", true), None);
        assert_eq!(health.record("a", true), Some(true), "second pass in a row");
        let status = health.status(&"a");
        assert!(status.healthy);
        assert_eq!(status.consecutive_passes, 2);
        assert_eq!(status.probes, 11);
        assert!(health.is_healthy(&"b"));
    }

    #[test]
    fn network_errors_are_told_from_answers() {
        assert!(is_network_error(&Status::unavailable("connection refused")));
        assert!(is_network_error(&Status::deadline_exceeded("slow")));
        assert!(!is_network_error(&Status::not_found("nope")));
        assert!(!is_network_error(&Status::permission_denied("role")));
        assert!(!is_network_error(&Status::internal("bug")));
        let mut fetching = Status::unavailable("fetching");
        fetching
            .metadata_mut()
            .insert(RETRY_AFTER_MS, tonic::metadata::MetadataValue::from(500u64));
        assert!(!is_network_error(&fetching), "a retry hint is an answer");
    }
}
