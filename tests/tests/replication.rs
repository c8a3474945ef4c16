//! Cross-cluster replication between whole clusters in one process, each with its own CA
//! (`DevClusters::chain`): images pushed through cluster a's proxy as a client would, pulled
//! by tag through an agent of another cluster, byte for byte; a remote that is down, a
//! build-index restarted mid-task, a tag re-pointed while it travels, a chain of three
//! clusters, a remote that does not trust our CA, and a build-index that dies with its disk
//! while its cluster peer holds a copy of its task.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use common::{push_blob, push_manifest, sha256};
use kraken_buildindex::BuildIndex;
use kraken_config::build_index::BuildIndexConfig;
use kraken_config::cluster::HostList;
use kraken_core::{Digest, Namespace};
use kraken_devcluster::{ConfigHooks, DevCluster, DevClusterBuilder, DevClusters, Ports, Stop};
use kraken_proto::buildindex::v1::replication_service_client::ReplicationServiceClient;
use kraken_proto::buildindex::v1::{ListTasksRequest, ListTasksResponse, ReplicationTask};
use kraken_tls::Role;
use reqwest::{Client, StatusCode};

const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
const OCI_LAYER: &str = "application/vnd.oci.image.layer.v1.tar";

/// How long a test waits for replication before it fails (never a measure of speed: the
/// executor retries after 1 s, doubling up to 10 s, in a dev cluster).
const PATIENCE: Duration = Duration::from_secs(90);

/// A two-platform image as pushed: every blob and manifest with its digest.
struct Image {
    repo: String,
    tag: String,
    index: (String, Vec<u8>),
    manifests: Vec<(String, Vec<u8>)>,
    blobs: Vec<(String, Vec<u8>)>,
}

fn bytes(len: usize, seed: &str) -> Vec<u8> {
    let seed = Digest::of(seed.as_bytes());
    (0..len)
        .map(|i| seed.as_bytes()[i % 32] ^ (i as u8) ^ ((i >> 8) as u8))
        .collect()
}

/// Pushes a two-platform index (each platform: a config and two layers of `layer` bytes)
/// through the proxy at `proxy`: blobs, then the platform manifests by digest, then the index
/// under `tag`, which is what queues the replication.
async fn push_image(proxy: SocketAddr, repo: &str, tag: &str, seed: &str, layer: usize) -> Image {
    let http = Client::new();
    let mut blobs = Vec::new();
    let mut manifests = Vec::new();
    let mut entries = Vec::new();
    for arch in ["amd64", "arm64"] {
        let config = format!(
            r#"{{"architecture":"{arch}","os":"linux","seed":"{seed}","rootfs":{{"type":"layers","diff_ids":[]}}}}"#
        )
        .into_bytes();
        let layers = [
            bytes(layer, &format!("{seed}/{arch}/0")),
            bytes(layer / 2 + 1, &format!("{seed}/{arch}/1")),
        ];
        let config_digest = push_blob(&http, proxy, repo, &config).await;
        let mut descriptors = Vec::new();
        for data in &layers {
            let digest = push_blob(&http, proxy, repo, data).await;
            descriptors.push(serde_json::json!({
                "mediaType": OCI_LAYER, "digest": digest, "size": data.len()
            }));
            blobs.push((digest, data.clone()));
        }
        let manifest = serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {"mediaType": OCI_CONFIG, "digest": config_digest, "size": config.len()},
            "layers": descriptors,
        }))
        .unwrap();
        blobs.push((config_digest, config));
        let digest = sha256(&manifest);
        push_manifest(&http, proxy, repo, &digest, OCI_MANIFEST, &manifest).await;
        entries.push(serde_json::json!({
            "mediaType": OCI_MANIFEST, "digest": digest, "size": manifest.len(),
            "platform": {"architecture": arch, "os": "linux"}
        }));
        manifests.push((digest, manifest));
    }
    let index = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": entries,
    }))
    .unwrap();
    let digest = push_manifest(&http, proxy, repo, tag, OCI_INDEX, &index).await;
    Image {
        repo: repo.to_owned(),
        tag: tag.to_owned(),
        index: (digest, index),
        manifests,
        blobs,
    }
}

/// The digest `repo:tag` resolves to through the agent registry at `agent`, `None` while the
/// tag is unknown there.
async fn tag_at(agent: SocketAddr, repo: &str, tag: &str) -> Option<String> {
    let response = Client::new()
        .head(format!("http://{agent}/v2/{repo}/manifests/{tag}"))
        .header("accept", OCI_INDEX)
        .send()
        .await
        .unwrap();
    match response.status() {
        StatusCode::OK => Some(
            response.headers()["docker-content-digest"]
                .to_str()
                .unwrap()
                .to_owned(),
        ),
        StatusCode::NOT_FOUND => None,
        other => panic!("HEAD {repo}:{tag} at {agent}: {other}"),
    }
}

/// Waits until `repo:tag` resolves to `digest` through the agent at `agent`.
async fn wait_for_tag(agent: SocketAddr, repo: &str, tag: &str, digest: &str) {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    let mut last = None;
    while tokio::time::Instant::now() < deadline {
        last = tag_at(agent, repo, tag).await;
        if last.as_deref() == Some(digest) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!("{repo}:{tag} never pointed at {digest} through agent {agent} (last: {last:?})");
}

/// Pulls the whole image by tag through the agent registry at `agent`: the index, every
/// platform manifest and every blob, each byte for byte what was pushed.
async fn pull_and_compare(agent: SocketAddr, image: &Image) {
    let http = Client::new();
    let base = format!("http://{agent}/v2/{}", image.repo);
    let get = |url: String| {
        let http = http.clone();
        async move {
            let response = http
                .get(&url)
                .header("accept", format!("{OCI_INDEX}, {OCI_MANIFEST}"))
                .send()
                .await
                .unwrap();
            assert_eq!(response.status(), StatusCode::OK, "GET {url}");
            response.bytes().await.unwrap().to_vec()
        }
    };
    let index = get(format!("{base}/manifests/{}", image.tag)).await;
    assert_eq!(sha256(&index), image.index.0, "the index by tag");
    assert_eq!(index, image.index.1);
    for (digest, manifest) in &image.manifests {
        assert_eq!(&get(format!("{base}/manifests/{digest}")).await, manifest);
    }
    for (digest, data) in &image.blobs {
        assert_eq!(
            &get(format!("{base}/blobs/{digest}")).await,
            data,
            "blob {digest}"
        );
    }
}

/// `ReplicationService/ListTasks` of `cluster`'s build-index, as its operator sees it.
async fn tasks(cluster: &DevCluster) -> ListTasksResponse {
    tasks_at(cluster, cluster.build_index_addr()).await
}

/// Waits until `cluster`'s task for `tag` satisfies `done`, and returns it.
async fn wait_for_task(
    cluster: &DevCluster,
    tag: &str,
    what: &str,
    done: impl Fn(&ReplicationTask) -> bool,
) -> ReplicationTask {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    let mut last = None;
    while tokio::time::Instant::now() < deadline {
        last = tasks(cluster)
            .await
            .tasks
            .into_iter()
            .find(|t| t.tag == tag);
        if let Some(task) = last.as_ref().filter(|t| done(t)) {
            return task.clone();
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("the task of {tag} never got {what}; last seen: {last:?}");
}

/// Waits until `cluster` owes nothing to anyone.
async fn wait_until_drained(cluster: &DevCluster) {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    let mut last = ListTasksResponse::default();
    while tokio::time::Instant::now() < deadline {
        last = tasks(cluster).await;
        if last.pending == 0 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("the replication queue never drained: {last:?}");
}

/// One origin and one agent per cluster: enough for every path, quick to start.
fn small(_: usize, builder: DevClusterBuilder) -> DevClusterBuilder {
    builder.origins(1).agents(1).max_replica(1)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_two_platform_index_pushed_to_a_is_pulled_by_tag_through_an_agent_of_b() {
    let dir = tempfile::tempdir().unwrap();
    let clusters = DevClusters::chain(dir.path(), 2, Ports::Ephemeral, small)
        .await
        .unwrap();
    let (a, b) = (&clusters.clusters[0], &clusters.clusters[1]);
    let image = push_image(a.proxy_registry_addr(), "team/app", "v1", "one", 300_000).await;

    wait_for_tag(b.agent_registry_addr(0), "team/app", "v1", &image.index.0).await;
    pull_and_compare(b.agent_registry_addr(0), &image).await;
    // The task is gone once the remote has the tag; b queues nothing (it has no remote).
    wait_until_drained(a).await;
    assert_eq!(tasks(b).await.pending, 0);
    clusters.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tag_travels_a_to_b_to_c() {
    let dir = tempfile::tempdir().unwrap();
    let clusters = DevClusters::chain(dir.path(), 3, Ports::Ephemeral, small)
        .await
        .unwrap();
    let [a, b, c] = [0, 1, 2].map(|i| &clusters.clusters[i]);
    let image = push_image(a.proxy_registry_addr(), "chain/app", "v1", "chain", 100_000).await;

    wait_for_tag(c.agent_registry_addr(0), "chain/app", "v1", &image.index.0).await;
    pull_and_compare(c.agent_registry_addr(0), &image).await;
    // b received the tag with `replicate` and sent it on.
    assert_eq!(
        tag_at(b.agent_registry_addr(0), "chain/app", "v1").await,
        Some(image.index.0.clone())
    );
    wait_until_drained(a).await;
    wait_until_drained(b).await;
    clusters.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_remote_down_during_the_push_gets_the_tag_when_it_is_back() {
    let dir = tempfile::tempdir().unwrap();
    let mut clusters = DevClusters::chain(dir.path(), 2, Ports::Ephemeral, small)
        .await
        .unwrap();
    let b = &mut clusters.clusters[1];
    let stopped_index = b.stop_build_index().await.unwrap();
    let origin = b.origins[0].grpc_addr();
    let stopped_origin = b.stop_origin(origin, Stop::Graceful).await.unwrap();

    let a = &clusters.clusters[0];
    let image = push_image(a.proxy_registry_addr(), "outage/app", "v1", "down", 50_000).await;
    // Tried, failed as unreachable, retried: the push itself succeeded regardless.
    // Six failed attempts: about 25 s down (the dev cluster's retries wait 1, 2, 4, 8 then
    // 10 s, jittered).
    let waiting = wait_for_task(a, "outage/app:v1", "6 failed attempts", |t| {
        t.attempts >= 6 && !t.running
    })
    .await;
    assert_eq!(waiting.cause, "remote_unreachable", "{waiting:?}");
    assert!(
        waiting
            .last_error
            .contains("cannot reach the build-index of remote `b`"),
        "{waiting:?}"
    );
    assert_eq!(waiting.digest, image.index.0);
    assert!(waiting.next_attempt_unix_ms > waiting.created_unix_ms);

    let b = &mut clusters.clusters[1];
    b.restart_origin(stopped_origin).await.unwrap();
    b.restart_build_index(stopped_index).await.unwrap();
    let b = &clusters.clusters[1];
    wait_for_tag(b.agent_registry_addr(0), "outage/app", "v1", &image.index.0).await;
    pull_and_compare(b.agent_registry_addr(0), &image).await;
    wait_until_drained(&clusters.clusters[0]).await;
    clusters.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_build_index_restarted_mid_task_finishes_it() {
    let dir = tempfile::tempdir().unwrap();
    // a's origin sends to b at 16 Mbit/s, one blob at a time: ~4 s for the image's 8 MiB.
    let slow = |i: usize, builder: DevClusterBuilder| {
        let builder = small(i, builder);
        if i > 0 {
            return builder;
        }
        builder
            .configure_origins(|_, config| {
                for remote in config.remotes.values_mut() {
                    remote.bandwidth.enable = true;
                    remote.bandwidth.egress_bits_per_sec = 16 << 20;
                }
            })
            .configure(ConfigHooks {
                build_index: Some(Arc::new(|config: &mut BuildIndexConfig| {
                    config.replication.blob_concurrency = 1;
                })),
                ..ConfigHooks::default()
            })
    };
    let mut clusters = DevClusters::chain(dir.path(), 2, Ports::Ephemeral, slow)
        .await
        .unwrap();
    let a = &clusters.clusters[0];
    let image = push_image(a.proxy_registry_addr(), "slow/app", "v1", "slow", 2 << 20).await;
    let running = wait_for_task(a, "slow/app:v1", "bytes sent", |t| t.bytes_sent > 0).await;
    assert!(running.blobs_done < running.blobs_total, "{running:?}");

    let a = &mut clusters.clusters[0];
    let stopped = a.stop_build_index().await.unwrap();
    a.restart_build_index(stopped).await.unwrap();
    let b = &clusters.clusters[1];
    wait_for_tag(b.agent_registry_addr(0), "slow/app", "v1", &image.index.0).await;
    pull_and_compare(b.agent_registry_addr(0), &image).await;
    wait_until_drained(&clusters.clusters[0]).await;
    clusters.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tag_re_pointed_twice_quickly_ends_on_the_newest_at_b() {
    let dir = tempfile::tempdir().unwrap();
    let clusters = DevClusters::chain(dir.path(), 2, Ports::Ephemeral, small)
        .await
        .unwrap();
    let (a, b) = (&clusters.clusters[0], &clusters.clusters[1]);
    let proxy = a.proxy_registry_addr();
    let mut last = None;
    for seed in ["first", "second", "third"] {
        last = Some(push_image(proxy, "moving/app", "latest", seed, 200_000).await);
    }
    let newest = last.unwrap();
    wait_until_drained(a).await;
    // Drained means the newest write's task ended: b holds it, and nothing older can follow.
    assert_eq!(
        tag_at(b.agent_registry_addr(0), "moving/app", "latest").await,
        Some(newest.index.0.clone())
    );
    pull_and_compare(b.agent_registry_addr(0), &newest).await;
    clusters.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unlisted_ca_is_refused_and_the_task_waits_with_its_reason() {
    let dir = tempfile::tempdir().unwrap();
    // b trusts nobody: a's certificates fail the handshake everywhere in b.
    let distrustful = |i: usize, builder: DevClusterBuilder| {
        let builder = small(i, builder);
        if i == 0 {
            return builder;
        }
        builder
            .configure_origins(|_, config| config.trusted_remotes.clear())
            .configure(ConfigHooks {
                build_index: Some(Arc::new(|config: &mut BuildIndexConfig| {
                    config.trusted_remotes.clear();
                })),
                ..ConfigHooks::default()
            })
    };
    let clusters = DevClusters::chain(dir.path(), 2, Ports::Ephemeral, distrustful)
        .await
        .unwrap();
    let (a, b) = (&clusters.clusters[0], &clusters.clusters[1]);
    let image = push_image(a.proxy_registry_addr(), "refused/app", "v1", "nope", 10_000).await;

    let waiting = wait_for_task(a, "refused/app:v1", "a failed attempt", |t| {
        t.attempts >= 1 && !t.running
    })
    .await;
    assert_eq!(waiting.cause, "tls", "{waiting:?}");
    assert!(
        waiting.last_error.contains("refused our certificate"),
        "the error says which side refused what: {waiting:?}"
    );
    assert!(waiting.last_error.contains("remote `b`"), "{waiting:?}");
    // Nothing reached b: no tag, no blob.
    assert_eq!(
        tag_at(b.agent_registry_addr(0), "refused/app", "v1").await,
        None
    );
    let origin = b.origin_client(&b.origins[0]).unwrap();
    let namespace: Namespace = "refused/app".parse().unwrap();
    for (digest, _) in image.blobs.iter().chain(&image.manifests) {
        let digest: Digest = digest.parse().unwrap();
        assert_eq!(
            origin.stat_local(&namespace, &digest).await.unwrap(),
            None,
            "{digest} reached b"
        );
    }
    clusters.shutdown().await;
}

/// `ListTasks` of the build-index at `addr`, with `cluster`'s client certificate.
async fn tasks_at(cluster: &DevCluster, addr: SocketAddr) -> ListTasksResponse {
    let channel = kraken_transport::grpc::channel(
        &cluster.tls(Role::Client).unwrap(),
        &addr.to_string(),
        None,
        Role::BuildIndex,
    )
    .unwrap();
    ReplicationServiceClient::new(channel)
        .list_tasks(ListTasksRequest::default())
        .await
        .unwrap()
        .into_inner()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wiped_build_index_is_covered_by_its_cluster_peer() {
    let dir = tempfile::tempdir().unwrap();
    // Cluster a gets a second build-index, started below at `peer`; each lists the other
    // under `cluster:`. Peers hold their copies of a task for 1 s.
    let reserved = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let peer = reserved.local_addr().unwrap();
    drop(reserved);
    let with_peer = move |i: usize, builder: DevClusterBuilder| {
        let builder = small(i, builder);
        if i > 0 {
            return builder;
        }
        builder.configure(ConfigHooks {
            build_index: Some(Arc::new(move |config: &mut BuildIndexConfig| {
                config.cluster = HostList {
                    static_hosts: vec![peer.to_string()],
                    dns: None,
                };
                config.replication.peer_delay = Duration::from_secs(1);
            })),
            ..ConfigHooks::default()
        })
    };
    let mut clusters = DevClusters::chain(dir.path(), 2, Ports::Ephemeral, with_peer)
        .await
        .unwrap();
    let a = &clusters.clusters[0];
    let mut config = a.build_index_config();
    config.tag_store.dir = dir.path().join("a-peer/tags");
    config.replication.dir = dir.path().join("a-peer/replication");
    config.cluster = HostList {
        static_hosts: vec![a.build_index_addr().to_string()],
        dns: None,
    };
    let second = BuildIndex::start(
        config,
        a.tls(Role::BuildIndex).unwrap(),
        tokio::net::TcpListener::bind(peer).await.unwrap(),
    )
    .await
    .unwrap();

    // b is down while a takes the push.
    let stopped_b = clusters.clusters[1].stop_build_index().await.unwrap();
    let a = &clusters.clusters[0];
    let image = push_image(a.proxy_registry_addr(), "peers/app", "v1", "peer", 20_000).await;
    // The peer has the tag at once (copied before the push was acknowledged) and holds its
    // own copy of the task.
    let copy = tasks_at(a, peer).await;
    assert_eq!(copy.pending, 1, "{copy:?}");
    let held = &copy.tasks[0];
    assert_eq!(
        (held.tag.as_str(), held.remote.as_str(), held.held_for_peer),
        ("peers/app:v1", "b", true),
        "{held:?}"
    );
    assert_eq!(held.digest, image.index.0);

    // a's first build-index dies and loses its disk; b comes back.
    let a = &mut clusters.clusters[0];
    a.stop_build_index().await.unwrap().wipe().unwrap();
    clusters.clusters[1]
        .restart_build_index(stopped_b)
        .await
        .unwrap();
    let b = &clusters.clusters[1];
    wait_for_tag(b.agent_registry_addr(0), "peers/app", "v1", &image.index.0).await;
    pull_and_compare(b.agent_registry_addr(0), &image).await;
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while tasks_at(&clusters.clusters[0], peer).await.pending > 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the peer's task never ended"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    second.shutdown().await.unwrap();
    clusters.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_foreign_build_index_certificate_gets_permission_denied_outside_replication() {
    use kraken_proto::agent::v1::agent_service_client::AgentServiceClient;
    use kraken_proto::buildindex::v1::tag_service_client::TagServiceClient;
    use kraken_proto::origin::v1::blob_service_client::BlobServiceClient;
    use kraken_proto::tracker::v1::tracker_service_client::TrackerServiceClient;
    use tonic::Code;

    let dir = tempfile::tempdir().unwrap();
    let clusters = DevClusters::chain(dir.path(), 2, Ports::Ephemeral, small)
        .await
        .unwrap();
    let (a, b) = (&clusters.clusters[0], &clusters.clusters[1]);
    // What a's build-index dials b with: b's CA as roots, a's build-index certificate.
    let foreign = kraken_tls::TlsMaterial::load_for_remote(
        &a.pki.tls_config(Role::BuildIndex),
        &b.pki.ca_cert_path(),
    )
    .unwrap();
    let channel = |addr: SocketAddr, role: Role| {
        kraken_transport::grpc::channel(&foreign, &addr.to_string(), None, role).unwrap()
    };
    let denied = |what: &str, result: Result<(), tonic::Status>| {
        let status = result.expect_err(what);
        assert_eq!(status.code(), Code::PermissionDenied, "{what}: {status:?}");
        assert!(
            status.message().contains("remote cluster `a`"),
            "{what}: {status:?}"
        );
    };

    // Replication itself is allowed: the foreign build-index may ask b for a tag.
    let mut tags = TagServiceClient::new(channel(b.build_index_addr(), Role::BuildIndex));
    let has = tags
        .has(kraken_proto::buildindex::v1::HasRequest {
            tag: "any/app:v1".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(!has.exists);
    denied(
        "TagService/List",
        tags.list(kraken_proto::buildindex::v1::ListRequest::default())
            .await
            .map(drop),
    );
    denied(
        "TagService/Replicate",
        tags.replicate(kraken_proto::buildindex::v1::ReplicateRequest::default())
            .await
            .map(drop),
    );
    let mut replication =
        ReplicationServiceClient::new(channel(b.build_index_addr(), Role::BuildIndex));
    denied(
        "ReplicationService/ListTasks",
        replication
            .list_tasks(ListTasksRequest::default())
            .await
            .map(drop),
    );
    denied(
        "ReplicationService/DuplicatePut",
        replication
            .duplicate_put(kraken_proto::buildindex::v1::DuplicatePutRequest::default())
            .await
            .map(drop),
    );
    let mut origin = BlobServiceClient::new(channel(b.origins[0].grpc_addr(), Role::Origin));
    denied(
        "BlobService/Delete",
        origin
            .delete(kraken_proto::origin::v1::DeleteRequest::default())
            .await
            .map(drop),
    );
    denied(
        "BlobService/ReplicateToRemote",
        origin
            .replicate_to_remote(kraken_proto::origin::v1::ReplicateToRemoteRequest::default())
            .await
            .map(drop),
    );
    denied(
        "BlobService/GetMetaInfo",
        origin
            .get_meta_info(kraken_proto::origin::v1::GetMetaInfoRequest::default())
            .await
            .map(drop),
    );

    // Agents and trackers trust their own cluster's CA only: the handshake fails. With TLS
    // 1.3 the call itself may report only a broken connection (the alert comes after the
    // client's side of the handshake), so the call must fail without an answer from the
    // access layer, and a handshake probe of the same address must read the refusal.
    let refused = |what: &'static str, addr: SocketAddr, result: Result<(), tonic::Status>| {
        let foreign = foreign.clone();
        async move {
            let status = result.expect_err(what);
            assert_ne!(status.code(), Code::PermissionDenied, "{what}: {status:?}");
            let probe = kraken_transport::remote::probe_handshake(
                &foreign,
                &addr.to_string(),
                "localhost",
                "b",
            )
            .await;
            assert!(
                matches!(
                    probe,
                    Some(kraken_tls::HandshakeFailure::RefusedOurCertificate { .. })
                ),
                "{what}: not a refused handshake: {status:?}, probe {probe:?}"
            );
        }
    };
    let agent_addr = b.agents[0].grpc_addr();
    let mut agent = AgentServiceClient::new(channel(agent_addr, Role::Agent));
    refused(
        "AgentService/Stat",
        agent_addr,
        agent
            .stat(kraken_proto::agent::v1::StatRequest::default())
            .await
            .map(drop),
    )
    .await;
    let mut tracker = TrackerServiceClient::new(channel(b.tracker_addr, Role::Tracker));
    refused(
        "TrackerService/GetMetaInfo",
        b.tracker_addr,
        tracker
            .get_meta_info(kraken_proto::tracker::v1::GetMetaInfoRequest::default())
            .await
            .map(drop),
    )
    .await;
    // The same agent answers b's own certificate: it was the CA that was refused.
    let own = kraken_transport::grpc::channel(
        &b.tls(Role::Client).unwrap(),
        &b.agents[0].grpc_addr().to_string(),
        None,
        Role::Agent,
    )
    .unwrap();
    let answer = AgentServiceClient::new(own)
        .stat(kraken_proto::agent::v1::StatRequest::default())
        .await;
    assert!(
        !matches!(&answer, Err(s) if matches!(s.code(), Code::Cancelled | Code::Unavailable)),
        "b's agent is up: {answer:?}"
    );
    clusters.shutdown().await;
}
