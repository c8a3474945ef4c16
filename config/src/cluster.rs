//! Cluster membership: host lists, the origin ring with active health checks, client-side
//! upstreams with passive health checks, and the rendezvous hash ring settings.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::tree::KeyPath;
use crate::validate::{Validate, ValidationError, ensure, host_port, nested, positive_duration};

/// A set of `host:port` addresses, given either as a static list or as a DNS name that
/// resolves to every member (re-resolved every `hashring.refresh_interval`, 10 s for clients).
/// A DNS member is labelled `ip:port` (on the ring and in `Locations`) and its certificate is
/// checked against the DNS name; an origin in a DNS ring sets `name` to its own `ip:port`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HostList {
    /// Fixed members, each `host:port`, e.g. `origin1:15002`.
    #[serde(rename = "static", skip_serializing_if = "Vec::is_empty")]
    pub static_hosts: Vec<String>,
    /// A `name:port` whose A/AAAA records are the members, e.g. `origin.example.com:15002`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dns: Option<String>,
}

impl HostList {
    /// A static list.
    pub fn of(hosts: impl IntoIterator<Item = impl Into<String>>) -> Self {
        Self {
            static_hosts: hosts.into_iter().map(Into::into).collect(),
            dns: None,
        }
    }

    /// Whether neither `static` nor `dns` is set.
    pub fn is_empty(&self) -> bool {
        self.static_hosts.is_empty() && self.dns.is_none()
    }

    /// Checks the list when it may be left empty (e.g. a build-index without neighbours).
    pub fn validate_optional(&self) -> Result<(), ValidationError> {
        if self.is_empty() {
            Ok(())
        } else {
            self.validate()
        }
    }
}

impl Validate for HostList {
    /// Requires exactly one of `static` and `dns`.
    fn validate(&self) -> Result<(), ValidationError> {
        match (&self.static_hosts[..], &self.dns) {
            ([], None) => Err(ValidationError::here(
                "no hosts: set `static` (a list of host:port) or `dns` (a name:port)",
            )),
            ([_, ..], Some(_)) => Err(ValidationError::here(
                "set either `static` or `dns`, not both",
            )),
            ([], Some(dns)) => host_port("dns", dns),
            (hosts, None) => {
                for (index, host) in hosts.iter().enumerate() {
                    host_port(&format!("static[{index}]"), host)?;
                    if hosts[..index].contains(host) {
                        return Err(ValidationError::at(
                            &format!("static[{index}]"),
                            format!("`{host}` is listed twice"),
                        ));
                    }
                }
                Ok(())
            }
        }
    }
}

/// `cluster:` of an origin — the ring of origins it belongs to, with active health checks
/// (origins ping each other; the ring is small).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClusterConfig {
    /// Ring members, including this origin.
    pub hosts: HostList,
    /// Active health checking of the members.
    pub healthcheck: ActiveHealthCheckConfig,
}

impl Validate for ClusterConfig {
    fn validate(&self) -> Result<(), ValidationError> {
        nested("hosts", &self.hosts)?;
        nested("healthcheck", &self.healthcheck)
    }
}

/// `cluster.healthcheck:` — periodic health probes of every ring member: a
/// `grpc.health.v1.Health/Check` over mutual TLS (Kraken sent `GET /health`). An unhealthy
/// member is reported as such by `Locations` and gets no replica copies.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ActiveHealthCheckConfig {
    /// When a member changes state.
    pub filter: HealthCheckFilterConfig,
    /// How often and how patiently members are probed.
    pub monitor: HealthMonitorConfig,
}

impl Validate for ActiveHealthCheckConfig {
    fn validate(&self) -> Result<(), ValidationError> {
        nested("filter", &self.filter)?;
        nested("monitor", &self.monitor)
    }
}

/// `cluster.healthcheck.filter:` — hysteresis of the health state. All hosts start healthy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HealthCheckFilterConfig {
    /// Consecutive failed probes that mark a member unhealthy.
    pub fails: u32,
    /// Consecutive successful probes that mark it healthy again.
    pub passes: u32,
}

impl Default for HealthCheckFilterConfig {
    fn default() -> Self {
        Self {
            fails: 3,
            passes: 2,
        }
    }
}

impl Validate for HealthCheckFilterConfig {
    fn validate(&self) -> Result<(), ValidationError> {
        ensure(self.fails >= 1, "fails", "must be at least 1")?;
        ensure(self.passes >= 1, "passes", "must be at least 1")
    }
}

/// `cluster.healthcheck.monitor:` — probe timing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HealthMonitorConfig {
    /// Time between probes of a member.
    #[serde(with = "humantime_serde")]
    pub interval: Duration,
    /// How long a probe may take before it counts as failed.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
}

impl Default for HealthMonitorConfig {
    fn default() -> Self {
        Self {
            interval: Duration::from_secs(30),
            timeout: Duration::from_secs(3),
        }
    }
}

impl Validate for HealthMonitorConfig {
    fn validate(&self) -> Result<(), ValidationError> {
        positive_duration("interval", self.interval)?;
        positive_duration("timeout", self.timeout)
    }
}

/// A service this component calls (`tracker:`, `origin:`, `build_index:`), with passive health
/// checks: request failures mark a host unhealthy, no probes are sent.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct UpstreamConfig {
    /// The service's hosts.
    pub hosts: HostList,
    /// Passive health checking.
    pub healthcheck: PassiveHealthCheckConfig,
}

impl UpstreamConfig {
    /// An upstream with a static host list and default health checks.
    pub fn of(hosts: impl IntoIterator<Item = impl Into<String>>) -> Self {
        Self {
            hosts: HostList::of(hosts),
            healthcheck: PassiveHealthCheckConfig::default(),
        }
    }
}

impl Validate for UpstreamConfig {
    fn validate(&self) -> Result<(), ValidationError> {
        nested("hosts", &self.hosts)?;
        nested("healthcheck", &self.healthcheck)
    }
}

/// `healthcheck:` of an upstream — `fails` network errors within `fail_timeout` take a host out
/// of rotation for `fail_timeout`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PassiveHealthCheckConfig {
    /// Failures within `fail_timeout` that mark the host unhealthy.
    pub fails: u32,
    /// The window failures are counted in, and how long an unhealthy host is skipped.
    #[serde(with = "humantime_serde")]
    pub fail_timeout: Duration,
}

impl Default for PassiveHealthCheckConfig {
    fn default() -> Self {
        Self {
            fails: 3,
            fail_timeout: Duration::from_secs(5 * 60),
        }
    }
}

impl Validate for PassiveHealthCheckConfig {
    fn validate(&self) -> Result<(), ValidationError> {
        ensure(self.fails >= 1, "fails", "must be at least 1")?;
        positive_duration("fail_timeout", self.fail_timeout)
    }
}

/// `hashring:` — rendezvous hashing of blobs onto origins.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HashRingConfig {
    /// How many origins own each blob (the top `max_replica` by rendezvous score).
    pub max_replica: usize,
    /// How often membership is re-read (DNS re-resolved, health applied).
    #[serde(with = "humantime_serde")]
    pub refresh_interval: Duration,
    /// Relative weight per `host:port` (default 100 each); a host with twice the weight owns
    /// about twice the blobs.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub weights: BTreeMap<String, u32>,
}

impl Default for HashRingConfig {
    fn default() -> Self {
        Self {
            max_replica: 3,
            refresh_interval: Duration::from_secs(10),
            weights: BTreeMap::new(),
        }
    }
}

impl HashRingConfig {
    /// Kraken gives every node weight 100; unlisted hosts keep it.
    pub const DEFAULT_WEIGHT: u32 = 100;

    /// The weight of `host`.
    pub fn weight_of(&self, host: &str) -> u32 {
        self.weights
            .get(host)
            .copied()
            .unwrap_or(Self::DEFAULT_WEIGHT)
    }
}

impl Validate for HashRingConfig {
    fn validate(&self) -> Result<(), ValidationError> {
        ensure(self.max_replica >= 1, "max_replica", "must be at least 1")?;
        positive_duration("refresh_interval", self.refresh_interval)?;
        for (host, weight) in &self.weights {
            if *weight == 0 {
                // Built from segments: a host name contains dots.
                let path = KeyPath::root().key("weights").key(host.clone());
                return Err(ValidationError::new(path, "must be above 0"));
            }
        }
        Ok(())
    }
}
