//! Metric names (`kraken_buildindex_<what>_<unit>`).

/// Tag writes, by `outcome` (`accepted`, `missing_dependency`, `failed`).
pub(crate) const PUTS: &str = "kraken_buildindex_tag_puts_total";
/// Tag reads, by `source` (`local`, `backend`, `none`).
pub(crate) const LOOKUPS: &str = "kraken_buildindex_tag_lookups_total";
/// Tags in the local store.
pub(crate) const TAGS: &str = "kraken_buildindex_tags";
/// Time to check a tag's dependencies on the origins.
pub(crate) const DEPENDENCY_CHECK_SECONDS: &str = "kraken_buildindex_dependency_check_seconds";
/// Replication tasks recorded.
pub(crate) const REPLICATION_TASKS: &str = "kraken_buildindex_replication_tasks_total";
