//! Metric names, `kraken_agent_<what>_<unit>`. Labels carry bounded sets only.

/// Blob requests (GetBlob, Preload, `Agent::fetch`). Labels: `method` (get_blob, preload,
/// fetch), `source` (store, swarm).
pub(crate) const BLOB_REQUESTS: &str = "kraken_agent_blob_requests_total";
/// Failed blob requests. Labels: `method`, `code` (the gRPC code name).
pub(crate) const BLOB_REQUEST_ERRORS: &str = "kraken_agent_blob_request_errors_total";
/// Blob bytes handed to clients (after verification, for swarm downloads).
pub(crate) const SERVED_BYTES: &str = "kraken_agent_served_bytes_total";
/// Time from a request joining a swarm download until the whole blob was verified.
pub(crate) const DOWNLOAD_SECONDS: &str = "kraken_agent_download_seconds";
/// Time spent waiting for metainfo while the origin fetched the blob.
pub(crate) const METAINFO_WAIT_SECONDS: &str = "kraken_agent_metainfo_wait_seconds";
/// Calls to the tracker. Labels: `method` (announce, get_metainfo), `result` (ok, not_found,
/// pending, rejected, network_error).
pub(crate) const TRACKER_REQUESTS: &str = "kraken_agent_tracker_requests_total";
/// Times a tracker host was marked unhealthy by the passive health check.
pub(crate) const TRACKER_MARKED_UNHEALTHY: &str = "kraken_agent_tracker_marked_unhealthy_total";
/// Requests to the registry HTTP API. Labels: `route` (manifest, blob, tags, write, other),
/// `status` (the HTTP status code).
pub(crate) const REGISTRY_REQUESTS: &str = "kraken_agent_registry_requests_total";
