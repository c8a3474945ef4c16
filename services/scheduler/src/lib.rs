//! The P2P scheduler: decides which piece to ask which peer for, in what order uploads are
//! served, and which connections to keep.
//!
//! [`core`] is a set of pure state machines in the style of `quinn-proto`: they take events
//! (a peer connected, a piece arrived, time passed) and emit actions (request, cancel, announce,
//! blacklist). They never touch a socket, a file or the clock, so a test can drive a swarm of
//! hundreds of simulated peers deterministically in milliseconds. The core must never trust a
//! peer: every index a peer sends is range-checked, and a peer that lies is reported for
//! blacklisting rather than believed.
//!
//! [`driver`] runs them over the QUIC transport and the blob store: [`Scheduler::bind`] is how an
//! agent or origin becomes a swarm member.

pub mod core;
pub mod driver;
mod metrics;

pub use driver::{
    AnnounceError, AnnounceReply, Announcer, BindError, BlobState, Download, DownloadError,
    DownloadReport, DriverConfig, Faults, PeerReports, RECENT_DOWNLOADS, RevealPolicy, Scheduler,
    SchedulerError, SchedulerStats, Status, SwarmMember, TorrentState,
};
