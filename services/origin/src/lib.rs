//! The origin: a cluster's dedicated, durable seeder. It accepts blob uploads over gRPC
//! (`kraken.origin.v1.BlobService`, one-shot or resumable), verifies each against its digest
//! while staging it in the local content-addressed store, writes it to the storage backend its
//! namespace routes to, fetches blobs that only the backend holds, and seeds every blob it
//! holds to agents over the QUIC peer protocol (it never announces: trackers learn about
//! origins from the hash ring). [`Origin`] starts and stops all of it; [`OriginClient`] is how
//! other components talk to one.
//!
//! The origin must never serve or seed a blob that has not been verified against its digest:
//! uploads, replica copies and backend fetches all go through the store's hashing commit, and
//! a backend copy that does not match its name is reported as corrupt and not stored. It must
//! never lose an acknowledged upload: `Upload` answers only after the verified blob is fsynced
//! and renamed into the store, pinned there until the backend holds it, and a failed
//! write-back leaves it pinned rather than evictable. It must never block a gRPC call on a
//! backend download of unknown size: backend-only blobs are fetched in the background while
//! callers are told to retry (`UNAVAILABLE` + `retry-after-ms`).

pub mod backend;
mod client;
mod error;
mod fetch;
mod metrics;
mod server;
mod service;
mod staging;
mod writeback;

pub use backend::{Backend, BackendError, Backends, FsBackend};
pub use client::{BlobStat, ByteStream, ClientError, Location, OriginClient, Uploaded};
pub use error::{OriginError, RETRY_AFTER_MS, UPLOAD_OFFSET};
pub use server::Origin;
pub use service::CHUNK_SIZE;
