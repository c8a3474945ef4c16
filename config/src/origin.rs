//! `origin.yaml` — a dedicated seeder on the rendezvous hash ring, backed by storage.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::backend::{AuthConfig, BackendConfig, Stored, validate_backends};
use crate::cluster::{ClusterConfig, HashRingConfig, UpstreamConfig};
use crate::metainfogen::MetaInfoGenConfig;
use crate::remote::{RemoteEgress, RemoteTlsSection, TrustedRemote, trusted_cas, validate_remotes};
use crate::scheduler::SchedulerConfig;
use crate::store::StoreConfig;
use crate::telemetry::{LogConfig, MetricsConfig, Telemetry, TracingConfig};
use crate::tls::TlsSection;
use crate::validate::{Validate, ValidationError, ensure, host_port, nested};
use crate::writeback::WritebackConfig;

/// Configuration of `kraken origin`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OriginConfig {
    /// This origin's stable identity and ring label, `host:port` as other components reach its
    /// gRPC listener, e.g. `origin1:15002`. It must be one of `cluster.hosts` so that the ring
    /// every component computes places blobs on this origin.
    pub name: String,
    /// Listening sockets.
    pub listen: OriginListenConfig,
    /// Address peers reach the P2P port at. Absent: derived from `name`.
    pub peer_ip: Option<IpAddr>,
    /// The origin ring this origin is part of.
    pub cluster: ClusterConfig,
    /// Placement of blobs on the ring.
    pub hashring: HashRingConfig,
    /// Local blob store. Uploaded blobs stay pinned in it until written back.
    pub store: StoreConfig,
    /// P2P scheduler (origins seed; they never announce).
    pub scheduler: SchedulerConfig,
    /// Piece lengths and piece hash of generated metainfo.
    pub metainfogen: MetaInfoGenConfig,
    /// Storage backends by namespace; the first matching rule wins.
    pub backends: Vec<BackendConfig>,
    /// Credentials referenced by the backends' `username`.
    pub auth: AuthConfig,
    /// Durable queue of blobs to write to their backend.
    pub writeback: WritebackConfig,
    /// Remote clusters this origin sends blobs to (`ReplicateToRemote`), by cluster name
    /// (`[a-z0-9-]+`, the same names as the build-index's `remotes`).
    pub remotes: BTreeMap<String, OriginRemote>,
    /// Remote clusters whose CAs this origin accepts: their origins may upload blobs here
    /// (resumably, after `Stat` and `Locations`), and nothing else. Empty: only our own CA.
    pub trusted_remotes: BTreeMap<String, TrustedRemote>,
    /// Certificates for mutual TLS.
    pub tls: TlsSection,
    /// What a client or peer may hold of this component's servers: connections,
    /// handshake, header and idle timeouts ([`crate::limits`]). The gRPC server and the QUIC peer endpoint.
    pub limits: crate::limits::OriginLimits,
    /// Logging.
    pub log: LogConfig,
    /// Prometheus endpoint.
    pub metrics: MetricsConfig,
    /// Trace export.
    pub tracing: TracingConfig,
}

impl OriginConfig {
    pub fn telemetry(&self) -> Telemetry<'_> {
        Telemetry {
            log: &self.log,
            metrics: &self.metrics,
            tracing: &self.tracing,
        }
    }

    /// `(name, ca)` of every trusted remote cluster, for `kraken_tls::TrustDomains::load`.
    pub fn trusted_remote_cas(&self) -> Vec<(String, PathBuf)> {
        trusted_cas(&self.trusted_remotes, |remote| &remote.ca)
    }
}

impl Validate for OriginConfig {
    fn validate(&self) -> Result<(), ValidationError> {
        ensure(
            !self.name.is_empty(),
            "name",
            "missing: set this origin's `host:port` ring label (e.g. `origin1:15002`)",
        )?;
        host_port("name", &self.name)?;
        nested("listen", &self.listen)?;
        nested("cluster", &self.cluster)?;
        let members = &self.cluster.hosts.static_hosts;
        ensure(
            members.is_empty() || members.contains(&self.name),
            "name",
            format!(
                "`{}` is not in cluster.hosts.static, so the ring would never place a blob on \
                 this origin",
                self.name
            ),
        )?;
        nested("hashring", &self.hashring)?;
        nested("store", &self.store)?;
        nested("scheduler", &self.scheduler)?;
        nested("metainfogen", &self.metainfogen)?;
        nested("auth", &self.auth)?;
        validate_backends(&self.backends, &self.auth, Stored::Blobs)?;
        nested("writeback", &self.writeback)?;
        validate_remotes("remotes", &self.remotes)?;
        validate_remotes("trusted_remotes", &self.trusted_remotes)?;
        nested("tls", &self.tls)?;
        nested("limits", &self.limits)?;
        crate::component::validate_telemetry(self.telemetry())
    }
}

/// `remotes.<name>:` of an origin — one remote cluster it sends blobs to.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OriginRemote {
    /// The remote cluster's build-index hosts, asked for the remote's origin addresses
    /// (`ReplicationService/ListOrigins`).
    pub build_index: UpstreamConfig,
    /// Mutual TLS towards the remote: its CA, and optionally another certificate than ours.
    pub tls: RemoteTlsSection,
    /// Egress cap towards this remote.
    pub bandwidth: RemoteEgress,
}

impl Validate for OriginRemote {
    fn validate(&self) -> Result<(), ValidationError> {
        nested("build_index", &self.build_index)?;
        nested("tls", &self.tls)?;
        nested("bandwidth", &self.bandwidth)
    }
}

/// `listen:` of an origin.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OriginListenConfig {
    /// `BlobService` gRPC (upload, download, metainfo, locations, replicate).
    pub grpc: SocketAddr,
    /// QUIC seeder port (UDP).
    pub p2p: SocketAddr,
}

impl Default for OriginListenConfig {
    fn default() -> Self {
        // Kraken's origin ports: blob server 15002, peer 15001.
        Self {
            grpc: SocketAddr::from((Ipv4Addr::UNSPECIFIED, 15002)),
            p2p: SocketAddr::from((Ipv4Addr::UNSPECIFIED, 15001)),
        }
    }
}

impl Validate for OriginListenConfig {
    fn validate(&self) -> Result<(), ValidationError> {
        Ok(())
    }
}
