//! A real build-index on loopback in front of real origins (the dev cluster's), driven over
//! gRPC with real mutual TLS: dependency checks for image manifests and indexes, mutable tags,
//! pagination, durability across restarts, write-through and recovery from the backend, the
//! replication record, bad input and roles.

// Test code: a failed step is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use kraken_backend::{Backend, Backends, FsBackend};
use kraken_buildindex::BuildIndex;
use kraken_config::Pattern;
use kraken_config::build_index::{BuildIndexConfig, BuildIndexRemote, TagType, TagTypeRule};
use kraken_config::cluster::{HostList, UpstreamConfig};
use kraken_config::remote::{RemoteTlsSection, TrustedBuildIndexRemote};
use kraken_config::tls::TlsSection;
use kraken_core::{Digest, Namespace};
use kraken_devcluster::{DevCluster, open_pki};
use kraken_oci::TaggedName;
use kraken_oci::media_type::{
    DOCKER_CONFIG, DOCKER_LAYER, DOCKER_MANIFEST, OCI_INDEX, OCI_MANIFEST,
};
use kraken_proto::buildindex::v1::replication_service_client::ReplicationServiceClient;
use kraken_proto::buildindex::v1::tag_service_client::TagServiceClient;
use kraken_proto::buildindex::v1::{
    GetRequest, HasRequest, ListOriginsRequest, ListRequest, ListTasksRequest, PutRequest,
    PutResponse, ReplicationTask as ReplicationTaskMessage,
};
use kraken_tagclient::TagClient;
use kraken_tls::Role;
use kraken_tls::TlsMaterial;
use serde_json::json;
use tokio::net::TcpListener;
use tonic::Code;

struct Fixture {
    /// Where remote `b`'s build-index is said to be: it accepts connections and drops them.
    remote_b: tokio::task::JoinHandle<()>,
    cluster: DevCluster,
    build_index: Option<BuildIndex>,
    config: BuildIndexConfig,
    tag_backend: PathBuf,
    dir: tempfile::TempDir,
}

impl Fixture {
    /// Three origins (two replicas per blob), no agents, and a build-index whose tags go to an
    /// fs backend of their own. Repositories under `blobs/` use the `default` tag type.
    async fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let cluster = DevCluster::builder(dir.path().join("cluster"))
            .origins(3)
            .agents(0)
            .max_replica(2)
            .start()
            .await
            .unwrap();
        let hosts: Vec<String> = cluster
            .origins
            .iter()
            .map(|o| o.grpc_addr().to_string())
            .collect();
        let mut config = BuildIndexConfig {
            origin: UpstreamConfig::of(hosts),
            ..BuildIndexConfig::default()
        };
        config.hashring.max_replica = 2;
        // The files behind the material `restart` serves with: a remote is dialed with them.
        let own = cluster.pki.tls_config(Role::BuildIndex);
        config.tls = TlsSection {
            ca: Some(own.ca),
            cert: Some(own.cert),
            key: Some(own.key),
        };
        config.tag_store.dir = dir.path().join("tags");
        config.replication.dir = dir.path().join("replication");
        config.tag_types.insert(
            0,
            TagTypeRule {
                namespace: Pattern::new("^blobs/").unwrap(),
                tag_type: TagType::Default,
            },
        );
        // Remote `b` has a CA of its own, and its build-index drops every connection: tasks
        // for it are attempted and fail as unreachable.
        let remote_ca = open_pki(&dir.path().join("cluster-b"))
            .unwrap()
            .ca_cert_path();
        let (remote_addr, remote_b) = dropping_listener().await;
        config.remotes.insert(
            "b".into(),
            BuildIndexRemote {
                build_index: UpstreamConfig::of([remote_addr.to_string()]),
                tags: vec![Pattern::new("^release/").unwrap()],
                tls: RemoteTlsSection {
                    ca: remote_ca,
                    ..RemoteTlsSection::default()
                },
            },
        );
        let tag_backend = dir.path().join("tag-backend");
        let mut fixture = Self {
            remote_b,
            cluster,
            build_index: None,
            config,
            tag_backend,
            dir,
        };
        fixture.restart().await;
        fixture
    }

    async fn restart(&mut self) {
        if let Some(build_index) = self.build_index.take() {
            build_index.shutdown().await.unwrap();
        }
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let backends = Backends::new([(
            Pattern::any(),
            Arc::new(FsBackend::new(&self.tag_backend)) as Arc<dyn Backend>,
        )]);
        let build_index = BuildIndex::start_with_backends(
            self.config.clone(),
            self.cluster.tls(Role::BuildIndex).unwrap(),
            listener,
            backends,
        )
        .await
        .unwrap();
        self.build_index = Some(build_index);
    }

    fn addr(&self) -> String {
        self.build_index.as_ref().unwrap().addr().to_string()
    }

    fn client(&self, role: Role) -> TagClient {
        TagClient::new(
            &UpstreamConfig::of([self.addr().to_string()]),
            &self.cluster.tls(role).unwrap(),
        )
        .unwrap()
    }

    async fn push(&self, repository: &str, data: impl Into<Bytes>) -> Digest {
        self.cluster
            .push(&ns(repository), data.into())
            .await
            .unwrap()
    }

    /// Pushes a config and `layers` (only those with `pushed`) and an image manifest
    /// referencing all of them; returns the manifest's digest and the layers'.
    async fn image(
        &self,
        repository: &str,
        seed: &str,
        layers: &[(usize, bool)],
    ) -> (Digest, Vec<Digest>) {
        let config = format!("{{\"seed\":\"{seed}\"}}");
        let config_digest = self.push(repository, config.clone()).await;
        let mut descriptors = Vec::new();
        let mut digests = Vec::new();
        for (index, (size, pushed)) in layers.iter().enumerate() {
            let data = blob(*size, &format!("{seed}-{index}"));
            let digest = Digest::of(&data);
            if *pushed {
                self.push(repository, data).await;
            }
            digests.push(digest);
            descriptors.push(
                json!({"mediaType": DOCKER_LAYER, "digest": digest.to_string(), "size": size}),
            );
        }
        let manifest = json!({
            "schemaVersion": 2,
            "mediaType": DOCKER_MANIFEST,
            "config": {"mediaType": DOCKER_CONFIG, "digest": config_digest.to_string(), "size": config.len()},
            "layers": descriptors,
        });
        let digest = self
            .push(repository, serde_json::to_vec(&manifest).unwrap())
            .await;
        (digest, digests)
    }

    async fn stop(mut self) {
        if let Some(build_index) = self.build_index.take() {
            build_index.shutdown().await.unwrap();
        }
        self.remote_b.abort();
        self.cluster.shutdown().await;
    }
}

/// A loopback listener that accepts every connection and closes it at once, and its task.
async fn dropping_listener() -> (std::net::SocketAddr, tokio::task::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            drop(stream);
        }
    });
    (addr, task)
}

fn ns(text: &str) -> Namespace {
    text.parse().unwrap()
}

fn tag(text: &str) -> TaggedName {
    text.parse().unwrap()
}

fn blob(len: usize, seed: &str) -> Vec<u8> {
    let seed = Digest::of(seed.as_bytes());
    (0..len)
        .map(|i| seed.as_bytes()[i % 32] ^ (i as u8))
        .collect()
}

/// Milliseconds since the Unix epoch, as the build-index counts them.
fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            if entry.file_type().unwrap().is_dir() {
                stack.push(entry.path());
            } else {
                found.push(entry.path());
            }
        }
    }
    found
}

#[tokio::test]
async fn a_tag_is_refused_until_every_layer_is_on_the_origins() {
    let fixture = Fixture::start().await;
    let client = fixture.client(Role::Proxy);
    let (manifest, layers) = fixture
        .image("library/app", "one", &[(1000, true), (2000, false)])
        .await;
    let name = tag("library/app:1.0");

    let error = client.put(&name, &manifest, false).await.unwrap_err();
    assert_eq!(error.code(), Some(Code::FailedPrecondition));
    let message = error.to_string();
    assert!(message.contains(&layers[1].to_string()), "{message}");
    assert!(!message.contains(&layers[0].to_string()), "{message}");
    // Nothing was stored.
    assert_eq!(client.get(&name).await.unwrap(), None);
    assert!(!client.has(&name).await.unwrap());

    // A manifest that is not on the origins at all is named too.
    let unknown = Digest::of(b"never pushed");
    let error = client.put(&name, &unknown, false).await.unwrap_err();
    assert_eq!(error.code(), Some(Code::FailedPrecondition));
    assert!(error.to_string().contains(&unknown.to_string()), "{error}");

    fixture.push("library/app", blob(2000, "one-1")).await;
    client.put(&name, &manifest, false).await.unwrap();
    assert_eq!(client.get(&name).await.unwrap(), Some(manifest));
    assert!(client.has(&name).await.unwrap());
    fixture.stop().await;
}

#[tokio::test]
async fn an_index_needs_every_child_manifest_and_their_layers() {
    let fixture = Fixture::start().await;
    let client = fixture.client(Role::Client);
    let repository = "multi/arch";
    let (amd64, _) = fixture.image(repository, "amd64", &[(500, true)]).await;
    let (arm64, arm_layers) = fixture
        .image(repository, "arm64", &[(500, true), (700, false)])
        .await;
    let index_of = |children: &[Digest]| {
        let manifests: Vec<_> = children
            .iter()
            .map(|d| {
                json!({"mediaType": OCI_MANIFEST, "digest": d.to_string(), "size": 1,
                            "platform": {"architecture": "amd64", "os": "linux"}})
            })
            .collect();
        serde_json::to_vec(
            &json!({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": manifests}),
        )
        .unwrap()
    };
    let name = tag("multi/arch:latest");

    // A layer of a child (Kraken only checked the children themselves).
    let index = fixture.push(repository, index_of(&[amd64, arm64])).await;
    let error = client.put(&name, &index, false).await.unwrap_err();
    assert_eq!(error.code(), Some(Code::FailedPrecondition));
    assert!(
        error.to_string().contains(&arm_layers[1].to_string()),
        "{error}"
    );

    // A child manifest that was never pushed.
    let missing_child = Digest::of(b"no such manifest");
    let broken = fixture
        .push(repository, index_of(&[amd64, missing_child]))
        .await;
    let error = client.put(&name, &broken, false).await.unwrap_err();
    assert!(
        error.to_string().contains(&missing_child.to_string()),
        "{error}"
    );
    assert!(error.to_string().contains("child manifest"), "{error}");
    assert_eq!(client.get(&name).await.unwrap(), None);

    // Not a manifest at all, for a docker tag type.
    let junk = fixture.push(repository, b"just bytes".to_vec()).await;
    let error = client.put(&name, &junk, false).await.unwrap_err();
    assert_eq!(error.code(), Some(Code::FailedPrecondition));
    assert!(error.to_string().contains("not a manifest"), "{error}");

    fixture.push(repository, blob(700, "arm64-1")).await;
    client.put(&name, &index, false).await.unwrap();
    assert_eq!(client.get(&name).await.unwrap(), Some(index));
    fixture.stop().await;
}

#[tokio::test]
async fn a_re_pointed_tag_is_visible_at_once_and_survives_a_restart() {
    let mut fixture = Fixture::start().await;
    let client = fixture.client(Role::Proxy);
    let reader = fixture.client(Role::Agent);
    let name = tag("blobs/app:latest");
    let first = fixture.push("blobs/app", b"first".to_vec()).await;
    let second = fixture.push("blobs/app", b"second".to_vec()).await;
    client.put(&name, &first, false).await.unwrap();
    assert_eq!(reader.get(&name).await.unwrap(), Some(first));
    for _ in 0..3 {
        client.put(&name, &second, false).await.unwrap();
        assert_eq!(reader.get(&name).await.unwrap(), Some(second));
        client.put(&name, &first, false).await.unwrap();
        assert_eq!(reader.get(&name).await.unwrap(), Some(first));
    }
    client.put(&name, &second, false).await.unwrap();

    // Durable locally: a restart serves the last write.
    fixture.restart().await;
    let reader = fixture.client(Role::Agent);
    assert_eq!(reader.get(&name).await.unwrap(), Some(second));

    // Written through: with the local disk lost, the tag comes back from the backend.
    assert!(!files_under(&fixture.tag_backend).is_empty());
    std::fs::remove_dir_all(&fixture.config.tag_store.dir).unwrap();
    fixture.restart().await;
    let reader = fixture.client(Role::Agent);
    assert_eq!(fixture.build_index.as_ref().unwrap().tag_count(), 0);
    assert_eq!(reader.get(&name).await.unwrap(), Some(second));
    assert_eq!(fixture.build_index.as_ref().unwrap().tag_count(), 1);
    fixture.stop().await;
}

#[tokio::test]
async fn list_and_list_repository_paginate_in_lexical_order() {
    let fixture = Fixture::start().await;
    let client = fixture.client(Role::Client);
    let digest = fixture.push("blobs/a", b"content".to_vec()).await;
    fixture.push("blobs/a/b", b"content".to_vec()).await;
    let mut expected = Vec::new();
    for i in 0..23 {
        let name = format!("blobs/a:v{i:02}");
        client.put(&tag(&name), &digest, false).await.unwrap();
        expected.push(name);
    }
    client
        .put(&tag("blobs/a/b:x"), &digest, false)
        .await
        .unwrap();

    let mut listed = Vec::new();
    let mut token: Option<String> = None;
    let mut pages = 0;
    loop {
        let page = client.list("blobs/a:", 10, token.as_deref()).await.unwrap();
        pages += 1;
        assert!(page.tags.len() <= 10);
        listed.extend(page.tags);
        match page.next_page_token {
            Some(next) => token = Some(next),
            None => break,
        }
    }
    assert_eq!(pages, 3);
    assert_eq!(listed, expected);

    let all = client.list("blobs/", 0, None).await.unwrap();
    assert_eq!(all.tags.len(), 24);
    assert_eq!(all.tags[0], "blobs/a/b:x", "'/' sorts before ':'");

    let first = client.list_repository("blobs/a", 5, None).await.unwrap();
    assert_eq!(first.tags, ["v00", "v01", "v02", "v03", "v04"]);
    assert_eq!(first.next_page_token.as_deref(), Some("v04"));
    let rest = client
        .list_repository("blobs/a", 100, Some("v20"))
        .await
        .unwrap();
    assert_eq!(rest.tags, ["v21", "v22"]);
    assert_eq!(rest.next_page_token, None);
    let other = client.list_repository("blobs/a/b", 0, None).await.unwrap();
    assert_eq!(other.tags, ["x"]);
    assert!(
        client
            .list_repository("nothing/here", 0, None)
            .await
            .unwrap()
            .tags
            .is_empty()
    );
    fixture.stop().await;
}

impl Fixture {
    /// `TagService/Has` as a client sees it.
    async fn has(&self, tag: &str) -> kraken_proto::buildindex::v1::HasResponse {
        let mut raw = self.raw(&self.cluster.tls(Role::Client).unwrap());
        raw.has(HasRequest { tag: tag.into() })
            .await
            .unwrap()
            .into_inner()
    }

    /// `ReplicationService` as `role` sees it.
    fn replication(
        &self,
        role: Role,
    ) -> ReplicationServiceClient<kraken_transport::observe::ObservedChannel> {
        ReplicationServiceClient::new(
            kraken_transport::grpc::channel(
                &self.cluster.tls(role).unwrap(),
                &self.addr(),
                None,
                Role::BuildIndex,
            )
            .unwrap(),
        )
    }

    /// Waits until the task of `tag` has failed `attempts` times and is not running; a test
    /// that waits 30 s for it fails.
    async fn attempted(&self, tag: &str, attempts: u32) -> ReplicationTaskMessage {
        for _ in 0..300 {
            let (tasks, _, _) = self.tasks("", tag, 0).await;
            let found = tasks.iter().find(|t| t.tag == tag);
            if let Some(task) = found.filter(|t| t.attempts >= attempts && !t.running) {
                return task.clone();
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        panic!("the task of {tag} never reached {attempts} attempts");
    }

    /// Every pending task matching `remote` and `tag_prefix`, `page_size` at a time, with the
    /// first page's `pending` and `oldest_age_ms`.
    async fn tasks(
        &self,
        remote: &str,
        tag_prefix: &str,
        page_size: u32,
    ) -> (Vec<ReplicationTaskMessage>, u32, u64) {
        let mut client = self.replication(Role::Client);
        let (mut tasks, mut page_token, mut summary) = (Vec::new(), String::new(), None);
        // Bounded: a token that never ends the listing fails the test.
        for _ in 0..100 {
            let page = client
                .list_tasks(ListTasksRequest {
                    remote: remote.into(),
                    tag_prefix: tag_prefix.into(),
                    page_size,
                    page_token,
                })
                .await
                .unwrap()
                .into_inner();
            assert!(page_size == 0 || page.tasks.len() <= page_size as usize);
            summary.get_or_insert((page.pending, page.oldest_age_ms));
            tasks.extend(page.tasks);
            if page.next_page_token.is_empty() {
                let (pending, oldest) = summary.unwrap();
                return (tasks, pending, oldest);
            }
            page_token = page.next_page_token;
        }
        panic!("ListTasks never ended its listing");
    }
}

#[tokio::test]
async fn replicate_records_a_durable_task_per_matching_remote() {
    let mut fixture = Fixture::start().await;
    let client = fixture.client(Role::Proxy);
    let digest = fixture.push("blobs/x", b"x".to_vec()).await;
    let (release, _) = fixture.image("release/app", "rel", &[(10, true)]).await;
    let (other, _) = fixture.image("release/app", "other", &[(10, true)]).await;
    client.put(&tag("blobs/x:1"), &digest, true).await.unwrap();
    assert_eq!(fixture.tasks("", "", 0).await.1, 0, "no remote matches");
    // Without `replicate`, nothing is queued either.
    client
        .put(&tag("release/app:0"), &release, false)
        .await
        .unwrap();
    assert_eq!(fixture.tasks("", "", 0).await.1, 0);
    client
        .put(&tag("release/app:1"), &release, true)
        .await
        .unwrap();
    client
        .put(&tag("release/app:2"), &other, true)
        .await
        .unwrap();

    // Both tasks are attempted at once; remote `b` drops every connection.
    fixture.attempted("release/app:1", 1).await;
    fixture.attempted("release/app:2", 1).await;
    let (tasks, pending, oldest_age_ms) = fixture.tasks("", "", 1).await;
    assert_eq!(pending, 2);
    assert_eq!(
        tasks.iter().map(|t| t.tag.as_str()).collect::<Vec<_>>(),
        ["release/app:1", "release/app:2"],
        "tag order, one per page"
    );
    let first = &tasks[0];
    assert_eq!(first.remote, "b");
    assert_eq!(first.digest, release.to_string());
    let has = fixture.has("release/app:1").await;
    assert_eq!(
        first.version, has.version,
        "the task carries the tag's version"
    );
    assert_eq!(
        (first.attempts, first.cause.as_str()),
        (1, "remote_unreachable"),
        "{first:?}"
    );
    assert!(
        first
            .last_error
            .contains("cannot reach the build-index of remote `b`"),
        "{first:?}"
    );
    assert!(!first.running && !first.held_for_peer);
    // Retried after the (30 s) backoff, not before.
    assert!(
        first.next_attempt_unix_ms >= unix_ms() + 10_000,
        "{first:?}"
    );
    assert!(first.created_unix_ms > 0);
    let age_bound = unix_ms() - first.created_unix_ms.min(tasks[1].created_unix_ms);
    assert!(oldest_age_ms <= age_bound, "{oldest_age_ms} > {age_bound}");
    // Filters.
    assert_eq!(
        fixture.tasks("b", "release/app:2", 10).await.0[0].digest,
        other.to_string()
    );
    assert_eq!(fixture.tasks("c", "", 10).await.1, 0);
    assert_eq!(fixture.tasks("", "blobs/", 10).await.1, 0);

    // `Replicate` queues the same write again: still one task per tag, attempted at once.
    assert_eq!(
        client.replicate(&tag("release/app:1")).await.unwrap(),
        ["b"]
    );
    assert_eq!(fixture.tasks("", "", 0).await.1, 2);
    fixture.attempted("release/app:1", 2).await;
    let error = client.replicate(&tag("release/app:3")).await.unwrap_err();
    assert_eq!(error.code(), Some(Code::NotFound));

    // Durable: the tasks are there after a restart, with their attempts and errors, and are
    // not retried before their time.
    let (tasks, _, _) = fixture.tasks("", "", 0).await;
    fixture.restart().await;
    assert_eq!(fixture.tasks("", "", 0).await.0, tasks);
    assert_eq!(files_under(&fixture.config.replication.dir).len(), 2);

    // Status is for this cluster's operators and build-indexes.
    for role in [Role::Agent, Role::Proxy, Role::Origin] {
        let status = fixture
            .replication(role)
            .list_tasks(ListTasksRequest::default())
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::PermissionDenied, "{role:?}");
    }
    fixture.stop().await;
}

#[tokio::test]
async fn racing_puts_of_one_tag_leave_its_task_on_the_stored_version() {
    let fixture = Fixture::start().await;
    let mut images = Vec::new();
    for seed in 0..6 {
        let (digest, _) = fixture
            .image("release/race", &seed.to_string(), &[(10, true)])
            .await;
        images.push(digest);
    }
    let client = fixture.client(Role::Proxy);
    let puts: Vec<_> = images
        .iter()
        .map(|digest| {
            let (client, digest) = (client.clone(), *digest);
            tokio::spawn(async move { client.put(&tag("release/race:1"), &digest, true).await })
        })
        .collect();
    for put in puts {
        put.await.unwrap().unwrap();
    }
    let stored = fixture.has("release/race:1").await;
    let (tasks, pending, _) = fixture.tasks("b", "release/race:", 0).await;
    assert_eq!(pending, 1);
    assert_eq!(
        (tasks[0].digest.as_str(), tasks[0].version),
        (stored.digest.as_str(), stored.version),
        "the task names what the tag points at"
    );
    fixture.stop().await;
}

#[tokio::test]
async fn bad_requests_and_roles_are_refused_with_precise_codes() {
    let fixture = Fixture::start().await;
    let channel = kraken_transport::grpc::channel(
        &fixture.cluster.tls(Role::Client).unwrap(),
        &fixture.addr(),
        None,
        Role::BuildIndex,
    )
    .unwrap();
    let mut raw =
        kraken_proto::buildindex::v1::tag_service_client::TagServiceClient::new(channel.clone());
    use kraken_proto::buildindex::v1::ListRepositoryRequest;
    let put = |tag: &str, digest: &str| PutRequest {
        tag: tag.into(),
        digest: digest.into(),
        ..PutRequest::default()
    };
    let good = Digest::of(b"x").to_string();
    for (request, expected) in [
        (put("no-tag", &good), "field `tag`"),
        (put("Upper/case:1", &good), "field `tag`"),
        (put("a:.bad", &good), "field `tag`"),
        (put("a:1", "sha256:abc"), "field `digest`"),
        (put("a:1", "md5:00"), "field `digest`"),
    ] {
        let status = raw.put(request).await.unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
        assert!(status.message().contains(expected), "{status:?}");
    }
    let status = raw
        .get(GetRequest {
            tag: "a:missing".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::NotFound);
    let status = raw
        .list_repository(ListRepositoryRequest {
            repository: "Bad".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);

    // Agents read tags but never write them.
    let agent = fixture.client(Role::Agent);
    let error = agent
        .put(&tag("a:1"), &Digest::of(b"x"), false)
        .await
        .unwrap_err();
    assert_eq!(error.code(), Some(Code::PermissionDenied));

    // Health and reflection are registered like on every server.
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
    let reply = health
        .check(tonic_health::pb::HealthCheckRequest {
            service: "kraken.buildindex.v1.TagService".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        reply.status,
        tonic_health::pb::health_check_response::ServingStatus::Serving as i32
    );
    let _ = &fixture.dir;
    fixture.stop().await;
}

impl Fixture {
    /// A `TagService` client over mTLS presenting `tls`.
    fn raw(
        &self,
        tls: &TlsMaterial,
    ) -> TagServiceClient<kraken_transport::observe::ObservedChannel> {
        TagServiceClient::new(
            kraken_transport::grpc::channel(tls, &self.addr(), None, Role::BuildIndex).unwrap(),
        )
    }
}

fn versioned(tag: &str, digest: &Digest, version: u64) -> PutRequest {
    PutRequest {
        tag: tag.into(),
        digest: digest.to_string(),
        replicate: false,
        version,
    }
}

#[tokio::test]
async fn versions_are_kept_and_an_older_put_is_superseded() {
    let mut fixture = Fixture::start().await;
    let mut raw = fixture.raw(&fixture.cluster.tls(Role::BuildIndex).unwrap());
    let first = fixture.push("blobs/v", b"first".to_vec()).await;
    let second = fixture.push("blobs/v", b"second".to_vec()).await;
    let has = |raw: &mut TagServiceClient<_>| {
        let mut raw = raw.clone();
        async move {
            raw.has(HasRequest {
                tag: "blobs/v:1".into(),
            })
            .await
            .unwrap()
            .into_inner()
        }
    };
    let missing = has(&mut raw).await;
    assert!(!missing.exists && missing.digest.is_empty(), "{missing:?}");

    // A push gets a version here.
    let PutResponse {
        superseded,
        version,
    } = raw
        .put(versioned("blobs/v:1", &first, 0))
        .await
        .unwrap()
        .into_inner();
    assert!(!superseded && version > 0);
    let held = has(&mut raw).await;
    assert!(held.exists);
    assert_eq!(held.digest, first.to_string(), "Has names the digest");
    assert_eq!(held.version, version);

    // An older replicated put is acknowledged as superseded and changes nothing.
    let older = raw
        .put(versioned("blobs/v:1", &second, version - 1))
        .await
        .unwrap()
        .into_inner();
    assert!(older.superseded);
    assert_eq!(older.version, version);
    assert_eq!(has(&mut raw).await.digest, first.to_string());
    // Even one whose blobs are not here: a late put is answered before any lookup.
    let gone = Digest::of(b"never pushed");
    assert!(
        raw.put(versioned("blobs/v:1", &gone, 1))
            .await
            .unwrap()
            .into_inner()
            .superseded
    );

    // A newer one is stored with the version it carries (a replica keeps the original's).
    let newer = version + 5_000;
    let stored = raw
        .put(versioned("blobs/v:1", &second, newer))
        .await
        .unwrap()
        .into_inner();
    assert!(!stored.superseded);
    assert_eq!(stored.version, newer);
    assert_eq!(has(&mut raw).await.digest, second.to_string());
    // A local push after it gets a later version, whatever the clock says.
    let local = raw
        .put(versioned("blobs/v:1", &first, 0))
        .await
        .unwrap()
        .into_inner();
    assert!(local.version > newer, "{local:?}");

    // Restored from the backend after the disk is lost, the tag keeps its version.
    std::fs::remove_dir_all(&fixture.config.tag_store.dir).unwrap();
    fixture.restart().await;
    let mut raw = fixture.raw(&fixture.cluster.tls(Role::BuildIndex).unwrap());
    let restored = has(&mut raw).await;
    assert_eq!(restored.digest, first.to_string());
    assert_eq!(restored.version, local.version);
    let older = raw
        .put(versioned("blobs/v:1", &second, newer))
        .await
        .unwrap()
        .into_inner();
    assert!(older.superseded, "the restored tag is no newer than it was");
    fixture.stop().await;
}

#[tokio::test]
async fn list_origins_names_the_local_origins() {
    let fixture = Fixture::start().await;
    let channel = |role| {
        kraken_transport::grpc::channel(
            &fixture.cluster.tls(role).unwrap(),
            &fixture.addr(),
            None,
            Role::BuildIndex,
        )
        .unwrap()
    };
    let mut client = ReplicationServiceClient::new(channel(Role::Origin));
    let mut origins = client
        .list_origins(ListOriginsRequest {})
        .await
        .unwrap()
        .into_inner()
        .origins;
    origins.sort();
    let mut expected = fixture.config.origin.hosts.static_hosts.clone();
    expected.sort();
    assert_eq!(origins, expected);
    assert_eq!(origins.len(), 3);
    // Not something an agent needs.
    let status = ReplicationServiceClient::new(channel(Role::Agent))
        .list_origins(ListOriginsRequest {})
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied);
    fixture.stop().await;
}

#[tokio::test]
async fn a_foreign_build_index_may_has_and_put_only_the_tags_its_rules_allow() {
    let mut fixture = Fixture::start().await;
    // Cluster `a`, with its own CA, replicates release tags here.
    let a = kraken_tls::generate_dev_pki(
        &fixture.dir.path().join("cluster-a"),
        &kraken_tls::DevPkiOptions::default(),
    )
    .unwrap();
    fixture.config.trusted_remotes.insert(
        "a".into(),
        TrustedBuildIndexRemote {
            ca: a.ca_cert_path(),
            tags: vec![Pattern::new("^release/").unwrap()],
        },
    );
    fixture.restart().await;
    let ours = fixture.cluster.pki.ca_cert_path();
    let from_a = |role| TlsMaterial::load_for_remote(&a.tls_config(role), &ours).unwrap();
    let mut remote = fixture.raw(&from_a(Role::BuildIndex));

    let (release, _) = fixture.image("release/app", "rel", &[(10, true)]).await;
    let has = remote
        .has(HasRequest {
            tag: "release/app:1".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(!has.exists);
    let put = remote
        .put(PutRequest {
            replicate: true,
            ..versioned("release/app:1", &release, 1_700_000_000_000)
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(put.version, 1_700_000_000_000, "a's version is kept");
    let has = remote
        .has(HasRequest {
            tag: "release/app:1".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(has.digest, release.to_string());
    // A local reader sees the replicated tag.
    assert_eq!(
        fixture
            .client(Role::Agent)
            .get(&tag("release/app:1"))
            .await
            .unwrap(),
        Some(release)
    );

    // A tag outside a's rules is refused, and nothing is written.
    let digest = fixture.push("blobs/x", b"x".to_vec()).await;
    let status = remote
        .put(versioned("blobs/x:1", &digest, 0))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied);
    assert!(
        status.message().contains("trusted_remotes.a.tags"),
        "{status:?}"
    );
    assert_eq!(
        fixture
            .client(Role::Agent)
            .get(&tag("blobs/x:1"))
            .await
            .unwrap(),
        None
    );
    // Nothing outside replication, whatever the role: not even a read.
    let status = remote
        .get(GetRequest {
            tag: "release/app:1".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    assert!(
        status.message().contains("remote cluster `a`"),
        "{status:?}"
    );
    let status = remote.list(ListRequest::default()).await.unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied);
    let status = fixture
        .raw(&from_a(Role::Client))
        .has(HasRequest {
            tag: "release/app:1".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(
        status.code(),
        Code::PermissionDenied,
        "a's client: {status:?}"
    );

    // a's origins may ask for ours (before uploading a replicated blob), not its build-index.
    let channel = |role| {
        kraken_transport::grpc::channel(&from_a(role), &fixture.addr(), None, Role::BuildIndex)
            .unwrap()
    };
    let origins = ReplicationServiceClient::new(channel(Role::Origin))
        .list_origins(ListOriginsRequest {})
        .await
        .unwrap()
        .into_inner()
        .origins;
    assert_eq!(origins.len(), 3);
    let status = ReplicationServiceClient::new(channel(Role::BuildIndex))
        .list_origins(ListOriginsRequest {})
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied);
    fixture.stop().await;
}

/// What `tag` points at, and since which version, at the build-index at `addr`.
async fn has_at(tls: &TlsMaterial, addr: std::net::SocketAddr, tag: &str) -> (String, u64) {
    let channel =
        kraken_transport::grpc::channel(tls, &addr.to_string(), None, Role::BuildIndex).unwrap();
    let has = TagServiceClient::new(channel)
        .has(HasRequest { tag: tag.into() })
        .await
        .unwrap()
        .into_inner();
    (has.digest, has.version)
}

/// `ListTasks` of the build-index at `addr`.
async fn tasks_of(tls: &TlsMaterial, addr: std::net::SocketAddr) -> Vec<ReplicationTaskMessage> {
    let channel =
        kraken_transport::grpc::channel(tls, &addr.to_string(), None, Role::BuildIndex).unwrap();
    ReplicationServiceClient::new(channel)
        .list_tasks(ListTasksRequest::default())
        .await
        .unwrap()
        .into_inner()
        .tasks
}

#[tokio::test]
async fn cluster_peers_share_every_write_and_a_peer_that_was_down_gets_it_when_back() {
    let fixture = Fixture::start().await;
    let client_tls = fixture.cluster.tls(Role::Client).unwrap();
    // Two more build-indexes in front of the same origins and tag backend, each listing the
    // other under `cluster:`; the second is down at first.
    let first_listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let first_addr = first_listener.local_addr().unwrap();
    let reserved = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let second_addr = reserved.local_addr().unwrap();
    drop(reserved);
    let peer_config = |name: &str, peer: std::net::SocketAddr| {
        let mut config = fixture.config.clone();
        config.tag_store.dir = fixture.dir.path().join(name).join("tags");
        config.replication.dir = fixture.dir.path().join(name).join("replication");
        config.cluster = HostList {
            static_hosts: vec![peer.to_string()],
            dns: None,
        };
        config.replication.retry_interval = std::time::Duration::from_millis(200);
        config.replication.max_retry_interval = std::time::Duration::from_secs(1);
        config.replication.peer_delay = std::time::Duration::from_secs(3600);
        config
    };
    let backends = || {
        Backends::new([(
            Pattern::any(),
            Arc::new(FsBackend::new(&fixture.tag_backend)) as Arc<dyn Backend>,
        )])
    };
    let tls = fixture.cluster.tls(Role::BuildIndex).unwrap();
    let first = BuildIndex::start_with_backends(
        peer_config("first", second_addr),
        tls.clone(),
        first_listener,
        backends(),
    )
    .await
    .unwrap();
    let tags_at = |addr: std::net::SocketAddr| {
        TagClient::new(&UpstreamConfig::of([addr.to_string()]), &client_tls).unwrap()
    };
    let proxy_at = |addr: std::net::SocketAddr| {
        TagClient::new(
            &UpstreamConfig::of([addr.to_string()]),
            &fixture.cluster.tls(Role::Proxy).unwrap(),
        )
        .unwrap()
    };
    let (one, _) = fixture.image("release/peer", "one", &[(10, true)]).await;
    let (two, _) = fixture.image("release/peer", "two", &[(10, true)]).await;

    // The peer is down: the write is acknowledged anyway, and its copy waits in the queue.
    proxy_at(first_addr)
        .put(&tag("release/peer:1"), &one, true)
        .await
        .unwrap();
    let mut owed = None;
    for _ in 0..300 {
        owed = tasks_of(&client_tls, first_addr)
            .await
            .into_iter()
            .find(|t| !t.peer.is_empty() && t.attempts >= 1 && !t.running);
        if owed.is_some() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let owed = owed.expect("a queued copy for the peer that was down");
    assert_eq!(owed.peer, second_addr.to_string());
    assert_eq!(
        (owed.tag.as_str(), owed.cause.as_str()),
        ("release/peer:1", "peer"),
        "{owed:?}"
    );
    assert!(
        owed.last_error.contains(&second_addr.to_string()),
        "{owed:?}"
    );

    // The peer comes up: it gets the write (same digest, same version) from the queue, and
    // holds its own copy of the replication task.
    let second = BuildIndex::start_with_backends(
        peer_config("second", first_addr),
        tls.clone(),
        TcpListener::bind(second_addr).await.unwrap(),
        backends(),
    )
    .await
    .unwrap();
    let mut copied = false;
    for _ in 0..300 {
        if tasks_of(&client_tls, first_addr)
            .await
            .iter()
            .all(|t| t.peer.is_empty())
        {
            copied = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(copied, "the peer never took its copy");
    let version_at = |addr| has_at(&client_tls, addr, "release/peer:1");
    assert_eq!(version_at(second_addr).await, version_at(first_addr).await);
    assert_eq!(version_at(second_addr).await.0, one.to_string());
    let held = tasks_of(&client_tls, second_addr).await;
    assert_eq!(held.len(), 1, "{held:?}");
    assert!(held[0].held_for_peer && held[0].remote == "b", "{held:?}");
    assert!(
        held[0].next_attempt_unix_ms > unix_ms() + 1_800_000,
        "held for peer_delay: {held:?}"
    );

    // Both up: a write to either is read from the other at once, newest version everywhere.
    proxy_at(second_addr)
        .put(&tag("release/peer:1"), &two, true)
        .await
        .unwrap();
    assert_eq!(
        tags_at(first_addr)
            .get(&tag("release/peer:1"))
            .await
            .unwrap(),
        Some(two)
    );
    proxy_at(first_addr)
        .put(&tag("release/peer:2"), &one, false)
        .await
        .unwrap();
    assert_eq!(
        tags_at(second_addr)
            .get(&tag("release/peer:2"))
            .await
            .unwrap(),
        Some(one)
    );
    assert_eq!(version_at(second_addr).await, version_at(first_addr).await);

    // Only a build-index may copy writes.
    let mut raw = ReplicationServiceClient::new(
        kraken_transport::grpc::channel(
            &fixture.cluster.tls(Role::Proxy).unwrap(),
            &first_addr.to_string(),
            None,
            Role::BuildIndex,
        )
        .unwrap(),
    );
    let status = raw
        .duplicate_put(kraken_proto::buildindex::v1::DuplicatePutRequest {
            tag: "release/peer:3".into(),
            digest: one.to_string(),
            version: 1,
            replicate: false,
            hold_ms: 0,
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied);
    // A copy must carry the first host's version, and cannot hold tasks for days.
    let mut peer = ReplicationServiceClient::new(
        kraken_transport::grpc::channel(&tls, &first_addr.to_string(), None, Role::BuildIndex)
            .unwrap(),
    );
    let copy = |version, hold_ms| kraken_proto::buildindex::v1::DuplicatePutRequest {
        tag: "release/peer:3".into(),
        digest: one.to_string(),
        version,
        replicate: true,
        hold_ms,
    };
    for (request, field) in [
        (copy(0, 0), "version"),
        (copy(1, 2 * 86_400_000), "hold_ms"),
    ] {
        let status = peer.duplicate_put(request).await.unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument);
        assert!(status.message().contains(field), "{status:?}");
    }
    assert_eq!(
        tags_at(first_addr)
            .get(&tag("release/peer:3"))
            .await
            .unwrap(),
        None
    );

    first.shutdown().await.unwrap();
    second.shutdown().await.unwrap();
    fixture.stop().await;
}
