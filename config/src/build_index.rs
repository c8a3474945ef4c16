//! `build-index.yaml` — tags: storage, lookup, and replication to other clusters.

use std::collections::BTreeMap;
use std::fmt;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use serde::de::{self, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize};

use crate::backend::{AuthConfig, BackendConfig, Stored, validate_backends};
use crate::cluster::{HashRingConfig, HostList, UpstreamConfig};
use crate::pattern::Pattern;
use crate::remote::{RemoteTlsSection, TrustedBuildIndexRemote, trusted_cas, validate_remotes};
use crate::telemetry::{LogConfig, MetricsConfig, Telemetry, TracingConfig};
use crate::tls::TlsSection;
use crate::validate::{Validate, ValidationError, ensure, nested};

/// Configuration of `kraken build-index`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BuildIndexConfig {
    /// Listening sockets.
    pub listen: BuildIndexListenConfig,
    /// Local tag storage.
    pub tag_store: TagStoreConfig,
    /// Storage backends for tags by namespace; the first matching rule wins.
    pub backends: Vec<BackendConfig>,
    /// Credentials referenced by the backends' `username`.
    pub auth: AuthConfig,
    /// The local origin cluster, asked whether a tag's blobs exist before it is accepted.
    pub origin: UpstreamConfig,
    /// How blobs map onto `origin.hosts` when no origin can say (the origins answer
    /// `Locations` from their own ring, which wins): keep it equal to the origins' `hashring`.
    pub hashring: HashRingConfig,
    /// The other build-index hosts of this cluster, which receive a copy of every tag write.
    /// Empty for a single build-index.
    pub cluster: HostList,
    /// Remote clusters tags are replicated to, by cluster name (`[a-z0-9-]+`): where the
    /// remote build-index is, which tags go there, and the TLS to reach it.
    pub remotes: BTreeMap<String, BuildIndexRemote>,
    /// Remote clusters whose CAs this build-index accepts: their build-index may `Has` and
    /// `Put` the tags listed here, their origins may ask for our origins' addresses, and
    /// nothing else. Empty: only our own CA.
    pub trusted_remotes: BTreeMap<String, TrustedBuildIndexRemote>,
    /// The durable queue of replication tasks.
    pub replication: ReplicationConfig,
    /// How each tag's dependencies are found, by namespace regex; the first match wins.
    pub tag_types: Vec<TagTypeRule>,
    /// Certificates for mutual TLS (also used towards remote clusters).
    pub tls: TlsSection,
    /// What a client or peer may hold of this component's servers: connections,
    /// handshake, header and idle timeouts ([`crate::limits`]). The gRPC server.
    pub limits: crate::limits::BuildIndexLimits,
    /// Logging.
    pub log: LogConfig,
    /// Prometheus endpoint.
    pub metrics: MetricsConfig,
    /// Trace export.
    pub tracing: TracingConfig,
}

impl Default for BuildIndexConfig {
    fn default() -> Self {
        Self {
            listen: BuildIndexListenConfig::default(),
            tag_store: TagStoreConfig::default(),
            backends: Vec::new(),
            auth: AuthConfig::default(),
            origin: UpstreamConfig::default(),
            hashring: HashRingConfig::default(),
            cluster: HostList::default(),
            remotes: BTreeMap::new(),
            trusted_remotes: BTreeMap::new(),
            replication: ReplicationConfig::default(),
            tag_types: vec![TagTypeRule {
                namespace: Pattern::any(),
                tag_type: TagType::Docker,
            }],
            tls: TlsSection::default(),
            limits: crate::limits::BuildIndexLimits::default(),
            log: LogConfig::default(),
            metrics: MetricsConfig::default(),
            tracing: TracingConfig::default(),
        }
    }
}

impl BuildIndexConfig {
    pub fn telemetry(&self) -> Telemetry<'_> {
        Telemetry {
            log: &self.log,
            metrics: &self.metrics,
            tracing: &self.tracing,
        }
    }

    /// The names of the remote clusters a tag must be replicated to.
    pub fn remotes_for<'a>(&'a self, tag: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.remotes
            .iter()
            .filter(move |(_, remote)| remote.tags.iter().any(|rule| rule.is_match(tag)))
            .map(|(name, _)| name.as_str())
    }

    /// `(name, ca)` of every trusted remote cluster, for `kraken_tls::TrustDomains::load`.
    pub fn trusted_remote_cas(&self) -> Vec<(String, PathBuf)> {
        trusted_cas(&self.trusted_remotes, |remote| &remote.ca)
    }

    /// The tag type of `namespace` (`docker` when no rule matches).
    pub fn tag_type_for(&self, namespace: &str) -> TagType {
        self.tag_types
            .iter()
            .find(|rule| rule.namespace.is_match(namespace))
            .map_or(TagType::Docker, |rule| rule.tag_type)
    }
}

impl Validate for BuildIndexConfig {
    fn validate(&self) -> Result<(), ValidationError> {
        nested("tag_store", &self.tag_store)?;
        nested("auth", &self.auth)?;
        validate_backends(&self.backends, &self.auth, Stored::Tags)?;
        ensure(
            !self.tag_store.write_through || !self.backends.is_empty(),
            "tag_store.write_through",
            "is on but `backends` is empty: add a backend for tags, or turn write_through off",
        )?;
        nested("origin", &self.origin)?;
        nested("hashring", &self.hashring)?;
        self.cluster
            .validate_optional()
            .map_err(|e| e.within("cluster"))?;
        validate_remotes("remotes", &self.remotes)?;
        validate_remotes("trusted_remotes", &self.trusted_remotes)?;
        nested("replication", &self.replication)?;
        nested("tls", &self.tls)?;
        nested("limits", &self.limits)?;
        crate::component::validate_telemetry(self.telemetry())
    }
}

/// `remotes.<name>:` — one remote cluster this build-index replicates tags to.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct BuildIndexRemote {
    /// The remote cluster's build-index hosts.
    pub build_index: UpstreamConfig,
    /// Regexes (unanchored) of the `repository:tag` names to replicate there.
    pub tags: Vec<Pattern>,
    /// Mutual TLS towards the remote: its CA, and optionally another certificate than ours.
    pub tls: RemoteTlsSection,
}

impl Validate for BuildIndexRemote {
    fn validate(&self) -> Result<(), ValidationError> {
        nested("build_index", &self.build_index)?;
        ensure(
            !self.tags.is_empty(),
            "tags",
            "no rules: list the tag regexes to replicate (`.*` for every tag), or remove this \
             remote",
        )?;
        nested("tls", &self.tls)
    }
}

/// What a remote was before remotes had names and TLS; refused with the shape to use.
const OLD_REMOTE_SHAPE: &str = "this is the old `remotes: {host:port: [tag regexes]}` shape; a \
    remote is now a named cluster with its own CA: `remotes: {NAME: {build_index: {hosts: \
    {static: [host:port]}}, tags: [regex, ...], tls: {ca: FILE}}}`";

/// The fields of [`BuildIndexRemote`] as written: deserialized by hand so the old list shape
/// gets a message naming the new one, at its own key (an untagged enum would lose both).
#[derive(Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct BuildIndexRemoteFields {
    build_index: UpstreamConfig,
    tags: Vec<Pattern>,
    tls: RemoteTlsSection,
}

impl<'de> Deserialize<'de> for BuildIndexRemote {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct RemoteVisitor;

        impl<'de> Visitor<'de> for RemoteVisitor {
            type Value = BuildIndexRemote;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a remote cluster: `{build_index, tags, tls}`")
            }

            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
                let fields = BuildIndexRemoteFields::deserialize(
                    de::value::MapAccessDeserializer::new(map),
                )?;
                Ok(BuildIndexRemote {
                    build_index: fields.build_index,
                    tags: fields.tags,
                    tls: fields.tls,
                })
            }

            fn visit_seq<A: SeqAccess<'de>>(self, _: A) -> Result<Self::Value, A::Error> {
                Err(de::Error::custom(OLD_REMOTE_SHAPE))
            }

            fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
                // `b:` with nothing under it: every key at its default, which validation
                // then reports key by key.
                Ok(BuildIndexRemote::default())
            }
        }

        deserializer.deserialize_any(RemoteVisitor)
    }
}

/// `listen:` of a build-index.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BuildIndexListenConfig {
    /// `TagService` gRPC.
    pub grpc: SocketAddr,
}

impl Default for BuildIndexListenConfig {
    fn default() -> Self {
        Self {
            grpc: SocketAddr::from((Ipv4Addr::UNSPECIFIED, 15004)),
        }
    }
}

/// `tag_store:` — tags on local disk.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TagStoreConfig {
    /// Directory of the local tag files.
    pub dir: PathBuf,
    /// Write a tag to its backend before acknowledging the write (otherwise it is queued).
    pub write_through: bool,
    /// Tags of a `registry_tag` namespace (pull-through): how long an answer from the
    /// upstream registry is used before the upstream is asked again. `0s` asks on every
    /// lookup.
    #[serde(with = "humantime_serde")]
    pub tag_ttl: Duration,
    /// Tags of a `registry_tag` namespace: while the upstream cannot be reached, its last
    /// answer is served up to this old (counted from when the upstream last confirmed it);
    /// older, the lookup fails. `0s` never serves a stale tag.
    #[serde(with = "humantime_serde")]
    pub max_stale: Duration,
}

impl Default for TagStoreConfig {
    fn default() -> Self {
        Self {
            dir: PathBuf::from("/var/lib/kraken/tags"),
            write_through: true,
            tag_ttl: Duration::from_secs(5 * 60),
            max_stale: Duration::from_secs(24 * 60 * 60),
        }
    }
}

impl Validate for TagStoreConfig {
    fn validate(&self) -> Result<(), ValidationError> {
        ensure(
            !self.dir.as_os_str().is_empty(),
            "dir",
            "must be a directory path",
        )
    }
}

/// `replication:` — the durable queue of tag replication tasks; a task is retried until the
/// remote has the tag and all its blobs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ReplicationConfig {
    /// Directory holding the queue; keep it on persistent storage.
    pub dir: PathBuf,
    /// Delay before the first retry; doubles on each failure.
    #[serde(with = "humantime_serde")]
    pub retry_interval: Duration,
    /// Upper bound of the retry delay. There is no attempt limit.
    #[serde(with = "humantime_serde")]
    pub max_retry_interval: Duration,
    /// Tasks (tag, remote) worked on at once.
    pub workers: usize,
    /// Blobs of one task sent at once (each by the local origin that owns it).
    pub blob_concurrency: usize,
    /// How long a `cluster:` peer holds its copy of a replication task before running it
    /// (peer i of the list waits i + 1 times this): the host that took the push normally
    /// finishes first, and the peer's run then only finds the remote up to date.
    #[serde(with = "humantime_serde")]
    pub peer_delay: Duration,
    /// How long a tag write waits for each `cluster:` peer to take its copy before it is
    /// acknowledged anyway; a peer that did not is retried from the queue.
    #[serde(with = "humantime_serde")]
    pub peer_timeout: Duration,
}

impl Default for ReplicationConfig {
    fn default() -> Self {
        Self {
            dir: PathBuf::from("/var/lib/kraken/replication"),
            retry_interval: Duration::from_secs(30),
            max_retry_interval: Duration::from_secs(10 * 60),
            workers: 4,
            blob_concurrency: 4,
            peer_delay: Duration::from_secs(10 * 60),
            peer_timeout: Duration::from_secs(5),
        }
    }
}

impl ReplicationConfig {
    /// More than this many tasks or blobs at once only queues more requests at the origins.
    pub const MAX_CONCURRENCY: usize = 64;
}

impl Validate for ReplicationConfig {
    fn validate(&self) -> Result<(), ValidationError> {
        crate::writeback::retry_queue(&self.dir, self.retry_interval, self.max_retry_interval)?;
        for (key, value) in [
            ("workers", self.workers),
            ("blob_concurrency", self.blob_concurrency),
        ] {
            ensure(
                (1..=Self::MAX_CONCURRENCY).contains(&value),
                key,
                format!(
                    "must be between 1 and {} (got {value})",
                    Self::MAX_CONCURRENCY
                ),
            )?;
        }
        Ok(())
    }
}

/// One `tag_types:` rule.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TagTypeRule {
    /// Regex on the tag's repository (unanchored).
    pub namespace: Pattern,
    /// How the tag's dependencies are found.
    #[serde(rename = "type")]
    pub tag_type: TagType,
}

/// How a tag's dependencies are found before it is accepted or replicated.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TagType {
    /// The tag points at an image manifest or index, whose references (config, layers, child
    /// manifests) are its dependencies.
    #[default]
    Docker,
    /// The tag points at an opaque blob, its only dependency.
    Default,
}
