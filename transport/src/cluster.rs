//! Cluster membership, the one place origins, trackers and their clients learn who is in a
//! cluster, who owns a digest and who is healthy.
//!
//! A [`HostPool`] holds:
//! - the members, from a static `host:port` list or a DNS `name:port` re-resolved every
//!   `refresh_interval` (each address becomes a member labelled `ip:port`, whose certificate
//!   is checked against `name`), placed on a rendezvous [`Ring`] with their weights;
//! - passive health ([`PassiveHealth`]) fed by the caller's own requests, for clients;
//! - active health ([`ActiveHealth`]) fed by `grpc.health.v1.Health/Check` probes over mutual
//!   TLS ([`HostPool::spawn_active_checks`]), for the origins watching each other;
//! - one lazily connecting mTLS channel per member.
//!
//! Requests go to the highest-scoring healthy host ([`HostPool::order`]); unhealthy hosts are
//! tried last rather than never, so a cluster-wide outage heals as soon as any host is back.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use crate::observe::ObservedChannel;
use kraken_config::cluster::{
    ActiveHealthCheckConfig, HashRingConfig, HostList, PassiveHealthCheckConfig,
};
use kraken_core::sync::lock;
use kraken_core::{Digest, error_chain};
use kraken_tls::{Role, TlsMaterial};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;
use tonic::Status;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

use crate::grpc::{self, GrpcError};
use crate::health::{ActiveHealth, ActiveStatus, PassiveHealth, is_network_error};
use crate::ring::{Member, Ring};

/// `1` for a healthy member, `0` for an unhealthy one; labels `pool`, `host`.
const HOST_HEALTHY: &str = "kraken_cluster_host_healthy";
/// Health changes; labels `pool`, `to` (`healthy`, `unhealthy`), `check` (`active`, `passive`).
const HEALTH_TRANSITIONS: &str = "kraken_cluster_health_transitions_total";
/// Current members; label `pool`.
const MEMBERS: &str = "kraken_cluster_members";
/// Failed DNS resolutions of the member list; label `pool`.
const DNS_FAILURES: &str = "kraken_cluster_dns_failures_total";
/// A DNS lookup taking longer than this counts as failed (the previous members are kept).
const DNS_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a pool could not be built or used.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("no hosts configured: set `hosts.static` or `hosts.dns`")]
    NoHosts,
    #[error("invalid `hosts.dns` `{address}`: expected name:port")]
    InvalidDns { address: String },
    #[error("resolving {name}:{port}")]
    Resolve {
        name: String,
        port: u16,
        #[source]
        source: std::io::Error,
    },
    #[error("{name}:{port} resolved to no address")]
    ResolvedToNothing { name: String, port: u16 },
    #[error("the members of the {pool} cluster are still unknown after {} ms", waited.as_millis())]
    NotResolved {
        pool: &'static str,
        waited: Duration,
    },
    #[error("a DNS host list needs a tokio runtime to re-resolve it in the background")]
    NoRuntime,
    #[error("cannot set up a channel to {host}")]
    Channel {
        host: String,
        #[source]
        source: GrpcError,
    },
}

/// Where the members come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostSource {
    /// Fixed `host:port` labels; each certificate is checked against its host.
    Static(Vec<String>),
    /// Every address `name:port` resolves to, labelled `ip:port`; certificates are checked
    /// against `name`.
    Dns { name: String, port: u16 },
}

impl HostSource {
    /// The source `hosts` describes. Validation refuses `static` and `dns` together; should
    /// both arrive anyway, the static list wins.
    pub fn from_config(hosts: &HostList) -> Result<Self, ClusterError> {
        if !hosts.static_hosts.is_empty() {
            return Ok(Self::Static(hosts.static_hosts.clone()));
        }
        let Some(dns) = &hosts.dns else {
            return Err(ClusterError::NoHosts);
        };
        let invalid = || ClusterError::InvalidDns {
            address: dns.clone(),
        };
        let (name, port) = dns.rsplit_once(':').ok_or_else(invalid)?;
        let port = port.parse().map_err(|_| invalid())?;
        if name.is_empty() {
            return Err(invalid());
        }
        Ok(Self::Dns {
            name: name.to_owned(),
            port,
        })
    }

    /// The members now: labels with the TLS name to check (`None`: the label's host).
    pub async fn resolve(&self) -> Result<Vec<(String, Option<String>)>, ClusterError> {
        match self {
            Self::Static(hosts) => Ok(hosts.iter().map(|h| (h.clone(), None)).collect()),
            Self::Dns { name, port } => {
                let lookup = tokio::net::lookup_host((name.as_str(), *port));
                let resolve_error = |source| ClusterError::Resolve {
                    name: name.clone(),
                    port: *port,
                    source,
                };
                let addresses = match tokio::time::timeout(DNS_TIMEOUT, lookup).await {
                    Ok(result) => result.map_err(resolve_error)?,
                    Err(_) => {
                        return Err(resolve_error(std::io::Error::new(
                            std::io::ErrorKind::TimedOut,
                            format!("no answer within {} s", DNS_TIMEOUT.as_secs()),
                        )));
                    }
                };
                let mut members: Vec<(String, Option<String>)> = addresses
                    .map(|addr| (addr.to_string(), Some(name.clone())))
                    .collect();
                members.sort();
                members.dedup();
                if members.is_empty() {
                    return Err(ClusterError::ResolvedToNothing {
                        name: name.clone(),
                        port: *port,
                    });
                }
                Ok(members)
            }
        }
    }
}

/// A snapshot of the members.
#[derive(Debug, Clone, Default)]
pub struct Members {
    ring: Ring,
    tls_names: HashMap<String, String>,
    /// False until a DNS host list resolved once.
    resolved: bool,
}

impl Members {
    fn new(
        hosts: Vec<(String, Option<String>)>,
        weights: &BTreeMap<String, u32>,
        default_weight: u32,
    ) -> Self {
        let ring = Ring::new(hosts.iter().map(|(label, _)| {
            Member::new(
                label.clone(),
                weights.get(label).copied().unwrap_or(default_weight),
            )
        }));
        let tls_names = hosts
            .into_iter()
            .filter_map(|(label, name)| name.map(|name| (label, name)))
            .collect();
        Self {
            ring,
            tls_names,
            resolved: true,
        }
    }

    pub fn ring(&self) -> &Ring {
        &self.ring
    }

    /// Member labels (`host:port`), in configuration or resolution order.
    pub fn labels(&self) -> impl Iterator<Item = &str> {
        self.ring.members().iter().map(|m| m.label.as_str())
    }

    pub fn contains(&self, label: &str) -> bool {
        self.labels().any(|l| l == label)
    }

    /// The name a member's certificate is checked against, if not its label's host.
    pub fn tls_name(&self, label: &str) -> Option<&str> {
        self.tls_names.get(label).map(String::as_str)
    }

    pub fn is_resolved(&self) -> bool {
        self.resolved
    }
}

/// A member as a request router sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostView {
    /// `host:port`.
    pub label: String,
    pub healthy: bool,
}

/// A member's health, for status pages, logs and tests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostStatus {
    /// `host:port`.
    pub host: String,
    pub healthy: bool,
    /// Network errors seen by this pool's requests since start (passive checks).
    pub failures: u64,
    /// What the active checks know (all defaults when none run).
    pub active: ActiveStatus,
}

/// How a pool places and judges its members.
#[derive(Debug, Clone)]
pub struct PoolOptions {
    /// What the members are: their certificates must carry this role (a channel refuses a
    /// server holding another), and it names the pool in logs and metrics.
    pub role: Role,
    /// Weight per label; others get `default_weight`.
    pub weights: BTreeMap<String, u32>,
    pub default_weight: u32,
    /// How often a DNS host list is resolved again.
    pub refresh_interval: Duration,
    /// Passive checks from the caller's requests; `None` for pools that only probe.
    pub passive: Option<PassiveHealthCheckConfig>,
    /// The name every member's certificate is checked against (and sent as SNI), whatever
    /// its label or DNS name: a remote cluster's `remotes.<name>.tls.server_name`, for when
    /// its addresses are not the names in its certificates. `None`: each member's own name.
    pub server_name: Option<String>,
}

impl PoolOptions {
    /// A client's view of an upstream: equal weights, passive checks as configured.
    pub fn upstream(role: Role, passive: &PassiveHealthCheckConfig) -> Self {
        Self {
            role,
            weights: BTreeMap::new(),
            default_weight: HashRingConfig::DEFAULT_WEIGHT,
            refresh_interval: HashRingConfig::default().refresh_interval,
            passive: Some(passive.clone()),
            server_name: None,
        }
    }

    /// A ring as `hashring:` describes it (weights, refresh interval), without passive checks.
    pub fn ring(role: Role, hashring: &HashRingConfig) -> Self {
        Self {
            role,
            weights: hashring.weights.clone(),
            default_weight: HashRingConfig::DEFAULT_WEIGHT,
            refresh_interval: hashring.refresh_interval,
            passive: None,
            server_name: None,
        }
    }
}

/// Members, health and channels of one cluster. Cheap to clone; clones share everything.
#[derive(Clone)]
pub struct HostPool {
    inner: Arc<PoolInner>,
}

struct PoolInner {
    name: &'static str,
    role: Role,
    tls: TlsMaterial,
    members: watch::Receiver<Arc<Members>>,
    /// [`PoolOptions::server_name`].
    server_name: Option<String>,
    passive: Option<Mutex<PassiveHealth<String>>>,
    active: Mutex<ActiveHealth<String>>,
    channels: Mutex<HashMap<String, ObservedChannel>>,
}

impl fmt::Debug for HostPool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let members = self.members();
        f.debug_struct("HostPool")
            .field("name", &self.inner.name)
            .field("members", &members.labels().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

impl HostPool {
    /// A pool of `hosts`. A static list is ready at once; a DNS name is resolved in the
    /// background right away and then every `options.refresh_interval` (which needs a tokio
    /// runtime), for as long as a clone of the pool lives. Until the first resolution the pool
    /// is empty: see [`ready`](Self::ready).
    pub fn new(
        hosts: &HostList,
        tls: &TlsMaterial,
        options: PoolOptions,
    ) -> Result<Self, ClusterError> {
        let source = HostSource::from_config(hosts)?;
        let (initial, refresh) = match &source {
            HostSource::Static(hosts) => {
                let members = hosts.iter().map(|h| (h.clone(), None)).collect();
                (
                    Members::new(members, &options.weights, options.default_weight),
                    false,
                )
            }
            HostSource::Dns { .. } => (Members::default(), true),
        };
        let (sender, receiver) = watch::channel(Arc::new(initial));
        let passive = options
            .passive
            .as_ref()
            .map(|p| Mutex::new(PassiveHealth::new(p.fails, p.fail_timeout)));
        let pool = Self {
            inner: Arc::new(PoolInner {
                name: options.role.as_str(),
                role: options.role,
                tls: tls.clone(),
                members: receiver,
                server_name: options.server_name.clone(),
                passive,
                active: Mutex::new(ActiveHealth::new(1, 1)),
                channels: Mutex::new(HashMap::new()),
            }),
        };
        pool.record_members(&pool.members());
        if refresh {
            let runtime =
                tokio::runtime::Handle::try_current().map_err(|_| ClusterError::NoRuntime)?;
            runtime.spawn(refresh_members(
                source,
                options,
                sender,
                Arc::downgrade(&pool.inner),
            ));
        }
        Ok(pool)
    }

    pub fn name(&self) -> &'static str {
        self.inner.name
    }

    /// The members now.
    pub fn members(&self) -> Arc<Members> {
        self.inner.members.borrow().clone()
    }

    /// Waits (up to `patience`) until the members are known, i.e. a DNS host list resolved
    /// once; immediate for a static list.
    pub async fn ready(&self, patience: Duration) -> Result<Arc<Members>, ClusterError> {
        let mut members = self.inner.members.clone();
        let waited = tokio::time::timeout(patience, members.wait_for(|m| m.is_resolved())).await;
        match waited {
            Ok(Ok(members)) => Ok(members.clone()),
            _ => Err(ClusterError::NotResolved {
                pool: self.inner.name,
                waited: patience,
            }),
        }
    }

    /// Every member with its health, highest rendezvous score for `digest` first.
    pub fn ranked(&self, digest: &Digest) -> Vec<HostView> {
        let members = self.members();
        members
            .ring()
            .ranked(digest)
            .into_iter()
            .map(|member| self.view(&member.label))
            .collect()
    }

    /// The `replicas` owners of `digest` with their health, highest score first.
    pub fn owners(&self, digest: &Digest, replicas: usize) -> Vec<HostView> {
        let mut ranked = self.ranked(digest);
        ranked.truncate(replicas.max(1));
        ranked
    }

    /// The order to try members in for `digest`: by rendezvous score, healthy ones first.
    pub fn order(&self, digest: &Digest) -> Vec<String> {
        let (mut healthy, unhealthy): (Vec<HostView>, Vec<HostView>) =
            self.ranked(digest).into_iter().partition(|h| h.healthy);
        healthy.extend(unhealthy);
        healthy.into_iter().map(|h| h.label).collect()
    }

    /// `hosts` (the caller's preference, members or not) with the healthy ones first.
    pub fn order_hosts(&self, hosts: impl IntoIterator<Item = String>) -> Vec<String> {
        let (mut healthy, unhealthy): (Vec<String>, Vec<String>) =
            hosts.into_iter().partition(|h| self.is_healthy(h));
        healthy.extend(unhealthy);
        healthy
    }

    /// Healthy by both the active checks (if any run) and the passive checks (if enabled).
    pub fn is_healthy(&self, label: &str) -> bool {
        let label = label.to_owned();
        let active = lock(&self.inner.active).is_healthy(&label);
        active
            && self
                .inner
                .passive
                .as_ref()
                .is_none_or(|p| lock(p).is_healthy(&label, Instant::now()))
    }

    /// The mTLS channel to `label` (a member, or any `host:port` such as an owner another
    /// member named), connecting lazily and reconnecting on its own.
    pub fn channel(&self, label: &str) -> Result<ObservedChannel, ClusterError> {
        let mut channels = lock(&self.inner.channels);
        if let Some(channel) = channels.get(label) {
            return Ok(channel.clone());
        }
        let members = self.members();
        let server_name = self
            .inner
            .server_name
            .as_deref()
            .or_else(|| members.tls_name(label));
        let channel = grpc::channel(&self.inner.tls, label, server_name, self.inner.role).map_err(
            |source| ClusterError::Channel {
                host: label.to_owned(),
                source,
            },
        )?;
        channels.insert(label.to_owned(), channel.clone());
        Ok(channel)
    }

    /// Records an answer from `label` (passive checks): it is reachable.
    pub fn record_success(&self, label: &str) {
        if let Some(passive) = &self.inner.passive {
            let mut passive = lock(passive);
            let was_healthy = passive.is_healthy(&label.to_owned(), Instant::now());
            passive.succeeded(&label.to_owned());
            drop(passive);
            if !was_healthy {
                self.transition(label, true, "passive");
            }
        }
    }

    /// Records a network error talking to `label`; returns whether it made the host unhealthy.
    pub fn record_network_error(&self, label: &str) -> bool {
        let Some(passive) = &self.inner.passive else {
            return false;
        };
        let tripped = lock(passive).failed(label.to_owned(), Instant::now());
        if tripped {
            self.transition(label, false, "passive");
        }
        tripped
    }

    /// Records the outcome of a call to `label`: a network error counts against it, any
    /// other status is an answer. Returns whether the status was a network error.
    pub fn record_status(&self, label: &str, status: &Status) -> bool {
        if is_network_error(status) {
            self.record_network_error(label);
            true
        } else {
            self.record_success(label);
            false
        }
    }

    /// Every member with its health, in configuration order.
    pub fn statuses(&self) -> Vec<HostStatus> {
        let members = self.members();
        let active = lock(&self.inner.active).clone();
        let passive = self.inner.passive.as_ref().map(|p| lock(p).clone());
        let now = Instant::now();
        members
            .labels()
            .map(|label| {
                let key = label.to_owned();
                let active = active.status(&key);
                let passive_ok = passive.as_ref().is_none_or(|p| p.is_healthy(&key, now));
                HostStatus {
                    host: key.clone(),
                    healthy: active.healthy && passive_ok,
                    failures: passive.as_ref().map_or(0, |p| p.total_failures(&key)),
                    active,
                }
            })
            .collect()
    }

    /// Probes every member but `local` with `grpc.health.v1.Health/Check` (over the pool's
    /// mTLS channels) every `monitor.interval`, each probe bounded by `monitor.timeout`, and
    /// applies `filter.fails`/`filter.passes`. Runs until `shutdown` fires or the pool is
    /// dropped. The first round waits one interval: at start-up the other members may still
    /// be starting.
    pub fn spawn_active_checks(
        &self,
        config: &ActiveHealthCheckConfig,
        local: Option<String>,
        shutdown: CancellationToken,
    ) -> JoinHandle<()> {
        *lock(&self.inner.active) = ActiveHealth::new(config.filter.fails, config.filter.passes);
        let weak = Arc::downgrade(&self.inner);
        let (interval, timeout) = (config.monitor.interval, config.monitor.timeout);
        tokio::spawn(async move {
            let period = interval.max(Duration::from_millis(10));
            let mut ticker = tokio::time::interval_at(Instant::now() + period, period);
            ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    () = shutdown.cancelled() => break,
                    _ = ticker.tick() => {}
                }
                let Some(inner) = weak.upgrade() else { break };
                let pool = HostPool { inner };
                tokio::select! {
                    () = shutdown.cancelled() => break,
                    () = pool.probe_round(local.as_deref(), timeout) => {}
                }
            }
        })
    }

    /// One probe of every member but `local`, concurrently.
    async fn probe_round(&self, local: Option<&str>, timeout: Duration) {
        let members = self.members();
        let labels: Vec<String> = members
            .labels()
            .filter(|label| Some(*label) != local)
            .map(str::to_owned)
            .collect();
        lock(&self.inner.active).retain(|label| members.contains(label));
        let probes = labels.iter().map(|label| self.probe(label, timeout));
        let results = futures::future::join_all(probes).await;
        for (label, passed) in labels.into_iter().zip(results) {
            let change = lock(&self.inner.active).record(label.clone(), passed);
            if let Some(healthy) = change {
                self.transition(&label, healthy, "active");
            }
        }
    }

    /// Whether `label` answers SERVING within `timeout`.
    async fn probe(&self, label: &str, timeout: Duration) -> bool {
        let channel = match self.channel(label) {
            Ok(channel) => channel,
            Err(error) => {
                tracing::debug!(pool = self.inner.name, host = label, %error, "cannot probe");
                return false;
            }
        };
        let request = HealthCheckRequest {
            service: String::new(),
        };
        let mut client = HealthClient::new(channel);
        match tokio::time::timeout(timeout, client.check(request)).await {
            Ok(Ok(response)) => response.into_inner().status == ServingStatus::Serving as i32,
            Ok(Err(status)) => {
                tracing::debug!(pool = self.inner.name, host = label, %status, "health probe failed");
                false
            }
            Err(_) => {
                tracing::debug!(
                    pool = self.inner.name,
                    host = label,
                    ?timeout,
                    "health probe timed out"
                );
                false
            }
        }
    }

    fn view(&self, label: &str) -> HostView {
        HostView {
            label: label.to_owned(),
            healthy: self.is_healthy(label),
        }
    }

    fn transition(&self, label: &str, healthy: bool, check: &'static str) {
        let pool = self.inner.name;
        let to = if healthy { "healthy" } else { "unhealthy" };
        metrics::counter!(HEALTH_TRANSITIONS, "pool" => pool, "to" => to, "check" => check)
            .increment(1);
        metrics::gauge!(HOST_HEALTHY, "pool" => pool, "host" => label.to_owned())
            .set(if self.is_healthy(label) { 1.0 } else { 0.0 });
        if healthy {
            tracing::info!(pool, host = label, check, "host is healthy again");
        } else {
            tracing::warn!(pool, host = label, check, "host marked unhealthy");
        }
    }

    fn record_members(&self, members: &Members) {
        let pool = self.inner.name;
        metrics::gauge!(MEMBERS, "pool" => pool).set(members.ring().members().len() as f64);
        for label in members.labels() {
            metrics::gauge!(HOST_HEALTHY, "pool" => pool, "host" => label.to_owned())
                .set(if self.is_healthy(label) { 1.0 } else { 0.0 });
        }
    }
}

/// Resolves a DNS host list now and every `refresh_interval` while the pool lives; a failed
/// resolution keeps the previous members.
async fn refresh_members(
    source: HostSource,
    options: PoolOptions,
    sender: watch::Sender<Arc<Members>>,
    pool: Weak<PoolInner>,
) {
    let interval = options.refresh_interval.max(Duration::from_millis(100));
    loop {
        match source.resolve().await {
            Ok(hosts) => {
                let members = Members::new(hosts, &options.weights, options.default_weight);
                let changed = {
                    let current = sender.borrow();
                    !current.is_resolved()
                        || current.ring() != members.ring()
                        || current.tls_names != members.tls_names
                };
                if changed {
                    tracing::info!(
                        pool = options.role.as_str(),
                        members = ?members.labels().collect::<Vec<_>>(),
                        "cluster membership changed"
                    );
                    if let Some(inner) = pool.upgrade() {
                        let pool = HostPool { inner };
                        lock(&pool.inner.channels).retain(|label, _| members.contains(label));
                        if let Some(passive) = &pool.inner.passive {
                            lock(passive).retain(|label| members.contains(label));
                        }
                        pool.record_members(&members);
                    }
                    sender.send_replace(Arc::new(members));
                }
            }
            Err(error) => {
                metrics::counter!(DNS_FAILURES, "pool" => options.role.as_str()).increment(1);
                tracing::warn!(
                    pool = options.role.as_str(),
                    error = %error_chain(&error),
                    "cannot resolve the cluster's members; keeping the previous ones"
                );
            }
        }
        tokio::select! {
            () = sender.closed() => return,
            () = tokio::time::sleep(interval) => {}
        }
    }
}
