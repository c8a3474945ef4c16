//! `ReplicateToRemote` between two in-process clusters, each with its own CA: cluster `a`'s
//! origins send blobs to cluster `b`, whose build-index lists its origins and whose origins
//! accept `a`'s certificates (`trusted_remotes.a`) for replication uploads and nothing else.
//! Covers the blob reaching `b`'s owner and its backend, a blob `b` holds being skipped, a
//! blob only `a`'s backend holds, an unknown remote name, a connection cut mid-transfer
//! (through a TCP relay posing as `b`'s origin) resuming at `b`'s offset, and what a foreign
//! origin certificate may not do.

// Test code: a failed step is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use kraken_config::Pattern;
use kraken_config::cluster::UpstreamConfig;
use kraken_config::origin::OriginRemote;
use kraken_config::remote::{RemoteTlsSection, TrustedBuildIndexRemote, TrustedRemote};
use kraken_core::{Digest, Namespace};
use kraken_devcluster::{ConfigHooks, DevCluster};
use kraken_originclient::{OriginClient, OriginClusterClient, OriginsError};
use kraken_proto::origin::v1::{DownloadRequest, StatRequest};
use kraken_tls::{DevPkiOptions, Role, TlsMaterial, generate_dev_pki};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tonic::Code;

use common::{blob, delete_and_duplicate_refusals, ns, planted, put_in_backend};

/// Longest any step may take before the test fails instead of hanging: a hang guard, with
/// room for a 1 GiB transfer on a loaded 2-core machine (about 35 s alone, 90 s beside the
/// whole suite), and under nextest's 5-minute kill.
const PATIENCE: Duration = Duration::from_secs(200);

// ---------------------------------------------------------------------------------------------
// Harness

/// Cluster `a` (one origin, `remotes.b`) and cluster `b` (trusting `a`'s CA), own CAs each.
struct Clusters {
    a: DevCluster,
    b: DevCluster,
    _dir: tempfile::TempDir,
}

impl Clusters {
    /// `b` with `b_origins` origins, one owner per blob.
    async fn start(b_origins: usize) -> Self {
        Self::start_with(b_origins, None).await
    }

    /// As [`start`](Self::start); with a relay, `b`'s single origin is known to everyone (its
    /// ring label, its build-index's origin list) by the relay's address, so that every byte
    /// `a` sends it passes the relay.
    async fn start_with(b_origins: usize, relay: Option<&CuttingRelay>) -> Self {
        kraken_tls::install_crypto_provider();
        let dir = tempfile::tempdir().unwrap();
        // a's PKI first: b must trust its CA before a exists.
        let a_pki = generate_dev_pki(&dir.path().join("a/pki"), &DevPkiOptions::default()).unwrap();
        let a_ca = a_pki.ca_cert_path();
        let relayed = relay.map(|relay| relay.addr.to_string());

        let origin_ca = a_ca.clone();
        let origin_label = relayed.clone();
        let index_label = relayed.clone();
        let b = DevCluster::builder(dir.path().join("b"))
            .origins(b_origins)
            .agents(0)
            .max_replica(1)
            .configure_origins(move |_, config| {
                config.trusted_remotes.insert(
                    "a".into(),
                    TrustedRemote {
                        ca: origin_ca.clone(),
                    },
                );
                if let Some(label) = &origin_label {
                    config.name = label.clone();
                    config.cluster.hosts.static_hosts = vec![label.clone()];
                }
            })
            .configure(ConfigHooks {
                build_index: Some(Arc::new(move |config| {
                    config.trusted_remotes.insert(
                        "a".into(),
                        TrustedBuildIndexRemote {
                            ca: a_ca.clone(),
                            tags: vec![Pattern::any()],
                        },
                    );
                    if let Some(label) = &index_label {
                        config.origin = UpstreamConfig::of([label.clone()]);
                    }
                })),
                ..ConfigHooks::default()
            })
            .start()
            .await
            .unwrap();
        if let Some(relay) = relay {
            relay.forward_to(b.origins[0].grpc_addr());
        }

        let b_build_index = b.build_index_addr().to_string();
        let b_ca = b.pki.ca_cert_path();
        let a = DevCluster::builder(dir.path().join("a"))
            .origins(1)
            .agents(0)
            .configure_origins(move |_, config| {
                config.remotes.insert(
                    "b".into(),
                    OriginRemote {
                        build_index: UpstreamConfig::of([b_build_index.clone()]),
                        tls: RemoteTlsSection {
                            ca: b_ca.clone(),
                            ..RemoteTlsSection::default()
                        },
                        bandwidth: Default::default(),
                    },
                );
            })
            .start()
            .await
            .unwrap();
        Self { a, b, _dir: dir }
    }

    /// `a`'s origins as its build-index reaches them (the caller of `ReplicateToRemote`).
    fn a_origins(&self) -> OriginClusterClient {
        let hosts = self.a.origins.iter().map(|o| o.grpc_addr().to_string());
        OriginClusterClient::new(
            &UpstreamConfig::of(hosts),
            &self.a.tls(Role::BuildIndex).unwrap(),
        )
        .unwrap()
    }

    async fn replicate(
        &self,
        namespace: &Namespace,
        digest: &Digest,
        remote: &str,
    ) -> Result<kraken_originclient::Replicated, OriginsError> {
        bounded(
            self.a_origins()
                .replicate_to_remote(namespace, digest, remote),
        )
        .await
    }

    /// The origin of `b` holding `digest` in its store, if any.
    async fn b_holder(&self, digest: &Digest) -> Option<SocketAddr> {
        for origin in &self.b.origins {
            if origin.store().stat(digest).await.unwrap().is_some() {
                return Some(origin.grpc_addr());
            }
        }
        None
    }

    /// What `b` holds of `digest`, read back through its own origins.
    async fn b_content(&self, namespace: &Namespace, digest: &Digest) -> Bytes {
        let hosts = self.b.origins.iter().map(|o| o.grpc_addr().to_string());
        let client = OriginClusterClient::new(
            &UpstreamConfig::of(hosts),
            &self.b.tls(Role::Client).unwrap(),
        )
        .unwrap();
        bounded(client.fetch(namespace, digest, 2 << 30))
            .await
            .unwrap()
    }

    async fn stop(self) {
        self.a.shutdown().await;
        self.b.shutdown().await;
    }
}

async fn bounded<T>(step: impl Future<Output = T>) -> T {
    tokio::time::timeout(PATIENCE, step)
        .await
        .expect("a step took longer than its bound")
}

/// Waits (bounded) until `condition` holds.
async fn eventually<F, Fut>(what: &str, condition: F)
where
    F: Fn() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while !condition().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A TCP relay that counts the bytes its clients send and cuts the connection carrying them
/// once, after `cut_after` bytes in all; later connections pass untouched. Connections wait
/// for a target, set once the relayed server is up.
struct CuttingRelay {
    addr: SocketAddr,
    target: watch::Sender<Option<SocketAddr>>,
    sent: Arc<AtomicU64>,
    cut: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl CuttingRelay {
    async fn start(cut_after: u64) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (target, targets) = watch::channel(None);
        let sent = Arc::new(AtomicU64::new(0));
        let cut = Arc::new(AtomicBool::new(false));
        let (counter, flag) = (sent.clone(), cut.clone());
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let (targets, sent, cut) = (targets.clone(), counter.clone(), flag.clone());
                tokio::spawn(relay(client, targets, sent, cut, cut_after));
            }
        });
        Self {
            addr,
            target,
            sent,
            cut,
            task,
        }
    }

    fn forward_to(&self, target: SocketAddr) {
        self.target.send_replace(Some(target));
    }
}

impl Drop for CuttingRelay {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn relay(
    mut client: TcpStream,
    mut targets: watch::Receiver<Option<SocketAddr>>,
    sent: Arc<AtomicU64>,
    cut: Arc<AtomicBool>,
    cut_after: u64,
) {
    let Some(target) = targets
        .wait_for(Option::is_some)
        .await
        .ok()
        .and_then(|t| *t)
    else {
        return;
    };
    let Ok(mut server) = TcpStream::connect(target).await else {
        return;
    };
    let (mut client_read, mut client_write) = client.split();
    let (mut server_read, mut server_write) = server.split();
    let upstream = async {
        let mut buffer = vec![0; 64 << 10];
        loop {
            let read = match client_read.read(&mut buffer).await {
                Ok(0) | Err(_) => return,
                Ok(read) => read,
            };
            let total = sent.fetch_add(read as u64, Ordering::Relaxed) + read as u64;
            if total >= cut_after && !cut.swap(true, Ordering::Relaxed) {
                // Both sockets close when this connection's task ends.
                return;
            }
            if server_write.write_all(&buffer[..read]).await.is_err() {
                return;
            }
        }
    };
    let downstream = tokio::io::copy(&mut server_read, &mut client_write);
    tokio::select! {
        () = upstream => {}
        _ = downstream => {}
    }
}

// ---------------------------------------------------------------------------------------------
// Tests

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blob_reaches_the_remote_owner_and_is_written_back_there() {
    let clusters = Clusters::start(2).await;
    let namespace = ns("team/app");
    let data = blob((3 << 20) + 11, 1);
    let digest = clusters.a.push(&namespace, data.clone()).await.unwrap();
    assert_eq!(clusters.b_holder(&digest).await, None);

    let replicated = clusters.replicate(&namespace, &digest, "b").await.unwrap();
    assert!(!replicated.already_present);
    assert_eq!(replicated.size, data.len() as u64);
    assert_eq!(replicated.bytes_sent, data.len() as u64);
    assert_eq!(replicated.resumed_at, 0);
    // b's owner of the blob (one replica per blob there) holds it, the other origin not.
    let owner = clusters.b.owner_addrs(&digest)[0];
    assert_eq!(replicated.remote_origin, owner.to_string());
    assert_eq!(clusters.b_holder(&digest).await, Some(owner));
    assert!(clusters.b_content(&namespace, &digest).await == data);
    // An upload like any other there: written back to b's own backend.
    let origin = clusters.b.origin(owner).unwrap();
    let backend = origin.backends().backend_for(&namespace).unwrap().clone();
    let size = data.len() as u64;
    eventually("b writes the replicated blob back to its backend", || {
        let (backend, namespace) = (backend.clone(), namespace.clone());
        async move { backend.stat(&namespace, &digest).await.unwrap() == Some(size) }
    })
    .await;
    clusters.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blob_the_remote_holds_is_skipped() {
    let clusters = Clusters::start(1).await;
    let namespace = ns("team/app");
    let data = blob((1 << 20) + 5, 2);
    let digest = clusters.a.push(&namespace, data.clone()).await.unwrap();
    assert_eq!(
        clusters.b.push(&namespace, data.clone()).await.unwrap(),
        digest
    );

    let replicated = clusters.replicate(&namespace, &digest, "b").await.unwrap();
    assert!(replicated.already_present, "{replicated:?}");
    assert_eq!(replicated.bytes_sent, 0);
    assert_eq!(replicated.size, data.len() as u64);
    clusters.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_only_blob_is_fetched_then_sent() {
    let clusters = Clusters::start(1).await;
    let namespace = ns("library/debian");
    let data = blob((2 << 20) + 3, 3);
    let a_origin = &clusters.a.origins[0];
    let backend = a_origin.backends().backend_for(&namespace).unwrap();
    let digest = put_in_backend(backend.as_ref(), &namespace, &data).await;
    assert!(a_origin.store().stat(&digest).await.unwrap().is_none());

    // The origin answers "retry" while it fetches; the client waits as told.
    let replicated = clusters.replicate(&namespace, &digest, "b").await.unwrap();
    assert!(!replicated.already_present);
    assert_eq!(replicated.bytes_sent, data.len() as u64);
    assert!(a_origin.store().stat(&digest).await.unwrap().is_some());
    assert!(clusters.b_content(&namespace, &digest).await == data);
    clusters.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_remote_name_is_invalid_argument() {
    let clusters = Clusters::start(1).await;
    let namespace = ns("team/app");
    let digest = clusters.a.push(&namespace, blob(1000, 4)).await.unwrap();
    let error = clusters
        .replicate(&namespace, &digest, "c")
        .await
        .unwrap_err();
    let OriginsError::Unavailable { source, .. } = &error else {
        panic!("expected the origin's refusal, got {error:?}");
    };
    assert_eq!(source.code(), Some(Code::InvalidArgument), "{source}");
    assert!(
        source
            .to_string()
            .contains("`c` is not a remote of this origin (configured: b)"),
        "{source}"
    );
    assert_eq!(clusters.b_holder(&digest).await, None);
    clusters.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_connection_resumes_at_the_remote_offset() {
    // The size the issue names: a transfer cut halfway through 1 GiB.
    let size: u64 = 1 << 30;
    let relay = CuttingRelay::start(size / 2).await;
    let clusters = Clusters::start_with(1, Some(&relay)).await;
    let namespace = ns("team/big");
    let data = blob(size as usize, 5);
    let digest = clusters.a.push(&namespace, data.clone()).await.unwrap();
    let before = relay.sent.load(Ordering::Relaxed);

    let replicated = clusters.replicate(&namespace, &digest, "b").await.unwrap();
    assert!(
        relay.cut.load(Ordering::Relaxed),
        "the relay cut the transfer"
    );
    assert_eq!(replicated.remote_origin, relay.addr.to_string());
    assert!(
        replicated.resumed_at > 0 && replicated.resumed_at < size,
        "went on from b's offset, not from 0: {replicated:?}"
    );
    let through_relay = relay.sent.load(Ordering::Relaxed) - before;
    println!(
        "{size} bytes: {through_relay} through the relay, {} sent by a, resumed at {}",
        replicated.bytes_sent, replicated.resumed_at
    );
    let limit = size + size * 3 / 10;
    assert!(
        through_relay < limit,
        "{through_relay} bytes through the relay for a {size}-byte blob"
    );
    assert!(
        replicated.bytes_sent < limit,
        "{} bytes sent for a {size}-byte blob",
        replicated.bytes_sent
    );
    assert!(clusters.b_content(&namespace, &digest).await == data);
    clusters.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_foreign_origin_cannot_delete_duplicate_or_download() {
    let clusters = Clusters::start(1).await;
    let namespace = ns("team/app");
    let data = blob(4096, 6);
    let digest = clusters.b.push(&namespace, data.clone()).await.unwrap();
    let b_origin = clusters.b.origins[0].grpc_addr().to_string();
    // a's origin certificate, dialing b as a's origins do.
    let foreign = TlsMaterial::load_for_remote(
        &clusters.a.pki.tls_config(Role::Origin),
        &clusters.b.pki.ca_cert_path(),
    )
    .unwrap();
    let channel = kraken_transport::grpc::channel(&foreign, &b_origin, None, Role::Origin).unwrap();
    let mut raw = OriginClient::new(channel).raw();

    // What replication needs is allowed.
    let stat = raw
        .stat(StatRequest {
            namespace: namespace.to_string(),
            digest: digest.to_string(),
            local_only: false,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(stat.size, data.len() as u64);

    let (delete, duplicate) = delete_and_duplicate_refusals(&mut raw, &namespace, &digest).await;
    assert_eq!(delete.code(), Code::PermissionDenied, "Delete: {delete:?}");
    assert_eq!(
        duplicate.code(),
        Code::PermissionDenied,
        "Duplicate: {duplicate:?}"
    );
    let status = raw
        .download(DownloadRequest {
            namespace: namespace.to_string(),
            digest: digest.to_string(),
            offset: 0,
            length: None,
        })
        .await
        .map(drop)
        .unwrap_err();
    assert_eq!(
        status.code(),
        Code::PermissionDenied,
        "Download: {status:?}"
    );
    assert_eq!(clusters.b_holder(&planted()).await, None);
    assert!(
        clusters.b.origins[0]
            .store()
            .stat(&digest)
            .await
            .unwrap()
            .is_some(),
        "the refused Delete removed nothing"
    );
    clusters.stop().await;
}
