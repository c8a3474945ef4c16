//! The proxy: the push side of a Kraken cluster. It serves the Docker Registry v2 / OCI
//! distribution API — blob uploads (monolithic, chunked with `Content-Range`, or streamed),
//! cross-repository mounts, manifests of every media type with reference checks, pulls by tag
//! or digest, tag lists and the catalog — and `kraken.proxy.v1.ProxyService` to warm the
//! origins for an image before a rollout. [`Proxy`] starts and stops both.
//!
//! Uploads are staged on local disk and hashed as they arrive; a committed blob is verified
//! against its digest and streamed to its owning origins (which verify it again) in bounded
//! chunks, so a blob of any size passes in constant memory. Manifests are stored as blobs in
//! the repository's namespace, tags in build-index.
//!
//! The proxy must never acknowledge a blob the origins do not hold, never store a manifest
//! whose blobs are not on the origins, never let a refused request change what is stored, and
//! never hold a whole blob in memory (manifests, at most 4 MiB, are the only bodies read
//! whole).

mod auth;
mod error;
mod metrics;
mod prefetch;
mod registry;
mod server;
mod staging;

pub use auth::AuthSetupError;
pub use error::{ProxyError, StagingErrorSource};
pub use server::Proxy;
