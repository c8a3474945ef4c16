//! The content-addressed, on-disk blob store of origins (uploads pushed to them, blobs they fetch
//! from storage, seed to peers and write back) and agents (blobs downloaded piece by piece from
//! peers); the scheduler reads and writes pieces through it on both. The proxy does not use it: it
//! stages pushed blobs in a directory of its own and streams them to the origins. A blob is named
//! by its sha256 digest; it reaches the cache only through an atomic `rename` of a staging
//! directory after its whole content has been hashed and compared with that digest, so a crash at
//! any point leaves either the complete blob or nothing.
//!
//! This crate must never expose a partial or unverified blob under its digest (a reader gets the
//! verified bytes or `NotFound`, nothing in between), never store a piece that fails its metainfo
//! hash, and never evict or clean up a pinned blob (one marked `persist`: not yet written back to
//! storage, so this copy may be the only one). It must never block the async runtime: hashing and
//! file I/O run on blocking threads.
//!
//! On-disk layout under [`StoreConfig::dir`](kraken_config::store::StoreConfig):
//!
//! ```text
//! cache/<hex[0:2]>/<hex[2:4]>/<hex>/data    committed blob content
//! cache/<hex[0:2]>/<hex[2:4]>/<hex>/meta    JSON: digest, size, persist flag, last access, metainfo
//! uploads/<upload-id>/data                  an upload being written (origin)
//! downloads/<hex>/{data,meta,pieces}        a sparse download being filled by peers (agent)
//! tmp/                                      metadata rewrites and entries on their way out
//! ```
//!
//! Everything but `cache/` is discarded when the store is opened again.

mod download;
mod error;
mod index;
mod layout;
mod locks;
mod meta;
mod metrics;
mod reader;
mod recovery;
mod store;
mod upload;

// The clock is a foundation type; re-exported because a store is built with one.
pub use download::{DownloadHandle, DownloadState};
pub use error::StoreError;
pub use kraken_core::clock::{Clock, ManualClock, SystemClock};
pub use layout::{UploadId, UploadIdError};
pub use reader::BlobReader;
pub use store::{BlobInfo, BlobStore, CleanupReport, CommitOptions, CommitOutcome};
