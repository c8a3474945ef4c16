//! Writing uploaded blobs to their namespace's backend.
//!
//! An upload is acknowledged once the verified blob is committed to the local store, fsynced
//! and pinned; the write-back then runs right after the commit, inside the request. If it
//! fails, the failure is logged and counted and the blob stays pinned (never evicted or cleaned
//! up), so the acknowledged upload is not lost. A durable, retrying queue replaces this inline
//! call later; it starts from [`WriteBack::write`], which is idempotent.

use kraken_core::{Digest, Namespace};
use kraken_store::BlobStore;

use crate::backend::{Backends, UploadSource};
use crate::error::OriginError;
use crate::fetch::stat_with_timeout;
use crate::metrics as m;

/// What a successful write-back did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum WriteBackOutcome {
    Written,
    /// The backend already held the blob.
    Present,
}

/// Copies committed blobs from the store to backends.
#[derive(Debug, Clone)]
pub(crate) struct WriteBack {
    store: BlobStore,
    backends: Backends,
}

impl WriteBack {
    pub(crate) fn new(store: BlobStore, backends: Backends) -> Self {
        Self { store, backends }
    }

    /// Makes sure `namespace`'s backend holds the committed blob: asks it first, uploads from
    /// the store's copy if it lacks it.
    pub(crate) async fn write(
        &self,
        namespace: &Namespace,
        digest: &Digest,
    ) -> Result<WriteBackOutcome, OriginError> {
        let backend = self.backends.backend_for(namespace)?;
        let reader = self.store.open_blob(digest).await?;
        let size = reader.size();
        if stat_with_timeout(backend.as_ref(), namespace, digest).await? == Some(size) {
            return Ok(WriteBackOutcome::Present);
        }
        backend
            .upload(
                namespace,
                digest,
                UploadSource::File(reader.into_file()),
                size,
            )
            .await?;
        Ok(WriteBackOutcome::Written)
    }

    /// The write-back that follows an upload. `pinned_here` says whether this upload stored
    /// (and so pinned) the blob: only then is the pin this upload's to release. A copy that was
    /// already there may be pinned for another namespace's pending write-back.
    pub(crate) async fn after_upload(
        &self,
        namespace: &Namespace,
        digest: &Digest,
        pinned_here: bool,
    ) {
        let outcome = match self.write(namespace, digest).await {
            Ok(outcome) => outcome,
            Err(error) => {
                metrics::counter!(m::WRITEBACKS, "outcome" => "failed").increment(1);
                tracing::error!(
                    %digest,
                    %namespace,
                    error = %error.chain(),
                    "write-back to the storage backend failed; the blob stays pinned on this origin"
                );
                return;
            }
        };
        let label = match outcome {
            WriteBackOutcome::Written => "written",
            WriteBackOutcome::Present => "present",
        };
        metrics::counter!(m::WRITEBACKS, "outcome" => label).increment(1);
        tracing::debug!(%digest, %namespace, outcome = label, "blob written back");
        if pinned_here && let Err(error) = self.store.set_persist(digest, false).await {
            // Still pinned: safe, it only costs disk until the next cleanup of pins.
            tracing::warn!(%digest, error = %error, "cannot unpin a written-back blob");
        }
    }
}
