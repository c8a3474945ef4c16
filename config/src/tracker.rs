//! `tracker.yaml` — hands out peers for each blob and proxies metainfo from the origins.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use crate::cluster::UpstreamConfig;
use crate::secret::{Secret, SecretError, check_secret_pair};
use crate::telemetry::{LogConfig, MetricsConfig, Telemetry, TracingConfig};
use crate::tls::TlsSection;
use crate::validate::{Validate, ValidationError, ensure, host_port, nested, positive_duration};

/// Configuration of `kraken tracker`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TrackerConfig {
    /// Listening sockets.
    pub listen: TrackerListenConfig,
    /// Where announced peers are kept.
    pub peerstore: PeerStoreConfig,
    /// Ordering of the peers handed out.
    pub peerhandoutpolicy: PeerHandoutPolicyConfig,
    /// Interval peers are told to announce at.
    #[serde(with = "humantime_serde")]
    pub announce_interval: Duration,
    /// Maximum peers returned per announce, origins included: the origins owning the blob
    /// are always handed out (they are the seeders of last resort) and agents fill the rest.
    pub announce_limit: usize,
    /// How long metainfo fetched from the origins is cached. Metainfo of a digest never
    /// changes, so this only bounds memory.
    #[serde(with = "humantime_serde")]
    pub metainfo_cache_ttl: Duration,
    /// How long the answer to "which origins own this blob" (`BlobService/Locations`) is
    /// cached. Short, because ring membership and origin health change; every announce of a
    /// blob needs it.
    #[serde(with = "humantime_serde")]
    pub origin_locations_cache_ttl: Duration,
    /// How long an origin's seeder identity (`BlobService/GetPeerContext`: peer id and QUIC
    /// address) is cached. It changes only when the origin is reconfigured.
    #[serde(with = "humantime_serde")]
    pub origin_peer_context_cache_ttl: Duration,
    /// Networks (CIDR notation) whose announces may name their own IP. An announce is
    /// otherwise recorded at the IP its connection comes from, with the port it claims, so a
    /// certificate holder cannot point a swarm at another host. List the sources that speak
    /// for others: NAT gateways, sidecars, or `127.0.0.1/32` when an agent on the tracker's
    /// own host reaches it over loopback but advertises a routable IP. Default: none.
    #[serde(with = "crate::net::cidr_list")]
    pub trust_claimed_address_from: Vec<IpNet>,
    /// Most peers recorded for one blob. Past it a new peer is refused (`RESOURCE_EXHAUSTED`)
    /// while known peers keep refreshing, so a flood of fake peers cannot crowd out a swarm
    /// or grow memory without bound. A hand-out is a sample of at most `announce_limit`, so a
    /// larger swarm gains nothing from more.
    pub max_peers_per_blob: usize,
    /// Most peers recorded for one blob from one source IP (after
    /// `trust_claimed_address_from`). Bounds what one host can inject into a swarm; keep it
    /// above the agents sharing an address (a loopback test cluster runs up to ~16).
    pub max_peers_per_address: usize,
    /// The origin cluster, asked for metainfo and for which origins own a blob.
    pub origin: UpstreamConfig,
    /// Certificates for mutual TLS.
    pub tls: TlsSection,
    /// What a client or peer may hold of this component's servers: connections,
    /// handshake, header and idle timeouts ([`crate::limits`]). The gRPC server.
    pub limits: crate::limits::TrackerLimits,
    /// Logging.
    pub log: LogConfig,
    /// Prometheus endpoint.
    pub metrics: MetricsConfig,
    /// Trace export.
    pub tracing: TracingConfig,
}

impl Default for TrackerConfig {
    fn default() -> Self {
        Self {
            listen: TrackerListenConfig::default(),
            peerstore: PeerStoreConfig::default(),
            peerhandoutpolicy: PeerHandoutPolicyConfig::default(),
            announce_interval: Duration::from_secs(3),
            announce_limit: 50,
            metainfo_cache_ttl: Duration::from_secs(5 * 60),
            origin_locations_cache_ttl: Duration::from_secs(10),
            origin_peer_context_cache_ttl: Duration::from_secs(60),
            trust_claimed_address_from: Vec::new(),
            max_peers_per_blob: 10_000,
            max_peers_per_address: 32,
            origin: UpstreamConfig::default(),
            tls: TlsSection::default(),
            limits: crate::limits::TrackerLimits::default(),
            log: LogConfig::default(),
            metrics: MetricsConfig::default(),
            tracing: TracingConfig::default(),
        }
    }
}

impl TrackerConfig {
    pub fn telemetry(&self) -> Telemetry<'_> {
        Telemetry {
            log: &self.log,
            metrics: &self.metrics,
            tracing: &self.tracing,
        }
    }

    /// Whether an announce arriving from `source` may name its own IP.
    pub fn trusts_claimed_address_from(&self, source: IpAddr) -> bool {
        // `::ffff:10.0.0.1` is 10.0.0.1 arriving on a dual-stack socket.
        let source = source.to_canonical();
        self.trust_claimed_address_from
            .iter()
            .any(|net| net.contains(&source))
    }
}

impl Validate for TrackerConfig {
    fn validate(&self) -> Result<(), ValidationError> {
        nested("peerstore", &self.peerstore)?;
        positive_duration("announce_interval", self.announce_interval)?;
        ensure(
            self.announce_limit >= 1,
            "announce_limit",
            "must be at least 1",
        )?;
        positive_duration("metainfo_cache_ttl", self.metainfo_cache_ttl)?;
        positive_duration(
            "origin_locations_cache_ttl",
            self.origin_locations_cache_ttl,
        )?;
        positive_duration(
            "origin_peer_context_cache_ttl",
            self.origin_peer_context_cache_ttl,
        )?;
        ensure(
            self.max_peers_per_blob >= 1,
            "max_peers_per_blob",
            "must be at least 1",
        )?;
        ensure(
            self.max_peers_per_address >= 1,
            "max_peers_per_address",
            "must be at least 1",
        )?;
        nested("origin", &self.origin)?;
        nested("tls", &self.tls)?;
        nested("limits", &self.limits)?;
        crate::component::validate_telemetry(self.telemetry())
    }
}

/// `listen:` of a tracker.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TrackerListenConfig {
    /// `TrackerService` gRPC (announce, metainfo).
    pub grpc: SocketAddr,
}

impl Default for TrackerListenConfig {
    fn default() -> Self {
        Self {
            grpc: SocketAddr::from((Ipv4Addr::UNSPECIFIED, 15003)),
        }
    }
}

/// `peerstore:` — where announces are kept.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PeerStoreConfig {
    /// `memory` (one tracker, or trackers on a ring by digest) or `redis` (shared by trackers).
    pub backend: PeerStoreBackend,
    /// Settings of the in-memory store.
    pub memory: MemoryPeerStoreConfig,
    /// Settings of the Redis store.
    pub redis: RedisPeerStoreConfig,
}

impl Validate for PeerStoreConfig {
    fn validate(&self) -> Result<(), ValidationError> {
        match self.backend {
            PeerStoreBackend::Memory => nested("memory", &self.memory),
            PeerStoreBackend::Redis => nested("redis", &self.redis),
        }
    }
}

/// Which peer store is used.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PeerStoreBackend {
    /// In this process: lost on restart, and each tracker only knows the announces it got.
    #[default]
    Memory,
    /// In Redis, shared by every tracker using the same server.
    Redis,
}

/// `peerstore.memory:`
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MemoryPeerStoreConfig {
    /// How long an announce is remembered.
    #[serde(with = "humantime_serde")]
    pub ttl: Duration,
    /// Most announces held across all blobs (and most peer ids bound to a certificate).
    /// Past it new peers are refused until expired ones are swept; an entry takes ~100 bytes,
    /// so the default bounds the store to about 100 MB.
    pub max_entries: usize,
}

impl Default for MemoryPeerStoreConfig {
    fn default() -> Self {
        Self {
            ttl: Duration::from_secs(5 * 3600),
            max_entries: 1_000_000,
        }
    }
}

impl Validate for MemoryPeerStoreConfig {
    fn validate(&self) -> Result<(), ValidationError> {
        positive_duration("ttl", self.ttl)?;
        ensure(self.max_entries >= 1, "max_entries", "must be at least 1")
    }
}

/// `peerstore.redis:` — announces in time-window sets; an announce expires after
/// `peer_set_window_size × max_peer_set_windows`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RedisPeerStoreConfig {
    /// Redis `host:port`.
    pub addr: String,
    /// Password, inline. Prefer `password_file`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub password: Option<Secret>,
    /// File holding the password.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub password_file: Option<PathBuf>,
    /// Connection timeout.
    #[serde(with = "humantime_serde")]
    pub dial_timeout: Duration,
    /// Length of one time window.
    #[serde(with = "humantime_serde")]
    pub peer_set_window_size: Duration,
    /// Windows kept.
    pub max_peer_set_windows: u32,
}

impl Default for RedisPeerStoreConfig {
    fn default() -> Self {
        Self {
            addr: "127.0.0.1:6379".to_owned(),
            password: None,
            password_file: None,
            dial_timeout: Duration::from_secs(5),
            peer_set_window_size: Duration::from_secs(3600),
            max_peer_set_windows: 5,
        }
    }
}

impl RedisPeerStoreConfig {
    /// The password from `password` or `password_file`.
    pub fn password(&self) -> Result<Option<Secret>, SecretError> {
        Secret::resolve(self.password.as_ref(), self.password_file.as_deref())
    }
}

impl Validate for RedisPeerStoreConfig {
    fn validate(&self) -> Result<(), ValidationError> {
        host_port("addr", &self.addr)?;
        check_secret_pair(
            "password",
            self.password.as_ref(),
            self.password_file.as_ref(),
            false,
        )?;
        positive_duration("dial_timeout", self.dial_timeout)?;
        positive_duration("peer_set_window_size", self.peer_set_window_size)?;
        ensure(
            self.max_peer_set_windows >= 1,
            "max_peer_set_windows",
            "must be at least 1",
        )
    }
}

/// `peerhandoutpolicy:`
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PeerHandoutPolicyConfig {
    /// `completeness` (complete agents that another host reported serving first, then
    /// origins, then the rest) or `default` (random order); either way agents another host
    /// reported failing come last.
    pub priority: HandoutPriority,
}

/// Order of the peers handed out.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HandoutPriority {
    /// Complete agents that another host reported serving (`served_by` in its announce),
    /// then origins, then the other agents, then agents reported failing: spares the origins
    /// without letting a bare claim of completeness jump the queue. Kraken's shipped base
    /// config uses it, so it is the default here.
    #[default]
    Completeness,
    /// No ordering (random sample), but agents reported failing come last.
    Default,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::load_from_str;

    const ORIGINS: &str = "origin:\n  hosts:\n    static: [origin1:15002]\n";

    fn load(yaml: &str) -> Result<TrackerConfig, crate::ConfigError> {
        load_from_str::<TrackerConfig>("tracker.yaml", &format!("{ORIGINS}{yaml}"))
            .map(|loaded| loaded.config)
    }

    #[test]
    fn announce_hardening_defaults() {
        let config = load("").unwrap();
        assert!(config.trust_claimed_address_from.is_empty());
        assert_eq!(config.max_peers_per_blob, 10_000);
        assert_eq!(config.max_peers_per_address, 32);
        assert_eq!(config.peerstore.memory.max_entries, 1_000_000);
        assert!(!config.trusts_claimed_address_from("127.0.0.1".parse().unwrap()));
    }

    #[test]
    fn trusted_networks_match_sources_including_ipv4_mapped_ones() {
        let config = load(
            "trust_claimed_address_from: [10.0.0.0/8, \"fd00::/8\", 192.168.1.7]\n\
             max_peers_per_blob: 100\nmax_peers_per_address: 4\n",
        )
        .unwrap();
        assert_eq!(config.max_peers_per_blob, 100);
        assert_eq!(config.max_peers_per_address, 4);
        for trusted in ["10.1.2.3", "::ffff:10.1.2.3", "fd00::1", "192.168.1.7"] {
            assert!(
                config.trusts_claimed_address_from(trusted.parse().unwrap()),
                "{trusted}"
            );
        }
        for untrusted in ["11.0.0.1", "192.168.1.8", "::1", "127.0.0.1"] {
            assert!(
                !config.trusts_claimed_address_from(untrusted.parse().unwrap()),
                "{untrusted}"
            );
        }
    }

    #[test]
    fn caps_must_be_positive() {
        for (yaml, key) in [
            ("max_peers_per_blob: 0\n", "max_peers_per_blob"),
            ("max_peers_per_address: 0\n", "max_peers_per_address"),
            (
                "peerstore:\n  memory:\n    max_entries: 0\n",
                "peerstore.memory.max_entries",
            ),
        ] {
            let error = load(yaml).unwrap_err().to_string();
            assert!(error.contains(key), "{key}: {error}");
        }
        let error = load("trust_claimed_address_from: [10.0.0.0/33]\n")
            .unwrap_err()
            .to_string();
        assert!(error.contains("trust_claimed_address_from[0]"), "{error}");
    }
}
