//! Copies of blobs on the other owners of their digest.
//!
//! The rule: the origin that commits a blob (from an upload or a backend fetch) copies it to
//! every other owner among the top `max_replica` of the ring with `Duplicate`, so any owner
//! can seed it and a dead owner costs no availability (owners marked unhealthy get a single
//! attempt instead of retries).
//!
//! - An uploaded blob is not in the backend yet. The `i`-th other owner (in ring order) gets
//!   `write_back_delay = (i + 1) × writeback.replica_delay`: it pins its copy and queues its
//!   own write-back for then. The accepting origin writes back at once, so in the normal case
//!   the replicas' delayed write-backs only find the blob present and unpin it: one upload to
//!   the backend per blob. If the accepting origin dies before its write-back, the first
//!   replica takes over after its delay (and the next one after that, if it died too).
//! - A blob fetched from the backend is already persisted: the copies are sent without a
//!   delay and cached unpinned.
//!
//! Replication is best effort and off the request path: a copy that cannot be made (owner
//! down, queue full) is logged and counted; an owner lacking a blob fetches it from the
//! backend when asked for it. Until an uploaded blob is written back, its durable write-back
//! task replays the replication after a restart.

use std::sync::Arc;
use std::time::Duration;

use kraken_core::{Digest, Namespace, error_chain};
use kraken_store::{BlobStore, StoreError};
use kraken_transport::cluster::HostPool;
use tokio::sync::{Semaphore, mpsc};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use crate::error::OriginError;
use crate::metrics as m;
use kraken_originclient::{ClientError, OriginClient};

/// Replications waiting for a slot; beyond it new ones are dropped (and counted).
const QUEUE_CAPACITY: usize = 1024;
/// Blobs being copied at once (each to all its other owners concurrently).
const CONCURRENCY: usize = 4;
/// Attempts per healthy owner when the copy fails with a network error.
const ATTEMPTS: u32 = 3;
/// Wait before the second attempt; doubles for the next.
const RETRY_DELAY: Duration = Duration::from_millis(250);
/// Longest the `Stat` asking an owner whether it already has the blob may take.
const STAT_TIMEOUT: Duration = Duration::from_secs(10);
/// A copy may take this long plus one second per 10 MB before it is given up.
const COPY_BASE_TIMEOUT: Duration = Duration::from_secs(60);
const COPY_BYTES_PER_SECOND: u64 = 10_000_000;

/// Whether the backend already holds a blob being replicated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Persistence {
    /// Not yet written back: replicas pin their copy and take over the write-back late.
    Pending,
    /// In the backend already (fetched from it): replicas cache their copy unpinned.
    Persisted,
}

#[derive(Debug)]
struct Job {
    namespace: Namespace,
    digest: Digest,
    persistence: Persistence,
}

/// What one copy to one owner did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CopyOutcome {
    Copied,
    Present,
    /// The blob left this origin's store before it could be sent.
    Gone,
}

/// Sends blobs to the other owners. Cheap to clone.
#[derive(Debug, Clone)]
pub(crate) struct Replicator {
    inner: Arc<Inner>,
    jobs: mpsc::Sender<Job>,
}

#[derive(Debug)]
struct Inner {
    /// This origin's ring label: never a target.
    local: String,
    store: BlobStore,
    pool: HostPool,
    max_replica: usize,
    replica_delay: Duration,
    tasks: TaskTracker,
    shutdown: CancellationToken,
}

impl Replicator {
    pub(crate) fn start(
        local: String,
        store: BlobStore,
        pool: HostPool,
        max_replica: usize,
        replica_delay: Duration,
        shutdown: CancellationToken,
    ) -> Self {
        let (jobs, receiver) = mpsc::channel(QUEUE_CAPACITY);
        let inner = Arc::new(Inner {
            local,
            store,
            pool,
            max_replica,
            replica_delay,
            tasks: TaskTracker::new(),
            shutdown,
        });
        let runner = inner.clone();
        inner.tasks.spawn(runner.run(receiver));
        Self { inner, jobs }
    }

    /// Queues copies of a committed blob to its other owners. Never blocks: a full queue
    /// drops the replication (the owners fetch the blob from the backend when asked).
    pub(crate) fn replicate(
        &self,
        namespace: &Namespace,
        digest: &Digest,
        persistence: Persistence,
    ) {
        let job = Job {
            namespace: namespace.clone(),
            digest: *digest,
            persistence,
        };
        if let Err(error) = self.jobs.try_send(job) {
            metrics::counter!(m::REPLICATIONS, "outcome" => "dropped").increment(1);
            tracing::warn!(%digest, %error, "replication to the other owners dropped");
        }
    }

    /// Waits for running copies to stop (they stop when the shutdown token fires).
    pub(crate) async fn wait(&self) {
        self.inner.tasks.close();
        self.inner.tasks.wait().await;
    }
}

impl Inner {
    async fn run(self: Arc<Self>, mut jobs: mpsc::Receiver<Job>) {
        let slots = Arc::new(Semaphore::new(CONCURRENCY));
        loop {
            let job = tokio::select! {
                () = self.shutdown.cancelled() => return,
                job = jobs.recv() => match job {
                    Some(job) => job,
                    None => return,
                },
            };
            let permit = tokio::select! {
                () = self.shutdown.cancelled() => return,
                permit = slots.clone().acquire_owned() => match permit {
                    Ok(permit) => permit,
                    Err(_) => return,
                },
            };
            let inner = self.clone();
            let span =
                tracing::info_span!("replicate", digest = %job.digest, namespace = %job.namespace);
            self.tasks.spawn(
                async move {
                    tokio::select! {
                        () = inner.shutdown.cancelled() => {}
                        () = inner.replicate(&job) => {}
                    }
                    drop(permit);
                }
                .instrument(span),
            );
        }
    }

    /// Copies one blob to each other owner, concurrently.
    async fn replicate(&self, job: &Job) {
        let others: Vec<_> = self
            .pool
            .owners(&job.digest, self.max_replica)
            .into_iter()
            .filter(|owner| owner.label != self.local)
            .collect();
        let copies = others.iter().enumerate().map(|(rank, owner)| async move {
            let delay = match job.persistence {
                Persistence::Pending => Some(self.replica_delay.saturating_mul(rank as u32 + 1)),
                Persistence::Persisted => None,
            };
            // Health is a routing hint, and a false alarm (a slow probe) must not cost an owner
            // its copy: an owner marked unhealthy still gets one attempt, which fails fast if
            // it is really down; a healthy one gets retries.
            let attempts = if owner.healthy { ATTEMPTS } else { 1 };
            self.copy_with_retries(job, &owner.label, delay, attempts)
                .await;
        });
        futures::future::join_all(copies).await;
    }

    async fn copy_with_retries(
        &self,
        job: &Job,
        owner: &str,
        delay: Option<Duration>,
        attempts: u32,
    ) {
        let mut wait = RETRY_DELAY;
        for attempt in 1..=attempts {
            match self.copy(job, owner, delay).await {
                Ok(outcome) => {
                    let label = match outcome {
                        CopyOutcome::Copied => "copied",
                        CopyOutcome::Present => "present",
                        CopyOutcome::Gone => return,
                    };
                    metrics::counter!(m::REPLICATIONS, "outcome" => label).increment(1);
                    tracing::info!(%owner, outcome = label, ?delay, "replica in place");
                    return;
                }
                Err(error) if attempt < attempts && error.is_network_error() => {
                    tracing::debug!(%owner, attempt, error = %error_chain(&error), "copy failed; retrying");
                    tokio::time::sleep(wait).await;
                    wait = wait.saturating_mul(2);
                }
                Err(error) => {
                    metrics::counter!(m::REPLICATIONS, "outcome" => "failed").increment(1);
                    tracing::warn!(
                        %owner,
                        attempt,
                        error = %error_chain(&error),
                        "cannot copy the blob to another owner; it will fetch it from the \
                         backend when asked"
                    );
                    return;
                }
            }
        }
    }

    async fn copy(
        &self,
        job: &Job,
        owner: &str,
        delay: Option<Duration>,
    ) -> Result<CopyOutcome, ClientError> {
        let client = OriginClient::new(self.pool.channel(owner).map_err(ClientError::Cluster)?);
        let held =
            tokio::time::timeout(STAT_TIMEOUT, client.stat_local(&job.namespace, &job.digest))
                .await
                .map_err(|_| {
                    ClientError::Status(tonic::Status::deadline_exceeded("Stat timed out"))
                })??;
        if held.is_some_and(|stat| stat.local) {
            return Ok(CopyOutcome::Present);
        }
        let reader = match self.store.open_blob(&job.digest).await {
            Ok(reader) => reader,
            Err(StoreError::NotFound(_)) => return Ok(CopyOutcome::Gone),
            Err(error) => {
                let error = OriginError::from(error);
                return Err(ClientError::Status(tonic::Status::internal(error.chain())));
            }
        };
        let size = reader.size();
        let file = tokio::fs::File::from_std(reader.into_file());
        let timeout = COPY_BASE_TIMEOUT + Duration::from_secs(size / COPY_BYTES_PER_SECOND);
        let sent = client.duplicate(&job.namespace, &job.digest, file, size, delay);
        tokio::time::timeout(timeout, sent).await.map_err(|_| {
            ClientError::Status(tonic::Status::deadline_exceeded(format!(
                "Duplicate of {size} bytes took longer than {} s",
                timeout.as_secs()
            )))
        })??;
        metrics::counter!(m::REPLICATION_BYTES).increment(size);
        Ok(CopyOutcome::Copied)
    }
}
