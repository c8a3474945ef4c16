//! `writeback:` — the origin's durable queue of blobs still to be written to their backend.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::validate::{Validate, ValidationError, ensure, positive_duration};

/// A disk-backed task queue: every uploaded blob is pinned until a worker has written it to the
/// namespace's backend, retried with backoff until it succeeds, across restarts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WritebackConfig {
    /// Directory holding the queue. Keep it on persistent storage: losing it loses pending
    /// write-backs (the blobs stay pinned in the store and are requeued on the next upload).
    pub dir: PathBuf,
    /// Concurrent write-back workers.
    pub workers: usize,
    /// Delay before the first retry of a failed write-back; doubles on each failure.
    #[serde(with = "humantime_serde")]
    pub retry_interval: Duration,
    /// Upper bound of the retry delay. There is no attempt limit.
    #[serde(with = "humantime_serde")]
    pub max_retry_interval: Duration,
}

impl Default for WritebackConfig {
    fn default() -> Self {
        Self {
            dir: PathBuf::from("/var/lib/kraken/writeback"),
            workers: 4,
            retry_interval: Duration::from_secs(30),
            max_retry_interval: Duration::from_secs(10 * 60),
        }
    }
}

impl Validate for WritebackConfig {
    fn validate(&self) -> Result<(), ValidationError> {
        retry_queue(&self.dir, self.retry_interval, self.max_retry_interval)?;
        ensure(self.workers >= 1, "workers", "must be at least 1")
    }
}

/// Checks shared by the durable queues (write-back, replication).
pub(crate) fn retry_queue(
    dir: &std::path::Path,
    retry_interval: Duration,
    max_retry_interval: Duration,
) -> Result<(), ValidationError> {
    ensure(
        !dir.as_os_str().is_empty(),
        "dir",
        "must be a directory path",
    )?;
    positive_duration("retry_interval", retry_interval)?;
    ensure(
        max_retry_interval >= retry_interval,
        "max_retry_interval",
        format!(
            "must be at least retry_interval ({})",
            humantime::format_duration(retry_interval)
        ),
    )
}
