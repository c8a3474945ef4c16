//! `origin.yaml` — a dedicated seeder on the rendezvous hash ring, backed by storage.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use serde::{Deserialize, Serialize};

use crate::backend::{AuthConfig, BackendConfig, Stored, validate_backends};
use crate::cluster::{ClusterConfig, HashRingConfig};
use crate::metainfogen::MetaInfoGenConfig;
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
        nested("tls", &self.tls)?;
        nested("limits", &self.limits)?;
        crate::component::validate_telemetry(self.telemetry())
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
