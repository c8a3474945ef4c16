//! Metric names (`kraken_buildindex_<what>_<unit>`).

/// Tag writes, by `outcome` (`accepted`, `missing_dependency`, `failed`).
pub(crate) const PUTS: &str = "kraken_buildindex_tag_puts_total";
/// Tag reads, by `source` (`local`, `backend`, `none`).
pub(crate) const LOOKUPS: &str = "kraken_buildindex_tag_lookups_total";
/// Tags in the local store.
pub(crate) const TAGS: &str = "kraken_buildindex_tags";
/// Time to check a tag's dependencies on the origins.
pub(crate) const DEPENDENCY_CHECK_SECONDS: &str = "kraken_buildindex_dependency_check_seconds";
/// Replication tasks by `remote` and `outcome`: what an enqueue did (`queued`, `replaced`,
/// `retried`, `stale`) and how a task ended (`replicated`, `already_there`, `superseded`).
pub(crate) const REPLICATION_TASKS: &str = "kraken_buildindex_replication_tasks_total";
/// Failed replication attempts, by `remote` and `cause` (see `ReplicationTask.cause`).
pub(crate) const REPLICATION_FAILURES: &str = "kraken_buildindex_replication_failures_total";
/// Replication tasks waiting or running, by `remote`.
pub(crate) const REPLICATION_PENDING: &str = "kraken_buildindex_replication_pending_tasks";
/// Age of the oldest pending task, by `remote`: how long that remote has been behind.
pub(crate) const REPLICATION_OLDEST_AGE: &str =
    "kraken_buildindex_replication_oldest_task_age_seconds";
/// Blob bytes sent to remote clusters for replication, by `remote`.
pub(crate) const REPLICATION_BYTES: &str = "kraken_buildindex_replication_bytes_total";
