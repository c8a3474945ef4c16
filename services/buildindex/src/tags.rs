//! The tag operations behind `TagService`: the dependency check, the write-through to the
//! storage backend, the local store and the replication records.
//!
//! A `Put` is acknowledged only after the tag is durable: in the backend first (when
//! `write_through` is on), then on local disk. A failure at any step leaves both as they were,
//! so a refused or failed `Put` never changes what `Get` answers.
//!
//! Backend layout: the [`Backend`](kraken_backend::Backend) trait stores blobs by namespace and
//! digest, so a tag is stored in its repository's namespace under the sha256 of its full name
//! (`repo:tag`), with a JSON record naming the tag (so a listing could rebuild the index). Use
//! a backend (or root) of its own for tags: nothing but build-index should read these keys.

use std::io::Cursor;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use kraken_backend::{BackendError, Backends, UploadSource};
use kraken_config::build_index::{BuildIndexConfig, TagType};
use kraken_core::{Digest, Namespace};
use kraken_oci::TaggedName;
use kraken_originclient::{OriginClusterClient, TargetKind, check_tag_dependencies};
use serde::{Deserialize, Serialize};
use tokio::io::AsyncReadExt;

use crate::error::TagError;
use crate::metrics as m;
use crate::store::{TagRecord, TagStore, TagStoreError, write_atomically};

/// A tag record in a backend is a few hundred bytes; anything larger is not ours.
const MAX_BACKEND_RECORD: u64 = 64 << 10;

/// The record stored in the backend.
#[derive(Debug, Serialize, Deserialize)]
struct BackendRecord {
    tag: TaggedName,
    digest: Digest,
}

/// Everything a tag call needs.
#[derive(Debug)]
pub(crate) struct Tags {
    pub(crate) store: TagStore,
    pub(crate) backends: Backends,
    pub(crate) origins: OriginClusterClient,
    pub(crate) config: BuildIndexConfig,
}

impl Tags {
    /// Points `name` at `digest` once every dependency is on the origins. With `replicate`,
    /// also records a replication task per matching remote.
    pub(crate) async fn put(
        self: &Arc<Self>,
        name: &TaggedName,
        digest: Digest,
        replicate: bool,
    ) -> Result<(), TagError> {
        let started = std::time::Instant::now();
        let kind = match self.config.tag_type_for(name.repository.as_str()) {
            TagType::Docker => TargetKind::Manifest,
            TagType::Default => TargetKind::Blob,
        };
        let checked = check_tag_dependencies(&self.origins, kind, &name.repository, &digest)
            .await
            .map_err(TagError::from);
        metrics::histogram!(m::DEPENDENCY_CHECK_SECONDS).record(started.elapsed().as_secs_f64());
        let dependencies = checked?;
        tracing::debug!(dependencies, "every dependency is on the origins");
        let record = TagRecord {
            digest,
            replicate,
            updated_unix_ms: now_ms(),
        };
        let write_through = self.config.tag_store.write_through;
        if write_through && !self.backends.is_empty() {
            self.write_backend(name, &digest).await?;
        }
        self.store.put(name, record).await?;
        if !write_through && !self.backends.is_empty() {
            // Not durable in the backend until this succeeds: without a retry queue (not
            // built yet), a failure is only logged; the local copy still serves the tag.
            let (tags, name) = (Arc::clone(self), name.clone());
            tokio::spawn(async move {
                if let Err(error) = tags.write_backend(&name, &digest).await {
                    tracing::error!(tag = %name, %error, "background write of the tag to its backend failed");
                }
            });
        }
        metrics::gauge!(m::TAGS).set(self.store.len() as f64);
        if replicate {
            self.record_replication(name, &digest).await?;
        }
        Ok(())
    }

    /// The tag's record: from the local store, else from the backend (then kept locally, so a
    /// build-index that lost its disk recovers tag by tag).
    pub(crate) async fn get(&self, name: &TaggedName) -> Result<Option<TagRecord>, TagError> {
        if let Some(record) = self.store.get(name) {
            metrics::counter!(m::LOOKUPS, "source" => "local").increment(1);
            return Ok(Some(record));
        }
        if self.backends.is_empty() {
            metrics::counter!(m::LOOKUPS, "source" => "none").increment(1);
            return Ok(None);
        }
        let Some(digest) = self.read_backend(name).await? else {
            metrics::counter!(m::LOOKUPS, "source" => "none").increment(1);
            return Ok(None);
        };
        metrics::counter!(m::LOOKUPS, "source" => "backend").increment(1);
        let record = TagRecord {
            digest,
            replicate: false,
            updated_unix_ms: now_ms(),
        };
        self.store.put(name, record.clone()).await?;
        Ok(Some(record))
    }

    /// Writes a replication task for every remote whose rules match the tag; returns them.
    /// Executing the tasks (copying blobs and the tag to the remote cluster) is not built yet:
    /// the records wait on disk for it.
    pub(crate) async fn record_replication(
        &self,
        name: &TaggedName,
        digest: &Digest,
    ) -> Result<Vec<String>, TagError> {
        let full = name.to_string();
        let remotes: Vec<String> = self.config.remotes_for(&full).map(str::to_owned).collect();
        for remote in &remotes {
            let task = serde_json::json!({
                "tag": full,
                "digest": digest.to_string(),
                "remote": remote,
                "created_unix_ms": now_ms(),
            });
            let body = serde_json::to_vec(&task)
                .map_err(|error| TagStoreError::Encode(full.clone(), error))?;
            let file = Digest::of(format!("{full}\n{remote}").as_bytes()).hex();
            let dir: PathBuf = self.config.replication.dir.clone();
            tokio::task::spawn_blocking(move || write_atomically(&dir, &file, &body))
                .await
                .map_err(TagStoreError::Task)??;
            metrics::counter!(m::REPLICATION_TASKS).increment(1);
            tracing::info!(tag = %full, remote, "replication task recorded");
        }
        Ok(remotes)
    }

    async fn write_backend(&self, name: &TaggedName, digest: &Digest) -> Result<(), TagError> {
        let namespace = &name.repository;
        let backend = self.backends.backend_for(namespace)?;
        let body = serde_json::to_vec(&BackendRecord {
            tag: name.clone(),
            digest: *digest,
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

    async fn read_backend(&self, name: &TaggedName) -> Result<Option<Digest>, TagError> {
        let namespace: &Namespace = &name.repository;
        let backend = self.backends.backend_for(namespace)?;
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
        Ok(Some(record.digest))
    }
}

/// Where a tag lives in its repository's backend namespace.
fn backend_key(name: &TaggedName) -> Digest {
    Digest::of(name.to_string().as_bytes())
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_millis() as u64)
}
