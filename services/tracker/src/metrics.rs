//! Metric names, `kraken_tracker_<what>_<unit>`. Labels carry bounded sets only.

/// Announces. Label: `result` (ok, denied, or the error's label).
pub(crate) const ANNOUNCES: &str = "kraken_tracker_announces_total";
/// Announces refused to keep the swarm honest. Label: `reason` (unusable_address,
/// peer_id_taken, blob_full, address_full, store_full).
pub(crate) const ANNOUNCE_REFUSALS: &str = "kraken_tracker_announce_refusals_total";
/// Announces recorded at their connection's source IP instead of the IP they claimed.
pub(crate) const ANNOUNCE_ADDRESS_REWRITES: &str = "kraken_tracker_announce_address_rewrites_total";
/// Peer ids received in announces' reports. Labels: `kind` (served, failed), `result` (ok,
/// malformed, over_cap; only `ok` ones reach the peer store).
pub(crate) const PEER_REPORTS: &str = "kraken_tracker_peer_reports_total";
/// Peers that became proven: another host reported that they served it pieces.
pub(crate) const PEERS_PROVEN: &str = "kraken_tracker_peers_proven_total";
/// Peers that became demoted: another host reported that they failed it.
pub(crate) const PEERS_DEMOTED: &str = "kraken_tracker_peers_demoted_total";
/// Time to answer an announce.
pub(crate) const ANNOUNCE_DURATION_SECONDS: &str = "kraken_tracker_announce_duration_seconds";
/// Peers handed out per announce.
pub(crate) const HANDOUT_PEERS: &str = "kraken_tracker_handout_peers";
/// Announces answered without origins because looking them up failed.
pub(crate) const ORIGIN_LOOKUP_FAILURES: &str = "kraken_tracker_origin_lookup_failures_total";
/// Metainfo requests. Label: `result` (ok, or the error's label).
pub(crate) const METAINFO_REQUESTS: &str = "kraken_tracker_metainfo_requests_total";
/// Lookups in the metainfo cache. Label: `result` (hit, joined, miss).
pub(crate) const METAINFO_CACHE_REQUESTS: &str = "kraken_tracker_metainfo_cache_requests_total";
/// Lookups in the origin caches. Labels: `cache` (locations, peer_context), `result` (hit,
/// joined, miss).
pub(crate) const ORIGIN_CACHE_REQUESTS: &str = "kraken_tracker_origin_cache_requests_total";
/// Peers held by the in-memory peer store.
pub(crate) const MEMORY_PEERSTORE_PEERS: &str = "kraken_tracker_memory_peerstore_peers";
/// Failed Redis commands of the Redis peer store.
pub(crate) const REDIS_ERRORS: &str = "kraken_tracker_redis_errors_total";
