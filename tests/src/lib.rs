//! Test harness for whole clusters: the real tracker, origins and agents of
//! [`kraken_devcluster::DevCluster`] in-process on ephemeral loopback ports, with a freshly
//! generated PKI and real mutual TLS, in a temporary directory removed afterwards.
//!
//! ```no_run
//! # async fn example() {
//! let cluster = kraken_tests::Cluster::builder().origins(1).agents(3).start().await;
//! let digest = cluster.push("library/app", b"hello".to_vec().into()).await;
//! let bytes = cluster.pull(0, "library/app", &digest).await.unwrap();
//! cluster.shutdown().await;
//! # }
//! ```
//!
//! The harness never fakes a component. Test doubles belong in the tests that need them.

// Test-only code: a failed setup step is a failed test, so it panics with what went wrong.
#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::ops::Deref;
use std::path::PathBuf;
use std::sync::Arc;

use bytes::Bytes;
use kraken_core::{Digest, Namespace};
use kraken_devcluster::{DevCluster, DevClusterBuilder, Ports};
use kraken_origin::Origin;
use kraken_originclient::OriginClient;
use kraken_proto::agent::v1::agent_service_client::AgentServiceClient;
use kraken_tls::{Role, TlsMaterial};

/// Adjusts the [`DevClusterBuilder`] before it starts (config hooks, backends).
type Customize = Arc<dyn Fn(DevClusterBuilder) -> DevClusterBuilder + Send + Sync>;

/// Describes the cluster to start.
#[derive(Clone)]
pub struct ClusterBuilder {
    origins: usize,
    agents: usize,
    max_replica: usize,
    customize: Option<Customize>,
}

impl std::fmt::Debug for ClusterBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterBuilder")
            .field("origins", &self.origins)
            .field("agents", &self.agents)
            .field("max_replica", &self.max_replica)
            .field("customize", &self.customize.is_some())
            .finish()
    }
}

/// A running cluster; derefs to the [`DevCluster`] it wraps.
#[derive(Debug)]
pub struct Cluster {
    dev: DevCluster,
    // Dropped after `dev`: the components' files live here.
    _dir: tempfile::TempDir,
}

impl Cluster {
    /// One origin, one agent, one replica unless told otherwise.
    pub fn builder() -> ClusterBuilder {
        ClusterBuilder {
            origins: 1,
            agents: 1,
            max_replica: 1,
            customize: None,
        }
    }
}

impl ClusterBuilder {
    pub fn origins(mut self, n: usize) -> Self {
        self.origins = n;
        self
    }

    pub fn agents(mut self, n: usize) -> Self {
        self.agents = n;
        self
    }

    pub fn max_replica(mut self, n: usize) -> Self {
        self.max_replica = n;
        self
    }

    /// Runs `customize` on the devcluster builder before it starts: e.g.
    /// [`DevClusterBuilder::configure`] to change the components' configs.
    pub fn customize(
        mut self,
        customize: impl Fn(DevClusterBuilder) -> DevClusterBuilder + Send + Sync + 'static,
    ) -> Self {
        self.customize = Some(Arc::new(customize));
        self
    }

    pub async fn start(self) -> Cluster {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut builder: DevClusterBuilder = DevCluster::builder(dir.path())
            .origins(self.origins)
            .agents(self.agents)
            .max_replica(self.max_replica)
            .ports(Ports::Ephemeral);
        if let Some(customize) = &self.customize {
            builder = customize(builder);
        }
        let dev = builder.start().await.expect("cluster starts");
        Cluster { dev, _dir: dir }
    }
}

impl Deref for Cluster {
    type Target = DevCluster;

    fn deref(&self) -> &DevCluster {
        &self.dev
    }
}

impl Cluster {
    /// The TLS material of a role of this cluster.
    pub fn tls(&self, role: Role) -> TlsMaterial {
        self.dev.tls(role).expect("TLS material")
    }

    /// A client of `origin` presenting the `client` role.
    pub fn origin_client(&self, origin: &Origin) -> OriginClient {
        self.dev.origin_client(origin).expect("origin client")
    }

    /// Uploads `data` to the blob's owning origin and returns its digest.
    pub async fn push(&self, namespace: &str, data: Bytes) -> Digest {
        self.dev
            .push(&namespace.parse().expect("namespace"), data)
            .await
            .expect("upload")
    }

    /// A gRPC client of agent `i` presenting the `client` role.
    pub fn agent_client(
        &self,
        i: usize,
    ) -> AgentServiceClient<kraken_transport::observe::ObservedChannel> {
        self.dev.agent_client(i).expect("agent client")
    }

    /// Downloads a blob through agent `i`'s `GetBlob`, collecting it in memory.
    pub async fn pull(
        &self,
        i: usize,
        namespace: &str,
        digest: &Digest,
    ) -> Result<Bytes, tonic::Status> {
        let namespace: Namespace = namespace.parse().expect("namespace");
        self.dev.pull(i, &namespace, digest).await
    }

    /// A path inside the cluster's temporary directory.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dev.dir.join(name)
    }

    /// Stops every component and waits for them.
    pub async fn shutdown(self) {
        self.dev.shutdown().await;
    }
}

/// Deterministic pseudo-random bytes (incompressible, unlike zeros).
pub fn blob(len: usize, seed: u64) -> Bytes {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len);
    while out.len() < len {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        out.extend_from_slice(&state.to_le_bytes());
    }
    out.truncate(len);
    out.into()
}
