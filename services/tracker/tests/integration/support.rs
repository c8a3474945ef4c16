//! Fixtures: a real `redis-server` per test, a dev PKI, a tracker served over mTLS on an
//! ephemeral port, an in-process fake of the origin directory and a manual clock.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

pub(crate) use kraken_core::clock::ManualClock;
use kraken_core::{Digest, MetaInfo, Namespace, PeerId, PeerInfo, PieceHashAlgorithm};
use kraken_proto::common::v1 as pb;
use kraken_proto::tracker::v1::tracker_service_client::TrackerServiceClient;
use kraken_tls::{DevCa, DevPki, DevPkiOptions, LeafOptions, Role, TlsMaterial, generate_dev_pki};
use kraken_tracker::{Clock, OriginDirectory, OriginError};
use kraken_transport::observe::ObservedChannel;
use tokio::net::TcpListener;
use tokio::process::{Child, Command};

// ---------------------------------------------------------------------------------------------
// redis-server

/// A `redis-server` on a free loopback port, killed when dropped.
pub(crate) struct RedisServer {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl RedisServer {
    pub(crate) async fn start() -> Self {
        Self::start_with(None).await
    }

    pub(crate) async fn start_with_password(password: &str) -> Self {
        Self::start_with(Some(password)).await
    }

    async fn start_with(password: Option<&str>) -> Self {
        let binary = redis_server_binary();
        // Another test may grab the port between our probe and redis binding it; then redis
        // exits and the other server (maybe another test's redis) answers on the port, so a
        // server counts as ours only when it says it runs with our child's pid.
        for attempt in 1..=5 {
            let port = free_port();
            let dir = tempfile::tempdir().unwrap();
            let mut command = Command::new(&binary);
            command
                .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
                .args(["--save", "", "--appendonly", "no"])
                .arg("--dir")
                .arg(dir.path())
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .kill_on_drop(true);
            if let Some(password) = password {
                command.args(["--requirepass", password]);
            }
            let mut child = command.spawn().unwrap_or_else(|e| {
                panic!("cannot start {}: {e}; run tests/run.sh", binary.display())
            });
            let pid = child.id().expect("a child just spawned has a pid");
            let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
            while tokio::time::Instant::now() < deadline {
                if child.try_wait().unwrap().is_some() {
                    break;
                }
                match server_pid(port, password).await {
                    Some(serving) if serving == pid => {
                        return Self {
                            child,
                            port,
                            _dir: dir,
                        };
                    }
                    Some(other) => {
                        eprintln!(
                            "redis-server lost port {port} to process {other} (attempt {attempt})"
                        );
                        break;
                    }
                    None => tokio::time::sleep(Duration::from_millis(20)).await,
                }
            }
            let _ = child.kill().await;
        }
        panic!("redis-server did not come up on a free port after 5 attempts");
    }

    pub(crate) fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Kills the server and waits for it to exit.
    pub(crate) async fn stop(&mut self) {
        self.child.kill().await.unwrap();
    }

    /// A raw client for looking behind the store's back.
    pub(crate) async fn raw(&self, password: Option<&str>) -> redis::aio::MultiplexedConnection {
        let url = match password {
            Some(password) => format!("redis://:{password}@{}/", self.addr()),
            None => format!("redis://{}/", self.addr()),
        };
        redis::Client::open(url)
            .unwrap()
            .get_multiplexed_async_connection()
            .await
            .unwrap()
    }
}

/// `redis-server` from `PATH` (or Debian's location). Its absence fails the test: a test that
/// silently passes without Redis would hide a broken peer store.
fn redis_server_binary() -> PathBuf {
    let from_path = std::env::var_os("PATH").and_then(|path| {
        std::env::split_paths(&path)
            .map(|dir| dir.join("redis-server"))
            .find(|candidate| candidate.is_file())
    });
    let debian = PathBuf::from("/usr/bin/redis-server");
    from_path
        .or_else(|| debian.is_file().then_some(debian))
        .unwrap_or_else(|| {
            panic!(
                "redis-server is not installed, and the Redis peer-store tests need a real one: \
                 run tests/run.sh (it installs the Debian package redis-server)"
            )
        })
}

/// The pid of the Redis server answering on `port` (`INFO server`), or `None` while nothing
/// answers there. A server of another test that wants another password does not answer.
async fn server_pid(port: u16, password: Option<&str>) -> Option<u32> {
    let url = match password {
        Some(password) => format!("redis://:{password}@127.0.0.1:{port}/"),
        None => format!("redis://127.0.0.1:{port}/"),
    };
    let info = tokio::time::timeout(Duration::from_secs(1), async {
        let client = redis::Client::open(url).ok()?;
        let mut connection = client.get_multiplexed_async_connection().await.ok()?;
        redis::cmd("INFO")
            .arg("server")
            .query_async::<String>(&mut connection)
            .await
            .ok()
    })
    .await
    .ok()
    .flatten()?;
    info.lines()
        .find_map(|line| line.strip_prefix("process_id:"))
        .and_then(|pid| pid.trim().parse().ok())
}

/// A loopback port nothing listens on (right now).
pub(crate) fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A loopback address where connections are refused for as long as the returned socket lives:
/// it holds the port bound but never listens, so no parallel test or server can take the port
/// meanwhile (a bare free port could be reused before it is dialed).
pub(crate) fn refusing_addr() -> (std::net::SocketAddr, tokio::net::TcpSocket) {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind(([127, 0, 0, 1], 0).into()).unwrap();
    (socket.local_addr().unwrap(), socket)
}

// ---------------------------------------------------------------------------------------------
// clock

/// Test helpers over the shared manual clock.
pub(crate) trait WindowClock {
    /// A clock 1 ms into a window of `window`, so that advancing by whole windows crosses
    /// exactly that many window boundaries.
    fn at_window_start(window: Duration) -> Arc<ManualClock>;
    /// Start (unix ms) of the window the clock is in.
    fn window_start_ms(&self, window: Duration) -> u64;
}

impl WindowClock for ManualClock {
    fn at_window_start(window: Duration) -> Arc<ManualClock> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64;
        let window_ms = window.as_millis() as u64;
        let start = now / window_ms * window_ms + 1;
        Arc::new(ManualClock::new(UNIX_EPOCH + Duration::from_millis(start)))
    }

    fn window_start_ms(&self, window: Duration) -> u64 {
        let now = self.now().duration_since(UNIX_EPOCH).unwrap().as_millis() as u64;
        let window_ms = window.as_millis() as u64;
        now / window_ms * window_ms
    }
}

// ---------------------------------------------------------------------------------------------
// PKI and servers

/// A dev PKI in a temporary directory.
pub(crate) struct Pki {
    pki: DevPki,
    _dir: tempfile::TempDir,
}

impl Pki {
    pub(crate) fn new() -> Self {
        kraken_tls::install_crypto_provider();
        let dir = tempfile::tempdir().unwrap();
        let pki = generate_dev_pki(dir.path(), &DevPkiOptions::default()).unwrap();
        Self { pki, _dir: dir }
    }

    pub(crate) fn tls(&self, role: Role) -> TlsMaterial {
        TlsMaterial::load(&self.pki.tls_config(role)).unwrap()
    }

    /// Another certificate for `role` from the same CA: a second holder of the role, with its
    /// own key and so its own identity.
    pub(crate) fn another(&self, role: Role) -> TlsMaterial {
        let read = |path: PathBuf| std::fs::read_to_string(path).unwrap();
        let ca = DevCa::from_pem(
            &read(self.pki.ca_cert_path()),
            &read(self.pki.ca_key_path()),
        )
        .unwrap();
        let cert = ca.issue(role, &LeafOptions::default()).unwrap();
        TlsMaterial::from_pem(ca.cert_pem(), &cert.cert_pem, &cert.key_pem).unwrap()
    }
}

/// A server task on an ephemeral loopback port, shut down when dropped.
pub(crate) struct ServerGuard {
    pub(crate) addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl ServerGuard {
    /// Binds `127.0.0.1:0` and runs `serve(listener, shutdown)` in a task.
    pub(crate) async fn spawn<F, Fut, E>(serve: F) -> Self
    where
        F: FnOnce(TcpListener, futures::future::BoxFuture<'static, ()>) -> Fut,
        Fut: Future<Output = Result<(), E>> + Send + 'static,
        E: std::fmt::Debug,
    {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let shutdown: futures::future::BoxFuture<'static, ()> = Box::pin(async move {
            let _ = stopped.await;
        });
        let fut = serve(listener, shutdown);
        let task = tokio::spawn(async move {
            fut.await.unwrap();
        });
        Self {
            addr,
            stop: Some(stop),
            task: Some(task),
        }
    }

    /// Stops the server and waits for it to finish.
    pub(crate) async fn shutdown(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            task.await.unwrap();
        }
    }
}

impl Drop for ServerGuard {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

pub(crate) fn tracker_client(
    pki: &Pki,
    role: Role,
    addr: SocketAddr,
) -> TrackerServiceClient<ObservedChannel> {
    tracker_client_with(&pki.tls(role), addr)
}

/// A client presenting `tls`.
pub(crate) fn tracker_client_with(
    tls: &TlsMaterial,
    addr: SocketAddr,
) -> TrackerServiceClient<ObservedChannel> {
    let channel =
        kraken_transport::grpc::channel(tls, &addr.to_string(), Some("localhost"), Role::Tracker)
            .unwrap();
    TrackerServiceClient::new(channel)
}

// ---------------------------------------------------------------------------------------------
// data

pub(crate) fn peer(n: u8, port: u16, complete: bool) -> PeerInfo {
    PeerInfo {
        peer_id: PeerId::from_array([n; 20]),
        addr: SocketAddr::from(([127, 0, 0, n], port)),
        complete,
        origin: false,
    }
}

pub(crate) fn wire(peer: &PeerInfo) -> pb::PeerInfo {
    pb::PeerInfo::from(peer)
}

pub(crate) fn metainfo_of(content: &[u8]) -> MetaInfo {
    MetaInfo::generate(content, 1024, PieceHashAlgorithm::Blake3).unwrap()
}

// ---------------------------------------------------------------------------------------------
// fake origin directory

/// An in-process [`OriginDirectory`] with canned answers that counts its calls.
#[derive(Debug, Default)]
pub(crate) struct FakeOrigins {
    pub(crate) owners: Mutex<Vec<PeerInfo>>,
    pub(crate) metainfo: Mutex<HashMap<Digest, Result<MetaInfo, OriginError>>>,
    pub(crate) metainfo_calls: AtomicUsize,
    pub(crate) owners_fail: Mutex<bool>,
}

impl FakeOrigins {
    pub(crate) fn with_owners(owners: Vec<PeerInfo>) -> Arc<Self> {
        let fake = Self::default();
        *fake.owners.lock().unwrap() = owners;
        Arc::new(fake)
    }

    pub(crate) fn answer(&self, digest: Digest, answer: Result<MetaInfo, OriginError>) {
        self.metainfo.lock().unwrap().insert(digest, answer);
    }

    pub(crate) fn metainfo_calls(&self) -> usize {
        self.metainfo_calls.load(Ordering::SeqCst)
    }
}

#[async_trait::async_trait]
impl OriginDirectory for FakeOrigins {
    async fn owners(&self, _digest: &Digest) -> Result<Vec<PeerInfo>, OriginError> {
        if *self.owners_fail.lock().unwrap() {
            return Err(OriginError::NotConfigured);
        }
        Ok(self.owners.lock().unwrap().clone())
    }

    async fn metainfo(
        &self,
        _namespace: &Namespace,
        digest: &Digest,
    ) -> Result<MetaInfo, OriginError> {
        self.metainfo_calls.fetch_add(1, Ordering::SeqCst);
        self.metainfo
            .lock()
            .unwrap()
            .get(digest)
            .cloned()
            .unwrap_or(Err(OriginError::NoOwners { digest: *digest }))
    }
}
