//! `scheduler:` — the peer-to-peer download scheduler of agents and origins. Key names and
//! defaults are Kraken's (`lib/torrent/scheduler`).

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::validate::{Validate, ValidationError, ensure, nested, positive_duration};

/// Timeouts, connection limits, bandwidth caps and piece dispatch of the P2P scheduler.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SchedulerConfig {
    /// How long a completed blob stays open for seeding without being requested by any peer
    /// before it is closed. It stays on disk and reopens on the next request.
    #[serde(with = "humantime_serde")]
    pub seeder_tti: Duration,
    /// How long an incomplete download may go without receiving a piece before it is abandoned.
    #[serde(with = "humantime_serde")]
    pub leecher_tti: Duration,
    /// Idle time after which a peer connection with nothing to exchange is closed.
    #[serde(with = "humantime_serde")]
    pub conn_tti: Duration,
    /// Maximum age of a peer connection; older ones are closed so the peer graph keeps mixing.
    #[serde(with = "humantime_serde")]
    pub conn_ttl: Duration,
    /// The first interval between announces to the tracker for a blob being downloaded; the
    /// tracker may ask for a different one in its reply.
    #[serde(with = "humantime_serde")]
    pub announce_interval: Duration,
    /// Per-connection settings.
    pub conn: ConnConfig,
    /// Connection limits and blacklisting.
    pub connstate: ConnStateConfig,
    /// Piece selection and request pipelining.
    pub dispatch: DispatchConfig,
    /// How requests peers make of us are served.
    pub upload: UploadConfig,
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        Self {
            seeder_tti: Duration::from_secs(5 * 60),
            leecher_tti: Duration::from_secs(5 * 60),
            conn_tti: Duration::from_secs(30),
            conn_ttl: Duration::from_secs(3600),
            announce_interval: Duration::from_secs(5),
            conn: ConnConfig::default(),
            connstate: ConnStateConfig::default(),
            dispatch: DispatchConfig::default(),
            upload: UploadConfig::default(),
        }
    }
}

impl Validate for SchedulerConfig {
    fn validate(&self) -> Result<(), ValidationError> {
        positive_duration("seeder_tti", self.seeder_tti)?;
        positive_duration("leecher_tti", self.leecher_tti)?;
        positive_duration("conn_tti", self.conn_tti)?;
        positive_duration("conn_ttl", self.conn_ttl)?;
        positive_duration("announce_interval", self.announce_interval)?;
        nested("conn.bandwidth", &self.conn.bandwidth)?;
        nested("connstate", &self.connstate)?;
        nested("dispatch", &self.dispatch)?;
        nested("upload", &self.upload)
    }
}

/// `scheduler.conn:` — per-connection settings.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ConnConfig {
    /// Bandwidth caps shared by all peer connections of the process.
    pub bandwidth: BandwidthConfig,
}

/// `scheduler.conn.bandwidth:` — caps on P2P traffic so a host's link is not saturated.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BandwidthConfig {
    /// Whether the caps apply. Off by default, as in Kraken.
    pub enable: bool,
    /// Upload cap in bits per second: an integer (`1677721600`) or with a unit (`1.6Gbit`).
    #[serde(with = "crate::units::bits_per_sec")]
    pub egress_bits_per_sec: u64,
    /// Download cap in bits per second: an integer (`2516582400`) or with a unit (`2.4Gbit`).
    #[serde(with = "crate::units::bits_per_sec")]
    pub ingress_bits_per_sec: u64,
}

impl Default for BandwidthConfig {
    fn default() -> Self {
        // Kraken's defaults: 200 MiB/s up and 300 MiB/s down, in bits.
        Self {
            enable: false,
            egress_bits_per_sec: 1_677_721_600,
            ingress_bits_per_sec: 2_516_582_400,
        }
    }
}

impl Validate for BandwidthConfig {
    fn validate(&self) -> Result<(), ValidationError> {
        if self.enable {
            ensure(
                self.egress_bits_per_sec > 0,
                "egress_bits_per_sec",
                "must be above 0 when enabled",
            )?;
            ensure(
                self.ingress_bits_per_sec > 0,
                "ingress_bits_per_sec",
                "must be above 0 when enabled",
            )?;
        }
        Ok(())
    }
}

/// `scheduler.connstate:` — how many peers a blob is exchanged with.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ConnStateConfig {
    /// Maximum open connections per blob.
    pub max_open_conn: usize,
    /// Maximum number of a new peer's neighbours that may already be ours before we decline the
    /// connection; keeps the peer graph from collapsing into cliques.
    pub max_mutual_conn: usize,
    /// How long a peer that failed a handshake, closed on us or sent a bad piece is avoided for
    /// that blob.
    #[serde(with = "humantime_serde")]
    pub blacklist_duration: Duration,
}

impl Default for ConnStateConfig {
    fn default() -> Self {
        Self {
            max_open_conn: 10,
            max_mutual_conn: 5,
            blacklist_duration: Duration::from_secs(30),
        }
    }
}

impl Validate for ConnStateConfig {
    fn validate(&self) -> Result<(), ValidationError> {
        ensure(
            self.max_open_conn >= 1,
            "max_open_conn",
            "must be at least 1",
        )
    }
}

/// `scheduler.dispatch:` — which pieces are requested from whom, and how many at once.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DispatchConfig {
    /// `rarest_first` (the pieces fewest neighbours have, with a random start) or `random`.
    pub piece_policy: PiecePolicy,
    /// Outstanding piece requests per agent peer.
    pub pipeline_limit: usize,
    /// Outstanding piece requests per origin (origins are provisioned to serve more).
    pub origin_pipeline_limit: usize,
    /// Lower bound of a piece request's timeout.
    #[serde(with = "humantime_serde")]
    pub piece_request_min_timeout: Duration,
    /// Timeout per MiB of piece length; the request timeout is the larger of this scaled and
    /// `piece_request_min_timeout`.
    #[serde(with = "humantime_serde")]
    pub piece_request_timeout_per_mb: Duration,
    /// How long a request may wait in the uploader's queue before its piece starts arriving;
    /// the timeouts above apply from the first byte. Not a Kraken key: Kraken timed queueing
    /// and transfer together, so busy uploaders caused re-requests and duplicate traffic.
    #[serde(with = "humantime_serde")]
    pub piece_request_queue_timeout: Duration,
    /// Endgame starts when this many pieces or fewer are missing: they may then be requested
    /// from several peers at once, so one slow peer does not hold up the tail.
    pub endgame_threshold: usize,
    /// Never send duplicate requests, even at the tail.
    pub disable_endgame: bool,
}

impl Default for DispatchConfig {
    fn default() -> Self {
        Self {
            piece_policy: PiecePolicy::RarestFirst,
            pipeline_limit: 3,
            origin_pipeline_limit: 5,
            piece_request_min_timeout: Duration::from_secs(4),
            piece_request_timeout_per_mb: Duration::from_secs(4),
            piece_request_queue_timeout: Duration::from_secs(30),
            // Kraken starts endgame when the missing pieces fit in one pipeline; with the many
            // small pieces our piece-length policy produces, a wider tail pays off (measured on
            // the swarm simulation in services/scheduler/tests).
            endgame_threshold: 16,
            disable_endgame: false,
        }
    }
}

impl Validate for DispatchConfig {
    fn validate(&self) -> Result<(), ValidationError> {
        ensure(
            self.pipeline_limit >= 1,
            "pipeline_limit",
            "must be at least 1",
        )?;
        ensure(
            self.origin_pipeline_limit >= 1,
            "origin_pipeline_limit",
            "must be at least 1",
        )?;
        positive_duration("piece_request_min_timeout", self.piece_request_min_timeout)
    }
}

/// Order in which missing pieces are requested.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PiecePolicy {
    /// Rarest among the connected peers first, ties broken at random.
    #[default]
    RarestFirst,
    /// Uniformly random. Kraken calls this policy `default`, accepted as an alias.
    #[serde(alias = "default")]
    Random,
}

/// `scheduler.upload:` — serving the pieces peers request from us. Not a Kraken key: Kraken
/// served every request at once; we serve a few at a time so each piece arrives at full link
/// speed and can be re-shared sooner.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct UploadConfig {
    /// Pieces sent concurrently, across all peers and blobs. Absent: 8 on agents, 16 on origins
    /// (an origin's flows are each slowed by their receivers' other downloads, so it needs more
    /// of them to fill its uplink).
    pub slots: Option<usize>,
    /// Requests one peer may have queued with us; more are refused.
    pub max_queued_per_peer: usize,
    /// Reveal to each peer only a few pieces that never left us yet (super-seeding), so the
    /// uplink carries each piece about once. Absent: on for origins, off for agents.
    pub super_seed: Option<bool>,
    /// Pieces revealed to each peer at a time while super-seeding.
    pub super_seed_window: usize,
}

impl Default for UploadConfig {
    fn default() -> Self {
        Self {
            slots: None,
            max_queued_per_peer: 64,
            super_seed: None,
            super_seed_window: 1,
        }
    }
}

impl Validate for UploadConfig {
    fn validate(&self) -> Result<(), ValidationError> {
        ensure(self.slots != Some(0), "slots", "must be at least 1")?;
        ensure(
            self.max_queued_per_peer >= 1,
            "max_queued_per_peer",
            "must be at least 1",
        )?;
        ensure(
            self.super_seed_window >= 1,
            "super_seed_window",
            "must be at least 1",
        )
    }
}
