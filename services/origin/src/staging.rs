//! Store uploads owned by a request: cancelled requests leave no staging behind.

use kraken_store::{BlobStore, StoreError, UploadId};

/// A store upload that is aborted if dropped before [`StagedUpload::disarm`]: a request
/// dropped mid-stream (client gone, origin shutting down) cleans up after itself instead of
/// leaving a staging file for the idle sweep.
#[derive(Debug)]
pub(crate) struct StagedUpload {
    store: BlobStore,
    id: UploadId,
    armed: bool,
}

impl StagedUpload {
    pub(crate) async fn create(store: &BlobStore) -> Result<Self, StoreError> {
        let id = store.create_upload().await?;
        Ok(Self {
            store: store.clone(),
            id,
            armed: true,
        })
    }

    pub(crate) fn id(&self) -> &UploadId {
        &self.id
    }

    /// The upload was committed or aborted through the store: nothing left to clean.
    pub(crate) fn disarm(mut self) {
        self.armed = false;
    }
}

impl Drop for StagedUpload {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let (store, id) = (self.store.clone(), self.id);
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                // Already committed or aborted is fine: that is the state we want.
                let _ = store.abort_upload(&id).await;
            });
        }
    }
}
