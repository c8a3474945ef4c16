//! The origins' write-back against a REAL S3-compatible server (moto, `moto[server]` from PyPI,
//! which tests/run.sh installs into its venv), end to end through a cluster of real origins and
//! an agent on loopback with mutual TLS.
//!
//! Issue 4's must-show: the S3 server is stopped during a push → the push succeeds; the origin
//! that accepted it restarts while S3 is still down → the write-back is replayed from disk; S3
//! comes back (same port, empty, bucket re-created) → the blob appears in the bucket, in the
//! Docker registry layout, byte for byte: nothing was lost.

// Test helpers outside `#[test]` functions: a panic there is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use bytes::Bytes;
use kraken_config::Pattern;
use kraken_config::Secret;
use kraken_config::backend::{
    AuthConfig, BackendConfig, BackendKind, NamePath, S3BackendConfig, S3Credentials,
};
use kraken_core::{Digest, Namespace};
use kraken_devcluster::{DevCluster, Ports, Stop};
use kraken_proto::agent::v1::GetBlobRequest;
use kraken_proto::agent::v1::agent_service_client::AgentServiceClient;
use kraken_tests::blob;
use kraken_transport::observe::ObservedChannel;
use tokio::time::Instant;

const NS: &str = "library/s3-test";
const BUCKET: &str = "kraken-blobs";
const ROOT: &str = "/kraken/default/";
/// Every wait in this test polls against this deadline; none of them measures speed.
const PATIENCE: Duration = Duration::from_secs(60);

fn ns() -> Namespace {
    NS.parse().unwrap()
}

/// `moto_server` from the venv tests/run.sh fills (`KRAKEN_VENV`, or its default location), or a
/// panic that says how to install it.
fn moto_program() -> PathBuf {
    let venv = std::env::var_os("KRAKEN_VENV").map_or_else(
        || {
            std::env::var_os("XDG_CACHE_HOME")
                .map(PathBuf::from)
                .or_else(|| std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".cache")))
                .expect("HOME is set")
                .join("kraken-rs/venv")
        },
        PathBuf::from,
    );
    let program = venv.join("bin/moto_server");
    assert!(
        program.is_file(),
        "{} is missing: this test needs a real S3-compatible server (moto, from PyPI). Install \
         it with `bash tests/run.sh` or `{}/bin/pip install 'moto[server]'` (venv: `python3 -m \
         venv {}`)",
        program.display(),
        venv.display(),
        venv.display(),
    );
    program
}

/// A moto S3 server on a fixed loopback port, which the test can stop and start again on the
/// same port (moto keeps everything in memory: a restarted server is empty). Killed on drop.
struct Moto {
    port: u16,
    child: Option<Child>,
    dir: tempfile::TempDir,
    starts: usize,
}

impl Moto {
    async fn start() -> Self {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut moto = Self {
            port,
            child: None,
            dir: tempfile::tempdir().unwrap(),
            starts: 0,
        };
        moto.run().await;
        moto
    }

    fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn log(&self) -> PathBuf {
        self.dir.path().join(format!("moto{}.log", self.starts))
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(self.log()).unwrap_or_default()
    }

    /// Starts the server on `port`, waits until it listens and creates the bucket.
    async fn run(&mut self) {
        assert!(self.child.is_none(), "moto is already running");
        let program = moto_program();
        self.starts += 1;
        let out = std::fs::File::create(self.log()).unwrap();
        let err = out.try_clone().unwrap();
        let child = Command::new(program)
            .args(["-H", "127.0.0.1", "-p", &self.port.to_string()])
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start moto_server: {e}"));
        self.child = Some(child);
        let addr = SocketAddr::from(([127, 0, 0, 1], self.port));
        let deadline = Instant::now() + PATIENCE;
        while TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
            if let Ok(Some(status)) = self.child.as_mut().unwrap().try_wait() {
                panic!(
                    "moto_server exited ({status}) before listening:\n{}",
                    self.log_text()
                );
            }
            assert!(
                Instant::now() < deadline,
                "moto_server does not listen on {addr}:\n{}",
                self.log_text()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // moto accepts unsigned requests: plain HTTP creates the bucket and, below, looks at
        // objects independently of the backend under test.
        let created = http()
            .put(format!("{}/{BUCKET}", self.endpoint()))
            .send()
            .await
            .unwrap();
        assert!(created.status().is_success(), "{created:?}");
    }

    /// Kills the server; its port then refuses connections.
    fn stop(&mut self) {
        let mut child = self.child.take().expect("moto is running");
        child.kill().unwrap();
        child.wait().unwrap();
        let addr = SocketAddr::from(([127, 0, 0, 1], self.port));
        assert!(
            TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err(),
            "nothing listens on {addr} any more"
        );
    }

    /// The object at `key`, read with plain HTTP; `None` if moto does not have it.
    ///
    /// moto refuses anonymous reads of a private object (403) but does not verify signatures:
    /// an `Authorization` header naming an access key is enough to read it as the bucket owner.
    async fn object(&self, key: &str) -> Option<Bytes> {
        let response = http()
            .get(format!("{}/{BUCKET}/{key}", self.endpoint()))
            .header(
                "authorization",
                "AWS4-HMAC-SHA256 Credential=moto-key/20260101/us-east-1/s3/aws4_request, \
                 SignedHeaders=host, Signature=0",
            )
            .send()
            .await
            .ok()?;
        match response.status() {
            reqwest::StatusCode::OK => {}
            reqwest::StatusCode::NOT_FOUND => return None,
            status => panic!("GET {key}: {status}: {}", response.text().await.unwrap()),
        }
        Some(response.bytes().await.unwrap())
    }

    /// The origins' backend: this server, in the Docker registry layout under `ROOT`.
    fn config(&self) -> S3BackendConfig {
        S3BackendConfig {
            region: "us-east-1".to_owned(),
            bucket: BUCKET.to_owned(),
            root_directory: ROOT.to_owned(),
            name_path: NamePath::ShardedDockerBlob,
            username: "kraken".to_owned(),
            endpoint: Some(self.endpoint()),
            force_path_style: true,
            disable_ssl: true,
            ..S3BackendConfig::default()
        }
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn http() -> reqwest::Client {
    // reqwest is built without a rustls provider of its own: the process installs ring.
    kraken_tls::install_crypto_provider();
    reqwest::Client::new()
}

/// Where `sharded_docker_blob` puts a blob under `ROOT` (as a Docker registry with
/// `rootdirectory: /kraken/default` would).
fn object_key(digest: &Digest) -> String {
    let hex = digest.hex();
    format!(
        "{}/docker/registry/v2/blobs/sha256/{}/{hex}/data",
        ROOT.trim_matches('/'),
        &hex[..2]
    )
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
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn pending(cluster: &DevCluster, addr: SocketAddr) -> Vec<(Namespace, Digest)> {
    cluster.origin(addr).unwrap().pending_write_backs()
}

async fn pinned(cluster: &DevCluster, addr: SocketAddr, digest: &Digest) -> bool {
    let origin = cluster.origin(addr).unwrap();
    origin.store().stat(digest).await.unwrap().unwrap().persist
}

/// Three origins whose backend is `moto` (configured as in production: an `s3` rule and an
/// `auth.s3.kraken` entry), retrying write-backs within half a second; replicas wait an hour,
/// so only the origin that accepted a push writes it back.
async fn start_cluster(moto: &Moto, dir: &Path) -> DevCluster {
    let backend = BackendConfig {
        namespace: Pattern::any(),
        backend: BackendKind::S3(moto.config()),
        bandwidth: Default::default(),
    };
    let mut auth = AuthConfig::default();
    auth.s3.insert(
        "kraken".to_owned(),
        S3Credentials {
            aws_access_key_id: "moto-key".to_owned(),
            aws_secret_access_key: Some(Secret::new("moto-secret")),
            aws_secret_access_key_file: None,
        },
    );
    DevCluster::builder(dir)
        .origins(3)
        .agents(1)
        .max_replica(2)
        .ports(Ports::Ephemeral)
        .configure_origins(move |_, config| {
            config.backends = vec![backend.clone()];
            config.auth = auth.clone();
            config.writeback.retry_interval = Duration::from_millis(100);
            config.writeback.max_retry_interval = Duration::from_millis(500);
            config.writeback.replica_delay = Duration::from_secs(3600);
        })
        .start()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_push_while_s3_is_down_lands_in_the_bucket_once_it_returns_even_across_an_origin_restart()
{
    let mut moto = Moto::start().await;
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = start_cluster(&moto, dir.path()).await;

    // S3 goes away; a push is still acknowledged.
    moto.stop();
    let data = blob(3 << 20, 41);
    let digest = cluster
        .push(&ns(), data.clone())
        .await
        .expect("the push succeeds while S3 is down");
    let key = object_key(&digest);
    let owners = cluster.owner_addrs(&digest);
    let first = owners[0];
    assert_eq!(pending(&cluster, first), [(ns(), digest)]);
    assert!(
        pinned(&cluster, first, &digest).await,
        "pinned until persisted"
    );

    // Pulls keep working while S3 is down.
    let copy = pull(cluster.agent_client(0).unwrap(), digest)
        .await
        .unwrap();
    assert_eq!(copy, data);

    // The accepting origin restarts while S3 is still down: its write-back is replayed.
    let stopped = cluster.stop_origin(first, Stop::Graceful).await.unwrap();
    let queued = std::fs::read_dir(stopped.store_dir().join("writeback"))
        .unwrap()
        .count();
    assert_eq!(queued, 1, "the write-back task is on disk");
    cluster.restart_origin(stopped).await.unwrap();
    assert_eq!(pending(&cluster, first), [(ns(), digest)], "replayed");
    assert!(pinned(&cluster, first, &digest).await);

    // S3 comes back on the same port, empty (moto is in memory): the blob lands in the bucket.
    moto.run().await;
    eventually("the blob appears in the bucket", async || {
        moto.object(&key).await.is_some()
    })
    .await;
    let stored = moto.object(&key).await.unwrap();
    assert_eq!(stored.len(), data.len());
    assert!(stored == data, "the object holds the pushed bytes");
    eventually("the write-back is done", async || {
        pending(&cluster, first).is_empty()
    })
    .await;
    assert!(
        !pinned(&cluster, first, &digest).await,
        "unpinned once persisted"
    );
    cluster.shutdown().await;
}
