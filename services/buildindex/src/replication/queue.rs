//! The durable replication queue: tags this build-index still owes remote clusters.
//!
//! One JSON file per (tag, remote) under `replication.dir` (see [`task`](super::task)),
//! written atomically (temporary file, fsync, rename, directory fsync) before `enqueue`
//! returns, so a `Put` acknowledged with `replicate` survives a crash. Start-up loads every
//! file; one that cannot be read is renamed `*.bad` with a warning (kept for a human, never
//! retried as garbage).
//!
//! A key holds one task, the newest write of the tag: a newer push replaces a pending older
//! one (cancelling its run: the remote must end on the newer digest, and the older run's
//! work would be thrown away by the remote's version check anyway), an older one is dropped.
//! So a remote never moves back, whatever order pushes, peers and retries arrive in.
//!
//! The [executor](super::executor) takes due tasks with [`ReplicationQueue::next_due`], one run per
//! key at a time, and reports each run's end with [`fail`](ReplicationQueue::fail) (retried
//! after a jittered exponential backoff, without an attempt cap) or
//! [`complete`](ReplicationQueue::complete) (the file is deleted, unless a newer write
//! replaced the task meanwhile: then that one is due at once).
//!
//! Every change to a task is decided, written to disk and applied in memory under one async
//! lock, so the file and the in-memory state always agree on which write is the newest.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use kraken_config::build_index::ReplicationConfig;
use kraken_core::backoff::Backoff;
use kraken_core::error_chain;
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::task::{Cause, Outcome, Progress, ReplicationTask, TaskKey};
use crate::metrics as m;
use crate::store::{TagStoreError, io_error, now_ms, write_atomically};

/// How often the age gauges are refreshed: ages grow without any event to update them.
pub(crate) const GAUGE_PERIOD: Duration = Duration::from_secs(5);

/// The queue. Cheap to clone; clones share everything.
#[derive(Clone)]
pub(crate) struct ReplicationQueue {
    inner: Arc<Inner>,
}

/// What [`ReplicationQueue::enqueue`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Enqueued {
    /// Nothing was pending for the key: the task is.
    Stored,
    /// A task for an older write (`previous` version) was pending, or running (its run is
    /// cancelled): this one replaced it.
    Replaced { previous: u64 },
    /// The same write was pending: it is due now (a `Replicate` call retries at once).
    Retried,
    /// A task for a newer write (`pending` version) is pending: this one was dropped.
    Stale { pending: u64 },
}

/// A due task, handed to the executor. Its run must end with
/// [`fail`](ReplicationQueue::fail) or [`complete`](ReplicationQueue::complete) (the key is
/// not handed out again before), and should stop when `cancel` fires: a newer write of the
/// tag replaced the task.
#[derive(Debug)]
pub(crate) struct Due {
    pub(crate) task: ReplicationTask,
    pub(crate) cancel: CancellationToken,
}

/// A task as `ListTasks` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TaskStatus {
    pub(crate) key: TaskKey,
    pub(crate) task: ReplicationTask,
    pub(crate) running: bool,
    pub(crate) progress: Progress,
}

/// The queue's files could not be read or written.
#[derive(Debug, thiserror::Error)]
#[error("the replication queue failed")]
pub struct QueueError(#[from] TagStoreError);

struct Inner {
    dir: PathBuf,
    backoff: Backoff,
    state: Mutex<State>,
    /// Held while a change is decided, written and applied: see the module doc.
    writer: tokio::sync::Mutex<()>,
    /// Wakes `next_due` when a task is scheduled.
    wake: Notify,
}

#[derive(Default)]
struct State {
    tasks: BTreeMap<TaskKey, Entry>,
    /// Waiting tasks by due time; the sequence number keeps equal times apart.
    due: BTreeMap<(Instant, u64), TaskKey>,
    next_seq: u64,
    /// Every metric target seen (and every configured remote), so a gauge drops to 0 when
    /// its last task goes instead of keeping its last value.
    targets: BTreeSet<String>,
}

struct Entry {
    task: ReplicationTask,
    /// Its slot in `State::due` while waiting; `None` while running.
    due: Option<(Instant, u64)>,
    /// Set while a run holds the task.
    run: Option<CancellationToken>,
    progress: Progress,
}

impl std::fmt::Debug for ReplicationQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReplicationQueue")
            .field("dir", &self.inner.dir)
            .field("pending", &self.inner.state().tasks.len())
            .finish_non_exhaustive()
    }
}

impl ReplicationQueue {
    /// Opens the queue under `config.dir` (created if missing) and loads every task left by a
    /// previous run, due at their `not_before` time. `remotes` are the configured remote
    /// names: their gauges read 0 rather than nothing while they have no task.
    pub(crate) async fn open(
        config: &ReplicationConfig,
        remotes: impl IntoIterator<Item = String>,
    ) -> Result<Self, QueueError> {
        let dir = config.dir.clone();
        let scan = dir.clone();
        let loaded = tokio::task::spawn_blocking(move || load_tasks(&scan))
            .await
            .map_err(TagStoreError::Task)??;
        let mut state = State {
            targets: remotes.into_iter().collect(),
            ..State::default()
        };
        for task in loaded {
            state.targets.insert(task.metric_target());
            state.schedule(task.key(), Entry::new(task));
        }
        if !state.tasks.is_empty() {
            tracing::info!(tasks = state.tasks.len(), dir = %dir.display(), "replication tasks loaded");
        }
        let queue = Self {
            inner: Arc::new(Inner {
                dir,
                backoff: Backoff::doubling(
                    config.retry_interval,
                    config.max_retry_interval.max(config.retry_interval),
                ),
                state: Mutex::new(state),
                writer: tokio::sync::Mutex::new(()),
                wake: Notify::new(),
            }),
        };
        queue.publish_gauges();
        Ok(queue)
    }

    /// Durably queues `task`, keeping the newest write per key (see [`Enqueued`]). Returns once
    /// the task is on disk. Runs to completion even if the caller is dropped, so the file and
    /// the memory never disagree.
    pub(crate) async fn enqueue(&self, task: ReplicationTask) -> Result<Enqueued, QueueError> {
        let queue = self.clone();
        tokio::spawn(async move { queue.enqueue_now(task).await })
            .await
            .map_err(TagStoreError::Task)?
    }

    /// Every task, in key (tag, remote) order.
    pub(crate) fn snapshot(&self) -> Vec<TaskStatus> {
        self.inner
            .state()
            .tasks
            .iter()
            .map(|(key, entry)| TaskStatus {
                key: key.clone(),
                task: entry.task.clone(),
                running: entry.run.is_some(),
                progress: entry.progress,
            })
            .collect()
    }

    /// Sets the pending-task and oldest-age gauges of every remote.
    pub(crate) fn publish_gauges(&self) {
        let now = now_ms();
        let state = self.inner.state();
        let mut per_target: BTreeMap<&str, (usize, u64)> = state
            .targets
            .iter()
            .map(|target| (target.as_str(), (0, now)))
            .collect();
        for entry in state.tasks.values() {
            let target = entry.task.metric_target();
            if let Some((pending, oldest)) = per_target.get_mut(target.as_str()) {
                *pending += 1;
                *oldest = (*oldest).min(entry.task.created_unix_ms);
            }
        }
        for (target, (pending, oldest)) in per_target {
            let age = Duration::from_millis(now.saturating_sub(oldest)).as_secs_f64();
            metrics::gauge!(m::REPLICATION_PENDING, "remote" => target.to_owned())
                .set(pending as f64);
            metrics::gauge!(m::REPLICATION_OLDEST_AGE, "remote" => target.to_owned()).set(age);
        }
    }

    /// Refreshes the gauges every `period` until `shutdown`.
    pub(crate) async fn publish_gauges_until(&self, period: Duration, shutdown: CancellationToken) {
        let mut ticker = tokio::time::interval(period);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                _ = ticker.tick() => self.publish_gauges(),
            }
        }
    }

    async fn enqueue_now(&self, mut task: ReplicationTask) -> Result<Enqueued, QueueError> {
        let _writer = self.inner.writer.lock().await;
        let key = task.key();
        let pending = self.inner.state().tasks.get(&key).map(|e| e.task.clone());
        let enqueued = match &pending {
            None => Enqueued::Stored,
            Some(pending) => match task.is_newer_than(pending) {
                Some(false) => Enqueued::Stale {
                    pending: pending.version,
                },
                Some(true) => {
                    // The remote has been behind on this tag since the older task; its last
                    // error still explains why until the newer write has run.
                    task.created_unix_ms = task.created_unix_ms.min(pending.created_unix_ms);
                    task.last_error = task
                        .last_error
                        .take()
                        .or_else(|| pending.last_error.clone());
                    task.cause = task.cause.or(pending.cause);
                    Enqueued::Replaced {
                        previous: pending.version,
                    }
                }
                None => {
                    // The same write again: due at the earlier time, held for a peer only if
                    // both were; attempts and errors stay.
                    task = ReplicationTask {
                        not_before_unix_ms: task.not_before_unix_ms.min(pending.not_before_unix_ms),
                        held_for_peer: task.held_for_peer && pending.held_for_peer,
                        ..pending.clone()
                    };
                    Enqueued::Retried
                }
            },
        };
        let changed =
            !matches!(enqueued, Enqueued::Stale { .. }) && pending.as_ref() != Some(&task);
        if changed {
            self.write_file(&key, &task).await?;
            self.inner.state().put(key, task.clone(), enqueued);
            self.inner.wake.notify_one();
            self.publish_gauges();
        }
        let outcome = match enqueued {
            Enqueued::Stored => "queued",
            Enqueued::Replaced { .. } => "replaced",
            Enqueued::Retried => "retried",
            Enqueued::Stale { .. } => "stale",
        };
        metrics::counter!(m::REPLICATION_TASKS, "remote" => task.metric_target(), "outcome" => outcome)
            .increment(1);
        Ok(enqueued)
    }

    async fn write_file(&self, key: &TaskKey, task: &ReplicationTask) -> Result<(), QueueError> {
        let body = serde_json::to_vec(task)
            .map_err(|error| TagStoreError::Encode(key.as_str().to_owned(), error))?;
        let (dir, name) = (self.inner.dir.clone(), key.file_name());
        tokio::task::spawn_blocking(move || write_atomically(&dir, &name, &body))
            .await
            .map_err(TagStoreError::Task)??;
        Ok(())
    }

    async fn remove_file(&self, key: &TaskKey) -> Result<(), QueueError> {
        let dir = self.inner.dir.clone();
        let path = dir.join(key.file_name());
        tokio::task::spawn_blocking(move || {
            match std::fs::remove_file(&path) {
                Ok(()) => {}
                Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(()),
                Err(error) => return Err(io_error("remove", &path)(error)),
            }
            std::fs::File::open(&dir)
                .and_then(|d| d.sync_all())
                .map_err(io_error("fsync", &dir))
        })
        .await
        .map_err(TagStoreError::Task)??;
        Ok(())
    }
}

/// The executor's side.
impl ReplicationQueue {
    /// Waits until a task is due, marks it running and hands it out. Cancel-safe: a task is
    /// taken only when the call returns.
    pub(crate) async fn next_due(&self) -> Due {
        loop {
            let wait_until = {
                let mut state = self.inner.state();
                match state.due.first_key_value().map(|(slot, _)| *slot) {
                    Some(slot) if slot.0 <= Instant::now() => {
                        if let Some(due) = state.start(slot) {
                            return due;
                        }
                        continue;
                    }
                    Some((at, _)) => Some(at),
                    None => None,
                }
            };
            let sleep = async {
                match wait_until {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                () = self.inner.wake.notified() => {}
                () = sleep => {}
            }
        }
    }

    /// Ends a run of `task` that failed: one more attempt, the error and its cause recorded
    /// (on disk too), and the task due again after a jittered exponential backoff. Returns that
    /// delay; `None` when a newer write replaced the task meanwhile (it is due at once).
    pub(crate) async fn fail(
        &self,
        task: &ReplicationTask,
        cause: Cause,
        error: &(dyn std::error::Error + Send + Sync),
    ) -> Option<Duration> {
        let target = task.metric_target();
        metrics::counter!(m::REPLICATION_FAILURES, "remote" => target, "cause" => cause.as_str())
            .increment(1);
        let (queue, task, message) = (self.clone(), task.clone(), error_chain(error));
        tokio::spawn(async move { queue.fail_now(task, cause, message).await })
            .await
            .unwrap_or_else(|error| {
                tracing::error!(%error, "recording a failed replication panicked");
                None
            })
    }

    /// Ends a run of `task` that succeeded: its file is deleted and the task forgotten, unless
    /// a newer write replaced it meanwhile (then that one is due at once).
    pub(crate) async fn complete(&self, task: &ReplicationTask, outcome: Outcome) {
        let (queue, task) = (self.clone(), task.clone());
        if let Err(error) =
            tokio::spawn(async move { queue.complete_now(task, outcome).await }).await
        {
            tracing::error!(%error, "recording a finished replication panicked");
        }
    }

    /// Records how far the running attempt at `task` got (for `ListTasks`); bytes sent count
    /// towards `kraken_buildindex_replication_bytes_total`. Ignored for a replaced task.
    pub(crate) fn set_progress(&self, task: &ReplicationTask, progress: Progress) {
        let mut state = self.inner.state();
        let Some(entry) = state.tasks.get_mut(&task.key()) else {
            return;
        };
        if entry.task.is_newer_than(task).is_some() {
            return;
        }
        let sent = progress
            .bytes_sent
            .saturating_sub(entry.progress.bytes_sent);
        entry.progress = progress;
        metrics::counter!(m::REPLICATION_BYTES, "remote" => task.metric_target()).increment(sent);
    }

    async fn fail_now(
        &self,
        task: ReplicationTask,
        cause: Cause,
        message: String,
    ) -> Option<Duration> {
        let _writer = self.inner.writer.lock().await;
        let key = task.key();
        let mut failed = {
            let mut state = self.inner.state();
            let current = state.tasks.get(&key)?;
            if current.task.is_newer_than(&task).is_some() {
                state.end_run(&key);
                drop(state);
                self.inner.wake.notify_one();
                return None;
            }
            current.task.clone()
        };
        failed.attempts = failed.attempts.saturating_add(1);
        // Spread so that tasks failing together during an outage do not all come back at the
        // same instant.
        let delay = self
            .inner
            .backoff
            .jittered(failed.attempts, rand::random::<f64>());
        failed.not_before_unix_ms = now_ms().saturating_add(millis(delay));
        failed.last_error = Some(message);
        failed.cause = Some(cause);
        if let Err(error) = self.write_file(&key, &failed).await {
            // The retry still happens on time; a restart only forgets this attempt.
            tracing::warn!(error = %error_chain(&error), "cannot record a failed replication attempt on disk");
        }
        let attempts = failed.attempts;
        {
            let mut state = self.inner.state();
            if let Some(entry) = state.tasks.get_mut(&key) {
                entry.task = failed;
            }
            state.end_run(&key);
        }
        self.inner.wake.notify_one();
        tracing::debug!(tag = %task.tag, remote = %task.remote, attempts, retry_in = ?delay, "replication attempt failed");
        Some(delay)
    }

    async fn complete_now(&self, task: ReplicationTask, outcome: Outcome) {
        let _writer = self.inner.writer.lock().await;
        let key = task.key();
        {
            let mut state = self.inner.state();
            let Some(current) = state.tasks.get(&key) else {
                return;
            };
            if current.task.is_newer_than(&task).is_some() {
                state.end_run(&key);
                drop(state);
                self.inner.wake.notify_one();
                return;
            }
        }
        if let Err(error) = self.remove_file(&key).await {
            // Harmless: a restart replays it and the remote's `Has` finds the tag.
            tracing::warn!(error = %error_chain(&error), "cannot remove a finished replication task");
        }
        self.inner.state().tasks.remove(&key);
        metrics::counter!(m::REPLICATION_TASKS, "remote" => task.metric_target(), "outcome" => outcome.label())
            .increment(1);
        self.publish_gauges();
    }
}

impl Inner {
    fn state(&self) -> MutexGuard<'_, State> {
        kraken_core::sync::lock(&self.state)
    }
}

impl Entry {
    fn new(task: ReplicationTask) -> Self {
        Self {
            task,
            due: None,
            run: None,
            progress: Progress::default(),
        }
    }
}

impl State {
    /// Puts `entry` in the schedule at its `not_before` time.
    fn schedule(&mut self, key: TaskKey, mut entry: Entry) {
        self.next_seq += 1;
        let slot = (due_instant(entry.task.not_before_unix_ms), self.next_seq);
        entry.due = Some(slot);
        self.due.insert(slot, key.clone());
        self.tasks.insert(key, entry);
    }

    /// Applies an enqueue's decision: a running task is only replaced in place (cancelled if
    /// older; its run's end schedules the new one), a waiting one is rescheduled.
    fn put(&mut self, key: TaskKey, task: ReplicationTask, enqueued: Enqueued) {
        self.targets.insert(task.metric_target());
        let mut entry = self
            .tasks
            .remove(&key)
            .unwrap_or_else(|| Entry::new(task.clone()));
        if let Some(slot) = entry.due.take() {
            self.due.remove(&slot);
        }
        entry.task = task;
        if let Some(run) = &entry.run {
            if matches!(enqueued, Enqueued::Replaced { .. }) {
                run.cancel();
                entry.progress = Progress::default();
            }
            self.tasks.insert(key, entry);
        } else {
            self.schedule(key, entry);
        }
    }

    /// Takes the task in `slot` off the schedule and marks it running.
    fn start(&mut self, slot: (Instant, u64)) -> Option<Due> {
        let key = self.due.remove(&slot)?;
        let entry = self.tasks.get_mut(&key)?;
        let cancel = CancellationToken::new();
        entry.due = None;
        entry.run = Some(cancel.clone());
        entry.progress = Progress::default();
        Some(Due {
            task: entry.task.clone(),
            cancel,
        })
    }

    /// The run of `key` is over: schedule the task it leaves.
    fn end_run(&mut self, key: &TaskKey) {
        if let Some(mut entry) = self.tasks.remove(key) {
            entry.run = None;
            self.schedule(key.clone(), entry);
        }
    }
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

/// The `Instant` for a wall-clock due time (past times are due now).
fn due_instant(at_unix_ms: u64) -> Instant {
    Instant::now() + Duration::from_millis(at_unix_ms.saturating_sub(now_ms()))
}

/// Creates `dir` if needed, removes leftover temporary files and reads every task. A file that
/// cannot be read as a task, or whose name is not its task's, is renamed `*.bad` and reported.
/// Blocking.
fn load_tasks(dir: &Path) -> Result<Vec<ReplicationTask>, TagStoreError> {
    std::fs::create_dir_all(dir).map_err(io_error("create", dir))?;
    let mut tasks = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(io_error("list", dir))? {
        let path = entry.map_err(io_error("list", dir))?.path();
        let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
            continue;
        };
        if name.starts_with('.') {
            // A task being written when the previous run stopped: its write was never
            // acknowledged.
            let _ = std::fs::remove_file(&path);
            continue;
        }
        if name.ends_with(".bad") || !path.is_file() {
            continue;
        }
        match read_task(&path, name) {
            Ok(task) => tasks.push(task),
            Err(reason) => {
                tracing::warn!(
                    path = %path.display(),
                    %reason,
                    "unreadable replication task; renamed *.bad (replicate the tag again to retry)"
                );
                let _ = std::fs::rename(&path, dir.join(format!("{name}.bad")));
            }
        }
    }
    Ok(tasks)
}

fn read_task(path: &Path, name: &str) -> Result<ReplicationTask, String> {
    let bytes = std::fs::read(path).map_err(|e| e.to_string())?;
    let task: ReplicationTask = serde_json::from_slice(&bytes).map_err(|e| e.to_string())?;
    let expected = task.key().file_name();
    if name != expected {
        return Err(format!(
            "the file of this task ({} to {}) is named {expected}",
            task.tag, task.remote
        ));
    }
    Ok(task)
}

#[cfg(test)]
mod tests {
    use kraken_core::Digest;
    use kraken_oci::TaggedName;

    use super::*;
    use crate::replication::task::Kind;

    /// Long enough that a failed task is never due again within a test's bounds unless the
    /// (paused) clock is moved past it.
    const RETRY: Duration = Duration::from_secs(3600);

    fn config(dir: &Path) -> ReplicationConfig {
        ReplicationConfig {
            dir: dir.to_owned(),
            retry_interval: RETRY,
            max_retry_interval: 10 * RETRY,
            ..ReplicationConfig::default()
        }
    }

    async fn open(dir: &Path) -> ReplicationQueue {
        ReplicationQueue::open(&config(dir), ["b".to_owned()])
            .await
            .unwrap()
    }

    fn task(tag: &str, seed: &str, version: u64) -> ReplicationTask {
        let tag: TaggedName = tag.parse().unwrap();
        ReplicationTask::to_remote(tag, Digest::of(seed.as_bytes()), version, "b", now_ms())
    }

    /// The next due task, or `None` if none is due within `bound` (of the paused clock).
    async fn due_within(queue: &ReplicationQueue, bound: Duration) -> Option<Due> {
        tokio::time::timeout(bound, queue.next_due()).await.ok()
    }

    /// Task files in `dir`, by name, parsed.
    fn files(dir: &Path) -> BTreeMap<String, serde_json::Value> {
        std::fs::read_dir(dir)
            .unwrap()
            .map(|entry| entry.unwrap().path())
            .map(|path| {
                let name = path.file_name().unwrap().to_str().unwrap().to_owned();
                let body = std::fs::read(&path).unwrap();
                let json = serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null);
                (name, json)
            })
            .collect()
    }

    #[tokio::test(start_paused = true)]
    async fn a_newer_task_replaces_an_older_one_and_a_stale_one_is_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let queue = open(dir.path()).await;
        let (v1, v2) = (task("app:1", "one", 1_000), task("app:1", "two", 2_000));
        assert_eq!(queue.enqueue(v1.clone()).await.unwrap(), Enqueued::Stored);
        let run = due_within(&queue, Duration::from_secs(1)).await.unwrap();
        assert_eq!(run.task, v1);

        let sent = Progress {
            blobs_done: 1,
            blobs_total: 3,
            bytes_sent: 4096,
        };
        queue.set_progress(&run.task, sent);
        assert_eq!(queue.snapshot()[0].progress, sent);

        // A newer push while the older one runs: replaced, and the run told to stop.
        assert!(!run.cancel.is_cancelled());
        assert_eq!(
            queue.enqueue(v2.clone()).await.unwrap(),
            Enqueued::Replaced { previous: 1_000 }
        );
        assert!(run.cancel.is_cancelled());
        // A late copy of the older push changes nothing, on disk or in memory.
        assert_eq!(
            queue.enqueue(v1.clone()).await.unwrap(),
            Enqueued::Stale { pending: 2_000 }
        );
        let on_disk = files(dir.path());
        assert_eq!(on_disk.len(), 1);
        let file = &on_disk[&v2.key().file_name()];
        assert_eq!(file["version"], 2_000);
        assert_eq!(file["digest"], v2.digest.to_string());
        let snapshot = queue.snapshot();
        assert_eq!(snapshot.len(), 1);
        assert_eq!(
            (snapshot[0].task.version, snapshot[0].running),
            (2_000, true)
        );
        assert_eq!(snapshot[0].progress, Progress::default(), "the old run's");
        // The old run's late reports change nothing.
        queue.set_progress(&v1, sent);
        assert_eq!(queue.snapshot()[0].progress, Progress::default());
        // One run per key: the newer task waits for the older run to end.
        assert!(due_within(&queue, RETRY * 100).await.is_none());

        // The older run's end neither deletes the newer task nor counts against it.
        queue.complete(&v1, Outcome::Superseded).await;
        assert_eq!(files(dir.path()).len(), 1);
        let run = due_within(&queue, Duration::from_secs(1)).await.unwrap();
        assert_eq!((run.task.version, run.task.attempts), (2_000, 0));
        queue.complete(&run.task, Outcome::AlreadyThere).await;
        assert!(queue.snapshot().is_empty());
        assert!(
            files(dir.path()).is_empty(),
            "the finished task's file is gone"
        );

        // The same version from two clusters: the larger digest wins, whichever comes first.
        let (a, b) = (task("app:2", "a", 5), task("app:2", "b", 5));
        let (small, large) = if a.digest.hex() < b.digest.hex() {
            (a, b)
        } else {
            (b, a)
        };
        queue.enqueue(small.clone()).await.unwrap();
        assert_eq!(
            queue.enqueue(large.clone()).await.unwrap(),
            Enqueued::Replaced { previous: 5 }
        );
        assert_eq!(
            queue.enqueue(small).await.unwrap(),
            Enqueued::Stale { pending: 5 }
        );
        assert_eq!(queue.snapshot()[0].task.digest, large.digest);
    }

    #[tokio::test]
    async fn concurrent_enqueues_of_one_tag_keep_the_newest() {
        let dir = tempfile::tempdir().unwrap();
        let queue = open(dir.path()).await;
        // Interleaved versions, as racing puts and late peers would deliver them.
        let enqueues: Vec<_> = (1..=32u64)
            .map(|i| (i * 7) % 32 + 1)
            .map(|version| {
                let queue = queue.clone();
                tokio::spawn(async move {
                    queue
                        .enqueue(task("app:latest", &version.to_string(), version))
                        .await
                })
            })
            .collect();
        for enqueue in enqueues {
            enqueue.await.unwrap().unwrap();
        }
        let newest = task("app:latest", "32", 32);
        let versions = |queue: &ReplicationQueue| -> Vec<(u64, Digest)> {
            queue
                .snapshot()
                .iter()
                .map(|s| (s.task.version, s.task.digest))
                .collect()
        };
        assert_eq!(versions(&queue), [(32, newest.digest)]);
        assert_eq!(versions(&open(dir.path()).await), [(32, newest.digest)]);
    }

    #[tokio::test(start_paused = true)]
    async fn tasks_and_their_attempts_survive_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let queue = open(dir.path()).await;
        let pushed = task("release/app:1", "x", 7);
        queue.enqueue(pushed.clone()).await.unwrap();
        let run = due_within(&queue, Duration::from_secs(1)).await.unwrap();
        let refused = std::io::Error::other("remote refused our certificate (alert UnknownCA)");
        let before = now_ms();
        let delay = queue.fail(&run.task, Cause::Tls, &refused).await.unwrap();
        // Jittered ±20 % around the first interval.
        assert!(
            delay >= RETRY.mul_f64(0.8) && delay <= RETRY.mul_f64(1.2),
            "{delay:?}"
        );
        let failed = queue.snapshot().remove(0);
        assert!(!failed.running);
        assert_eq!(failed.task.attempts, 1);
        assert_eq!(failed.task.cause, Some(Cause::Tls));
        assert!(
            failed
                .task
                .last_error
                .as_deref()
                .unwrap()
                .contains("UnknownCA"),
            "{failed:?}"
        );
        assert!(failed.task.not_before_unix_ms >= before + millis(RETRY.mul_f64(0.8)));
        assert_eq!(failed.task.created_unix_ms, pushed.created_unix_ms);
        // Backing off: not due before the delay is over.
        assert!(due_within(&queue, RETRY / 2).await.is_none());

        let reopened = open(dir.path()).await;
        assert_eq!(reopened.snapshot(), std::slice::from_ref(&failed));
        // Due once the delay is over, with its history.
        let run = due_within(&reopened, RETRY * 2).await.unwrap();
        assert_eq!(run.task, failed.task);
        let delay = reopened
            .fail(&run.task, Cause::Tls, &refused)
            .await
            .unwrap();
        assert!(
            delay >= (RETRY * 2).mul_f64(0.8) && delay <= (RETRY * 2).mul_f64(1.2),
            "doubling: {delay:?}"
        );
        assert_eq!(open(dir.path()).await.snapshot()[0].task.attempts, 2);

        // `Replicate` (the same write queued again) makes it due at once, history kept.
        assert_eq!(
            reopened.enqueue(pushed.clone()).await.unwrap(),
            Enqueued::Retried
        );
        let run = due_within(&reopened, Duration::from_secs(1)).await.unwrap();
        assert_eq!(run.task.attempts, 2);
        assert_eq!(run.task.cause, Some(Cause::Tls));
        reopened.complete(&run.task, Outcome::Replicated).await;
        assert!(files(dir.path()).is_empty());
        assert!(open(dir.path()).await.snapshot().is_empty());
    }

    #[tokio::test]
    async fn todays_task_files_still_load() {
        let dir = tempfile::tempdir().unwrap();
        let digest = Digest::of(b"manifest");
        // As `record_replication` wrote them before the queue, and before versions.
        let name =
            |tag: &str, remote: &str| Digest::of(format!("{tag}\n{remote}").as_bytes()).hex();
        let versioned = serde_json::json!({
            "tag": "release/app:1", "digest": digest.to_string(), "remote": "b",
            "version": 1_700_000_000_123u64, "created_unix_ms": 1_700_000_000_456u64,
        });
        let unversioned = serde_json::json!({
            "tag": "release/app:2", "digest": digest.to_string(), "remote": "b",
            "created_unix_ms": 1_700_000_000_789u64,
        });
        let write = |name: &str, body: &[u8]| std::fs::write(dir.path().join(name), body).unwrap();
        write(
            &name("release/app:1", "b"),
            versioned.to_string().as_bytes(),
        );
        write(
            &name("release/app:2", "b"),
            unversioned.to_string().as_bytes(),
        );
        // Not tasks: junk, a task under another task's name, an interrupted write.
        write(&name("release/app:3", "b"), b"{not json");
        write(
            &name("release/app:4", "b"),
            versioned.to_string().as_bytes(),
        );
        write(".0123.tmp", b"partial");

        let queue = open(dir.path()).await;
        let tasks: Vec<ReplicationTask> = queue.snapshot().into_iter().map(|s| s.task).collect();
        let tag = |text: &str| -> TaggedName { text.parse().unwrap() };
        assert_eq!(
            tasks
                .iter()
                .map(|t| (t.tag.clone(), t.version, t.created_unix_ms))
                .collect::<Vec<_>>(),
            [
                (tag("release/app:1"), 1_700_000_000_123, 1_700_000_000_456),
                (tag("release/app:2"), 0, 1_700_000_000_789),
            ]
        );
        for task in &tasks {
            assert_eq!((task.remote.as_str(), task.digest), ("b", digest));
            assert_eq!((task.attempts, task.kind.clone()), (0, Kind::Remote));
            assert_eq!(task.not_before_unix_ms, 0, "due at once");
        }
        let left: Vec<String> = files(dir.path()).into_keys().collect();
        let mut expected = vec![
            name("release/app:1", "b"),
            name("release/app:2", "b"),
            format!("{}.bad", name("release/app:3", "b")),
            format!("{}.bad", name("release/app:4", "b")),
        ];
        expected.sort();
        assert_eq!(left, expected);
        assert!(due_within(&queue, Duration::from_secs(10)).await.is_some());
        // A newer push replaces an old file in place, under the same name.
        queue
            .enqueue(task("release/app:2", "newer", 1))
            .await
            .unwrap();
        assert_eq!(files(dir.path())[&name("release/app:2", "b")]["version"], 1);
    }
}
