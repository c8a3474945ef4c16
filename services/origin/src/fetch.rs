//! Blobs only the backend has: the first request starts one background fetch into the store
//! and every request until it lands is told to come back later (`UNAVAILABLE` +
//! `retry-after-ms`), so no gRPC call waits on a backend download of unknown size.
//!
//! The fetch streams the blob into a store upload in bounded chunks and commits it against the
//! requested digest: a backend copy that does not hash to its name is never stored or seeded.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use kraken_core::sync::lock;
use kraken_core::{Digest, Namespace};
use kraken_store::{BlobStore, CommitOptions, StoreError};
use tokio::io::AsyncReadExt;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use crate::error::OriginError;
use crate::metrics as m;
use crate::replicate::{Persistence, Replicator};
use crate::staging::StagedUpload;
use kraken_backend::{Backend, BackendError, Backends};

/// What callers are told to wait before asking again.
pub(crate) const RETRY_AFTER: Duration = Duration::from_millis(500);
/// Longest a request waits for a backend to say whether it has a blob.
pub(crate) const BACKEND_STAT_TIMEOUT: Duration = Duration::from_secs(30);
/// A failed fetch is reported to the next request within this long; later requests start a
/// fresh fetch.
const FAILURE_MEMORY: Duration = Duration::from_secs(60);
/// Bytes per store write while fetching.
const CHUNK: usize = 1 << 20;

/// Fetches of backend-only blobs, at most one per digest.
#[derive(Debug)]
pub(crate) struct BackendFetcher {
    store: BlobStore,
    backends: Backends,
    /// Fetched blobs are committed unpinned: the backend already holds them.
    options: CommitOptions,
    fetches: Arc<Mutex<HashMap<Digest, Fetch>>>,
    /// Copies each fetched blob to the other owners, so one backend download serves them all.
    replicator: Option<Replicator>,
    tasks: TaskTracker,
    shutdown: CancellationToken,
}

#[derive(Debug)]
enum Fetch {
    Running,
    Failed {
        error: Arc<OriginError>,
        at: Instant,
    },
}

/// Whether the blob was already on this origin.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Presence {
    Local,
    /// A fetch from the backend is running (started by this call or an earlier one).
    Fetching,
}

impl BackendFetcher {
    pub(crate) fn new(
        store: BlobStore,
        backends: Backends,
        options: CommitOptions,
        shutdown: CancellationToken,
    ) -> Self {
        Self {
            store,
            backends,
            options: options.persist(false),
            fetches: Arc::new(Mutex::new(HashMap::new())),
            replicator: None,
            tasks: TaskTracker::new(),
            shutdown,
        }
    }

    /// Fetched blobs are then copied to the other owners of their digest.
    pub(crate) fn with_replicator(mut self, replicator: Replicator) -> Self {
        self.replicator = Some(replicator);
        self
    }

    /// `Ok` if the store holds the blob; otherwise starts (or joins) a fetch from the backend
    /// and answers [`OriginError::Fetching`], or [`OriginError::NotFound`] if the backend lacks
    /// it too, or the error of a fetch that just failed.
    pub(crate) async fn require(
        &self,
        namespace: &Namespace,
        digest: &Digest,
    ) -> Result<(), OriginError> {
        match self.locate(namespace, digest).await? {
            Presence::Local => Ok(()),
            Presence::Fetching => Err(OriginError::Fetching {
                namespace: namespace.clone(),
                digest: *digest,
                retry_after: RETRY_AFTER,
            }),
        }
    }

    /// Like [`require`](Self::require), but a fetch in progress is a success (prefetch).
    pub(crate) async fn locate(
        &self,
        namespace: &Namespace,
        digest: &Digest,
    ) -> Result<Presence, OriginError> {
        if self.store.contains(digest) {
            return Ok(Presence::Local);
        }
        if let Some(presence) = self.fetch_state(digest)? {
            return Ok(presence);
        }
        let backend = self.backends.backend_for(namespace)?.clone();
        if stat_with_timeout(backend.as_ref(), namespace, digest)
            .await?
            .is_none()
        {
            return Err(OriginError::NotFound {
                namespace: namespace.clone(),
                digest: *digest,
            });
        }
        {
            let mut fetches = lock(&self.fetches);
            if matches!(fetches.get(digest), Some(Fetch::Running)) {
                return Ok(Presence::Fetching);
            }
            // It may have landed while we asked the backend.
            if self.store.contains(digest) {
                return Ok(Presence::Local);
            }
            fetches.insert(*digest, Fetch::Running);
        }
        self.spawn_fetch(backend, namespace.clone(), *digest);
        Ok(Presence::Fetching)
    }

    /// Waits for running fetches to stop (they are cancelled by the shutdown token).
    pub(crate) async fn wait(&self) {
        self.tasks.close();
        self.tasks.wait().await;
    }

    /// `Some` while a fetch runs; the error of a recently failed fetch (once); `None` if no
    /// fetch is known.
    fn fetch_state(&self, digest: &Digest) -> Result<Option<Presence>, OriginError> {
        let mut fetches = lock(&self.fetches);
        match fetches.get(digest) {
            None => Ok(None),
            Some(Fetch::Running) => Ok(Some(Presence::Fetching)),
            Some(Fetch::Failed { error, at }) => {
                let error = (at.elapsed() < FAILURE_MEMORY).then(|| error.clone());
                fetches.remove(digest);
                match error {
                    Some(source) => Err(OriginError::FetchFailed {
                        digest: *digest,
                        source,
                    }),
                    None => Ok(None),
                }
            }
        }
    }

    fn spawn_fetch(&self, backend: Arc<dyn Backend>, namespace: Namespace, digest: Digest) {
        let store = self.store.clone();
        let options = self.options.clone();
        let fetches = self.fetches.clone();
        let replicator = self.replicator.clone();
        let shutdown = self.shutdown.clone();
        let span = tracing::info_span!("backend_fetch", %digest, %namespace);
        metrics::gauge!(m::BACKEND_FETCHES_IN_FLIGHT).increment(1.0);
        self.tasks.spawn(
            async move {
                let started = Instant::now();
                let result = tokio::select! {
                    result = fetch(&store, backend.as_ref(), &namespace, &digest, &options) => result,
                    () = shutdown.cancelled() => Err(OriginError::ShuttingDown),
                };
                metrics::gauge!(m::BACKEND_FETCHES_IN_FLIGHT).decrement(1.0);
                let mut fetches = lock(&fetches);
                match result {
                    Ok(size) => {
                        metrics::counter!(m::BACKEND_FETCHES, "outcome" => "stored").increment(1);
                        tracing::info!(size, elapsed = ?started.elapsed(), "blob fetched from backend");
                        fetches.remove(&digest);
                        if let Some(replicator) = &replicator {
                            replicator.replicate(&namespace, &digest, Persistence::Persisted);
                        }
                    }
                    Err(error) => {
                        metrics::counter!(m::BACKEND_FETCHES, "outcome" => "failed").increment(1);
                        tracing::warn!(error = %error.chain(), "fetching blob from backend failed");
                        fetches.insert(
                            digest,
                            Fetch::Failed {
                                error: Arc::new(error),
                                at: Instant::now(),
                            },
                        );
                    }
                }
            }
            .instrument(span),
        );
    }
}

/// Asks a backend for a blob's size, bounded by [`BACKEND_STAT_TIMEOUT`].
pub(crate) async fn stat_with_timeout(
    backend: &dyn Backend,
    namespace: &Namespace,
    digest: &Digest,
) -> Result<Option<u64>, BackendError> {
    match tokio::time::timeout(BACKEND_STAT_TIMEOUT, backend.stat(namespace, digest)).await {
        Ok(result) => result,
        Err(_) => Err(BackendError::Unavailable {
            backend: backend.kind(),
            operation: format!("stat {digest} in {namespace}"),
            source: format!("no answer within {} s", BACKEND_STAT_TIMEOUT.as_secs()).into(),
        }),
    }
}

/// Streams the blob from the backend into a store upload and commits it against `digest`.
/// Returns its size. The store upload is aborted on any failure, or if the fetch is dropped.
async fn fetch(
    store: &BlobStore,
    backend: &dyn Backend,
    namespace: &Namespace,
    digest: &Digest,
    options: &CommitOptions,
) -> Result<u64, OriginError> {
    let blob = backend.download(namespace, digest).await?;
    let staged = StagedUpload::create(store).await?;
    // Never more than announced: a backend streaming garbage forever cannot fill the disk.
    let mut reader = blob.reader.take(blob.size);
    let mut offset = 0;
    loop {
        let mut chunk = BytesMut::with_capacity(CHUNK);
        while chunk.len() < CHUNK {
            let read = reader.read_buf(&mut chunk).await.map_err(|error| {
                BackendError::from_io(
                    backend.kind(),
                    format!("read {digest} in {namespace}"),
                    error,
                )
            })?;
            if read == 0 {
                break;
            }
        }
        if chunk.is_empty() {
            break;
        }
        metrics::counter!(m::BACKEND_FETCH_BYTES).increment(chunk.len() as u64);
        offset = store
            .write_upload(staged.id(), offset, chunk.freeze())
            .await?;
    }
    let committed = store.commit_upload(staged.id(), digest, options).await;
    staged.disarm();
    match committed {
        Ok(outcome) => Ok(outcome.metainfo().length()),
        Err(StoreError::DigestMismatch { actual, .. }) => Err(OriginError::CorruptBackendBlob {
            namespace: namespace.clone(),
            digest: *digest,
            actual,
        }),
        Err(error) => Err(error.into()),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use async_trait::async_trait;
    use kraken_config::Pattern;
    use kraken_config::store::StoreConfig;
    use tonic::Code;

    use super::*;
    use kraken_backend::{BackendBlob, FsBackend, StoredBlob, UploadSource};

    /// An fs backend that counts downloads and can hold them until released.
    #[derive(Debug)]
    struct Counting {
        inner: FsBackend,
        downloads: AtomicUsize,
        gate: tokio::sync::Semaphore,
    }

    #[async_trait]
    impl Backend for Counting {
        fn kind(&self) -> &'static str {
            "counting"
        }
        async fn stat(&self, ns: &Namespace, d: &Digest) -> Result<Option<u64>, BackendError> {
            self.inner.stat(ns, d).await
        }
        async fn upload(
            &self,
            ns: &Namespace,
            d: &Digest,
            source: UploadSource,
            size: u64,
        ) -> Result<(), BackendError> {
            self.inner.upload(ns, d, source, size).await
        }
        async fn download(&self, ns: &Namespace, d: &Digest) -> Result<BackendBlob, BackendError> {
            self.downloads.fetch_add(1, Ordering::SeqCst);
            let _permit = self.gate.acquire().await.unwrap();
            self.inner.download(ns, d).await
        }
        async fn list(&self, prefix: &str) -> Result<Vec<StoredBlob>, BackendError> {
            self.inner.list(prefix).await
        }
    }

    struct Fixture {
        fetcher: BackendFetcher,
        backend: Arc<Counting>,
        store: BlobStore,
        _dir: tempfile::TempDir,
    }

    async fn fixture() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::open(StoreConfig {
            dir: dir.path().join("store"),
            ..StoreConfig::default()
        })
        .await
        .unwrap();
        let backend = Arc::new(Counting {
            inner: FsBackend::new(dir.path().join("backend")),
            downloads: AtomicUsize::new(0),
            gate: tokio::sync::Semaphore::new(0),
        });
        let backends = Backends::new([(Pattern::any(), backend.clone() as Arc<dyn Backend>)]);
        let fetcher = BackendFetcher::new(
            store.clone(),
            backends,
            CommitOptions::default(),
            CancellationToken::new(),
        );
        Fixture {
            fetcher,
            backend,
            store,
            _dir: dir,
        }
    }

    async fn put(backend: &Counting, ns: &Namespace, data: &[u8], name: &Digest) {
        backend
            .inner
            .upload(
                ns,
                name,
                UploadSource::Reader(Box::pin(std::io::Cursor::new(data.to_vec()))),
                data.len() as u64,
            )
            .await
            .unwrap();
    }

    async fn settle(fixture: &Fixture, ns: &Namespace, digest: &Digest) -> Result<(), OriginError> {
        for _ in 0..500 {
            match fixture.fetcher.require(ns, digest).await {
                Err(OriginError::Fetching { .. }) => {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                other => return other,
            }
        }
        panic!("fetch did not finish");
    }

    #[tokio::test]
    async fn concurrent_requests_start_one_fetch() {
        let fixture = fixture().await;
        let ns: Namespace = "library/ubuntu".parse().unwrap();
        let data = vec![3u8; (2 << 20) + 17];
        let digest = Digest::of(&data);
        put(&fixture.backend, &ns, &data, &digest).await;

        let requests = (0..8).map(|_| fixture.fetcher.require(&ns, &digest));
        for result in futures::future::join_all(requests).await {
            assert!(
                matches!(result, Err(OriginError::Fetching { .. })),
                "{result:?}"
            );
        }
        assert_eq!(
            fixture.fetcher.locate(&ns, &digest).await.unwrap(),
            Presence::Fetching
        );
        fixture.backend.gate.add_permits(100);
        settle(&fixture, &ns, &digest).await.unwrap();
        assert_eq!(fixture.backend.downloads.load(Ordering::SeqCst), 1);
        let stored = fixture
            .store
            .read_range(&digest, 0, data.len() as u64)
            .await
            .unwrap();
        assert_eq!(stored, data);
        let info = fixture.store.stat(&digest).await.unwrap().unwrap();
        assert!(
            !info.persist,
            "a blob fetched from the backend is not pinned"
        );
        assert_eq!(
            fixture.fetcher.locate(&ns, &digest).await.unwrap(),
            Presence::Local
        );
    }

    #[tokio::test]
    async fn missing_everywhere_is_not_found_and_corrupt_copies_are_never_stored() {
        let fixture = fixture().await;
        fixture.backend.gate.add_permits(100);
        let ns: Namespace = "library/ubuntu".parse().unwrap();
        let unknown = Digest::of(b"unknown");
        let error = fixture.fetcher.require(&ns, &unknown).await.unwrap_err();
        assert_eq!(error.code(), Code::NotFound);
        assert_eq!(
            error.to_string(),
            format!(
                "blob {unknown} not found in namespace library/ubuntu: not on this origin nor in \
                 its backend"
            )
        );

        // Stored under the digest of other content.
        let named = Digest::of(b"the real content");
        put(&fixture.backend, &ns, b"tampered content", &named).await;
        let error = settle(&fixture, &ns, &named).await.unwrap_err();
        assert_eq!(error.code(), Code::DataLoss, "{error}");
        assert!(error.chain().contains("corrupt"), "{}", error.chain());
        assert!(!fixture.store.contains(&named));
        // The failure is reported once; the next request tries again.
        assert!(matches!(
            fixture.fetcher.require(&ns, &named).await,
            Err(OriginError::Fetching { .. })
        ));
        fixture.fetcher.wait().await;
        assert_eq!(fixture.backend.downloads.load(Ordering::SeqCst), 2);
    }
}
