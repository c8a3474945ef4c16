//! Metric names, `kraken_p2p_<what>_<unit>`: the peer-to-peer swarm as the scheduler drives it.

/// Open torrents (blobs being downloaded or seeded).
pub(crate) const TORRENTS: &str = "kraken_p2p_torrents";
/// Open QUIC connections to peers.
pub(crate) const CONNECTIONS: &str = "kraken_p2p_connections";
/// Open links (one peer in one torrent's swarm).
pub(crate) const LINKS: &str = "kraken_p2p_links";
/// Incoming links refused because a connection limit was reached.
pub(crate) const REFUSED_LINKS: &str = "kraken_p2p_refused_links_total";
/// Links closed for time: idle for `conn_tti`, or older than `conn_ttl`.
pub(crate) const EXPIRED_LINKS: &str = "kraken_p2p_expired_links_total";
/// Dials to a peer that failed.
pub(crate) const DIAL_FAILURES: &str = "kraken_p2p_dial_failures_total";
/// Pieces received and verified.
pub(crate) const PIECES_RECEIVED: &str = "kraken_p2p_pieces_received_total";
/// Payload bytes read from peers.
pub(crate) const RECEIVED_BYTES: &str = "kraken_p2p_received_bytes_total";
/// Pieces a peer sent that failed their hash or length check.
pub(crate) const BAD_PIECES: &str = "kraken_p2p_bad_pieces_total";
/// Peers blacklisted for misbehaving.
pub(crate) const BLACKLISTED_PEERS: &str = "kraken_p2p_blacklisted_peers_total";
/// Downloads that completed.
pub(crate) const DOWNLOADS_COMPLETED: &str = "kraken_p2p_downloads_completed_total";
/// Downloads that failed.
pub(crate) const DOWNLOADS_FAILED: &str = "kraken_p2p_downloads_failed_total";
/// Pieces sent to peers.
pub(crate) const PIECES_SENT: &str = "kraken_p2p_pieces_sent_total";
/// Payload bytes sent to peers.
pub(crate) const SENT_BYTES: &str = "kraken_p2p_sent_bytes_total";
/// Pieces a peer asked for that could not be sent.
pub(crate) const UPLOAD_FAILURES: &str = "kraken_p2p_upload_failures_total";

// Added from a swarm's counters when its download finishes.
/// Piece requests sent.
pub(crate) const REQUESTS: &str = "kraken_p2p_requests_total";
/// Pieces received more than once.
pub(crate) const DUPLICATE_PIECES: &str = "kraken_p2p_duplicate_pieces_total";
/// Piece requests that timed out.
pub(crate) const REQUEST_TIMEOUTS: &str = "kraken_p2p_request_timeouts_total";
/// Piece requests that timed out in a peer's queue.
pub(crate) const REQUEST_QUEUE_TIMEOUTS: &str = "kraken_p2p_request_queue_timeouts_total";
/// Pieces received from origins.
pub(crate) const PIECES_FROM_ORIGINS: &str = "kraken_p2p_pieces_from_origins_total";
/// Bytes of finished downloads by where they came from. Label `source`: `origin` (a seeder
/// of the origin cluster) or `peer` (another agent). A healthy swarm pulls most of a popular
/// blob from peers; `origin` near the total on every host means P2P is not working.
pub(crate) const DOWNLOADED_BYTES: &str = "kraken_p2p_downloaded_bytes_total";
