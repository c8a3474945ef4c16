//! The durable write-back queue: blobs this origin must still write to their namespace's
//! backend.
//!
//! An upload is acknowledged once the verified blob is committed to the store (fsynced,
//! renamed, pinned) and its write-back task is durable: one small file per (namespace, digest)
//! under the queue directory, written to a temporary name, fsynced, renamed into place and its
//! directory fsynced. Workers then write the blob to the backend, retrying failures with
//! exponential backoff (and jitter, so a recovering backend is not hit by every task at once)
//! without an attempt limit; the task file is removed, and the blob unpinned, only once the
//! backend holds it. Start-up replays every task file, so neither a backend outage nor a
//! restart loses an acknowledged upload, and pushes and pulls keep working meanwhile: the blob
//! is served from the store.
//!
//! Pins follow tasks: enqueuing pins the blob, and the last task of a digest to finish unpins
//! it (a blob can have several, one per namespace). Pin changes are serialised so a finishing
//! task never unpins a blob another task was just queued for.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use kraken_config::writeback::WritebackConfig;
use kraken_core::backoff::Backoff;
use kraken_core::{Digest, Namespace};
use kraken_store::{BlobStore, StoreError};
use tokio::sync::{Notify, Semaphore};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use crate::error::OriginError;
use crate::fetch::stat_with_timeout;
use crate::metrics as m;
use kraken_backend::{Backends, UploadSource};

/// First line of every task file; the format may grow, never silently change.
const MAGIC: &str = "kraken-writeback 1";
const TASK_SUFFIX: &str = ".task";

/// Why a blob is queued: it decides what a restart does besides writing it back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TaskSource {
    /// Accepted by this origin from a client: on replay, the other owners may still lack their
    /// copy, so it is replicated again.
    Upload,
    /// A copy from the owner that accepted the upload, written back only if that owner has
    /// not done it by the time the delay ran out.
    Replica,
}

impl TaskSource {
    fn as_str(self) -> &'static str {
        match self {
            Self::Upload => "upload",
            Self::Replica => "replica",
        }
    }

    fn parse(text: &str) -> Option<Self> {
        match text {
            "upload" => Some(Self::Upload),
            "replica" => Some(Self::Replica),
            _ => None,
        }
    }
}

/// A queued write-back, as stored on disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Task {
    pub(crate) namespace: Namespace,
    pub(crate) digest: Digest,
    pub(crate) source: TaskSource,
    /// Not attempted before this time (a replica's delay); survives restarts.
    pub(crate) not_before: SystemTime,
}

impl Task {
    fn key(&self) -> TaskKey {
        (self.namespace.clone(), self.digest)
    }

    /// `<digest hex>-<namespace hash>.task`: one file per (namespace, digest), a fixed-length
    /// name whatever the namespace's characters.
    fn file_name(&self) -> String {
        let namespace = Digest::of(self.namespace.as_str().as_bytes()).hex();
        format!(
            "{}-{}{TASK_SUFFIX}",
            self.digest.hex(),
            &namespace[..16.min(namespace.len())]
        )
    }

    fn encode(&self) -> String {
        let millis = self
            .not_before
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis());
        format!(
            "{MAGIC}\nnamespace {}\ndigest {}\nsource {}\nnot_before_unix_ms {millis}\n",
            self.namespace,
            self.digest,
            self.source.as_str()
        )
    }

    fn decode(text: &str) -> Result<Self, String> {
        let mut lines = text.lines();
        if lines.next() != Some(MAGIC) {
            return Err(format!("the first line is not `{MAGIC}`"));
        }
        let mut fields = HashMap::new();
        for line in lines.filter(|l| !l.trim().is_empty()) {
            let (key, value) = line
                .split_once(' ')
                .ok_or_else(|| format!("line `{line}` is not `key value`"))?;
            fields.insert(key, value.trim());
        }
        let field = |key: &str| {
            fields
                .get(key)
                .copied()
                .ok_or_else(|| format!("field `{key}` is missing"))
        };
        let namespace = field("namespace")?
            .parse()
            .map_err(|e| format!("field `namespace`: {e}"))?;
        let digest = field("digest")?
            .parse()
            .map_err(|e| format!("field `digest`: {e}"))?;
        let source = TaskSource::parse(field("source")?)
            .ok_or_else(|| "field `source` is neither `upload` nor `replica`".to_owned())?;
        let millis: u64 = field("not_before_unix_ms")?
            .parse()
            .map_err(|e| format!("field `not_before_unix_ms`: {e}"))?;
        Ok(Self {
            namespace,
            digest,
            source,
            not_before: UNIX_EPOCH + Duration::from_millis(millis),
        })
    }
}

type TaskKey = (Namespace, Digest);

/// What a finished write-back did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum WriteBackOutcome {
    Written,
    /// The backend already held the blob (e.g. another owner wrote it back first).
    Present,
    /// Neither the store nor the backend has the blob: the store lost it (a wiped disk). The
    /// task is dropped; nothing can bring the blob back from here.
    Lost,
}

impl WriteBackOutcome {
    fn label(self) -> &'static str {
        match self {
            Self::Written => "written",
            Self::Present => "present",
            Self::Lost => "lost",
        }
    }
}

/// The queue. Cheap to clone; clones share everything.
#[derive(Clone)]
pub(crate) struct WriteBackQueue {
    inner: Arc<QueueInner>,
}

struct QueueInner {
    dir: PathBuf,
    store: BlobStore,
    backends: Backends,
    retry_interval: Duration,
    max_retry_interval: Duration,
    workers: Arc<Semaphore>,
    state: Mutex<QueueState>,
    /// Serialises pin changes with the task-set checks that decide them.
    pins: tokio::sync::Mutex<()>,
    wake: Notify,
    tasks: TaskTracker,
    shutdown: CancellationToken,
}

#[derive(Default)]
struct QueueState {
    tasks: HashMap<TaskKey, TaskState>,
    /// Waiting tasks by due time; the sequence number keeps equal times apart.
    due: BTreeMap<(Instant, u64), TaskKey>,
    next_seq: u64,
}

struct TaskState {
    task: Task,
    attempts: u32,
    /// Its entry in `due` while waiting; `None` while running or being enqueued.
    due: Option<(Instant, u64)>,
}

impl fmt::Debug for WriteBackQueue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WriteBackQueue")
            .field("dir", &self.inner.dir)
            .field("pending", &self.inner.state().tasks.len())
            .finish_non_exhaustive()
    }
}

impl WriteBackQueue {
    /// Opens the queue under `dir` (created if missing), loads every task left by a previous
    /// run and starts the workers. Returns the queue and the tasks it replays.
    pub(crate) async fn open(
        dir: PathBuf,
        store: BlobStore,
        backends: Backends,
        config: &WritebackConfig,
        shutdown: CancellationToken,
    ) -> Result<(Self, Vec<Task>), OriginError> {
        let scan = dir.clone();
        let replayed = tokio::task::spawn_blocking(move || load_tasks(&scan))
            .await
            .map_err(OriginError::Task)?
            .map_err(|source| OriginError::WriteBackQueue {
                path: dir.clone(),
                source,
            })?;
        let queue = Self {
            inner: Arc::new(QueueInner {
                dir,
                store,
                backends,
                retry_interval: config.retry_interval,
                max_retry_interval: config.max_retry_interval.max(config.retry_interval),
                workers: Arc::new(Semaphore::new(config.workers.max(1))),
                state: Mutex::new(QueueState::default()),
                pins: tokio::sync::Mutex::new(()),
                wake: Notify::new(),
                tasks: TaskTracker::new(),
                shutdown,
            }),
        };
        {
            let mut state = queue.inner.state();
            for task in &replayed {
                let due = due_instant(task.not_before);
                state.schedule(
                    TaskState {
                        task: task.clone(),
                        attempts: 0,
                        due: None,
                    },
                    due,
                );
            }
            record_depth(&state);
        }
        if !replayed.is_empty() {
            tracing::info!(
                tasks = replayed.len(),
                dir = %queue.inner.dir.display(),
                "replaying write-backs left by the previous run"
            );
        }
        let dispatcher = queue.inner.clone();
        queue
            .inner
            .tasks
            .spawn(async move { dispatcher.dispatch().await });
        Ok((queue, replayed))
    }

    /// Durably queues a write-back of the committed blob to `namespace`'s backend, to start
    /// after `delay`, and pins the blob until it is done. Returns once the task is on disk
    /// (fsynced): from then on, a restart replays it. Queuing a task that is already pending
    /// keeps one task, due at the earlier of the two times.
    ///
    /// Runs to completion even if the caller is dropped (a request cancelled by its client):
    /// a task claimed in memory but never written or scheduled would stay pending forever.
    pub(crate) async fn enqueue(
        &self,
        namespace: &Namespace,
        digest: &Digest,
        source: TaskSource,
        delay: Duration,
    ) -> Result<(), OriginError> {
        let queue = self.clone();
        let (namespace, digest) = (namespace.clone(), *digest);
        tokio::spawn(async move { queue.enqueue_now(&namespace, &digest, source, delay).await })
            .await
            .map_err(OriginError::Task)?
    }

    async fn enqueue_now(
        &self,
        namespace: &Namespace,
        digest: &Digest,
        source: TaskSource,
        delay: Duration,
    ) -> Result<(), OriginError> {
        let inner = &self.inner;
        let now = SystemTime::now();
        let task = Task {
            namespace: namespace.clone(),
            digest: *digest,
            source,
            not_before: now + delay,
        };
        let key = task.key();
        let _pins = inner.pins.lock().await;
        // Claim the key before pinning, so a task of the same digest finishing meanwhile
        // sees this one and leaves the pin alone.
        let existing = {
            let mut state = inner.state();
            match state.tasks.get_mut(&key) {
                Some(pending) => {
                    let earlier = task.not_before < pending.task.not_before;
                    let upgraded =
                        source == TaskSource::Upload && pending.task.source == TaskSource::Replica;
                    if !earlier && !upgraded {
                        return Ok(());
                    }
                    let mut merged = pending.task.clone();
                    merged.not_before = merged.not_before.min(task.not_before);
                    if upgraded {
                        merged.source = TaskSource::Upload;
                    }
                    Some(merged)
                }
                None => {
                    state.tasks.insert(
                        key.clone(),
                        TaskState {
                            task: task.clone(),
                            attempts: 0,
                            due: None,
                        },
                    );
                    None
                }
            }
        };
        let task = existing.clone().unwrap_or(task);
        let stored = async {
            pin(&inner.store, digest).await?;
            inner.write_task_file(&task).await
        }
        .await;
        let mut state = inner.state();
        match stored {
            Ok(()) => {
                if let Some(pending) = state.tasks.remove(&key) {
                    let running = existing.is_some() && pending.due.is_none();
                    if let Some(due) = pending.due {
                        state.due.remove(&due);
                    }
                    let entry = TaskState {
                        task: task.clone(),
                        attempts: pending.attempts,
                        due: None,
                    };
                    if running {
                        // A worker holds it; it reschedules or removes it when done, and
                        // either way the backend ends up with the blob.
                        state.tasks.insert(key, entry);
                    } else {
                        state.schedule(entry, due_instant(task.not_before));
                    }
                }
                record_depth(&state);
                drop(state);
                inner.wake.notify_one();
                metrics::counter!(m::WRITEBACKS_QUEUED, "source" => source.as_str()).increment(1);
                tracing::debug!(%digest, %namespace, ?delay, source = source.as_str(), "write-back queued");
                Ok(())
            }
            Err(error) => {
                if existing.is_none() {
                    state.tasks.remove(&key);
                }
                record_depth(&state);
                Err(error)
            }
        }
    }

    /// Every pending write-back (tests and tooling).
    pub(crate) fn pending(&self) -> Vec<(Namespace, Digest)> {
        let mut pending: Vec<TaskKey> = self.inner.state().tasks.keys().cloned().collect();
        pending.sort();
        pending
    }

    /// Whether any write-back of `digest` is pending.
    #[cfg(test)]
    pub(crate) fn is_pending(&self, digest: &Digest) -> bool {
        self.inner.state().tasks.keys().any(|(_, d)| d == digest)
    }

    /// Waits for the workers to stop (they stop when the shutdown token fires; a write-back
    /// cut short stays queued on disk).
    pub(crate) async fn wait(&self) {
        self.inner.tasks.close();
        self.inner.tasks.wait().await;
    }
}

impl QueueState {
    fn schedule(&mut self, mut entry: TaskState, at: Instant) {
        self.next_seq += 1;
        let slot = (at, self.next_seq);
        let key = entry.task.key();
        entry.due = Some(slot);
        self.due.insert(slot, key.clone());
        self.tasks.insert(key, entry);
    }
}

impl QueueInner {
    fn state(&self) -> MutexGuard<'_, QueueState> {
        kraken_core::sync::lock(&self.state)
    }

    /// Hands due tasks to workers, at most `workers` at a time, until shutdown.
    async fn dispatch(self: Arc<Self>) {
        loop {
            let permit = tokio::select! {
                () = self.shutdown.cancelled() => return,
                permit = self.workers.clone().acquire_owned() => match permit {
                    Ok(permit) => permit,
                    Err(_) => return,
                },
            };
            let Some(key) = self.next_due().await else {
                return;
            };
            let inner = self.clone();
            let span = tracing::info_span!("writeback", digest = %key.1, namespace = %key.0);
            self.tasks.spawn(
                async move {
                    inner.run(key).await;
                    drop(permit);
                }
                .instrument(span),
            );
        }
    }

    /// Waits for the next due task and takes it off the schedule; `None` on shutdown.
    async fn next_due(&self) -> Option<TaskKey> {
        loop {
            let next = self.state().due.first_key_value().map(|(slot, _)| *slot);
            let wait_until = match next {
                Some((at, seq)) if at <= Instant::now() => {
                    let mut state = self.state();
                    if let Some(key) = state.due.remove(&(at, seq)) {
                        if let Some(entry) = state.tasks.get_mut(&key) {
                            entry.due = None;
                        }
                        return Some(key);
                    }
                    continue;
                }
                Some((at, _)) => Some(at),
                None => None,
            };
            let sleep = async {
                match wait_until {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                () = self.shutdown.cancelled() => return None,
                () = self.wake.notified() => {}
                () = sleep => {}
            }
        }
    }

    /// One attempt at a task; reschedules it with backoff if it fails.
    async fn run(&self, key: TaskKey) {
        let (namespace, digest) = (&key.0, &key.1);
        let started = Instant::now();
        let result = tokio::select! {
            // Cut short: the task file stays, the next start replays it.
            () = self.shutdown.cancelled() => return,
            result = self.write(namespace, digest) => result,
        };
        match result {
            Ok(outcome) => {
                self.finish(&key, outcome).await;
                metrics::counter!(m::WRITEBACKS, "outcome" => outcome.label()).increment(1);
                match outcome {
                    WriteBackOutcome::Lost => tracing::error!(
                        "write-back dropped: the blob is neither on this origin's disk nor in \
                         its backend (was the store wiped before the backend had it?)"
                    ),
                    _ => tracing::info!(
                        outcome = outcome.label(),
                        elapsed = ?started.elapsed(),
                        "blob written back"
                    ),
                }
            }
            Err(error) => {
                metrics::counter!(m::WRITEBACKS, "outcome" => "failed").increment(1);
                metrics::counter!(m::WRITEBACK_RETRIES).increment(1);
                let mut state = self.state();
                let Some(mut entry) = state.tasks.remove(&key) else {
                    return;
                };
                entry.attempts = entry.attempts.saturating_add(1);
                // Spread so that tasks failing together during an outage do not all come
                // back at the same instant.
                let delay = Backoff::doubling(self.retry_interval, self.max_retry_interval)
                    .jittered(entry.attempts, rand::random::<f64>());
                let attempts = entry.attempts;
                state.schedule(entry, Instant::now() + delay);
                drop(state);
                self.wake.notify_one();
                tracing::warn!(
                    attempts,
                    retry_in = ?delay,
                    error = %error.chain(),
                    "write-back failed; the blob stays pinned and the write-back will be retried"
                );
            }
        }
    }

    /// Makes sure `namespace`'s backend holds the committed blob: asks it first, uploads from
    /// the store's copy if it lacks it.
    async fn write(
        &self,
        namespace: &Namespace,
        digest: &Digest,
    ) -> Result<WriteBackOutcome, OriginError> {
        let backend = self.backends.backend_for(namespace)?;
        let reader = match self.store.open_blob(digest).await {
            Ok(reader) => reader,
            Err(StoreError::NotFound(_)) => {
                return match stat_with_timeout(backend.as_ref(), namespace, digest).await? {
                    Some(_) => Ok(WriteBackOutcome::Present),
                    None => Ok(WriteBackOutcome::Lost),
                };
            }
            Err(error) => return Err(error.into()),
        };
        let size = reader.size();
        if stat_with_timeout(backend.as_ref(), namespace, digest).await? == Some(size) {
            return Ok(WriteBackOutcome::Present);
        }
        backend
            .upload(
                namespace,
                digest,
                UploadSource::File(reader.into_file()),
                size,
            )
            .await?;
        Ok(WriteBackOutcome::Written)
    }

    /// Removes a done task: its file, the pin if no other task of the digest is pending, and
    /// only then its entry, so that "no write-back pending" always means "unpinned".
    async fn finish(&self, key: &TaskKey, outcome: WriteBackOutcome) {
        let _pins = self.pins.lock().await;
        let Some(task) = self.state().tasks.get(key).map(|entry| entry.task.clone()) else {
            return;
        };
        if let Err(error) = self.remove_task_file(&task).await {
            // Harmless: a replay finds the backend holding the blob and drops it.
            tracing::warn!(error = %error.chain(), "cannot remove a finished write-back task");
        }
        let others = self
            .state()
            .tasks
            .keys()
            .any(|other| other != key && other.1 == key.1);
        if !others && outcome != WriteBackOutcome::Lost {
            match self.store.set_persist(&key.1, false).await {
                Ok(()) | Err(StoreError::NotFound(_)) => {}
                // Still pinned: safe, it only costs disk until the blob is uploaded again.
                Err(error) => tracing::warn!(error = %error, "cannot unpin a written-back blob"),
            }
        }
        let mut state = self.state();
        state.tasks.remove(key);
        record_depth(&state);
    }

    fn task_path(&self, task: &Task) -> PathBuf {
        self.dir.join(task.file_name())
    }

    async fn write_task_file(&self, task: &Task) -> Result<(), OriginError> {
        let (dir, path, text) = (self.dir.clone(), self.task_path(task), task.encode());
        let error_path = path.clone();
        tokio::task::spawn_blocking(move || write_durably(&dir, &path, text.as_bytes()))
            .await
            .map_err(OriginError::Task)?
            .map_err(|source| OriginError::WriteBackQueue {
                path: error_path,
                source,
            })
    }

    async fn remove_task_file(&self, task: &Task) -> Result<(), OriginError> {
        let (dir, path) = (self.dir.clone(), self.task_path(task));
        let error_path = path.clone();
        tokio::task::spawn_blocking(move || {
            match std::fs::remove_file(&path) {
                Ok(()) => {}
                Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(()),
                Err(error) => return Err(error),
            }
            sync_dir(&dir)
        })
        .await
        .map_err(OriginError::Task)?
        .map_err(|source| OriginError::WriteBackQueue {
            path: error_path,
            source,
        })
    }
}

/// Pins a committed blob unless it already is.
async fn pin(store: &BlobStore, digest: &Digest) -> Result<(), OriginError> {
    match store.stat(digest).await? {
        Some(info) if info.persist => Ok(()),
        Some(_) => Ok(store.set_persist(digest, true).await?),
        None => Err(StoreError::NotFound(*digest).into()),
    }
}

/// The `Instant` for a wall-clock due time (past times are due now).
fn due_instant(at: SystemTime) -> Instant {
    let wait = at
        .duration_since(SystemTime::now())
        .unwrap_or(Duration::ZERO);
    Instant::now() + wait
}

fn record_depth(state: &QueueState) {
    metrics::gauge!(m::WRITEBACK_QUEUE_DEPTH).set(state.tasks.len() as f64);
}

/// Creates `dir` if needed, removes leftover temporary files and reads every task. A file that
/// cannot be parsed is renamed `*.corrupt` and reported: it is kept for a human, never
/// silently dropped, and never retried as garbage. Blocking.
fn load_tasks(dir: &Path) -> std::io::Result<Vec<Task>> {
    std::fs::create_dir_all(dir)?;
    let mut tasks = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
            continue;
        };
        if name.starts_with(".tmp-") {
            // A task being written when the previous run stopped: its upload was never
            // acknowledged.
            let _ = std::fs::remove_file(&path);
            continue;
        }
        if !name.ends_with(TASK_SUFFIX) {
            continue;
        }
        let text = std::fs::read_to_string(&path);
        match text
            .map_err(|e| e.to_string())
            .and_then(|t| Task::decode(&t))
        {
            Ok(task) => tasks.push(task),
            Err(reason) => {
                tracing::error!(
                    path = %path.display(),
                    %reason,
                    "unreadable write-back task; renamed *.corrupt, its blob stays pinned"
                );
                let _ = std::fs::rename(&path, path.with_extension("corrupt"));
            }
        }
    }
    tasks.sort_by_key(|t| t.not_before);
    Ok(tasks)
}

/// Writes `bytes` to `path` so that after a crash it is either absent or complete: temporary
/// file, fsync, rename, fsync of the directory. Blocking.
fn write_durably(dir: &Path, path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let temp = dir.join(format!(".tmp-{:016x}", rand::random::<u64>()));
    let written = (|| {
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&temp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        std::fs::rename(&temp, path)
    })();
    if let Err(error) = written {
        let _ = std::fs::remove_file(&temp);
        return Err(error);
    }
    sync_dir(dir)
}

fn sync_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

    use async_trait::async_trait;
    use bytesize::ByteSize;
    use kraken_config::Pattern;
    use kraken_config::store::StoreConfig;
    use kraken_store::CommitOptions;

    use super::*;
    use kraken_backend::{Backend, BackendBlob, BackendError, FsBackend, StoredBlob};

    /// An fs backend that fails every call while `down` is set and counts uploads.
    #[derive(Debug)]
    struct Flaky {
        inner: FsBackend,
        down: AtomicBool,
        uploads: AtomicUsize,
    }

    impl Flaky {
        fn check(&self) -> Result<(), BackendError> {
            if self.down.load(Ordering::SeqCst) {
                return Err(BackendError::Unavailable {
                    backend: "flaky",
                    operation: "any".into(),
                    source: "switched off by the test".into(),
                });
            }
            Ok(())
        }
    }

    #[async_trait]
    impl Backend for Flaky {
        fn kind(&self) -> &'static str {
            "flaky"
        }
        async fn stat(&self, ns: &Namespace, d: &Digest) -> Result<Option<u64>, BackendError> {
            self.check()?;
            self.inner.stat(ns, d).await
        }
        async fn upload(
            &self,
            ns: &Namespace,
            d: &Digest,
            source: UploadSource,
            size: u64,
        ) -> Result<(), BackendError> {
            self.check()?;
            self.uploads.fetch_add(1, Ordering::SeqCst);
            self.inner.upload(ns, d, source, size).await
        }
        async fn download(&self, ns: &Namespace, d: &Digest) -> Result<BackendBlob, BackendError> {
            self.check()?;
            self.inner.download(ns, d).await
        }
        async fn list(&self, prefix: &str) -> Result<Vec<StoredBlob>, BackendError> {
            self.check()?;
            self.inner.list(prefix).await
        }
    }

    struct Fixture {
        dir: tempfile::TempDir,
        backend: Arc<Flaky>,
        backends: Backends,
        config: WritebackConfig,
    }

    impl Fixture {
        fn new() -> Self {
            let dir = tempfile::tempdir().unwrap();
            let backend = Arc::new(Flaky {
                inner: FsBackend::new(dir.path().join("backend")),
                down: AtomicBool::new(false),
                uploads: AtomicUsize::new(0),
            });
            let backends = Backends::new([(Pattern::any(), backend.clone() as Arc<dyn Backend>)]);
            let config = WritebackConfig {
                retry_interval: Duration::from_millis(20),
                max_retry_interval: Duration::from_millis(80),
                ..WritebackConfig::default()
            };
            Self {
                dir,
                backend,
                backends,
                config,
            }
        }

        async fn store(&self, capacity: u64) -> BlobStore {
            BlobStore::open(StoreConfig {
                dir: self.dir.path().join("store"),
                capacity: ByteSize(capacity),
                ..StoreConfig::default()
            })
            .await
            .unwrap()
        }

        async fn queue(&self, store: &BlobStore) -> (WriteBackQueue, Vec<Task>, CancellationToken) {
            let shutdown = CancellationToken::new();
            let (queue, replayed) = WriteBackQueue::open(
                self.dir.path().join("queue"),
                store.clone(),
                self.backends.clone(),
                &self.config,
                shutdown.clone(),
            )
            .await
            .unwrap();
            (queue, replayed, shutdown)
        }
    }

    async fn commit(store: &BlobStore, data: &[u8], pinned: bool) -> Digest {
        let digest = Digest::of(data);
        let upload = store.create_upload().await.unwrap();
        store
            .write_upload(&upload, 0, bytes::Bytes::copy_from_slice(data))
            .await
            .unwrap();
        store
            .commit_upload(&upload, &digest, &CommitOptions::default().persist(pinned))
            .await
            .unwrap();
        digest
    }

    async fn eventually(what: &str, mut condition: impl AsyncFnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while !condition().await {
            assert!(Instant::now() < deadline, "timed out waiting for: {what}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    fn ns() -> Namespace {
        "library/ubuntu".parse().unwrap()
    }

    #[test]
    fn task_files_round_trip_and_refuse_garbage() {
        let task = Task {
            namespace: "team/app-x".parse().unwrap(),
            digest: Digest::of(b"x"),
            source: TaskSource::Replica,
            not_before: UNIX_EPOCH + Duration::from_millis(1_700_000_000_123),
        };
        assert_eq!(Task::decode(&task.encode()).unwrap(), task);
        assert!(task.file_name().starts_with(&Digest::of(b"x").hex()));
        assert!(task.file_name().ends_with(".task"));
        let other_namespace = Task {
            namespace: "team/app-y".parse().unwrap(),
            ..task.clone()
        };
        assert_ne!(task.file_name(), other_namespace.file_name());
        for bad in [
            "",
            "something else\n",
            "kraken-writeback 1\nnamespace a\n",
            &task.encode().replace("replica", "mirror"),
            &task.encode().replace("sha256:", "md5:"),
        ] {
            assert!(Task::decode(bad).is_err(), "{bad:?}");
        }
    }

    #[tokio::test]
    async fn a_failing_backend_keeps_the_blob_pinned_through_a_restart_until_written_once() {
        let fixture = Fixture::new();
        fixture.backend.down.store(true, Ordering::SeqCst);
        // Capacity below the blob: anything unpinned would be evicted at once.
        let store = fixture.store(10).await;
        let data = vec![7u8; 4096];
        let digest = commit(&store, &data, true).await;
        let (queue, replayed, shutdown) = fixture.queue(&store).await;
        assert!(replayed.is_empty());
        queue
            .enqueue(&ns(), &digest, TaskSource::Upload, Duration::ZERO)
            .await
            .unwrap();
        assert!(queue.is_pending(&digest));
        // Several attempts fail while the backend is down.
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(store.stat(&digest).await.unwrap().unwrap().persist);
        assert_eq!(fixture.backend.uploads.load(Ordering::SeqCst), 0);

        // Restart: the task file brings the write-back back.
        shutdown.cancel();
        queue.wait().await;
        drop(queue);
        let (queue, replayed, _shutdown) = fixture.queue(&store).await;
        assert_eq!(replayed.len(), 1);
        assert_eq!(replayed[0].digest, digest);
        assert_eq!(replayed[0].source, TaskSource::Upload);
        fixture.backend.down.store(false, Ordering::SeqCst);
        eventually("the write-back finishes", async || {
            !queue.is_pending(&digest)
        })
        .await;
        assert_eq!(fixture.backend.uploads.load(Ordering::SeqCst), 1);
        assert_eq!(
            fixture.backend.inner.stat(&ns(), &digest).await.unwrap(),
            Some(data.len() as u64)
        );
        // Unpinned once persisted, and so evictable (capacity enforcement runs on unpin).
        assert!(!store.contains(&digest), "evicted once persisted");
        let leftover: Vec<_> = std::fs::read_dir(fixture.dir.path().join("queue"))
            .unwrap()
            .collect();
        assert!(leftover.is_empty(), "task file removed: {leftover:?}");
    }

    #[tokio::test]
    async fn delayed_tasks_wait_and_the_last_task_of_a_digest_unpins_it() {
        let fixture = Fixture::new();
        let store = fixture.store(0).await;
        let digest = commit(&store, b"shared by two namespaces", false).await;
        let (queue, _, _shutdown) = fixture.queue(&store).await;
        let other: Namespace = "team/app".parse().unwrap();
        // A replica's task, far in the future, and an upload's task, due now.
        queue
            .enqueue(
                &other,
                &digest,
                TaskSource::Replica,
                Duration::from_secs(3600),
            )
            .await
            .unwrap();
        assert!(
            store.stat(&digest).await.unwrap().unwrap().persist,
            "pinned"
        );
        queue
            .enqueue(&ns(), &digest, TaskSource::Upload, Duration::ZERO)
            .await
            .unwrap();
        eventually("the upload's write-back", async || {
            queue.pending() == vec![(other.clone(), digest)]
        })
        .await;
        assert!(
            store.stat(&digest).await.unwrap().unwrap().persist,
            "still pinned for the other namespace"
        );
        // The same replica task again changes nothing; an upload to that namespace makes it
        // due now.
        queue
            .enqueue(
                &other,
                &digest,
                TaskSource::Replica,
                Duration::from_secs(3600),
            )
            .await
            .unwrap();
        assert_eq!(queue.pending().len(), 1);
        queue
            .enqueue(&other, &digest, TaskSource::Upload, Duration::ZERO)
            .await
            .unwrap();
        eventually("both written back", async || queue.pending().is_empty()).await;
        assert!(!store.stat(&digest).await.unwrap().unwrap().persist);
        assert_eq!(fixture.backend.uploads.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn a_blob_lost_from_the_store_is_dropped_or_found_in_the_backend() {
        let fixture = Fixture::new();
        let store = fixture.store(0).await;
        let kept = commit(&store, b"the backend has me", true).await;
        let lost = commit(&store, b"nobody has me", true).await;
        let (queue, _, shutdown) = fixture.queue(&store).await;
        fixture.backend.down.store(true, Ordering::SeqCst);
        for digest in [&kept, &lost] {
            queue
                .enqueue(&ns(), digest, TaskSource::Upload, Duration::ZERO)
                .await
                .unwrap();
        }
        shutdown.cancel();
        queue.wait().await;
        drop(queue);
        // The disk loses both; only one reached the backend by other means.
        let data = b"the backend has me";
        fixture
            .backend
            .inner
            .upload(
                &ns(),
                &kept,
                UploadSource::Reader(Box::pin(std::io::Cursor::new(data.to_vec()))),
                data.len() as u64,
            )
            .await
            .unwrap();
        store.delete(&kept).await.unwrap();
        store.delete(&lost).await.unwrap();
        fixture.backend.down.store(false, Ordering::SeqCst);
        let (queue, replayed, _shutdown) = fixture.queue(&store).await;
        assert_eq!(replayed.len(), 2);
        eventually("both tasks finish", async || queue.pending().is_empty()).await;
        assert_eq!(fixture.backend.uploads.load(Ordering::SeqCst), 0);
    }

    #[tokio::test]
    async fn corrupt_task_files_are_set_aside() {
        let fixture = Fixture::new();
        let store = fixture.store(0).await;
        let dir = fixture.dir.path().join("queue");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("garbage.task"), "not a task").unwrap();
        std::fs::write(dir.join(".tmp-0000000000000001"), "half written").unwrap();
        let (queue, replayed, _shutdown) = fixture.queue(&store).await;
        assert!(replayed.is_empty());
        assert!(queue.pending().is_empty());
        assert!(dir.join("garbage.corrupt").exists());
        assert!(!dir.join(".tmp-0000000000000001").exists());
    }
}
