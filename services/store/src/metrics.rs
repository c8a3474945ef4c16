//! Metric names, `kraken_store_<what>_<unit>`, and the few helpers that record them.

pub(crate) const STORED_BYTES: &str = "kraken_store_stored_bytes";
pub(crate) const STORED_BLOBS: &str = "kraken_store_stored_blobs";
/// Labels: `source` (upload, download), `outcome` (stored, already_exists).
pub(crate) const COMMITS: &str = "kraken_store_commits_total";
pub(crate) const COMMITTED_BYTES: &str = "kraken_store_committed_bytes_total";
/// Label: `source`.
pub(crate) const DIGEST_MISMATCHES: &str = "kraken_store_digest_mismatches_total";
pub(crate) const BAD_PIECES: &str = "kraken_store_bad_pieces_total";
pub(crate) const EVICTIONS: &str = "kraken_store_evictions_total";
pub(crate) const EVICTED_BYTES: &str = "kraken_store_evicted_bytes_total";
/// Label: `kind` (cache, upload, download).
pub(crate) const CLEANUP_REMOVED: &str = "kraken_store_cleanup_removed_total";

pub(crate) fn record_totals(bytes: u64, blobs: usize) {
    // Gauges are f64; precision loss above 2^53 bytes is irrelevant.
    metrics::gauge!(STORED_BYTES).set(bytes as f64);
    metrics::gauge!(STORED_BLOBS).set(blobs as f64);
}
/// Downloads refused before they started because the store's disk could not fit them, even
/// after eviction.
pub(crate) const REFUSED_DOWNLOADS: &str = "kraken_store_refused_downloads_total";
