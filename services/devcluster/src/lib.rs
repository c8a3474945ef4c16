//! A whole Kraken cluster in one process on loopback: tracker, origins, build-index, proxy and
//! agents (each agent with its registry API), a filesystem storage backend, the in-memory peer
//! store and a generated mutual-TLS PKI, all under one data directory.
//!
//! `kraken devcluster` runs it with fixed, documented ports so a user can point tools at it; the
//! workspace integration tests run it with ephemeral ports. It must never weaken anything to make
//! a demo easier: every connection uses the same mutual TLS as a production cluster.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use kraken_agent::Agent;
use kraken_backend::Backends;
use kraken_buildindex::BuildIndex;
use kraken_config::Pattern;
use kraken_config::agent::AgentConfig;
use kraken_config::backend::{BackendConfig, BackendKind, FsBackendConfig, RegistryBackendConfig};
use kraken_config::build_index::{BuildIndexConfig, BuildIndexRemote};
use kraken_config::cluster::{HostList, UpstreamConfig};
use kraken_config::origin::{OriginConfig, OriginRemote};
use kraken_config::proxy::ProxyConfig;
use kraken_config::registry_auth::RegistryTlsConfig;
use kraken_config::remote::{RemoteTlsSection, TrustedBuildIndexRemote, TrustedRemote};
use kraken_config::store::StoreConfig;
use kraken_config::tls::TlsSection;
use kraken_config::tracker::TrackerConfig;
use kraken_core::{Digest, Namespace};
use kraken_oci::TaggedName;
use kraken_oci::media_type::{OCI_CONFIG, OCI_LAYER, OCI_MANIFEST};
use kraken_origin::Origin;
use kraken_originclient::OriginClient;
use kraken_proto::agent::v1::GetBlobRequest;
use kraken_proto::agent::v1::agent_service_client::AgentServiceClient;
use kraken_proxy::Proxy;
use kraken_tagclient::TagClient;
use kraken_tls::{DevPki, DevPkiOptions, Role, TlsMaterial, generate_dev_pki};
use kraken_transport::ring::{Member, Ring};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

mod multi;
pub use multi::{CLUSTER_PORT_STRIDE, DevClusters, SELF_CHECK_TAG, cluster_name};

/// Where components listen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ports {
    /// Any free ports (tests).
    Ephemeral,
    /// Kraken's devcluster layout from `base` (15000): the proxy's registry on base; origins'
    /// gRPC on base+2, +12, +22 and QUIC on base+1, +11, +21; the tracker on base+3; the
    /// build-index on base+4; the proxy's gRPC on base+5; agents' registry on base+1000,
    /// +1010, …, gRPC on base+1002, +1012, … and QUIC on base+1001, +1011, ….
    Fixed { base: u16 },
}

/// Why the cluster did not start.
#[derive(Debug, thiserror::Error)]
pub enum DevClusterError {
    #[error("creating the data directory {path}")]
    Dir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("setting up the development PKI")]
    Pki(#[from] kraken_tls::TlsError),
    #[error("binding {what} on {addr} (is another cluster running? pick --base-port)")]
    Bind {
        what: String,
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("starting origin {index}")]
    Origin {
        index: usize,
        #[source]
        source: kraken_origin::OriginError,
    },
    #[error("starting the build-index")]
    BuildIndex(#[source] kraken_buildindex::BuildIndexError),
    #[error("starting the proxy")]
    Proxy(#[source] kraken_proxy::ProxyError),
    #[error("starting agent {index}")]
    Agent {
        index: usize,
        #[source]
        source: kraken_agent::AgentError,
    },
    #[error("self-check: {0}")]
    Check(String),
    #[error("no running origin listens on {0}")]
    NoSuchOrigin(SocketAddr),
    #[error("the build-index is not running")]
    BuildIndexStopped,
    #[error("wiping {path}")]
    Wipe {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Adjusts origin `index`'s configuration before it starts (tests: short health-check and
/// retry intervals, bandwidth caps, …).
pub type OriginConfigHook = Arc<dyn Fn(usize, &mut OriginConfig) + Send + Sync>;

/// Adjusts the configuration of the tracker, the build-index, the proxy or agent `index`
/// before it starts (tests: short server limits, tracker caps, …).
#[derive(Clone, Default)]
pub struct ConfigHooks {
    pub tracker: Option<ConfigHook<TrackerConfig>>,
    pub build_index: Option<ConfigHook<BuildIndexConfig>>,
    pub proxy: Option<ConfigHook<ProxyConfig>>,
    pub agents: Option<AgentConfigHook>,
}

/// Adjusts one component's configuration.
pub type ConfigHook<C> = Arc<dyn Fn(&mut C) + Send + Sync>;

/// Adjusts agent `index`'s configuration.
pub type AgentConfigHook = Arc<dyn Fn(usize, &mut AgentConfig) + Send + Sync>;

impl fmt::Debug for ConfigHooks {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConfigHooks")
            .field("tracker", &self.tracker.is_some())
            .field("build_index", &self.build_index.is_some())
            .field("proxy", &self.proxy.is_some())
            .field("agents", &self.agents.is_some())
            .finish()
    }
}

/// How the origins are set up; kept by the cluster so that a stopped origin restarts the same.
#[derive(Clone, Default)]
struct OriginSetup {
    hook: Option<OriginConfigHook>,
    /// Backends shared by every origin instead of the fs backend under the data directory.
    backends: Option<Backends>,
}

impl fmt::Debug for OriginSetup {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OriginSetup")
            .field("hook", &self.hook.as_ref().map(|_| "Fn"))
            .field("backends", &self.backends)
            .finish()
    }
}

/// How [`DevCluster::stop_origin`] stops an origin.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    /// [`Origin::shutdown`]: drains requests, reports NOT_SERVING first.
    Graceful,
    /// [`Origin::kill`]: as abrupt as an in-process origin gets.
    Kill,
}

/// An origin taken out by [`DevCluster::stop_origin`]: its addresses and data stay reserved
/// for [`DevCluster::restart_origin`].
#[derive(Debug)]
pub struct StoppedOrigin {
    index: usize,
    grpc_addr: SocketAddr,
    p2p_addr: SocketAddr,
    store_dir: PathBuf,
}

impl StoppedOrigin {
    /// Its gRPC address, which is also its ring label.
    pub fn grpc_addr(&self) -> SocketAddr {
        self.grpc_addr
    }

    /// Its store directory (blobs and, by default, the write-back queue).
    pub fn store_dir(&self) -> &Path {
        &self.store_dir
    }

    /// Deletes everything the origin kept on disk, as if its disk had been replaced.
    pub fn wipe_store(&self) -> Result<(), DevClusterError> {
        remove_dir_all(&self.store_dir)
    }
}

/// The build-index taken out by [`DevCluster::stop_build_index`]: its address and disk stay
/// for [`DevCluster::restart_build_index`].
#[derive(Debug)]
pub struct StoppedBuildIndex {
    addr: SocketAddr,
    dirs: Vec<PathBuf>,
}

impl StoppedBuildIndex {
    /// Its gRPC address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Deletes what the build-index kept on its own disk (tags and pending replications), as
    /// if the disk had been replaced; the tag backend is storage shared by the cluster and
    /// stays.
    pub fn wipe(&self) -> Result<(), DevClusterError> {
        for dir in &self.dirs {
            remove_dir_all(dir)?;
        }
        Ok(())
    }
}

/// Another cluster this one replicates tags and their blobs to
/// ([`DevClusterBuilder::remote`]).
#[derive(Debug, Clone)]
pub struct RemoteSpec {
    /// The remote cluster's build-index (gRPC).
    pub build_index: SocketAddr,
    /// The remote cluster's CA certificate (PEM), which its servers' certificates chain to.
    pub ca: PathBuf,
    /// Regexes of the `repository:tag` names to replicate there.
    pub tags: Vec<Pattern>,
}

/// What to start.
#[derive(Debug, Clone)]
pub struct DevClusterBuilder {
    dir: PathBuf,
    origins: usize,
    agents: usize,
    max_replica: usize,
    ports: Ports,
    origin_setup: OriginSetup,
    secure_registry: bool,
    hooks: ConfigHooks,
    name: Option<String>,
    remotes: Vec<(String, RemoteSpec)>,
    trusted: Vec<(String, PathBuf)>,
    /// Namespaces pulled through an upstream registry (`host:port`, plain HTTP).
    pull_through: Vec<(Pattern, String)>,
}

/// Where [`DevClusterBuilder::secure_registry`] keeps the registry login, under the data
/// directory.
pub const CREDENTIALS_FILE: &str = "registry-credentials";

/// Where a secure registry's CA is copied as `ca.crt`, for `docker` (`certs.d`) and
/// `skopeo --cert-dir`.
pub const REGISTRY_CERTS_DIR: &str = "registry-certs";

/// bcrypt's cost for the generated password: the default (12) costs a quarter second per
/// check on a small machine, which a throwaway local password does not need.
const BCRYPT_COST: u32 = 10;

/// The registry login kept in `<dir>/registry-credentials`, made on first use (mode 0600).
fn registry_credentials(dir: &Path) -> Result<(String, String), DevClusterError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;

    let path = dir.join(CREDENTIALS_FILE);
    if let Ok(text) = std::fs::read_to_string(&path)
        && let Some((user, password)) = text.trim().split_once(':')
        && !password.is_empty()
    {
        return Ok((user.to_owned(), password.to_owned()));
    }
    let password: String = {
        use rand::Rng;
        const ALPHABET: &[u8] = b"abcdefghijkmnopqrstuvwxyzABCDEFGHJKLMNPQRSTUVWXYZ23456789";
        let mut rng = rand::rng();
        (0..24)
            .map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char)
            .collect()
    };
    let user = "kraken".to_owned();
    let io = |source| DevClusterError::Dir {
        path: path.clone(),
        source,
    };
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&path)
        .map_err(io)?;
    writeln!(file, "{user}:{password}").map_err(io)?;
    Ok((user, password))
}

/// A running cluster. [`DevCluster::shutdown`] stops it gracefully.
#[derive(Debug)]
pub struct DevCluster {
    pub dir: PathBuf,
    pub pki: DevPki,
    pub tracker_addr: SocketAddr,
    pub origins: Vec<Origin>,
    pub agents: Vec<Agent>,
    /// `None` while stopped ([`DevCluster::stop_build_index`]).
    build_index: Option<BuildIndex>,
    build_index_addr: SocketAddr,
    pub proxy: Proxy,
    origin_labels: Vec<String>,
    max_replica: usize,
    /// What started the origins, to restart one the same way.
    builder: DevClusterBuilder,
    tracker_stop: CancellationToken,
    tracker_task: JoinHandle<()>,
    /// The registry login (`user`, `password`) of a secure registry.
    registry_login: Option<(String, String)>,
}

impl DevCluster {
    /// Three origins (two replicas of each blob) and two agents under `dir`.
    pub fn builder(dir: impl Into<PathBuf>) -> DevClusterBuilder {
        DevClusterBuilder {
            dir: dir.into(),
            origins: 3,
            agents: 2,
            max_replica: 2,
            ports: Ports::Ephemeral,
            origin_setup: OriginSetup::default(),
            secure_registry: false,
            hooks: ConfigHooks::default(),
            name: None,
            remotes: Vec::new(),
            trusted: Vec::new(),
            pull_through: Vec::new(),
        }
    }
}

/// A rule sending `namespace` to the plain-HTTP, anonymous registry at `upstream`, as `kind`
/// (`registry_blob` for origins, `registry_tag` for the build-index).
fn pull_through_rule(
    namespace: &Pattern,
    upstream: &str,
    kind: fn(RegistryBackendConfig) -> BackendKind,
) -> BackendConfig {
    let mut registry = RegistryBackendConfig {
        address: upstream.to_owned(),
        ..RegistryBackendConfig::default()
    };
    registry.security.tls.client.disabled = true;
    BackendConfig {
        namespace: namespace.clone(),
        backend: kind(registry),
        bandwidth: Default::default(),
    }
}

impl DevClusterBuilder {
    /// Pulls the namespaces `namespace` matches through the registry at `upstream`
    /// (`host:port`, plain HTTP, anonymous): origins fetch their blobs with `registry_blob`,
    /// the build-index resolves their tags with `registry_tag`. The rules go before every
    /// other; repeat for several upstreams.
    pub fn pull_through(mut self, namespace: Pattern, upstream: impl Into<String>) -> Self {
        self.pull_through.push((namespace, upstream.into()));
        self
    }

    pub fn origins(mut self, n: usize) -> Self {
        self.origins = n.max(1);
        self
    }

    pub fn agents(mut self, n: usize) -> Self {
        self.agents = n;
        self
    }

    pub fn max_replica(mut self, n: usize) -> Self {
        self.max_replica = n.max(1);
        self
    }

    pub fn ports(mut self, ports: Ports) -> Self {
        self.ports = ports;
        self
    }

    /// Runs `hook` on each origin's configuration (with the origin's index) before it starts,
    /// and again on restarts.
    pub fn configure_origins(
        mut self,
        hook: impl Fn(usize, &mut OriginConfig) + Send + Sync + 'static,
    ) -> Self {
        self.origin_setup.hook = Some(Arc::new(hook));
        self
    }

    /// Serves the proxy's registry over TLS (the dev CA's proxy certificate) and requires a
    /// login to push: a user `kraken` with a generated password, written as `user:password`
    /// to `<dir>/registry-credentials` (kept across restarts). Without it the registry is
    /// plain HTTP and anyone reaching it may push, which suits tests on loopback.
    pub fn secure_registry(mut self, on: bool) -> Self {
        self.secure_registry = on;
        self
    }

    /// Runs the hooks in `hooks` on the other components' configurations before they start.
    pub fn configure(mut self, hooks: ConfigHooks) -> Self {
        self.hooks = hooks;
        self
    }

    /// Names the cluster (`a`, `b`, …: the name other clusters know it by in their
    /// `remotes:` and `trusted_remotes:`), shown in [`DevCluster::summary`].
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }

    /// Replicates the tags matching `remote.tags`, and every blob under them, to the cluster
    /// `name`: the build-index's and every origin's `remotes.<name>`, dialed with mutual TLS
    /// that trusts `remote.ca` and presents this cluster's own certificates.
    pub fn remote(mut self, name: impl Into<String>, remote: RemoteSpec) -> Self {
        self.remotes.push((name.into(), remote));
        self
    }

    /// Accepts the cluster `name`, whose CA certificate is `ca`, as a replication source: its
    /// build-index may put any tag here and its origins may upload blobs (the build-index's
    /// and every origin's `trusted_remotes.<name>`), and nothing else.
    pub fn trust(mut self, name: impl Into<String>, ca: impl Into<PathBuf>) -> Self {
        self.trusted.push((name.into(), ca.into()));
        self
    }

    /// Every origin uses `backends` (e.g. a backend a test can make fail) instead of the fs
    /// backend under the data directory.
    pub fn origin_backends(mut self, backends: Backends) -> Self {
        self.origin_setup.backends = Some(backends);
        self
    }

    pub async fn start(self) -> Result<DevCluster, DevClusterError> {
        kraken_tls::install_crypto_provider();
        let dir = self.dir.clone();
        std::fs::create_dir_all(&dir).map_err(|source| DevClusterError::Dir {
            path: dir.clone(),
            source,
        })?;
        let pki = open_pki(&dir)?;

        // Origins first: the ring needs every origin's address before any of them starts.
        let mut listeners = Vec::new();
        for i in 0..self.origins {
            listeners.push(bind(self.addr(Slot::OriginGrpc(i)), "origin gRPC").await?);
        }
        let origin_labels: Vec<String> = listeners
            .iter()
            .filter_map(|l| l.local_addr().ok())
            .map(|a| a.to_string())
            .collect();
        let mut origins = Vec::new();
        for (index, listener) in listeners.into_iter().enumerate() {
            let config = self.origin_config(&pki, &origin_labels, index);
            origins.push(self.start_origin(&pki, config, listener, index).await?);
        }

        let tracker_listener = bind(self.addr(Slot::Tracker), "tracker gRPC").await?;
        let tracker_addr = local(&tracker_listener)?;
        let tracker_stop = CancellationToken::new();
        let mut tracker_config = TrackerConfig {
            listen: kraken_config::tracker::TrackerListenConfig { grpc: tracker_addr },
            origin: UpstreamConfig::of(origin_labels.clone()),
            announce_interval: Duration::from_millis(500),
            tls: tls_section(&pki, Role::Tracker),
            ..TrackerConfig::default()
        };
        if let Some(hook) = &self.hooks.tracker {
            hook(&mut tracker_config);
        }
        let stop = tracker_stop.clone();
        let tracker_tls = tls(&pki, Role::Tracker)?;
        let tracker_task = tokio::spawn(async move {
            if let Err(error) = kraken_tracker::run(
                tracker_config,
                tracker_tls,
                tracker_listener,
                stop.cancelled_owned(),
            )
            .await
            {
                tracing::error!(%error, "tracker stopped with an error");
            }
        });

        let build_index = {
            let listener = bind(self.addr(Slot::BuildIndex), "build-index gRPC").await?;
            self.start_build_index(&pki, &origin_labels, listener)
                .await?
        };
        let build_index_addr = build_index.addr();
        let registry_login = if self.secure_registry {
            Some(registry_credentials(&dir)?)
        } else {
            None
        };
        let proxy = {
            let registry = bind(self.addr(Slot::ProxyRegistry), "proxy registry").await?;
            let grpc = bind(self.addr(Slot::ProxyGrpc), "proxy gRPC").await?;
            let mut config = ProxyConfig {
                origin: UpstreamConfig::of(origin_labels.clone()),
                build_index: UpstreamConfig::of([build_index_addr.to_string()]),
                tls: tls_section(&pki, Role::Proxy),
                ..ProxyConfig::default()
            };
            config.hashring.max_replica = self.max_replica.min(origin_labels.len());
            config.store.dir = dir.join("proxy");
            if let Some((user, password)) = &registry_login {
                let hash = bcrypt::hash(password, BCRYPT_COST)
                    .map_err(|e| DevClusterError::Check(format!("hashing a password: {e}")))?;
                config.auth.users.insert(user.clone(), hash);
                // Docker (certs.d) and skopeo (--cert-dir) look for the CA as `*.crt`.
                let certs = dir.join(REGISTRY_CERTS_DIR);
                std::fs::create_dir_all(&certs)
                    .and_then(|()| std::fs::copy(pki.ca_cert_path(), certs.join("ca.crt")))
                    .map_err(|source| DevClusterError::Dir {
                        path: certs.clone(),
                        source,
                    })?;
                config.registry_tls = RegistryTlsConfig {
                    cert: Some(pki.cert_path(Role::Proxy)),
                    key: Some(pki.key_path(Role::Proxy)),
                };
            } else {
                config.auth.anonymous_push = true;
            }
            if let Some(hook) = &self.hooks.proxy {
                hook(&mut config);
            }
            Proxy::start(config, tls(&pki, Role::Proxy)?, registry, grpc)
                .await
                .map_err(DevClusterError::Proxy)?
        };

        let mut agents = Vec::new();
        for index in 0..self.agents {
            let listener = bind(self.addr(Slot::AgentGrpc(index)), "agent gRPC").await?;
            let registry = bind(self.addr(Slot::AgentRegistry(index)), "agent registry").await?;
            let config = self.agent_config(&pki, tracker_addr, build_index_addr, index);
            let mut agent = Agent::start(config, tls(&pki, Role::Agent)?, listener)
                .await
                .map_err(|source| DevClusterError::Agent { index, source })?;
            agent
                .serve_registry(registry)
                .map_err(|source| DevClusterError::Agent { index, source })?;
            agents.push(agent);
        }
        Ok(DevCluster {
            dir,
            pki,
            tracker_addr,
            origins,
            agents,
            build_index: Some(build_index),
            build_index_addr,
            proxy,
            origin_labels,
            max_replica: self.max_replica,
            builder: self,
            tracker_stop,
            tracker_task,
            registry_login,
        })
    }

    fn addr(&self, slot: Slot) -> SocketAddr {
        let port = match self.ports {
            Ports::Ephemeral => 0,
            Ports::Fixed { base } => {
                let offset = match slot {
                    Slot::OriginGrpc(i) => 2 + 10 * i,
                    Slot::OriginP2p(i) => 1 + 10 * i,
                    Slot::Tracker => 3,
                    Slot::ProxyRegistry => 0,
                    Slot::BuildIndex => 4,
                    Slot::ProxyGrpc => 5,
                    Slot::AgentGrpc(i) => 1002 + 10 * i,
                    Slot::AgentP2p(i) => 1001 + 10 * i,
                    Slot::AgentRegistry(i) => 1000 + 10 * i,
                };
                base.saturating_add(offset as u16)
            }
        };
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    async fn start_origin(
        &self,
        pki: &DevPki,
        config: OriginConfig,
        listener: TcpListener,
        index: usize,
    ) -> Result<Origin, DevClusterError> {
        let tls = tls(pki, Role::Origin)?;
        let started = match &self.origin_setup.backends {
            Some(backends) => {
                Origin::start_with_backends(config, tls, listener, backends.clone()).await
            }
            None => Origin::start(config, tls, listener).await,
        };
        started.map_err(|source| DevClusterError::Origin { index, source })
    }

    async fn start_build_index(
        &self,
        pki: &DevPki,
        origin_labels: &[String],
        listener: TcpListener,
    ) -> Result<BuildIndex, DevClusterError> {
        let config = self.build_index_config(pki, origin_labels);
        BuildIndex::start(config, tls(pki, Role::BuildIndex)?, listener)
            .await
            .map_err(DevClusterError::BuildIndex)
    }

    fn build_index_config(&self, pki: &DevPki, origin_labels: &[String]) -> BuildIndexConfig {
        let mut config = BuildIndexConfig {
            origin: UpstreamConfig::of(origin_labels.to_vec()),
            // Tags are written through to their own fs backend: the blob backend's layout
            // is keyed by digest.
            backends: vec![BackendConfig {
                namespace: Pattern::any(),
                backend: BackendKind::Fs(FsBackendConfig {
                    root: self.dir.join("tag-backend"),
                }),
                bandwidth: Default::default(),
            }],
            tls: tls_section(pki, Role::BuildIndex),
            ..BuildIndexConfig::default()
        };
        config.hashring.max_replica = self.max_replica.min(origin_labels.len());
        config.tag_store.dir = self.dir.join("build-index/tags");
        config.replication.dir = self.dir.join("build-index/replication");
        // On one machine a remote that is down comes back in seconds: retry at that pace.
        config.replication.retry_interval = Duration::from_secs(1);
        config.replication.max_retry_interval = Duration::from_secs(10);
        for (name, remote) in &self.remotes {
            config.remotes.insert(
                name.clone(),
                BuildIndexRemote {
                    build_index: UpstreamConfig::of([remote.build_index.to_string()]),
                    tags: remote.tags.clone(),
                    tls: remote_tls(remote),
                },
            );
        }
        for (name, ca) in &self.trusted {
            config.trusted_remotes.insert(
                name.clone(),
                TrustedBuildIndexRemote {
                    ca: ca.clone(),
                    ..TrustedBuildIndexRemote::default()
                },
            );
        }
        for (index, (namespace, upstream)) in self.pull_through.iter().enumerate() {
            let rule = pull_through_rule(namespace, upstream, BackendKind::RegistryTag);
            config.backends.insert(index, rule);
        }
        if let Some(hook) = &self.hooks.build_index {
            hook(&mut config);
        }
        config
    }

    fn origin_config(&self, pki: &DevPki, labels: &[String], index: usize) -> OriginConfig {
        let backend = self.dir.join("backend");
        let mut config = OriginConfig {
            name: labels[index].clone(),
            peer_ip: Some([127, 0, 0, 1].into()),
            store: StoreConfig {
                dir: self.dir.join(format!("origin{index}")),
                ..StoreConfig::default()
            },
            backends: vec![BackendConfig {
                namespace: Pattern::any(),
                backend: BackendKind::Fs(FsBackendConfig { root: backend }),
                bandwidth: Default::default(),
            }],
            tls: tls_section(pki, Role::Origin),
            ..OriginConfig::default()
        };
        config.listen.grpc = labels[index]
            .parse()
            .unwrap_or_else(|_| self.addr(Slot::OriginGrpc(index)));
        config.listen.p2p = self.addr(Slot::OriginP2p(index));
        config.cluster.hosts = HostList {
            static_hosts: labels.to_vec(),
            dns: None,
        };
        config.hashring.max_replica = self.max_replica.min(labels.len());
        for (name, remote) in &self.remotes {
            config.remotes.insert(
                name.clone(),
                OriginRemote {
                    build_index: UpstreamConfig::of([remote.build_index.to_string()]),
                    tls: remote_tls(remote),
                    ..OriginRemote::default()
                },
            );
        }
        for (name, ca) in &self.trusted {
            config
                .trusted_remotes
                .insert(name.clone(), TrustedRemote { ca: ca.clone() });
        }
        for (rule, (namespace, upstream)) in self.pull_through.iter().enumerate() {
            let rule_config = pull_through_rule(namespace, upstream, BackendKind::RegistryBlob);
            config.backends.insert(rule, rule_config);
        }
        if let Some(hook) = &self.origin_setup.hook {
            hook(index, &mut config);
        }
        config
    }

    fn agent_config(
        &self,
        pki: &DevPki,
        tracker: SocketAddr,
        build_index: SocketAddr,
        index: usize,
    ) -> AgentConfig {
        let mut config = AgentConfig {
            peer_ip: Some([127, 0, 0, 1].into()),
            tracker: UpstreamConfig::of([tracker.to_string()]),
            build_index: UpstreamConfig::of([build_index.to_string()]),
            store: StoreConfig {
                dir: self.dir.join(format!("agent{index}")),
                ..StoreConfig::default()
            },
            tls: tls_section(pki, Role::Agent),
            ..AgentConfig::default()
        };
        config.listen.grpc = self.addr(Slot::AgentGrpc(index));
        config.listen.registry = self.addr(Slot::AgentRegistry(index));
        config.listen.p2p = self.addr(Slot::AgentP2p(index));
        if let Some(hook) = &self.hooks.agents {
            hook(index, &mut config);
        }
        config
    }
}

#[derive(Debug, Clone, Copy)]
enum Slot {
    OriginGrpc(usize),
    OriginP2p(usize),
    Tracker,
    ProxyRegistry,
    ProxyGrpc,
    BuildIndex,
    AgentGrpc(usize),
    AgentP2p(usize),
    AgentRegistry(usize),
}

impl DevCluster {
    /// Where the proxy serves the Docker/OCI registry API (push and pull), plain HTTP.
    pub fn proxy_registry_addr(&self) -> SocketAddr {
        self.proxy.registry_addr()
    }

    /// Where the build-index serves `TagService` (gRPC, mutual TLS), running or not.
    pub fn build_index_addr(&self) -> SocketAddr {
        self.build_index_addr
    }

    /// The running build-index (`None` while stopped).
    pub fn build_index(&self) -> Option<&BuildIndex> {
        self.build_index.as_ref()
    }

    /// The cluster's name ([`DevClusterBuilder::name`]).
    pub fn name(&self) -> Option<&str> {
        self.builder.name.as_deref()
    }

    /// The build-index's configuration as the cluster starts it (tests start more
    /// build-indexes from it: `cluster:` peers).
    pub fn build_index_config(&self) -> BuildIndexConfig {
        self.builder
            .build_index_config(&self.pki, &self.origin_labels)
    }

    /// Stops the build-index gracefully; its address and disk stay for
    /// [`restart_build_index`](Self::restart_build_index).
    pub async fn stop_build_index(&mut self) -> Result<StoppedBuildIndex, DevClusterError> {
        let build_index = self
            .build_index
            .take()
            .ok_or(DevClusterError::BuildIndexStopped)?;
        let config = self.build_index_config();
        if let Err(error) = build_index.shutdown().await {
            tracing::warn!(%error, "build-index stopped with an error");
        }
        Ok(StoppedBuildIndex {
            addr: self.build_index_addr,
            dirs: vec![config.tag_store.dir, config.replication.dir],
        })
    }

    /// Starts the stopped build-index again on its address with whatever its disk holds now.
    pub async fn restart_build_index(
        &mut self,
        stopped: StoppedBuildIndex,
    ) -> Result<(), DevClusterError> {
        let build_index = rebind(stopped.addr, "build-index gRPC", |listener| {
            self.builder
                .start_build_index(&self.pki, &self.origin_labels, listener)
        })
        .await?;
        self.build_index = Some(build_index);
        Ok(())
    }

    /// Where agent `index` serves its read-only registry API (plain HTTP on loopback).
    ///
    /// # Panics
    /// If there is no agent `index` (a test's mistake).
    pub fn agent_registry_addr(&self, index: usize) -> SocketAddr {
        #[allow(clippy::expect_used)]
        self.agents[index]
            .registry_addr()
            .expect("devcluster agents always serve the registry API")
    }

    /// The TLS material of a role of this cluster.
    pub fn tls(&self, role: Role) -> Result<TlsMaterial, kraken_tls::TlsError> {
        tls(&self.pki, role)
    }

    /// The ring labels (gRPC addresses) of the origins owning `digest`, highest rendezvous
    /// score first, running or not.
    pub fn owner_addrs(&self, digest: &Digest) -> Vec<SocketAddr> {
        // The origins' own ring (with any configured weights) when one is running.
        let ring = match self.origins.first() {
            Some(origin) => origin.cluster().members().ring().clone(),
            None => Ring::new(
                self.origin_labels
                    .iter()
                    .map(|l| Member::new(l.clone(), 100)),
            ),
        };
        ring.owners(digest, self.max_replica)
            .into_iter()
            .filter_map(|m| m.label.parse().ok())
            .collect()
    }

    /// The running origins owning `digest`, highest rendezvous score first.
    pub fn owners(&self, digest: &Digest) -> Vec<&Origin> {
        self.owner_addrs(digest)
            .into_iter()
            .filter_map(|addr| self.origin(addr))
            .collect()
    }

    /// The running origin listening on `grpc_addr`.
    pub fn origin(&self, grpc_addr: SocketAddr) -> Option<&Origin> {
        self.origins.iter().find(|o| o.grpc_addr() == grpc_addr)
    }

    /// Stops the origin listening on `grpc_addr` and takes it out of [`DevCluster::origins`];
    /// its addresses, store and write-back queue stay for [`restart_origin`](Self::restart_origin).
    pub async fn stop_origin(
        &mut self,
        grpc_addr: SocketAddr,
        how: Stop,
    ) -> Result<StoppedOrigin, DevClusterError> {
        let position = self
            .origins
            .iter()
            .position(|o| o.grpc_addr() == grpc_addr)
            .ok_or(DevClusterError::NoSuchOrigin(grpc_addr))?;
        let index = self
            .origin_labels
            .iter()
            .position(|l| *l == grpc_addr.to_string())
            .ok_or(DevClusterError::NoSuchOrigin(grpc_addr))?;
        let origin = self.origins.remove(position);
        let stopped = StoppedOrigin {
            index,
            grpc_addr,
            p2p_addr: origin.p2p_addr(),
            store_dir: origin.store().config().dir.clone(),
        };
        match how {
            Stop::Graceful => {
                if let Err(error) = origin.shutdown().await {
                    tracing::warn!(%grpc_addr, %error, "origin stopped with an error");
                }
            }
            Stop::Kill => origin.kill().await,
        }
        Ok(stopped)
    }

    /// Starts a stopped origin again on the same addresses, with the same configuration and
    /// whatever its store directory holds now.
    pub async fn restart_origin(&mut self, stopped: StoppedOrigin) -> Result<(), DevClusterError> {
        let mut config = self
            .builder
            .origin_config(&self.pki, &self.origin_labels, stopped.index);
        // Same QUIC port: trackers cache an origin's seeder address.
        config.listen.p2p = stopped.p2p_addr;
        let origin = rebind(stopped.grpc_addr, "origin gRPC", |listener| {
            self.builder
                .start_origin(&self.pki, config.clone(), listener, stopped.index)
        })
        .await?;
        self.origins.push(origin);
        Ok(())
    }

    /// A client of `origin` presenting the `client` role (what a CI uploader uses).
    pub fn origin_client(&self, origin: &Origin) -> Result<OriginClient, DevClusterError> {
        let tls = self.tls(Role::Client)?;
        OriginClient::connect(&tls, &origin.grpc_addr().to_string())
            .map_err(|e| DevClusterError::Check(e.to_string()))
    }

    /// Uploads `data` to the blob's owning origin and returns its digest.
    pub async fn push(
        &self,
        namespace: &Namespace,
        data: Bytes,
    ) -> Result<Digest, DevClusterError> {
        let digest = Digest::of(&data);
        let Some(owner) = self.owners(&digest).first().copied() else {
            return Err(DevClusterError::Check("no origin owns the blob".into()));
        };
        let size = data.len() as u64;
        let chunks: Vec<std::io::Result<Bytes>> = data
            .chunks(1 << 20)
            .map(|c| Ok(Bytes::copy_from_slice(c)))
            .collect();
        self.origin_client(owner)?
            .upload_stream(
                namespace,
                &digest,
                futures::stream::iter(chunks),
                Some(size),
            )
            .await
            .map_err(|e| DevClusterError::Check(format!("upload to {}: {e}", owner.grpc_addr())))?;
        Ok(digest)
    }

    /// Pushes a small single-layer image whose bytes depend on `seed` to the origins (a layer,
    /// a config, an OCI manifest) and points `tag` at its manifest with `replicate`, as the
    /// proxy would after a push. Returns the manifest's digest and bytes.
    pub async fn push_image(
        &self,
        tag: &TaggedName,
        seed: &str,
    ) -> Result<(Digest, Bytes), DevClusterError> {
        let namespace = &tag.repository;
        let layer = Bytes::from(format!("kraken image layer {seed}\n").repeat(4096));
        let config = Bytes::from(format!(
            r#"{{"architecture":"amd64","os":"linux","created_by":"kraken devcluster {seed}"}}"#
        ));
        let layer_digest = self.push(namespace, layer.clone()).await?;
        let config_digest = self.push(namespace, config.clone()).await?;
        let manifest = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {"mediaType": OCI_CONFIG, "digest": config_digest.to_string(), "size": config.len()},
            "layers": [{"mediaType": OCI_LAYER, "digest": layer_digest.to_string(), "size": layer.len()}],
        });
        let manifest = Bytes::from(manifest.to_string());
        let digest = self.push(namespace, manifest.clone()).await?;
        self.tag_client(Role::Proxy)?
            .put(tag, &digest, true)
            .await
            .map_err(|e| DevClusterError::Check(format!("tagging {tag}: {e}")))?;
        Ok((digest, manifest))
    }

    /// A client of this cluster's build-index presenting `role`.
    pub fn tag_client(&self, role: Role) -> Result<TagClient, DevClusterError> {
        TagClient::new(
            &UpstreamConfig::of([self.build_index_addr.to_string()]),
            &self.tls(role)?,
        )
        .map_err(|e| DevClusterError::Check(e.to_string()))
    }

    /// A gRPC client of agent `index` presenting the `client` role.
    pub fn agent_client(
        &self,
        index: usize,
    ) -> Result<AgentServiceClient<kraken_transport::observe::ObservedChannel>, DevClusterError>
    {
        let agent = self
            .agents
            .get(index)
            .ok_or_else(|| DevClusterError::Check(format!("no agent {index}")))?;
        let channel = kraken_transport::grpc::channel(
            &self.tls(Role::Client)?,
            &agent.grpc_addr().to_string(),
            None,
            Role::Agent,
        )
        .map_err(|e| DevClusterError::Check(e.to_string()))?;
        Ok(AgentServiceClient::new(channel))
    }

    /// Downloads a blob through agent `index`, collecting it in memory.
    pub async fn pull(
        &self,
        index: usize,
        namespace: &Namespace,
        digest: &Digest,
    ) -> Result<Bytes, tonic::Status> {
        let request = GetBlobRequest {
            namespace: namespace.to_string(),
            digest: digest.to_string(),
            offset: 0,
            length: None,
        };
        let mut client = self
            .agent_client(index)
            .map_err(|e| tonic::Status::internal(e.to_string()))?;
        let mut stream = client.get_blob(request).await?.into_inner();
        let mut data = Vec::new();
        while let Some(message) = stream.message().await? {
            data.extend_from_slice(&message.chunk);
        }
        Ok(data.into())
    }

    /// Pushes a small random blob and pulls it through every agent: proves the cluster works.
    pub async fn self_check(&self) -> Result<Digest, DevClusterError> {
        let namespace: Namespace = "kraken/self-check"
            .parse()
            .map_err(|e: kraken_core::NamespaceError| DevClusterError::Check(e.to_string()))?;
        let data: Bytes = (0..(1u32 << 20))
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect::<Vec<_>>()
            .into();
        let digest = self.push(&namespace, data.clone()).await?;
        for index in 0..self.agents.len() {
            let copy = self
                .pull(index, &namespace, &digest)
                .await
                .map_err(|s| DevClusterError::Check(format!("pull through agent {index}: {s}")))?;
            if copy != data {
                return Err(DevClusterError::Check(format!(
                    "agent {index} returned different bytes"
                )));
            }
        }
        Ok(digest)
    }

    /// The registry login (`user`, `password`) when the cluster was built with
    /// [`DevClusterBuilder::secure_registry`].
    pub fn registry_credentials(&self) -> Option<(String, String)> {
        self.registry_login.clone()
    }

    /// Addresses and example commands, for people.
    pub fn summary(&self) -> String {
        let pki = self.pki.dir().display();
        let mut text = String::new();
        text.push_str(&format!("data directory: {}\n", self.dir.display()));
        text.push_str(&format!(
            "PKI (mTLS):     {pki} (ca.pem, client.pem/.key for tools)\n"
        ));
        text.push_str(&format!("tracker:        {}\n", self.tracker_addr));
        text.push_str(&format!("build-index:    gRPC {}\n", self.build_index_addr));
        let scheme = if self.registry_credentials().is_some() {
            "https"
        } else {
            "http"
        };
        text.push_str(&format!(
            "proxy:          registry {scheme}://{}  gRPC {}\n",
            self.proxy.registry_addr(),
            self.proxy.grpc_addr()
        ));
        for (i, origin) in self.origins.iter().enumerate() {
            text.push_str(&format!(
                "origin {i}:       gRPC {}  QUIC {}\n",
                origin.grpc_addr(),
                origin.p2p_addr()
            ));
        }
        for (i, agent) in self.agents.iter().enumerate() {
            text.push_str(&format!(
                "agent {i}:        registry http://{}  gRPC {}  QUIC {}\n",
                agent
                    .registry_addr()
                    .map_or_else(|| "-".to_owned(), |a| a.to_string()),
                agent.grpc_addr(),
                agent.p2p_addr()
            ));
        }
        if let Some((user, _)) = self.registry_credentials() {
            let proxy = self.proxy.registry_addr();
            let credentials = self.dir.join(CREDENTIALS_FILE);
            let certs = self.dir.join(REGISTRY_CERTS_DIR);
            text.push_str(&format!(
                "\nthe registry is HTTPS and requires a login to push (user:password in {creds}):\n\
                 trust it:      sudo mkdir -p /etc/docker/certs.d/{proxy} && sudo cp {certs}/ca.crt /etc/docker/certs.d/{proxy}/\n\
                 log in:        cut -d: -f2- {creds} | docker login {proxy} -u {user} --password-stdin\n\
                 skopeo:        skopeo copy --dest-cert-dir {certs} --dest-creds \"$(cat {creds})\" SRC docker://{proxy}/my/app:v1\n",
                creds = credentials.display(),
                certs = certs.display(),
            ));
        }
        if let Some(registry) = self.agents.first().and_then(Agent::registry_addr) {
            let proxy = self.proxy.registry_addr();
            text.push_str(&format!(
                "\npush an image: docker tag IMAGE {proxy}/my/app:v1 && docker push {proxy}/my/app:v1\n"
            ));
            text.push_str(&format!(
                "pull it:       docker pull {registry}/my/app:v1   (or skopeo/podman with --tls-verify=false)\n"
            ));
        }
        if let (Some(origin), Some(agent)) = (self.origins.first(), self.agents.first()) {
            text.push_str(&format!(
                "\npush a blob:  kraken push FILE --origin {} --namespace my/blobs --pki {pki}\n",
                origin.grpc_addr()
            ));
            text.push_str(&format!(
                "pull it:      kraken pull DIGEST --agent {} --namespace my/blobs --pki {pki} -o OUT\n",
                agent.grpc_addr()
            ));
        }
        text
    }

    /// Stops every component and waits for them.
    pub async fn shutdown(self) {
        for agent in self.agents {
            let _ = agent.shutdown().await;
        }
        let _ = self.proxy.shutdown().await;
        if let Some(build_index) = self.build_index {
            let _ = build_index.shutdown().await;
        }
        for origin in self.origins {
            let _ = origin.shutdown().await;
        }
        self.tracker_stop.cancel();
        let _ = self.tracker_task.await;
    }
}

/// Binds `addr` again and starts a component on it, retrying for up to 5 s: the stopped
/// component's sockets may take a moment to be released.
async fn rebind<T, F, Fut>(addr: SocketAddr, what: &str, start: F) -> Result<T, DevClusterError>
where
    F: Fn(TcpListener) -> Fut,
    Fut: std::future::Future<Output = Result<T, DevClusterError>>,
{
    let mut last = None;
    for _ in 0..50 {
        let started = match bind(addr, what).await {
            Ok(listener) => start(listener).await,
            Err(error) => Err(error),
        };
        match started {
            Ok(started) => return Ok(started),
            Err(error) => {
                last = Some(error);
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    Err(last.unwrap_or(DevClusterError::Bind {
        what: what.to_owned(),
        addr,
        source: std::io::Error::other("never tried"),
    }))
}

/// The development PKI under `<dir>/pki`, generated on first use and kept across restarts so
/// clients configured once keep working (and other clusters keep trusting its CA).
pub fn open_pki(dir: &Path) -> Result<DevPki, DevClusterError> {
    let pki_dir = dir.join("pki");
    match DevPki::open(&pki_dir) {
        Ok(pki) => Ok(pki),
        Err(_) => Ok(generate_dev_pki(
            &pki_dir,
            &DevPkiOptions {
                overwrite: true,
                ..DevPkiOptions::default()
            },
        )?),
    }
}

fn remote_tls(remote: &RemoteSpec) -> RemoteTlsSection {
    RemoteTlsSection {
        ca: remote.ca.clone(),
        ..RemoteTlsSection::default()
    }
}

fn remove_dir_all(dir: &Path) -> Result<(), DevClusterError> {
    match std::fs::remove_dir_all(dir) {
        Ok(()) => Ok(()),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(DevClusterError::Wipe {
            path: dir.to_owned(),
            source,
        }),
    }
}

async fn bind(addr: SocketAddr, what: &str) -> Result<TcpListener, DevClusterError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| DevClusterError::Bind {
            what: what.to_owned(),
            addr,
            source,
        })
}

fn local(listener: &TcpListener) -> Result<SocketAddr, DevClusterError> {
    listener
        .local_addr()
        .map_err(|source| DevClusterError::Bind {
            what: "listener".into(),
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            source,
        })
}

fn tls(pki: &DevPki, role: Role) -> Result<TlsMaterial, kraken_tls::TlsError> {
    TlsMaterial::load(&pki.tls_config(role))
}

fn tls_section(pki: &DevPki, role: Role) -> TlsSection {
    TlsSection {
        ca: Some(pki.ca_cert_path()),
        cert: Some(pki.cert_path(role)),
        key: Some(pki.key_path(role)),
    }
}
