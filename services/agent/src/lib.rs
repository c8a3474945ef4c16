//! The agent that runs on every host. It fetches blobs for the local container runtime and
//! tooling: from its own blob store when it holds them, otherwise through the P2P swarm (other
//! agents and the origins, found through the tracker), streaming the bytes as verified pieces
//! arrive instead of waiting for the whole blob. It serves `kraken.agent.v1.AgentService` over
//! gRPC with mutual TLS (GetBlob, Preload, Stat, Evict) and seeds what it holds to its peers.
//!
//! The agent must never hand out a byte that failed verification, and never end a blob stream
//! successfully before the whole blob matched its digest: every piece it streams was checked
//! against its metainfo hash by the store, and the last chunk of every stream is held back until
//! the store has verified the blob's sha256 — so a reader that got every byte it asked for got
//! the right ones, and a failed check ends the stream with an error, short of its length.
//!
//! Start one with [`Agent::start`]; [`Agent::fetch`] is the same blob fetch `GetBlob` uses,
//! for the registry HTTP surface.

mod agent;
mod error;
mod fetch;
mod metrics;
mod registry;
mod service;
mod tracker;

pub use agent::Agent;
pub use error::AgentError;
pub use fetch::{BlobSource, BlobStream, STREAM_CHUNK};
pub use tracker::{
    DEFAULT_RETRY, HostStatus, RetryPolicy, TrackerClient, TrackerClientOptions, TrackerError,
};
