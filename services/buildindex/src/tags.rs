//! The tag operations behind `TagService`: the dependency check, the write-through to the
//! storage backend, the local store and the replication records.
//!
//! A `Put` is acknowledged only after the tag is durable: in the backend first (when
//! `write_through` is on), then on local disk. A failure at any step leaves both as they were,
//! so a refused or failed `Put` never changes what `Get` answers.
//!
//! Puts of one tag run one at a time (a lock per tag, striped): the version is taken, the
//! backend written, the local store written and the replication task recorded in that order
//! with no other write of the tag in between, so the store, the backend and the task always
//! name the same version. A put older than the stored version is superseded and changes
//! nothing.
//!
//! Backend layout: the [`Backend`](kraken_backend::Backend) trait stores blobs by namespace and
//! digest, so a tag is stored in its repository's namespace under the sha256 of its full name
//! (`repo:tag`), with a JSON record naming the tag (so a listing could rebuild the index). Use
//! a backend (or root) of its own for tags: nothing but build-index should read these keys.

use std::hash::{DefaultHasher, Hash, Hasher};
use std::io::Cursor;
use std::sync::Arc;

use kraken_backend::{
    Backend, BackendError, RegistryTagBackend, TagReference, TagRoute, TagRoutes, UploadSource,
};
use kraken_config::build_index::{BuildIndexConfig, TagType};
use kraken_core::{Digest, Namespace};
use kraken_oci::TaggedName;
use kraken_originclient::{OriginClusterClient, TargetKind, check_tag_dependencies};
use serde::{Deserialize, Serialize};
use tokio::io::AsyncReadExt;

use crate::error::TagError;
use crate::metrics as m;
use crate::replication::peers::{ClusterPeers, TagWrite};
use crate::replication::queue::{Enqueued, ReplicationQueue};
use crate::replication::task::ReplicationTask;
use crate::store::{PutOutcome, TagRecord, TagStore, TagStoreError, now_ms};

/// A tag record in a backend is a few hundred bytes; anything larger is not ours.
const MAX_BACKEND_RECORD: u64 = 64 << 10;

/// The record stored in the backend.
#[derive(Debug, Serialize, Deserialize)]
struct BackendRecord {
    tag: TaggedName,
    digest: Digest,
    /// The tag's version; 0 in records written before versions.
    #[serde(default)]
    version: u64,
}

/// Everything a tag call needs.
#[derive(Debug)]
pub(crate) struct Tags {
    pub(crate) store: TagStore,
    /// Where each namespace's tags are kept (a store) or found (an upstream registry).
    pub(crate) routes: TagRoutes,
    pub(crate) origins: OriginClusterClient,
    pub(crate) config: BuildIndexConfig,
    /// One writer per tag (striped): see the module doc.
    pub(crate) writers: TagWriters,
    /// Replication tasks owed to remote clusters.
    pub(crate) queue: ReplicationQueue,
    /// The other build-index hosts of the cluster, which get a copy of every write.
    pub(crate) peers: ClusterPeers,
}

/// Locks serializing the writes of one tag; tags share a lock only by hash collision.
#[derive(Debug)]
pub(crate) struct TagWriters(Vec<tokio::sync::Mutex<()>>);

impl TagWriters {
    /// Enough stripes that unrelated tags rarely wait on each other.
    const STRIPES: usize = 256;

    pub(crate) fn new() -> Self {
        Self(
            (0..Self::STRIPES)
                .map(|_| tokio::sync::Mutex::new(()))
                .collect(),
        )
    }

    async fn lock(&self, name: &TaggedName) -> tokio::sync::MutexGuard<'_, ()> {
        let mut hasher = DefaultHasher::new();
        name.to_string().hash(&mut hasher);
        let stripe = (hasher.finish() % Self::STRIPES as u64) as usize;
        self.0[stripe].lock().await
    }
}

impl Tags {
    /// Points `name` at `digest` once every dependency is on the origins. `version` is the
    /// original push's (a replicated put); `None` assigns a new one. With `replicate`, also
    /// records a replication task per matching remote.
    pub(crate) async fn put(
        self: &Arc<Self>,
        name: &TaggedName,
        digest: Digest,
        replicate: bool,
        version: Option<u64>,
    ) -> Result<PutOutcome, TagError> {
        if let Some(upstream) = self.upstream_for(&name.repository) {
            return Err(TagError::UpstreamTag {
                tag: name.to_string(),
                upstream: upstream.address().to_owned(),
            });
        }
        // A late replicated put is answered before its dependencies are looked for: they may
        // be long gone, and the answer would not change.
        if let Some(superseded) = self.superseded(name, &digest, version) {
            return Ok(superseded);
        }
        let started = std::time::Instant::now();
        let kind = self.target_kind(name);
        let checked = check_tag_dependencies(&self.origins, kind, &name.repository, &digest)
            .await
            .map_err(TagError::from);
        metrics::histogram!(m::DEPENDENCY_CHECK_SECONDS).record(started.elapsed().as_secs_f64());
        let dependencies = checked?;
        tracing::debug!(dependencies, "every dependency is on the origins");

        let _writer = self.writers.lock(name).await;
        if let Some(superseded) = self.superseded(name, &digest, version) {
            return Ok(superseded);
        }
        let record = TagRecord {
            digest,
            replicate,
            updated_unix_ms: now_ms(),
            version: version.unwrap_or_else(|| self.store.next_version(name)),
        };
        let write_through = self.config.tag_store.write_through;
        if write_through && !self.routes.is_empty() {
            self.write_backend(name, &record).await?;
        }
        let outcome = self.store.put_versioned(name, record).await?;
        let PutOutcome::Stored(record) = &outcome else {
            // Only a restore from the backend can get in: a newer record another host wrote.
            return Ok(outcome);
        };
        if !write_through && !self.routes.is_empty() {
            // Not durable in the backend until this succeeds: without a retry queue (not
            // built yet), a failure is only logged; the local copy still serves the tag.
            let (tags, name, record) = (Arc::clone(self), name.clone(), record.clone());
            tokio::spawn(async move {
                if let Err(error) = tags.write_backend(&name, &record).await {
                    tracing::error!(tag = %name, %error, "background write of the tag to its backend failed");
                }
            });
        }
        metrics::gauge!(m::TAGS).set(self.store.len() as f64);
        if replicate {
            self.record_replication(name, record, None).await?;
        }
        self.copy_to_peers(name, record).await?;
        Ok(outcome)
    }

    /// Copies a stored write to the cluster peers before it is acknowledged; a peer that does
    /// not take it gets a durable task, retried until it does.
    async fn copy_to_peers(&self, name: &TaggedName, record: &TagRecord) -> Result<(), TagError> {
        if self.peers.is_empty() {
            return Ok(());
        }
        let missed = self.peers.copy_to_all(TagWrite { name, record }).await;
        for (peer, error) in missed {
            tracing::warn!(tag = %name, %peer, error = %kraken_core::error_chain(&error), "a build-index peer missed a tag write; queued for retry");
            let task = ReplicationTask::to_peer(
                name.clone(),
                record.digest,
                record.version,
                &peer,
                record.replicate,
                now_ms(),
            );
            self.queue.enqueue(task).await?;
        }
        Ok(())
    }

    /// Stores a write copied from a cluster peer (which checked its dependencies and wrote
    /// it to the backend): as is, unless a newer version is stored. With `replicate`, this
    /// host's own replication tasks are queued, held for `hold`.
    pub(crate) async fn duplicate_put(
        &self,
        name: &TaggedName,
        digest: Digest,
        version: u64,
        replicate: bool,
        hold: std::time::Duration,
    ) -> Result<PutOutcome, TagError> {
        // No tag lock: the peer sending this holds its own while it waits for us, and two
        // hosts taking puts of one tag would otherwise wait on each other. The store and the
        // queue each keep the newest version on their own, whatever order writes land in.
        let record = TagRecord {
            digest,
            replicate,
            updated_unix_ms: now_ms(),
            version,
        };
        let outcome = self.store.put_versioned(name, record).await?;
        if let PutOutcome::Stored(record) = &outcome {
            metrics::gauge!(m::TAGS).set(self.store.len() as f64);
            if replicate {
                self.record_replication(name, record, Some(hold)).await?;
            }
        }
        Ok(outcome)
    }

    /// What the tag points at, by its repository's `tag_types` rule: a manifest whose
    /// references are its dependencies, or any blob.
    pub(crate) fn target_kind(&self, name: &TaggedName) -> TargetKind {
        match self.config.tag_type_for(name.repository.as_str()) {
            TagType::Docker => TargetKind::Manifest,
            TagType::Default => TargetKind::Blob,
        }
    }

    /// `Superseded` when a put of `digest` at `version` would lose to the stored record.
    fn superseded(
        &self,
        name: &TaggedName,
        digest: &Digest,
        version: Option<u64>,
    ) -> Option<PutOutcome> {
        let version = version?;
        let current = self.store.get(name)?;
        let offered = TagRecord {
            digest: *digest,
            replicate: false,
            updated_unix_ms: 0,
            version,
        };
        (!offered.supersedes(&current)).then_some(PutOutcome::Superseded(current))
    }

    /// The tag's record: from the local store, else from the backend (then kept locally, so a
    /// build-index that lost its disk recovers tag by tag).
    pub(crate) async fn get(&self, name: &TaggedName) -> Result<Option<TagRecord>, TagError> {
        if let Some(upstream) = self.upstream_for(&name.repository) {
            return self.get_upstream(name, &upstream).await;
        }
        if let Some(record) = self.store.get(name) {
            metrics::counter!(m::LOOKUPS, "source" => "local").increment(1);
            return Ok(Some(record));
        }
        if self.routes.is_empty() {
            metrics::counter!(m::LOOKUPS, "source" => "none").increment(1);
            return Ok(None);
        }
        let Some(stored) = self.read_backend(name).await? else {
            metrics::counter!(m::LOOKUPS, "source" => "none").increment(1);
            return Ok(None);
        };
        metrics::counter!(m::LOOKUPS, "source" => "backend").increment(1);
        // The backend's version is kept: the record is as old as its push, not as its
        // recovery, so a replicated put of a newer push still wins over it.
        let record = TagRecord {
            digest: stored.digest,
            replicate: false,
            updated_unix_ms: now_ms(),
            version: stored.version,
        };
        // A put that raced this restore wins.
        let outcome = self.store.put_versioned(name, record).await?;
        Ok(Some(outcome.record().clone()))
    }

    /// Queues a replication task for every remote whose rules match the tag (a pending task
    /// for a newer write of the tag is kept); returns the remotes. `held`: the tasks are a
    /// cluster peer's copies, not run before that long from now.
    pub(crate) async fn record_replication(
        &self,
        name: &TaggedName,
        record: &TagRecord,
        held: Option<std::time::Duration>,
    ) -> Result<Vec<String>, TagError> {
        let full = name.to_string();
        let remotes: Vec<String> = self.config.remotes_for(&full).map(str::to_owned).collect();
        for remote in &remotes {
            let now = now_ms();
            let mut task = ReplicationTask::to_remote(
                name.clone(),
                record.digest,
                record.version,
                remote,
                now,
            );
            if let Some(hold) = held {
                task.held_for_peer = true;
                task.not_before_unix_ms =
                    now.saturating_add(u64::try_from(hold.as_millis()).unwrap_or(u64::MAX));
            }
            match self.queue.enqueue(task).await? {
                Enqueued::Stale { pending } => {
                    tracing::info!(tag = %full, remote, pending, "a task for a newer version is pending; kept");
                }
                enqueued => {
                    tracing::info!(tag = %full, remote, version = record.version, ?enqueued, "replication task queued");
                }
            }
        }
        Ok(remotes)
    }

    async fn write_backend(&self, name: &TaggedName, record: &TagRecord) -> Result<(), TagError> {
        let namespace = &name.repository;
        let backend = self.store_for(name)?;
        let body = serde_json::to_vec(&BackendRecord {
            tag: name.clone(),
            digest: record.digest,
            version: record.version,
        })
        .map_err(|error| TagStoreError::Encode(name.to_string(), error))?;
        let size = body.len() as u64;
        backend
            .upload(
                namespace,
                &backend_key(name),
                UploadSource::Reader(Box::pin(Cursor::new(body))),
                size,
            )
            .await
            .map_err(TagError::Backend)
    }

    async fn read_backend(&self, name: &TaggedName) -> Result<Option<BackendRecord>, TagError> {
        let namespace: &Namespace = &name.repository;
        let backend = self.store_for(name)?;
        let blob = match backend.download(namespace, &backend_key(name)).await {
            Ok(blob) => blob,
            Err(BackendError::NotFound { .. }) => return Ok(None),
            Err(error) => return Err(TagError::Backend(error)),
        };
        let mut body = Vec::new();
        blob.reader
            .take(MAX_BACKEND_RECORD)
            .read_to_end(&mut body)
            .await
            .map_err(|error| {
                TagError::Backend(BackendError::from_io(
                    backend.kind(),
                    format!("read tag {name}"),
                    error,
                ))
            })?;
        let record: BackendRecord = serde_json::from_slice(&body)
            .map_err(|error| TagError::CorruptBackendRecord(format!("{name}: {error}")))?;
        if record.tag != *name {
            return Err(TagError::CorruptBackendRecord(format!(
                "the record under {name}'s key names {}",
                record.tag
            )));
        }
        Ok(Some(record))
    }
}

impl Tags {
    /// The upstream registry whose tags `namespace` mirrors, if its rule is `registry_tag`.
    fn upstream_for(&self, namespace: &Namespace) -> Option<std::sync::Arc<RegistryTagBackend>> {
        match self.routes.route_for(namespace) {
            Ok(TagRoute::Upstream(upstream)) => Some(Arc::clone(upstream)),
            _ => None,
        }
    }

    /// The store `name`'s tag is written to and recovered from.
    fn store_for(&self, name: &TaggedName) -> Result<&Arc<dyn Backend>, TagError> {
        match self.routes.route_for(&name.repository)? {
            TagRoute::Store(backend) => Ok(backend),
            TagRoute::Upstream(upstream) => Err(TagError::UpstreamTag {
                tag: name.to_string(),
                upstream: upstream.address().to_owned(),
            }),
        }
    }

    /// A pull-through tag: the local answer while fresh, else the upstream's (kept locally);
    /// the last answer while the upstream is down, up to `max_stale`. One lookup per tag asks
    /// the upstream at a time; the others wait and take its answer.
    async fn get_upstream(
        &self,
        name: &TaggedName,
        upstream: &RegistryTagBackend,
    ) -> Result<Option<TagRecord>, TagError> {
        let (ttl, max_stale) = (
            self.config.tag_store.tag_ttl,
            self.config.tag_store.max_stale,
        );
        let fresh = |record: &Option<TagRecord>| {
            record.as_ref().is_some_and(|r| {
                freshness(r.updated_unix_ms, now_ms(), ttl, max_stale) == Freshness::Fresh
            })
        };
        let local = self.store.get(name);
        if fresh(&local) {
            metrics::counter!(m::LOOKUPS, "source" => "local").increment(1);
            return Ok(local);
        }
        let _writer = self.writers.lock(name).await;
        // Another lookup may have asked the upstream while this one waited.
        let local = self.store.get(name);
        if fresh(&local) {
            metrics::counter!(m::LOOKUPS, "source" => "local").increment(1);
            return Ok(local);
        }
        let reference = TagReference {
            repository: name.repository.clone(),
            tag: name.tag.to_string(),
        };
        match upstream.resolve(&reference).await {
            Ok(Some(digest)) => {
                metrics::counter!(m::LOOKUPS, "source" => "upstream").increment(1);
                let version = match &local {
                    Some(record) if record.digest == digest => record.version,
                    _ => self.store.next_version(name),
                };
                if local.as_ref().is_some_and(|r| r.digest != digest) {
                    tracing::info!(tag = %name, %digest, "the upstream re-pointed the tag");
                }
                let record = TagRecord {
                    digest,
                    replicate: false,
                    updated_unix_ms: now_ms(),
                    version,
                };
                let outcome = self.store.put_versioned(name, record).await?;
                metrics::gauge!(m::TAGS).set(self.store.len() as f64);
                Ok(Some(outcome.record().clone()))
            }
            Ok(None) => {
                // The upstream is the authority: a tag it no longer has is gone here too.
                metrics::counter!(m::LOOKUPS, "source" => "none").increment(1);
                Ok(None)
            }
            Err(error) => match local {
                Some(record)
                    if freshness(record.updated_unix_ms, now_ms(), ttl, max_stale)
                        == Freshness::Stale =>
                {
                    metrics::counter!(m::LOOKUPS, "source" => "stale").increment(1);
                    tracing::warn!(
                        tag = %name,
                        error = %kraken_core::error_chain(&error),
                        age_ms = now_ms().saturating_sub(record.updated_unix_ms),
                        "the upstream registry cannot be reached: serving its last answer"
                    );
                    Ok(Some(record))
                }
                _ => Err(TagError::Backend(error)),
            },
        }
    }
}

/// How usable a pull-through tag's last upstream answer is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Freshness {
    /// Younger than `tag_ttl`: served without asking the upstream.
    Fresh,
    /// Older, but within `max_stale`: the upstream is asked, and this is served if it is down.
    Stale,
    /// Too old to serve even while the upstream is down.
    Expired,
}

/// The freshness of an answer the upstream gave at `updated_ms`, at `now_ms`.
fn freshness(
    updated_ms: u64,
    now_ms: u64,
    ttl: std::time::Duration,
    max_stale: std::time::Duration,
) -> Freshness {
    let age = std::time::Duration::from_millis(now_ms.saturating_sub(updated_ms));
    if age < ttl {
        Freshness::Fresh
    } else if age <= max_stale {
        Freshness::Stale
    } else {
        Freshness::Expired
    }
}

/// Where a tag lives in its repository's backend namespace.
fn backend_key(name: &TaggedName) -> Digest {
    Digest::of(name.to_string().as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn an_upstream_answer_is_fresh_then_stale_then_expired() {
        let (ttl, max_stale) = (Duration::from_secs(60), Duration::from_secs(3_600));
        let at = 1_000_000;
        assert_eq!(freshness(at, at, ttl, max_stale), Freshness::Fresh);
        assert_eq!(freshness(at, at + 59_999, ttl, max_stale), Freshness::Fresh);
        assert_eq!(freshness(at, at + 60_000, ttl, max_stale), Freshness::Stale);
        assert_eq!(
            freshness(at, at + 3_600_000, ttl, max_stale),
            Freshness::Stale
        );
        assert_eq!(
            freshness(at, at + 3_600_001, ttl, max_stale),
            Freshness::Expired
        );
        // A clock that stepped back does not make an answer older.
        assert_eq!(freshness(at, at - 5_000, ttl, max_stale), Freshness::Fresh);
        // `tag_ttl: 0s` asks every time; `max_stale: 0s` never serves a stale answer.
        assert_eq!(
            freshness(at, at, Duration::ZERO, max_stale),
            Freshness::Stale
        );
        assert_eq!(
            freshness(at, at + 1, Duration::ZERO, Duration::ZERO),
            Freshness::Expired
        );
    }
}
