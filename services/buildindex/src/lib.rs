//! Build-index: the cluster's tag service (`kraken.buildindex.v1.TagService`), mapping
//! `repository:tag` to the digest of a manifest (or, for `default` tag types, of any blob).
//! A tag is accepted only when the origins hold everything it depends on — the manifest, its
//! config and layers, and for a manifest list or index every child manifest and *their*
//! layers — so a pull that resolves a tag never meets a missing blob. Tags live on local disk
//! (atomic writes, loaded into memory at start) and are written through to a storage backend
//! before a write is acknowledged; a re-pointed tag is visible to the next read at once.
//! [`BuildIndex`] starts and stops the server. Other components call it through
//! `kraken-tagclient`; it reaches the origins through `kraken-originclient`.
//!
//! Build-index must never acknowledge a tag that is not durable, never accept one whose
//! dependencies it could not see on the origins, and never let a refused or failed write
//! change what reads return, nor move a tag back to an older version (every tag carries the
//! version of its original push; an older put is superseded). Replication to remote clusters
//! is queued durably (one task file per tag and remote, the newest version kept, listed by
//! `ReplicationService/ListTasks`) and retried until the remote holds the tag and every blob
//! under it, sent by our origins over mTLS to the remote's own CA. Every write is copied to
//! the other build-index hosts of the cluster (`cluster:`) before it is acknowledged, with
//! their own held copies of its replication tasks, so one host dying loses neither the tag
//! nor its replication. Remote clusters listed under
//! `trusted_remotes` may `Has` and `Put` the tags their rules allow and ask for our origins
//! (`ReplicationService/ListOrigins`), nothing else.

mod error;
mod metrics;
mod replication;
mod server;
mod service;
mod store;
mod tags;

pub use error::{BuildIndexError, TagError};
pub use replication::queue::QueueError;
pub use server::{BuildIndex, backends_from_config};
pub use store::{PutOutcome, TagRecord, TagStore, TagStoreError};
