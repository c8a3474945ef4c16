//! `writeback:` — the origin's durable queue of blobs still to be written to their backend.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::validate::{Validate, ValidationError, ensure, positive_duration};

/// A disk-backed task queue: every uploaded blob is pinned until a worker has written it to the
/// namespace's backend, retried with exponential backoff until it succeeds, across restarts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WritebackConfig {
    /// Directory holding the queue, one small file per pending write-back. Absent: `writeback/`
    /// under `store.dir`, next to the pinned blobs the tasks refer to (a queue that outlives
    /// its blobs, or blobs that outlive their queue, are both worth less). Keep it on
    /// persistent storage: losing it loses pending write-backs (their blobs stay pinned in the
    /// store and are queued again when they are uploaded again).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dir: Option<PathBuf>,
    /// Concurrent write-back workers.
    pub workers: usize,
    /// Delay before the first retry of a failed write-back; doubles on each failure.
    #[serde(with = "humantime_serde")]
    pub retry_interval: Duration,
    /// Upper bound of the retry delay. There is no attempt limit.
    #[serde(with = "humantime_serde")]
    pub max_retry_interval: Duration,
    /// How long the other owners of an uploaded blob wait before writing it back themselves:
    /// the `i`-th replica (from 0) waits `(i + 1) × replica_delay`. By then the origin that
    /// accepted the upload has normally written it back, and the replica only checks that the
    /// backend holds it; if that origin died first, the replica takes over. Replicas keep the
    /// blob pinned until then.
    #[serde(with = "humantime_serde")]
    pub replica_delay: Duration,
}

impl Default for WritebackConfig {
    fn default() -> Self {
        Self {
            dir: None,
            workers: 4,
            retry_interval: Duration::from_secs(30),
            max_retry_interval: Duration::from_secs(10 * 60),
            // Kraken's `duplicate_write_back_stagger`.
            replica_delay: Duration::from_secs(30 * 60),
        }
    }
}

impl WritebackConfig {
    /// The queue directory: `dir`, or `writeback/` under the store directory.
    pub fn dir_or_default(&self, store_dir: &Path) -> PathBuf {
        self.dir
            .clone()
            .unwrap_or_else(|| store_dir.join("writeback"))
    }
}

impl Validate for WritebackConfig {
    fn validate(&self) -> Result<(), ValidationError> {
        // An empty `dir` is the same as an absent one only by accident; refuse it.
        let dir = self.dir.as_deref().unwrap_or(Path::new("writeback"));
        retry_queue(dir, self.retry_interval, self.max_retry_interval)?;
        ensure(self.workers >= 1, "workers", "must be at least 1")?;
        positive_duration("replica_delay", self.replica_delay)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_queue_lives_under_the_store_unless_told_otherwise() {
        let config = WritebackConfig::default();
        assert_eq!(
            config.dir_or_default(Path::new("/var/cache/kraken")),
            Path::new("/var/cache/kraken/writeback")
        );
        let config = WritebackConfig {
            dir: Some(PathBuf::from("/srv/queue")),
            ..WritebackConfig::default()
        };
        assert_eq!(
            config.dir_or_default(Path::new("/x")),
            Path::new("/srv/queue")
        );
        assert!(config.validate().is_ok());
    }

    #[test]
    fn intervals_and_workers_are_checked() {
        let zero_delay = WritebackConfig {
            replica_delay: Duration::ZERO,
            ..WritebackConfig::default()
        };
        assert!(
            zero_delay
                .validate()
                .unwrap_err()
                .to_string()
                .contains("replica_delay")
        );
        let inverted = WritebackConfig {
            retry_interval: Duration::from_secs(60),
            max_retry_interval: Duration::from_secs(30),
            ..WritebackConfig::default()
        };
        assert!(
            inverted
                .validate()
                .unwrap_err()
                .to_string()
                .contains("max_retry_interval")
        );
        let idle = WritebackConfig {
            workers: 0,
            ..WritebackConfig::default()
        };
        assert!(idle.validate().is_err());
        let empty_dir = WritebackConfig {
            dir: Some(PathBuf::new()),
            ..WritebackConfig::default()
        };
        assert!(empty_dir.validate().is_err());
    }
}
