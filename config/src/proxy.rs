//! `proxy.yaml` — the push side: a full registry API that uploads blobs to the origins and tags
//! to build-index.

use std::net::{Ipv4Addr, SocketAddr};

use bytesize::ByteSize;
use serde::{Deserialize, Serialize};

use crate::cluster::{HashRingConfig, UpstreamConfig};
use crate::registry_auth::{RegistryAuthConfig, RegistryTlsConfig};
use crate::store::StoreConfig;
use crate::telemetry::{LogConfig, MetricsConfig, Telemetry, TracingConfig};
use crate::tls::TlsSection;
use crate::validate::{Validate, ValidationError, ensure, nested};

mod uploads;

pub use uploads::UploadLimits;

/// Configuration of `kraken proxy`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ProxyConfig {
    /// Listening sockets.
    pub listen: ProxyListenConfig,
    /// The origin cluster blobs are uploaded to.
    pub origin: UpstreamConfig,
    /// How blobs map onto `origin.hosts` when no origin can say (the origins answer
    /// `Locations` from their own ring, which wins): keep it equal to the origins' `hashring`.
    pub hashring: HashRingConfig,
    /// Build-index hosts tags are written to.
    pub build_index: UpstreamConfig,
    /// Staging store for uploads in progress.
    pub store: StoreConfig,
    /// Uploads to the origins.
    pub upload: UploadConfig,
    /// Budgets on clients' upload sessions: how many, how large, how long idle.
    pub uploads: UploadLimits,
    /// Who may pull and push through the registry port.
    pub auth: RegistryAuthConfig,
    /// The certificate the registry port serves (HTTPS); plain HTTP without it.
    pub registry_tls: RegistryTlsConfig,
    /// Certificates for mutual TLS.
    pub tls: TlsSection,
    /// What a client or peer may hold of this component's servers: connections,
    /// handshake, header and idle timeouts ([`crate::limits`]). The gRPC server and the registry port.
    pub limits: crate::limits::ProxyLimits,
    /// Logging.
    pub log: LogConfig,
    /// Prometheus endpoint.
    pub metrics: MetricsConfig,
    /// Trace export.
    pub tracing: TracingConfig,
}

impl ProxyConfig {
    pub fn telemetry(&self) -> Telemetry<'_> {
        Telemetry {
            log: &self.log,
            metrics: &self.metrics,
            tracing: &self.tracing,
        }
    }
}

impl Validate for ProxyConfig {
    fn validate(&self) -> Result<(), ValidationError> {
        nested("listen", &self.listen)?;
        nested("origin", &self.origin)?;
        nested("hashring", &self.hashring)?;
        nested("build_index", &self.build_index)?;
        nested("store", &self.store)?;
        nested("upload", &self.upload)?;
        nested("uploads", &self.uploads)?;
        nested("auth", &self.auth)?;
        nested("registry_tls", &self.registry_tls)?;
        nested("tls", &self.tls)?;
        nested("limits", &self.limits)?;
        crate::component::validate_telemetry(self.telemetry())
    }
}

/// `listen:` of a proxy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ProxyListenConfig {
    /// Docker/OCI registry API (push and pull). Default `127.0.0.1:15000`: set it to the
    /// address pushers reach (with `auth` users and `registry_tls`) to open it up.
    pub registry: SocketAddr,
    /// `ProxyService` gRPC (prefetch, preheat).
    pub grpc: SocketAddr,
}

impl Default for ProxyListenConfig {
    fn default() -> Self {
        Self {
            // The write surface binds where the operator says: loopback until told otherwise.
            registry: SocketAddr::from((Ipv4Addr::LOCALHOST, 15000)),
            grpc: SocketAddr::from((Ipv4Addr::UNSPECIFIED, 15005)),
        }
    }
}

impl Validate for ProxyListenConfig {
    fn validate(&self) -> Result<(), ValidationError> {
        crate::net::distinct_tcp_listeners(&[("registry", self.registry), ("grpc", self.grpc)])
    }
}

/// `upload:` — how blobs are sent to the origins.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct UploadConfig {
    /// Bytes sent per upload chunk; a failed chunk is retried on its own.
    #[serde(with = "crate::units::bytes")]
    pub chunk_size: ByteSize,
}

impl Default for UploadConfig {
    fn default() -> Self {
        Self {
            chunk_size: ByteSize::mib(32),
        }
    }
}

impl Validate for UploadConfig {
    fn validate(&self) -> Result<(), ValidationError> {
        ensure(
            self.chunk_size.0 > 0,
            "chunk_size",
            "must be above 0 (e.g. `32MiB`)",
        )
    }
}
