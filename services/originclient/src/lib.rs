//! The one client of the origins' `kraken.origin.v1.BlobService`, for every caller: the
//! proxy and the build-index (uploads, downloads, reference checks, prefetch), the tracker
//! (owners and metainfo), origins themselves (replica copies), the CLI and tests.
//!
//! - [`OriginClient`] talks to one origin: one-shot uploads from a reader or a stream,
//!   ranged downloads, stat, metainfo (with retry-while-fetching), locations, duplicate.
//! - [`upload_resumable`] sends a blob to one origin in a resumable upload that survives cut
//!   connections ([`UploadCursor`]), optionally paced: replication to other clusters.
//! - [`OriginClusterClient`] talks to the ring: owners from the origins' own `Locations`,
//!   failover between them, passive health checks, waiting while an owner fetches a blob from
//!   its backend, small verified fetches, prefetches.
//! - [`check_manifest_references`] and [`check_tag_dependencies`] walk a manifest (an index's
//!   children and their layers too) and check that the origins hold every blob it needs;
//!   [`tag_dependencies`] lists them in the order another cluster must receive them.
//!
//! Errors: [`ClientError`] is how a call to one origin failed (an answer, a retry hint, or a
//! network error); [`OriginsError`] is what a cluster-level call concluded (missing,
//! unavailable, too large, corrupt); [`ReferenceError`] why a manifest or tag is refused.
//!
//! This crate must never link an origin's server code or a storage backend: it speaks gRPC
//! only, so every component can hold it without compiling the S3, GCS or HTTP clients. It
//! never buffers a blob whole (only manifests, up to a caller-given cap) and never trusts
//! fetched bytes it has not hashed.

mod client;
mod cluster;
mod references;
mod resumable;

pub use client::{BlobStat, ByteStream, ClientError, Location, OriginClient, Replicated, Uploaded};
pub use cluster::{OriginClusterClient, OriginsError};
pub use kraken_proto::wire::{CHUNK_SIZE, RETRY_AFTER_MS, UPLOAD_OFFSET};
pub use references::{
    Dependency, MAX_DEPENDENCIES, ReferenceError, TargetKind, check_manifest_references,
    check_tag_dependencies, tag_dependencies,
};
pub use resumable::{MAX_RESUMES, ResumedUpload, UploadCursor, resume_offset, upload_resumable};
