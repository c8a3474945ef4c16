//! Metric names, `kraken_origin_<what>_<unit>`. Labels carry bounded sets only.

/// Blobs received by `Upload`, `CommitUpload` and `Duplicate`; label `outcome`: `created` or
/// `existing` (the origin already held it).
pub(crate) const UPLOADS: &str = "kraken_origin_uploads_total";
/// Bytes received by uploads, counted as they are staged.
pub(crate) const UPLOAD_BYTES: &str = "kraken_origin_upload_bytes_total";
/// `Download` streams started.
pub(crate) const DOWNLOADS: &str = "kraken_origin_downloads_total";
/// Bytes sent by `Download`.
pub(crate) const DOWNLOAD_BYTES: &str = "kraken_origin_download_bytes_total";
/// Fetches of backend-only blobs into the store; label `outcome`: `stored` or `failed`.
pub(crate) const BACKEND_FETCHES: &str = "kraken_origin_backend_fetches_total";
/// Bytes fetched from backends.
pub(crate) const BACKEND_FETCH_BYTES: &str = "kraken_origin_backend_fetch_bytes_total";
/// Fetches from backends running now.
pub(crate) const BACKEND_FETCHES_IN_FLIGHT: &str = "kraken_origin_backend_fetches_in_flight";
/// Write-back attempts; label `outcome`: `written`, `present` (the backend had it), `lost`
/// (neither the store nor the backend has it: the task is dropped) or `failed` (retried later;
/// the blob stays pinned in the store).
pub(crate) const WRITEBACKS: &str = "kraken_origin_writebacks_total";
/// Write-backs queued (durably); label `source`: `upload` or `replica`.
pub(crate) const WRITEBACKS_QUEUED: &str = "kraken_origin_writebacks_queued_total";
/// Failed write-back attempts that were rescheduled with backoff.
pub(crate) const WRITEBACK_RETRIES: &str = "kraken_origin_writeback_retries_total";
/// Write-backs pending now (waiting, backing off or running).
pub(crate) const WRITEBACK_QUEUE_DEPTH: &str = "kraken_origin_writeback_queue_depth";
/// Copies to the other owners of a blob; label `outcome`: `copied`, `present` (the owner had
/// it), `dropped` (the replication queue was full) or `failed`.
pub(crate) const REPLICATIONS: &str = "kraken_origin_replications_total";
/// Bytes sent to other owners by `Duplicate`.
pub(crate) const REPLICATION_BYTES: &str = "kraken_origin_replication_bytes_total";
/// Failed requests; label `code`: the gRPC status code in snake_case.
pub(crate) const ERRORS: &str = "kraken_origin_errors_total";
/// Bytes sent to remote clusters by `ReplicateToRemote` (lost in a cut included); label
/// `remote`. Not `kraken_origin_replication_bytes_total`, which counts copies between the
/// owners of this cluster.
pub(crate) const REMOTE_BYTES: &str = "kraken_origin_remote_replication_bytes_total";
/// Blobs handled by `ReplicateToRemote`; labels `remote` and `outcome`: `sent`, `resumed` (a
/// cut transfer went on from the remote's offset), `skipped` (the remote held it) or `failed`.
pub(crate) const REMOTE_BLOBS: &str = "kraken_origin_remote_replication_blobs_total";
