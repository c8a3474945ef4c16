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
/// Write-backs after uploads; label `outcome`: `written`, `present` (the backend had it) or
/// `failed` (the blob stays pinned in the store).
pub(crate) const WRITEBACKS: &str = "kraken_origin_writebacks_total";
/// Failed requests; label `code`: the gRPC status code in snake_case.
pub(crate) const ERRORS: &str = "kraken_origin_errors_total";
