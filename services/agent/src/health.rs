//! Passive health checking of an upstream's hosts addressed by index (the build-index client),
//! on the cluster-wide state machine [`kraken_transport::health::PassiveHealth`]: `fails`
//! network errors within `fail_timeout` take a host out of rotation for `fail_timeout`, and an
//! unhealthy host is only tried after every healthy one. The tracker client uses the full
//! [`HostPool`](kraken_transport::cluster::HostPool) instead.

use std::time::Duration;

use tokio::time::Instant;

/// Health of every host of one upstream, indexed like the caller's host list.
#[derive(Debug)]
pub(crate) struct PassiveHealth(kraken_transport::health::PassiveHealth<usize>);

impl PassiveHealth {
    /// `_hosts` is kept for the callers' convenience: hosts need no registration.
    pub(crate) fn new(_hosts: usize, fails: u32, fail_timeout: Duration) -> Self {
        Self(kraken_transport::health::PassiveHealth::new(
            fails,
            fail_timeout,
        ))
    }

    /// Records a network error; returns whether it made the host unhealthy.
    pub(crate) fn failed(&mut self, host: usize, now: Instant) -> bool {
        self.0.failed(host, now)
    }

    /// Records an answer from the host (any answer: it is reachable).
    pub(crate) fn succeeded(&mut self, host: usize) {
        self.0.succeeded(&host);
    }

    /// The order to try hosts in: `ranked` with the healthy ones first, then the unhealthy
    /// ones, both keeping their relative order.
    pub(crate) fn order(
        &self,
        ranked: impl IntoIterator<Item = usize>,
        now: Instant,
    ) -> Vec<usize> {
        self.0.order(ranked, now)
    }
}
