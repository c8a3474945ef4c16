//! The executor: works the replication queue, at start (tasks left by the previous run) and
//! as pushes queue new ones, `replication.workers` tasks at once and one run per (tag, remote).
//!
//! One run of a task (tag → digest at version v, for remote R):
//! 1. Ask R's build-index what the tag points at (`Has`): the same digest is done; a newer
//!    write of the tag there supersedes ours (R must never move back).
//! 2. List what the tag depends on from our origins: blobs (configs, layers), then child
//!    manifests deepest first, the tag's own manifest last.
//! 3. Have the local origin owning each one send it to R's origins
//!    (`BlobService/ReplicateToRemote`: it skips what R holds and resumes a cut transfer),
//!    `replication.blob_concurrency` blobs at once, then the manifests in order, so R's own
//!    dependency check passes at each step.
//! 4. Put the tag at R with `replicate = true` (R replicates it on, which chains clusters)
//!    and our version, so R keeps whichever write is newest whatever order they arrive in.
//!
//! A task owed to a cluster peer (it missed a write) is one `DuplicatePut` to it.
//!
//! Any failure ends the run with its cause recorded; the queue retries the task after a
//! jittered, doubling delay, with no attempt cap. A newer push of the tag cancels the run
//! (the remote must end on the newer digest). Shutdown stops every run at its next await and
//! leaves the tasks on disk for the next start; nothing is detached.

use std::sync::{Arc, Mutex};
use std::time::Instant;

use futures::{StreamExt, TryStreamExt};
use kraken_core::error_chain;
use kraken_core::sync::lock;
use kraken_originclient::{Dependency, tag_dependencies};
use kraken_tagclient::PutOutcome;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use super::error::ReplicationError;
use super::peers::TagWrite;
use super::queue::Due;
use super::remote::RemoteBuildIndexes;
use super::task::{Kind, Outcome, Progress, ReplicationTask};
use crate::store::TagRecord;
use crate::tags::Tags;

/// Works the replication queue of one build-index.
#[derive(Debug)]
pub(crate) struct Executor {
    tags: Arc<Tags>,
    remotes: RemoteBuildIndexes,
}

impl Executor {
    pub(crate) fn new(tags: Arc<Tags>, remotes: RemoteBuildIndexes) -> Self {
        Self { tags, remotes }
    }

    /// Runs due tasks until `shutdown`, then waits for the runs it started (which stop at
    /// their next await).
    pub(crate) async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        let runs = TaskTracker::new();
        let slots = Arc::new(Semaphore::new(self.tags.config.replication.workers.max(1)));
        loop {
            let slot = tokio::select! {
                biased;
                () = shutdown.cancelled() => break,
                slot = Arc::clone(&slots).acquire_owned() => slot,
            };
            let Ok(slot) = slot else { break };
            // `next_due` is cancel-safe: a task is only taken when it returns.
            let due = tokio::select! {
                biased;
                () = shutdown.cancelled() => break,
                due = self.tags.queue.next_due() => due,
            };
            let (executor, stop) = (Arc::clone(&self), shutdown.clone());
            runs.spawn(async move {
                executor.run_one(due, stop).await;
                drop(slot);
            });
        }
        runs.close();
        runs.wait().await;
    }

    /// One run of a due task, reported to the queue however it ends (except at shutdown).
    async fn run_one(&self, due: Due, shutdown: CancellationToken) {
        let Due { task, cancel } = due;
        let span = tracing::info_span!(
            "replicate",
            tag = %task.tag,
            to = %task.metric_target(),
            version = task.version,
        );
        async {
            let queue = &self.tags.queue;
            let started = Instant::now();
            tracing::info!(digest = %task.digest, attempt = task.attempts + 1, "replication started");
            let result = tokio::select! {
                biased;
                () = shutdown.cancelled() => {
                    tracing::info!("stopping: the task stays queued for the next start");
                    return;
                }
                () = cancel.cancelled() => {
                    tracing::info!("a newer push of the tag replaced this task");
                    // The queue sees the newer task and only ends this run.
                    queue.complete(&task, Outcome::Superseded).await;
                    return;
                }
                result = self.execute(&task) => result,
            };
            let elapsed_ms = started.elapsed().as_millis();
            match result {
                Ok(outcome) => {
                    tracing::info!(outcome = outcome.label(), elapsed_ms, "replication finished");
                    queue.complete(&task, outcome).await;
                }
                Err(error) => {
                    let cause = error.cause();
                    let retry_in = queue.fail(&task, cause, &error).await;
                    tracing::warn!(
                        cause = cause.as_str(),
                        error = %error_chain(&error),
                        attempts = task.attempts + 1,
                        ?retry_in,
                        elapsed_ms,
                        "replication failed; it will be retried"
                    );
                }
            }
        }
        .instrument(span)
        .await
    }

    /// Steps 1–4 of the module doc; for a cluster peer that missed a write, the copy.
    async fn execute(&self, task: &ReplicationTask) -> Result<Outcome, ReplicationError> {
        if let Kind::PeerCopy { peer, replicate } = &task.kind {
            let record = TagRecord {
                digest: task.digest,
                replicate: *replicate,
                updated_unix_ms: task.created_unix_ms,
                version: task.version,
            };
            let copy = TagWrite {
                name: &task.tag,
                record: &record,
            };
            self.tags
                .peers
                .retry_copy(peer, copy)
                .await
                .map_err(|error| ReplicationError::Peer(Box::new(error)))?;
            return Ok(Outcome::Copied);
        }
        let name = task.remote.as_str();
        let remote = self.remotes.get(name)?;
        let there = match remote.client.has_version(&task.tag).await {
            Ok(there) => there,
            Err(error) => return Err(remote.diagnose("`Has`", error).await),
        };
        if let Some(there) = there {
            if there.digest == task.digest {
                return Ok(Outcome::AlreadyThere);
            }
            // The order of `TagRecord::supersedes`. A task from before versions (0) cannot
            // tell, and lets the remote's `Put` decide.
            if task.version > 0
                && (there.version, there.digest.hex()) > (task.version, task.digest.hex())
            {
                tracing::info!(remote_digest = %there.digest, remote_version = there.version, "the remote holds a newer write of the tag");
                return Ok(Outcome::Superseded);
            }
        }

        let namespace = &task.tag.repository;
        let kind = self.tags.target_kind(&task.tag);
        let dependencies = tag_dependencies(&self.tags.origins, kind, namespace, &task.digest)
            .await
            .map_err(|source| ReplicationError::Dependencies {
                tag: task.tag.clone(),
                source: Box::new(source),
            })?;
        let progress = Mutex::new(Progress {
            blobs_total: u32::try_from(dependencies.len()).unwrap_or(u32::MAX),
            ..Progress::default()
        });
        self.tags.queue.set_progress(task, *lock(&progress));
        // Blobs reference nothing, so any order and several at once; manifests in the
        // listed order (children before the index that names them).
        let (manifests, blobs): (Vec<Dependency>, Vec<Dependency>) =
            dependencies.into_iter().partition(|d| d.manifest);
        futures::stream::iter(blobs)
            .map(|blob| self.send(task, blob, &progress))
            .buffer_unordered(self.tags.config.replication.blob_concurrency.max(1))
            .try_collect::<()>()
            .await?;
        for manifest in manifests {
            self.send(task, manifest, &progress).await?;
        }

        let put = match remote
            .client
            .put_versioned(&task.tag, &task.digest, true, task.version)
            .await
        {
            Ok(put) => put,
            Err(error) => return Err(remote.diagnose("the tag", error).await),
        };
        Ok(match put {
            PutOutcome::Stored { .. } => Outcome::Replicated,
            PutOutcome::Superseded { version } => {
                tracing::info!(
                    remote_version = version,
                    "the remote holds a newer write of the tag"
                );
                Outcome::Superseded
            }
        })
    }

    /// Has the local origin owning `dependency` send it to the task's remote.
    async fn send(
        &self,
        task: &ReplicationTask,
        dependency: Dependency,
        progress: &Mutex<Progress>,
    ) -> Result<(), ReplicationError> {
        let digest = dependency.digest;
        let sent = self
            .tags
            .origins
            .replicate_to_remote(&task.tag.repository, &digest, &task.remote)
            .await
            .map_err(|source| ReplicationError::Blob {
                remote: task.remote.clone(),
                digest,
                what: dependency.what.clone(),
                source: Box::new(source),
            })?;
        tracing::debug!(
            %digest,
            what = %dependency.what,
            size = sent.size,
            bytes_sent = sent.bytes_sent,
            skipped = sent.already_present,
            resumed_at = sent.resumed_at,
            remote_origin = %sent.remote_origin,
            "blob replicated"
        );
        let now = {
            let mut progress = lock(progress);
            progress.blobs_done = progress.blobs_done.saturating_add(1);
            progress.bytes_sent = progress.bytes_sent.saturating_add(sent.bytes_sent);
            *progress
        };
        self.tags.queue.set_progress(task, now);
        Ok(())
    }
}
