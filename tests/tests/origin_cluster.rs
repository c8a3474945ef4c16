//! The origins as a self-healing cluster, end to end: real origins, tracker and agents on
//! loopback with mutual TLS, a storage backend the tests can switch off.
//!
//! - replication: an upload lands on every owner (`max_replica`), is written back once, and a
//!   pull survives an owner killed mid-distribution;
//! - repair: an origin whose disk was wiped refetches from the backend;
//! - health: a dead origin is marked unhealthy after `fails` probes and healthy again after
//!   `passes`; clients (the cluster client, the proxy under a push) fail over and take a dead
//!   origin out of rotation;
//! - write-back: a push while the backend is down is acknowledged, survives an origin restart
//!   and lands in the backend once it is back; a replica takes over when the accepting origin
//!   dies before writing back.

// Test helpers outside `#[test]` functions: a panic there is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use kraken_backend::{
    Backend, BackendBlob, BackendError, Backends, FsBackend, StoredBlob, UploadSource,
};
use kraken_config::Pattern;
use kraken_config::cluster::{PassiveHealthCheckConfig, UpstreamConfig};
use kraken_config::origin::OriginConfig;
use kraken_core::{Digest, Namespace};
use kraken_devcluster::{DevCluster, Ports, Stop};
use kraken_originclient::{OriginClient, OriginClusterClient};
use kraken_proto::agent::v1::GetBlobRequest;
use kraken_proto::agent::v1::agent_service_client::AgentServiceClient;
use kraken_tests::blob;
use kraken_tls::Role;
use kraken_transport::cluster::HostStatus;
use kraken_transport::observe::ObservedChannel;
use tokio::time::Instant;

const NS: &str = "library/cluster-test";
/// Every wait in these tests polls against this deadline; none of them measures speed.
const PATIENCE: Duration = Duration::from_secs(60);

fn ns() -> Namespace {
    NS.parse().unwrap()
}

/// The storage backend shared by the cluster: a directory, switchable off (every call fails as
/// unavailable, like an S3 server that was stopped), counting the blobs written to it.
#[derive(Debug)]
struct Switchable {
    inner: FsBackend,
    down: AtomicBool,
    uploads: AtomicUsize,
    downloads: AtomicUsize,
}

impl Switchable {
    fn check(&self, operation: &str) -> Result<(), BackendError> {
        if self.down.load(Ordering::SeqCst) {
            return Err(BackendError::Unavailable {
                backend: "switchable",
                operation: operation.to_owned(),
                source: "the test switched the storage off".into(),
            });
        }
        Ok(())
    }

    fn set_down(&self, down: bool) {
        self.down.store(down, Ordering::SeqCst);
    }

    fn uploads(&self) -> usize {
        self.uploads.load(Ordering::SeqCst)
    }

    async fn holds(&self, digest: &Digest) -> bool {
        self.inner.stat(&ns(), digest).await.unwrap().is_some()
    }
}

#[async_trait]
impl Backend for Switchable {
    fn kind(&self) -> &'static str {
        "switchable"
    }

    async fn stat(&self, ns: &Namespace, d: &Digest) -> Result<Option<u64>, BackendError> {
        self.check("stat")?;
        self.inner.stat(ns, d).await
    }

    async fn upload(
        &self,
        ns: &Namespace,
        d: &Digest,
        source: UploadSource,
        size: u64,
    ) -> Result<(), BackendError> {
        self.check("upload")?;
        self.inner.upload(ns, d, source, size).await?;
        self.uploads.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }

    async fn download(&self, ns: &Namespace, d: &Digest) -> Result<BackendBlob, BackendError> {
        self.check("download")?;
        self.downloads.fetch_add(1, Ordering::SeqCst);
        self.inner.download(ns, d).await
    }

    async fn list(&self, prefix: &str) -> Result<Vec<StoredBlob>, BackendError> {
        self.check("list")?;
        self.inner.list(prefix).await
    }
}

struct TestCluster {
    dev: DevCluster,
    backend: Arc<Switchable>,
    _dir: tempfile::TempDir,
}

/// A cluster whose origins probe each other every 100 ms (unhealthy after 3 failed probes,
/// healthy after 2 passes) and retry write-backs within half a second; `tweak` adjusts each
/// origin's configuration further.
async fn start(
    origins: usize,
    agents: usize,
    tweak: impl Fn(&mut OriginConfig) + Send + Sync + 'static,
) -> TestCluster {
    let dir = tempfile::tempdir().unwrap();
    let backend = Arc::new(Switchable {
        inner: FsBackend::new(dir.path().join("backend")),
        down: AtomicBool::new(false),
        uploads: AtomicUsize::new(0),
        downloads: AtomicUsize::new(0),
    });
    let backends = Backends::new([(Pattern::any(), backend.clone() as Arc<dyn Backend>)]);
    let dev = DevCluster::builder(dir.path())
        .origins(origins)
        .agents(agents)
        .max_replica(2)
        .ports(Ports::Ephemeral)
        .origin_backends(backends)
        .configure_origins(move |_, config| {
            let health = &mut config.cluster.healthcheck;
            health.filter.fails = 3;
            health.filter.passes = 2;
            health.monitor.interval = Duration::from_millis(100);
            // Generous: six clusters share two cores here, and a slow probe is not a dead
            // origin. The health test shortens it.
            health.monitor.timeout = Duration::from_secs(3);
            config.writeback.retry_interval = Duration::from_millis(100);
            config.writeback.max_retry_interval = Duration::from_millis(500);
            tweak(config);
        })
        .start()
        .await
        .unwrap();
    let cluster = TestCluster {
        dev,
        backend,
        _dir: dir,
    };
    cluster.until_all_healthy().await;
    cluster
}

impl TestCluster {
    /// Waits until every running origin has probed every other running one successfully.
    async fn until_all_healthy(&self) {
        let running: Vec<String> = self
            .dev
            .origins
            .iter()
            .map(|o| o.grpc_addr().to_string())
            .collect();
        eventually("every origin sees the others healthy", async || {
            self.dev.origins.iter().all(|origin| {
                origin
                    .cluster()
                    .statuses()
                    .iter()
                    .filter(|s| s.host != origin.grpc_addr().to_string())
                    .filter(|s| running.contains(&s.host))
                    .all(|s| s.healthy && s.active.consecutive_passes >= 1)
            })
        })
        .await;
    }

    fn client(&self, addr: SocketAddr) -> OriginClient {
        OriginClient::connect(&self.dev.tls(Role::Client).unwrap(), &addr.to_string()).unwrap()
    }

    fn holds(&self, addr: SocketAddr, digest: &Digest) -> bool {
        self.dev
            .origin(addr)
            .is_some_and(|o| o.store().contains(digest))
    }

    async fn pinned(&self, addr: SocketAddr, digest: &Digest) -> bool {
        let origin = self.dev.origin(addr).unwrap();
        origin.store().stat(digest).await.unwrap().unwrap().persist
    }

    /// How origin `watcher` sees origin `addr`.
    fn health(&self, watcher: SocketAddr, addr: SocketAddr) -> HostStatus {
        self.dev
            .origin(watcher)
            .unwrap()
            .cluster()
            .statuses()
            .into_iter()
            .find(|s| s.host == addr.to_string())
            .unwrap()
    }

    fn pending(&self, addr: SocketAddr) -> Vec<(Namespace, Digest)> {
        self.dev.origin(addr).unwrap().pending_write_backs()
    }

    /// An owned client of agent `index`, so a pull can run while the cluster changes.
    fn agent(&self, index: usize) -> AgentServiceClient<ObservedChannel> {
        self.dev.agent_client(index).unwrap()
    }

    async fn shutdown(self) {
        self.dev.shutdown().await;
    }
}

/// Pulls a whole blob through an agent's `GetBlob`.
async fn pull(
    mut agent: AgentServiceClient<ObservedChannel>,
    digest: Digest,
) -> Result<Bytes, tonic::Status> {
    let request = GetBlobRequest {
        namespace: NS.to_owned(),
        digest: digest.to_string(),
        offset: 0,
        length: None,
    };
    let mut stream = agent.get_blob(request).await?.into_inner();
    let mut data = Vec::new();
    while let Some(message) = stream.message().await? {
        data.extend_from_slice(&message.chunk);
    }
    Ok(data.into())
}

async fn eventually(what: &str, mut condition: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + PATIENCE;
    while !condition().await {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_lands_on_both_owners_is_written_back_once_and_survives_an_owner_killed_mid_pull()
{
    // Origins seed at 40 Mbit/s each, so the swarm is still working when an owner dies.
    let mut cluster = start(3, 6, |config| {
        config.writeback.replica_delay = Duration::from_millis(300);
        let bandwidth = &mut config.scheduler.conn.bandwidth;
        bandwidth.enable = true;
        bandwidth.egress_bits_per_sec = 40_000_000;
        bandwidth.ingress_bits_per_sec = 8_000_000_000;
    })
    .await;
    let data = blob(24 << 20, 11);
    let digest = cluster.dev.push(&ns(), data.clone()).await.unwrap();
    let owners = cluster.dev.owner_addrs(&digest);
    assert_eq!(owners.len(), 2);
    let (first, second) = (owners[0], owners[1]);
    let other = cluster
        .dev
        .origins
        .iter()
        .map(|o| o.grpc_addr())
        .find(|a| !owners.contains(a))
        .unwrap();

    eventually("the replica reaches the second owner", async || {
        cluster.holds(second, &digest)
    })
    .await;
    assert!(cluster.holds(first, &digest));
    assert!(!cluster.holds(other, &digest), "only owners get a copy");
    // The accepting owner writes back; the replica's delayed write-back then only finds the
    // blob in the backend and unpins its copy.
    // The replica's task is queued just after its copy is committed (pinned), so "nothing
    // pending" alone can be seen before that task exists: wait for the copies to be unpinned too.
    eventually("both owners' write-backs are done", async || {
        cluster.pending(first).is_empty()
            && cluster.pending(second).is_empty()
            && !cluster.pinned(first, &digest).await
            && !cluster.pinned(second, &digest).await
    })
    .await;
    assert!(cluster.backend.holds(&digest).await);
    assert!(!cluster.pinned(first, &digest).await && !cluster.pinned(second, &digest).await);
    assert_eq!(
        cluster.backend.uploads(),
        1,
        "written back once, by one owner"
    );
    for addr in [first, second] {
        let stat = cluster
            .client(addr)
            .stat_local(&ns(), &digest)
            .await
            .unwrap()
            .unwrap();
        assert!(stat.local && stat.persisted, "{addr}: {stat:?}");
    }

    // Every agent pulls; the highest-scoring owner dies as soon as the swarm has started.
    let pulls: Vec<_> = (0..cluster.dev.agents.len())
        .map(|i| tokio::spawn(pull(cluster.agent(i), digest)))
        .collect();
    eventually("an agent holds a first piece", async || {
        cluster.dev.agents.iter().any(|agent| {
            agent
                .store()
                .download(&digest)
                .is_some_and(|d| d.bitfield().count() > 0)
        })
    })
    .await;
    let incomplete = cluster
        .dev
        .agents
        .iter()
        .filter(|a| !a.store().contains(&digest))
        .count();
    cluster.dev.stop_origin(first, Stop::Kill).await.unwrap();
    assert!(incomplete > 0, "the owner died mid-distribution");
    for (i, pull) in pulls.into_iter().enumerate() {
        let copy = tokio::time::timeout(PATIENCE, pull)
            .await
            .unwrap_or_else(|_| panic!("agent {i}'s pull did not finish"))
            .unwrap()
            .unwrap_or_else(|status| panic!("agent {i}: {status}"));
        assert_eq!(copy.len(), data.len(), "agent {i}");
        assert_eq!(Digest::of(&copy), digest, "agent {i}'s copy verifies");
    }
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn owners_with_wiped_disks_refetch_from_the_backend_and_share_the_copy() {
    let mut cluster = start(3, 2, |config| {
        config.writeback.replica_delay = Duration::from_millis(200);
    })
    .await;
    let data = blob(6 << 20, 12);
    let digest = cluster.dev.push(&ns(), data.clone()).await.unwrap();
    let owners = cluster.dev.owner_addrs(&digest);
    eventually("written back and replicated", async || {
        owners
            .iter()
            .all(|o| cluster.holds(*o, &digest) && cluster.pending(*o).is_empty())
    })
    .await;
    assert!(cluster.backend.holds(&digest).await);

    // Both owners lose their disks.
    for owner in &owners {
        let stopped = cluster.dev.stop_origin(*owner, Stop::Kill).await.unwrap();
        stopped.wipe_store().unwrap();
        cluster.dev.restart_origin(stopped).await.unwrap();
    }
    cluster.until_all_healthy().await;
    assert!(owners.iter().all(|o| !cluster.holds(*o, &digest)));
    let fetched_before = cluster.backend.downloads.load(Ordering::SeqCst);

    // The first pull asks an owner for the metainfo: it starts a backend fetch and answers
    // UNAVAILABLE + retry-after until the blob is in; then the swarm serves it.
    for i in 0..2 {
        let copy = pull(cluster.agent(i), digest).await.unwrap();
        assert_eq!(Digest::of(&copy), digest, "agent {i}");
    }
    assert_eq!(
        cluster.backend.downloads.load(Ordering::SeqCst) - fetched_before,
        1,
        "one owner fetched it"
    );
    // ... and copied it to the other owner, unpinned (the backend has it).
    eventually("both owners hold the blob again", async || {
        owners.iter().all(|o| cluster.holds(*o, &digest))
    })
    .await;
    for owner in &owners {
        assert!(!cluster.pinned(*owner, &digest).await, "{owner}");
    }
    assert_eq!(
        cluster.backend.uploads(),
        1,
        "nothing was written back again"
    );
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_origins_are_marked_unhealthy_after_fails_probes_and_healthy_after_passes() {
    let mut cluster = start(3, 0, |config| {
        config.cluster.healthcheck.monitor.timeout = Duration::from_millis(500);
    })
    .await;
    let watcher = cluster.dev.origins[0].grpc_addr();
    let dead: Vec<SocketAddr> = cluster.dev.origins[1..]
        .iter()
        .map(|o| o.grpc_addr())
        .collect();
    // A digest both soon-dead origins own.
    let digest = (0u32..)
        .map(|i| Digest::of(&i.to_le_bytes()))
        .find(|d| {
            cluster.dev.owner_addrs(d) == dead || cluster.dev.owner_addrs(d) == [dead[1], dead[0]]
        })
        .unwrap();
    let owners = cluster.dev.owner_addrs(&digest);
    let locations = cluster.client(watcher).locations(&digest).await.unwrap();
    assert_eq!(
        locations
            .iter()
            .map(|l| (l.address.clone(), l.healthy))
            .collect::<Vec<_>>(),
        owners
            .iter()
            .map(|o| (o.to_string(), true))
            .collect::<Vec<_>>()
    );

    let mut stopped = Vec::new();
    for addr in &dead {
        stopped.push(cluster.dev.stop_origin(*addr, Stop::Kill).await.unwrap());
    }
    eventually("the dead origins are marked unhealthy", async || {
        dead.iter().all(|a| !cluster.health(watcher, *a).healthy)
    })
    .await;
    for addr in &dead {
        let fallen = cluster.health(watcher, *addr);
        assert!(
            fallen.active.consecutive_failures >= 3,
            "marked only after `fails` failed probes in a row: {fallen:?}"
        );
    }
    // Locations reports them unhealthy, with the live origin standing in for them.
    let locations = cluster.client(watcher).locations(&digest).await.unwrap();
    let mut expected: Vec<(String, bool)> = owners.iter().map(|o| (o.to_string(), false)).collect();
    expected.push((watcher.to_string(), true));
    assert_eq!(
        locations
            .iter()
            .map(|l| (l.address.clone(), l.healthy))
            .collect::<Vec<_>>(),
        expected
    );

    for origin in stopped {
        cluster.dev.restart_origin(origin).await.unwrap();
    }
    eventually("the revived origins are healthy again", async || {
        dead.iter().all(|a| cluster.health(watcher, *a).healthy)
    })
    .await;
    for addr in &dead {
        let risen = cluster.health(watcher, *addr);
        assert!(risen.active.consecutive_passes >= 2, "{risen:?}");
    }
    let locations = cluster.client(watcher).locations(&digest).await.unwrap();
    assert!(
        locations.iter().all(|l| l.healthy) && locations.len() == 2,
        "{locations:?}"
    );
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cluster_client_fails_over_and_takes_a_dead_origin_out_of_rotation() {
    let mut cluster = start(3, 0, |_| {}).await;
    let labels: Vec<String> = cluster
        .dev
        .origins
        .iter()
        .map(|o| o.grpc_addr().to_string())
        .collect();
    let dead = cluster.dev.origins[0].grpc_addr();
    let upstream = UpstreamConfig {
        healthcheck: PassiveHealthCheckConfig {
            fails: 2,
            fail_timeout: Duration::from_secs(300),
        },
        ..UpstreamConfig::of(labels)
    };
    let client =
        OriginClusterClient::new(&upstream, &cluster.dev.tls(Role::Proxy).unwrap()).unwrap();
    cluster.dev.stop_origin(dead, Stop::Kill).await.unwrap();

    // Blobs whose highest-scoring owner is the dead origin.
    let blobs: Vec<Bytes> = (0u64..)
        .map(|seed| blob(64 << 10, 1000 + seed))
        .filter(|data| cluster.dev.owner_addrs(&Digest::of(data))[0] == dead)
        .take(4)
        .collect();
    for data in &blobs {
        let digest = Digest::of(data);
        let open = || {
            let data = data.clone();
            async move { Ok(std::io::Cursor::new(data)) }
        };
        let (origin, uploaded) = client
            .upload(&ns(), &digest, Some(data.len() as u64), open)
            .await
            .unwrap();
        assert_ne!(origin, dead.to_string(), "failed over to a live origin");
        assert!(uploaded.created);
        let stat = client.stat(&ns(), &digest).await.unwrap().unwrap();
        assert_eq!(stat.size, data.len() as u64);
    }
    let hosts = client.hosts();
    let status = hosts.iter().find(|h| h.host == dead.to_string()).unwrap();
    assert!(!status.healthy, "{hosts:?}");
    assert_eq!(
        status.failures, 2,
        "tried until marked unhealthy, then skipped: {hosts:?}"
    );
    assert!(
        hosts
            .iter()
            .filter(|h| h.host != dead.to_string())
            .all(|h| h.healthy)
    );
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docker_pushes_through_the_proxy_fail_over_a_dead_origin_and_take_it_out_of_rotation() {
    let mut cluster = start(3, 1, |_| {}).await;
    let dead = cluster.dev.origins[0].grpc_addr();
    cluster.dev.stop_origin(dead, Stop::Kill).await.unwrap();
    let http = reqwest::Client::new();
    let registry = format!("http://{}/v2/{NS}", cluster.dev.proxy_registry_addr());

    // Layers whose highest-scoring owner is the dead origin, pushed the way `docker push`
    // does: HEAD (missing), then a monolithic upload committed with its digest.
    let layers: Vec<Bytes> = (0u64..)
        .map(|seed| blob(256 << 10, 2000 + seed))
        .filter(|data| cluster.dev.owner_addrs(&Digest::of(data))[0] == dead)
        .take(4)
        .collect();
    for data in &layers {
        let digest = Digest::of(data);
        let head = http
            .head(format!("{registry}/blobs/{digest}"))
            .send()
            .await
            .unwrap();
        assert_eq!(head.status(), reqwest::StatusCode::NOT_FOUND, "{digest}");
        let pushed = http
            .post(format!("{registry}/blobs/uploads/?digest={digest}"))
            .body(data.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(
            pushed.status(),
            reqwest::StatusCode::CREATED,
            "{digest}: {}",
            pushed.text().await.unwrap_or_default()
        );
        let head = http
            .head(format!("{registry}/blobs/{digest}"))
            .send()
            .await
            .unwrap();
        assert_eq!(head.status(), reqwest::StatusCode::OK, "{digest}");
        let live_owner = cluster.dev.owner_addrs(&digest)[1];
        eventually("the live owner holds the layer", async || {
            cluster.holds(live_owner, &digest)
        })
        .await;
    }

    // The proxy's passive checks (default: 3 network errors) took the dead origin out of
    // rotation; the live ones stay in.
    let hosts = cluster.dev.proxy.origin_hosts();
    let status = hosts.iter().find(|h| h.host == dead.to_string()).unwrap();
    assert!(!status.healthy, "{hosts:?}");
    assert!(
        hosts
            .iter()
            .filter(|h| h.host != dead.to_string())
            .all(|h| h.healthy),
        "{hosts:?}"
    );

    // And an agent serves every layer through its registry API.
    let agent = format!("http://{}/v2/{NS}", cluster.dev.agent_registry_addr(0));
    for data in &layers {
        let digest = Digest::of(data);
        let pulled = http
            .get(format!("{agent}/blobs/{digest}"))
            .send()
            .await
            .unwrap();
        assert_eq!(pulled.status(), reqwest::StatusCode::OK, "{digest}");
        assert_eq!(Digest::of(&pulled.bytes().await.unwrap()), digest);
    }
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_push_while_the_backend_is_down_lands_once_it_returns_even_across_an_origin_restart() {
    // Replicas wait an hour: only the accepting origin writes back here.
    let mut cluster = start(3, 1, |config| {
        config.writeback.replica_delay = Duration::from_secs(3600);
    })
    .await;
    cluster.backend.set_down(true);
    let data = blob(3 << 20, 13);
    let digest = cluster
        .dev
        .push(&ns(), data.clone())
        .await
        .expect("the push succeeds");
    let owners = cluster.dev.owner_addrs(&digest);
    let first = owners[0];
    let stat = cluster
        .client(first)
        .stat_local(&ns(), &digest)
        .await
        .unwrap()
        .unwrap();
    assert!(stat.local && !stat.persisted, "{stat:?}");
    assert_eq!(cluster.pending(first), [(ns(), digest)]);
    assert!(cluster.pinned(first, &digest).await);
    eventually("the replica is pinned on the second owner", async || {
        cluster.holds(owners[1], &digest)
    })
    .await;
    assert!(cluster.pinned(owners[1], &digest).await);

    // Pulls keep working while the backend is down.
    let copy = pull(cluster.agent(0), digest).await.unwrap();
    assert_eq!(copy, data);

    // The accepting origin restarts while the backend is still down.
    let stopped = cluster
        .dev
        .stop_origin(first, Stop::Graceful)
        .await
        .unwrap();
    let queued: Vec<_> = std::fs::read_dir(stopped.store_dir().join("writeback"))
        .unwrap()
        .collect();
    assert_eq!(queued.len(), 1, "the write-back task is on disk");
    cluster.dev.restart_origin(stopped).await.unwrap();
    assert_eq!(cluster.pending(first), [(ns(), digest)], "replayed");
    assert!(cluster.pinned(first, &digest).await);
    assert_eq!(cluster.backend.uploads(), 0);

    cluster.backend.set_down(false);
    eventually("the blob appears in the backend", async || {
        cluster.backend.holds(&digest).await
    })
    .await;
    eventually("the write-back is done", async || {
        cluster.pending(first).is_empty()
    })
    .await;
    assert!(
        !cluster.pinned(first, &digest).await,
        "unpinned once persisted"
    );
    let stat = cluster
        .client(first)
        .stat_local(&ns(), &digest)
        .await
        .unwrap()
        .unwrap();
    assert!(stat.persisted, "{stat:?}");
    assert_eq!(cluster.backend.uploads(), 1);
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_writes_back_when_the_accepting_origin_dies_first() {
    let mut cluster = start(3, 0, |config| {
        config.writeback.replica_delay = Duration::from_millis(500);
    })
    .await;
    cluster.backend.set_down(true);
    let data = blob(2 << 20, 14);
    let digest = cluster.dev.push(&ns(), data).await.unwrap();
    let owners = cluster.dev.owner_addrs(&digest);
    eventually(
        "the replica and its delayed write-back are on the second owner",
        async || {
            cluster.holds(owners[1], &digest) && cluster.pending(owners[1]) == [(ns(), digest)]
        },
    )
    .await;
    // The accepting origin dies for good before the backend comes back.
    cluster
        .dev
        .stop_origin(owners[0], Stop::Kill)
        .await
        .unwrap();
    cluster.backend.set_down(false);
    eventually("the replica writes the blob back", async || {
        cluster.backend.holds(&digest).await && cluster.pending(owners[1]).is_empty()
    })
    .await;
    assert!(!cluster.pinned(owners[1], &digest).await);
    assert_eq!(cluster.backend.uploads(), 1);
    cluster.shutdown().await;
}
