//! The origin: a cluster's dedicated, durable seeder. It accepts blob uploads over gRPC
//! (`kraken.origin.v1.BlobService`, one-shot or resumable), verifies each against its digest
//! while staging it in the local content-addressed store, writes it to the storage backend its
//! namespace routes to, fetches blobs that only the backend has, and seeds every blob it holds
//! to agents over the QUIC peer protocol (it never announces: trackers learn about origins
//! from the hash ring). [`Origin`] starts and stops all of it. Other components reach it through
//! `kraken-originclient`; the storage backends are `kraken-backend`.
//!
//! Origins form a self-healing cluster: a rendezvous ring (static hosts or DNS, with weights)
//! whose members probe each other with gRPC health checks; `Locations` names a digest's
//! `max_replica` owners with their health. A blob committed on one owner, uploaded or fetched
//! from the backend, is copied to the other healthy owners (`Duplicate`, see `replicate.rs`
//! for the rule that keeps the write-back to one per blob), and an owner that lost its disk
//! fetches blobs back from the backend on demand.
//!
//! Between clusters, each with its own CA: `ReplicateToRemote` sends a blob to a remote
//! cluster named under `remotes:` (see `remote.rs`), resumably and under a per-remote egress
//! cap, and origins of the clusters under `trusted_remotes:` may upload here, and nothing else.
//!
//! The origin must never serve or seed a blob that has not been verified against its digest:
//! uploads, replica copies and backend fetches all go through the store's hashing commit, and
//! a backend copy that does not match its name is reported as corrupt and not stored. It must
//! never lose an acknowledged upload: `Upload` answers only after the verified blob is fsynced
//! and renamed into the store, pinned there, and its write-back task is fsynced in the durable
//! queue, which retries with backoff across restarts until the backend holds the blob; only
//! then is the blob unpinned and evictable. It must never block a gRPC call on a backend
//! download of unknown size or on the backend being up: backend-only blobs are fetched in the
//! background while callers are told to retry (`UNAVAILABLE` + `retry-after-ms`), and
//! write-backs run off the request path.

mod error;
mod fetch;
mod metrics;
mod remote;
mod replicate;
mod server;
mod service;
mod staging;
mod writeback;

pub use error::OriginError;
pub use server::Origin;
