//! `agent.yaml` — the agent on every host: a read-only registry for the local container
//! runtime, fed by the P2P swarm.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use crate::cluster::UpstreamConfig;
use crate::scheduler::SchedulerConfig;
use crate::store::StoreConfig;
use crate::telemetry::{LogConfig, MetricsConfig, Telemetry, TracingConfig};
use crate::tls::TlsSection;
use crate::validate::{Validate, ValidationError, nested, positive_duration};

/// Configuration of `kraken agent`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AgentConfig {
    /// Address other peers reach this agent's P2P port at, announced to the tracker. Absent:
    /// the address the tracker sees the announce come from.
    pub peer_ip: Option<IpAddr>,
    /// Listening sockets.
    pub listen: AgentListenConfig,
    /// Networks allowed to pull through the registry listener, in CIDR notation. Kraken's
    /// defaults: loopback and the Docker bridge gateway.
    #[serde(with = "crate::net::cidr_list")]
    pub allowed_cidrs: Vec<IpNet>,
    /// Trackers to announce to (a ring by digest: each blob's announces go to one tracker).
    pub tracker: UpstreamConfig,
    /// How long a blob request waits for its metainfo while the tracker answers `UNAVAILABLE`
    /// (the origin is still fetching the blob from its storage backend) before giving up.
    /// Kraken's agent waited 15 minutes.
    #[serde(with = "humantime_serde")]
    pub metainfo_timeout: Duration,
    /// Build-index hosts that resolve tags to digests.
    pub build_index: UpstreamConfig,
    /// Local blob cache.
    pub store: StoreConfig,
    /// P2P download scheduler.
    pub scheduler: SchedulerConfig,
    /// Certificates for mutual TLS with peers, trackers and build-index.
    pub tls: TlsSection,
    /// HTTPS on the registry port (`cert`, `key`); plain HTTP without it, which suits a
    /// registry on loopback.
    pub registry_tls: crate::registry_auth::RegistryTlsConfig,
    /// What a client or peer may hold of this component's servers: connections,
    /// handshake, header and idle timeouts ([`crate::limits`]). The gRPC server, the registry port and the QUIC peer endpoint.
    pub limits: crate::limits::AgentLimits,
    /// Logging.
    pub log: LogConfig,
    /// Prometheus endpoint.
    pub metrics: MetricsConfig,
    /// Trace export.
    pub tracing: TracingConfig,
}

impl Default for AgentConfig {
    fn default() -> Self {
        Self {
            peer_ip: None,
            listen: AgentListenConfig::default(),
            allowed_cidrs: crate::net::default_allowed_cidrs(),
            tracker: UpstreamConfig::default(),
            metainfo_timeout: Duration::from_secs(15 * 60),
            build_index: UpstreamConfig::default(),
            store: StoreConfig::default(),
            scheduler: SchedulerConfig::default(),
            tls: TlsSection::default(),
            registry_tls: crate::registry_auth::RegistryTlsConfig::default(),
            limits: crate::limits::AgentLimits::default(),
            log: LogConfig::default(),
            metrics: MetricsConfig::default(),
            tracing: TracingConfig::default(),
        }
    }
}

impl AgentConfig {
    pub fn telemetry(&self) -> Telemetry<'_> {
        Telemetry {
            log: &self.log,
            metrics: &self.metrics,
            tracing: &self.tracing,
        }
    }

    /// Whether `ip` may pull through the registry listener.
    pub fn is_allowed(&self, ip: IpAddr) -> bool {
        self.allowed_cidrs.iter().any(|net| net.contains(&ip))
    }
}

impl Validate for AgentConfig {
    fn validate(&self) -> Result<(), ValidationError> {
        nested("listen", &self.listen)?;
        nested("tracker", &self.tracker)?;
        positive_duration("metainfo_timeout", self.metainfo_timeout)?;
        nested("build_index", &self.build_index)?;
        nested("store", &self.store)?;
        nested("scheduler", &self.scheduler)?;
        nested("tls", &self.tls)?;
        nested("registry_tls", &self.registry_tls)?;
        nested("limits", &self.limits)?;
        crate::component::validate_telemetry(self.telemetry())
    }
}

/// `listen:` of an agent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AgentListenConfig {
    /// Docker/OCI registry API (read-only) for the local container runtime. IPv6 addresses must
    /// be quoted in YAML: `"[::1]:16000"`.
    pub registry: SocketAddr,
    /// `AgentService` gRPC (preload, stat, health).
    pub grpc: SocketAddr,
    /// QUIC peer port (UDP).
    pub p2p: SocketAddr,
}

impl Default for AgentListenConfig {
    fn default() -> Self {
        // Kraken's agent ports: registry 16000, peer 16001, agent server 16002.
        Self {
            registry: SocketAddr::from((Ipv4Addr::LOCALHOST, 16000)),
            grpc: SocketAddr::from((Ipv4Addr::LOCALHOST, 16002)),
            p2p: SocketAddr::from((Ipv4Addr::UNSPECIFIED, 16001)),
        }
    }
}

impl Validate for AgentListenConfig {
    fn validate(&self) -> Result<(), ValidationError> {
        crate::net::distinct_tcp_listeners(&[("registry", self.registry), ("grpc", self.grpc)])
    }
}
