//! `limits:` — how much a client or peer may hold of a server: connections, time to handshake
//! or send headers, idle time, concurrent requests. Every component has `limits.grpc`; agents
//! and the proxy have `limits.registry` (their Docker registry port); agents and origins have
//! `limits.p2p` (the QUIC peer endpoint).
//!
//! The defaults are safe for production: nothing an idle, silent or slow client does holds a
//! resource for longer than a handshake or header timeout, and no one client can open more
//! than a bounded share of connections or streams. They only need changing for an unusual
//! load (many thousands of agents per origin) or in tests (short timeouts).
//!
//! This crate only declares and validates the values; the transport crate turns them into its
//! server settings.

use std::marker::PhantomData;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::validate::{Validate, ValidationError, ensure, nested, positive_duration};

/// `limits.grpc:` — every gRPC server.
///
/// `D` supplies the component's default `request_timeout`: an origin's `Upload` spans a whole
/// blob transfer and a build-index `Put` checks every dependency, so they need more than a
/// tracker's announce. A type parameter (rather than an `Option` resolved later) keeps the
/// component default when only some keys of the section are written, and shows the real value
/// in the printed effective config.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(
    default,
    deny_unknown_fields,
    bound(serialize = "", deserialize = "D: RequestTimeoutDefault")
)]
pub struct GrpcLimitsConfig<D = StandardRequests> {
    /// Time to produce a response (for a stream: until it starts). Past it the call fails with
    /// `CANCELLED`.
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
    /// Concurrent requests on one client connection; more are shed with `UNAVAILABLE` rather
    /// than queued without bound.
    pub concurrency_per_connection: usize,
    /// Open connections at once; past it the server stops accepting until one closes, so a
    /// flood of idle connections cannot exhaust file descriptors.
    pub max_connections: usize,
    /// Time a client has to finish the TLS handshake after connecting.
    #[serde(with = "humantime_serde")]
    pub tls_handshake_timeout: Duration,
    /// Idle connections are pinged this often…
    #[serde(with = "humantime_serde")]
    pub keepalive_interval: Duration,
    /// …and closed when a ping goes unanswered this long, so a vanished client frees its slot.
    #[serde(with = "humantime_serde")]
    pub keepalive_timeout: Duration,
    /// Connections are closed gracefully after this age, so long-lived clients release their
    /// slots now and then and load spreads over a server that just joined.
    #[serde(with = "humantime_serde")]
    pub max_connection_age: Duration,
    #[serde(skip)]
    component: PhantomData<D>,
}

/// The default `request_timeout` of one component's gRPC server.
pub trait RequestTimeoutDefault {
    const REQUEST_TIMEOUT: Duration;
}

/// Tracker and agent: every call is short (an agent's `GetBlob` answers in-stream once the
/// blob is resolving).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StandardRequests;

impl RequestTimeoutDefault for StandardRequests {
    const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
}

/// Origin: `Upload`'s response spans a whole blob transfer (client streams are bounded by an
/// idle timeout instead, backend calls by their own timeouts).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OriginRequests;

impl RequestTimeoutDefault for OriginRequests {
    const REQUEST_TIMEOUT: Duration = Duration::from_secs(6 * 3600);
}

/// Build-index: a `Put` checks every dependency on the origins, which can take a while for a
/// large index on a busy cluster.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BuildIndexRequests;

impl RequestTimeoutDefault for BuildIndexRequests {
    const REQUEST_TIMEOUT: Duration = Duration::from_secs(120);
}

/// Proxy: a prefetch walks an image and asks the origins about each blob.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ProxyRequests;

impl RequestTimeoutDefault for ProxyRequests {
    const REQUEST_TIMEOUT: Duration = Duration::from_secs(300);
}

impl<D: RequestTimeoutDefault> Default for GrpcLimitsConfig<D> {
    fn default() -> Self {
        Self {
            request_timeout: D::REQUEST_TIMEOUT,
            concurrency_per_connection: 256,
            max_connections: 4096,
            tls_handshake_timeout: Duration::from_secs(10),
            keepalive_interval: Duration::from_secs(30),
            keepalive_timeout: Duration::from_secs(10),
            max_connection_age: Duration::from_secs(30 * 60),
            component: PhantomData,
        }
    }
}

impl<D> Validate for GrpcLimitsConfig<D> {
    fn validate(&self) -> Result<(), ValidationError> {
        positive_duration("request_timeout", self.request_timeout)?;
        ensure(
            self.concurrency_per_connection >= 1,
            "concurrency_per_connection",
            "must be at least 1",
        )?;
        ensure(
            self.max_connections >= 1,
            "max_connections",
            "must be at least 1",
        )?;
        positive_duration("tls_handshake_timeout", self.tls_handshake_timeout)?;
        positive_duration("keepalive_interval", self.keepalive_interval)?;
        positive_duration("keepalive_timeout", self.keepalive_timeout)?;
        positive_duration("max_connection_age", self.max_connection_age)
    }
}

/// `limits.grpc` of an origin (default `request_timeout`: 6h).
pub type OriginGrpcLimits = GrpcLimitsConfig<OriginRequests>;
/// `limits.grpc` of a build-index (default `request_timeout`: 2m).
pub type BuildIndexGrpcLimits = GrpcLimitsConfig<BuildIndexRequests>;
/// `limits.grpc` of a proxy (default `request_timeout`: 5m).
pub type ProxyGrpcLimits = GrpcLimitsConfig<ProxyRequests>;

/// `limits.registry:` — the Docker registry port of an agent or the proxy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HttpLimitsConfig {
    /// Open connections at once; past it the server stops accepting until one closes.
    pub max_connections: usize,
    /// Time a client has to finish the TLS handshake (when the port serves TLS).
    #[serde(with = "humantime_serde")]
    pub tls_handshake_timeout: Duration,
    /// Time a client has to send a request's headers once connected, and the longest an idle
    /// keep-alive connection is kept.
    #[serde(with = "humantime_serde")]
    pub header_read_timeout: Duration,
    /// Longest pause between two pieces of a request body; a stalled upload fails after it.
    /// Bodies of any size stream for as long as bytes keep moving.
    #[serde(with = "humantime_serde")]
    pub body_idle_timeout: Duration,
    /// Concurrent requests on one HTTP/2 connection.
    pub max_concurrent_streams: u32,
    /// Requests per second one client IP may make (bursts of twice as many); past it,
    /// `429 TOOMANYREQUESTS` with `Retry-After`. `0` turns the limit off. Behind a load
    /// balancer every client shares its IP: raise it there.
    pub requests_per_second_per_client: u32,
}

impl Default for HttpLimitsConfig {
    fn default() -> Self {
        Self {
            max_connections: 1024,
            tls_handshake_timeout: Duration::from_secs(10),
            header_read_timeout: Duration::from_secs(30),
            body_idle_timeout: Duration::from_secs(60),
            max_concurrent_streams: 128,
            requests_per_second_per_client: 500,
        }
    }
}

impl Validate for HttpLimitsConfig {
    fn validate(&self) -> Result<(), ValidationError> {
        ensure(
            self.max_connections >= 1,
            "max_connections",
            "must be at least 1",
        )?;
        positive_duration("tls_handshake_timeout", self.tls_handshake_timeout)?;
        positive_duration("header_read_timeout", self.header_read_timeout)?;
        positive_duration("body_idle_timeout", self.body_idle_timeout)?;
        ensure(
            self.max_concurrent_streams >= 1,
            "max_concurrent_streams",
            "must be at least 1",
        )
    }
}

/// `limits.p2p:` — inbound connections to the QUIC peer endpoint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct P2pLimitsConfig {
    /// Time an inbound handshake may take. Handshakes run concurrently, so a slow or silent
    /// one only holds its own slot, for at most this long.
    #[serde(with = "humantime_serde")]
    pub handshake_timeout: Duration,
    /// Inbound handshakes in progress at once; further attempts are refused until one ends.
    pub max_pending_handshakes: usize,
    /// Inbound connections (established or handshaking) from one IP address at once. Keep it
    /// above the peers sharing an address (a loopback test cluster runs up to ~16).
    pub max_connections_per_ip: usize,
    /// Piece streams a peer may have open to us on one connection. Each may hold one
    /// requested piece in memory while it arrives, so this bounds what a peer can make us
    /// buffer.
    pub max_piece_streams_per_connection: u32,
}

impl Default for P2pLimitsConfig {
    fn default() -> Self {
        Self {
            handshake_timeout: Duration::from_secs(10),
            max_pending_handshakes: 256,
            max_connections_per_ip: 64,
            max_piece_streams_per_connection: 64,
        }
    }
}

impl Validate for P2pLimitsConfig {
    fn validate(&self) -> Result<(), ValidationError> {
        positive_duration("handshake_timeout", self.handshake_timeout)?;
        ensure(
            self.max_pending_handshakes >= 1,
            "max_pending_handshakes",
            "must be at least 1",
        )?;
        ensure(
            self.max_connections_per_ip >= 1,
            "max_connections_per_ip",
            "must be at least 1",
        )?;
        ensure(
            self.max_piece_streams_per_connection >= 1,
            "max_piece_streams_per_connection",
            "must be at least 1",
        )
    }
}

/// `limits:` of a tracker.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TrackerLimits {
    /// The `TrackerService` gRPC port.
    pub grpc: GrpcLimitsConfig,
}

impl Validate for TrackerLimits {
    fn validate(&self) -> Result<(), ValidationError> {
        nested("grpc", &self.grpc)
    }
}

/// `limits:` of a build-index.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BuildIndexLimits {
    /// The `TagService` gRPC port.
    pub grpc: BuildIndexGrpcLimits,
}

impl Validate for BuildIndexLimits {
    fn validate(&self) -> Result<(), ValidationError> {
        nested("grpc", &self.grpc)
    }
}

/// `limits:` of an origin.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OriginLimits {
    /// The `BlobService` gRPC port.
    pub grpc: OriginGrpcLimits,
    /// The QUIC peer endpoint.
    pub p2p: P2pLimitsConfig,
}

impl Validate for OriginLimits {
    fn validate(&self) -> Result<(), ValidationError> {
        nested("grpc", &self.grpc)?;
        nested("p2p", &self.p2p)
    }
}

/// `limits:` of an agent.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AgentLimits {
    /// The `AgentService` gRPC port.
    pub grpc: GrpcLimitsConfig,
    /// The read-only registry port.
    pub registry: HttpLimitsConfig,
    /// The QUIC peer endpoint.
    pub p2p: P2pLimitsConfig,
}

impl Validate for AgentLimits {
    fn validate(&self) -> Result<(), ValidationError> {
        nested("grpc", &self.grpc)?;
        nested("registry", &self.registry)?;
        nested("p2p", &self.p2p)
    }
}

/// `limits:` of a proxy.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ProxyLimits {
    /// The `ProxyService` gRPC port.
    pub grpc: ProxyGrpcLimits,
    /// The registry port (push and pull).
    pub registry: HttpLimitsConfig,
}

impl Validate for ProxyLimits {
    fn validate(&self) -> Result<(), ValidationError> {
        nested("grpc", &self.grpc)?;
        nested("registry", &self.registry)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{TrackerConfig, load_from_str};

    fn tracker(yaml: &str) -> Result<TrackerConfig, crate::ConfigError> {
        load_from_str::<TrackerConfig>(
            "tracker.yaml",
            &format!("origin:\n  hosts:\n    static: [origin1:15002]\n{yaml}"),
        )
        .map(|loaded| loaded.config)
    }

    #[test]
    fn component_request_timeouts_survive_a_partial_section() {
        let origin: OriginLimits =
            serde_saphyr::from_str("grpc:\n  max_connections: 10\n").unwrap();
        assert_eq!(origin.grpc.request_timeout, Duration::from_secs(6 * 3600));
        assert_eq!(origin.grpc.max_connections, 10);
        assert_eq!(
            BuildIndexLimits::default().grpc.request_timeout,
            Duration::from_secs(120)
        );
        assert_eq!(
            ProxyLimits::default().grpc.request_timeout,
            Duration::from_secs(300)
        );
        assert_eq!(
            AgentLimits::default().grpc.request_timeout,
            Duration::from_secs(30)
        );
    }

    #[test]
    fn keys_are_read_and_checked() {
        let config =
            tracker("limits:\n  grpc:\n    tls_handshake_timeout: 300ms\n    max_connections: 5\n")
                .unwrap();
        assert_eq!(
            config.limits.grpc.tls_handshake_timeout,
            Duration::from_millis(300)
        );
        assert_eq!(config.limits.grpc.max_connections, 5);
        for (yaml, key) in [
            (
                "limits:\n  grpc:\n    max_connections: 0\n",
                "limits.grpc.max_connections",
            ),
            (
                "limits:\n  grpc:\n    request_timeout: 0s\n",
                "limits.grpc.request_timeout",
            ),
        ] {
            let error = tracker(yaml).unwrap_err().to_string();
            assert!(error.contains(key), "{key}: {error}");
        }
        // A tracker has no registry port: the key is refused, not ignored.
        let error = tracker("limits:\n  registry: {}\n")
            .unwrap_err()
            .to_string();
        assert!(error.contains("registry"), "{error}");
    }
}
