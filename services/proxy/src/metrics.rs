//! Metric names (`kraken_proxy_<what>_<unit>`).

/// Registry API requests, by `method` and `status` (the HTTP status code).
pub(crate) const REQUESTS: &str = "kraken_proxy_registry_requests_total";
/// Blob bytes received from clients into upload sessions.
pub(crate) const UPLOAD_BYTES: &str = "kraken_proxy_upload_bytes_total";
/// Upload sessions open right now.
pub(crate) const UPLOADS_OPEN: &str = "kraken_proxy_uploads_open";
/// Upload sessions expired after `uploads.idle_timeout` without a request.
pub(crate) const UPLOADS_EXPIRED: &str = "kraken_proxy_uploads_expired_total";
/// Upload requests refused by a budget, by `reason` (`max_sessions`,
/// `max_sessions_per_client`, `max_blob_size`).
pub(crate) const UPLOAD_REFUSALS: &str = "kraken_proxy_upload_refusals_total";
/// Blob commits, by `outcome` (`stored`, `digest_invalid`, `failed`).
pub(crate) const BLOB_COMMITS: &str = "kraken_proxy_blob_commits_total";
/// Time from a blob commit to the origins holding it.
pub(crate) const ORIGIN_UPLOAD_SECONDS: &str = "kraken_proxy_origin_upload_seconds";
/// Manifest pushes, by `outcome` (`stored`, `invalid`, `blob_unknown`, `failed`).
pub(crate) const MANIFEST_PUTS: &str = "kraken_proxy_manifest_puts_total";
/// Requests shed because the registry was at its concurrency limit.
pub(crate) const SHED: &str = "kraken_proxy_registry_shed_total";
/// Blobs the prefetch service asked the origins to warm.
pub(crate) const PREFETCHED_BLOBS: &str = "kraken_proxy_prefetched_blobs_total";
/// Pushes and tag changes, by `user` and `route`.
pub(crate) const WRITES: &str = "kraken_proxy_registry_writes_total";
/// Authentication outcomes, by `result` (`challenged`, `bad_credentials`, `bad_token`,
/// `token_issued`).
pub(crate) const AUTH: &str = "kraken_proxy_auth_total";
