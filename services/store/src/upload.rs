//! Uploads: a blob written sequentially (or in chunks) by one client, then hashed and committed.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use bytes::{Bytes, BytesMut};
use kraken_core::{Digest, MetaInfo, MetaInfoGenerator, PieceHashAlgorithm};
use tokio::io::{AsyncRead, AsyncReadExt};
use tracing::Instrument;

use crate::StoreError;
use crate::error::Result;
use crate::layout::{self, DATA_FILE, UploadId};
use crate::metrics as m;
use kraken_core::sync::lock;

use crate::store::{BlobStore, CommitOptions, CommitOutcome, Inner, blocking};

/// Read size while hashing, and chunk size of [`BlobStore::put_reader`].
const CHUNK: usize = 1 << 20;

/// An upload in progress.
pub(crate) struct UploadSlot {
    dir: PathBuf,
    data: PathBuf,
    file: Arc<File>,
    state: Arc<tokio::sync::Mutex<UploadState>>,
}

struct UploadState {
    size: u64,
    /// Set once committed, aborted or cleaned up, for callers that looked the slot up before
    /// it left the map.
    closed: bool,
    last_write: SystemTime,
}

impl BlobStore {
    /// Starts an upload: an empty staging file under `uploads/<id>/`.
    #[tracing::instrument(skip_all)]
    pub async fn create_upload(&self) -> Result<UploadId> {
        let id = UploadId::random();
        let dir = self.inner.layout.upload_dir(&id);
        let data = dir.join(DATA_FILE);
        let (new_dir, new_data) = (dir.clone(), data.clone());
        let file = blocking(move || {
            layout::create_dir(&new_dir)
                .map_err(StoreError::io("create upload directory", &new_dir))?;
            layout::file_options()
                .read(true)
                .write(true)
                .create_new(true)
                .open(&new_data)
                .map_err(StoreError::io("create upload file", &new_data))
        })
        .await?;
        let state = UploadState {
            size: 0,
            closed: false,
            last_write: self.inner.clock.now(),
        };
        let slot = UploadSlot {
            dir,
            data,
            file: Arc::new(file),
            state: Arc::new(tokio::sync::Mutex::new(state)),
        };
        lock(&self.inner.uploads).insert(id, Arc::new(slot));
        tracing::debug!(upload = %id, "upload created");
        Ok(id)
    }

    /// Appends `data` at `offset`, which must equal the bytes written so far: a gap or overlap
    /// (a lost or repeated chunk) is refused with [`StoreError::WrongOffset`] naming the offset
    /// to resume from. Returns the new size.
    #[tracing::instrument(skip_all, fields(upload = %id, offset, len = data.len()))]
    pub async fn write_upload(&self, id: &UploadId, offset: u64, data: Bytes) -> Result<u64> {
        let slot = self.inner.upload_slot(id)?;
        let mut state = slot.state.clone().lock_owned().await;
        if state.closed {
            return Err(StoreError::UploadNotFound(*id));
        }
        if offset != state.size {
            return Err(StoreError::WrongOffset {
                upload: *id,
                expected: state.size,
                got: offset,
            });
        }
        let now = self.inner.clock.now();
        let (file, path) = (slot.file.clone(), slot.data.clone());
        // The lock travels into the blocking task: a caller cancelled mid-write leaves the
        // upload locked until the bytes are down and counted, never half-accounted.
        blocking(move || {
            if let Err(error) = file.write_all_at(&data, offset) {
                // Back to the last complete chunk, so the client can resume at `size`.
                let _ = file.set_len(offset);
                return Err(StoreError::io("write upload", path)(error));
            }
            state.size = offset + data.len() as u64;
            state.last_write = now;
            Ok(state.size)
        })
        .await
    }

    /// Bytes written to an upload so far (where the next chunk must start).
    pub async fn upload_size(&self, id: &UploadId) -> Result<u64> {
        let slot = self.inner.upload_slot(id)?;
        let state = slot.state.lock().await;
        if state.closed {
            return Err(StoreError::UploadNotFound(*id));
        }
        Ok(state.size)
    }

    /// Hashes the upload on a blocking thread (sha256 and metainfo in one pass) and, if it is
    /// `expected`, moves it into the cache. On a mismatch nothing is stored, the staging file is
    /// deleted and [`StoreError::DigestMismatch`] says what the content really was. The upload
    /// is finished either way.
    #[tracing::instrument(skip_all, fields(digest = %expected, upload = %id))]
    pub async fn commit_upload(
        &self,
        id: &UploadId,
        expected: &Digest,
        options: &CommitOptions,
    ) -> Result<CommitOutcome> {
        let inner = self.inner.clone();
        let (id, expected, options) = (*id, *expected, options.clone());
        // Spawned so a caller that goes away mid-commit cannot leave a blob renamed into the
        // cache but missing from the index.
        tokio::spawn(
            async move { inner.commit_upload(id, expected, options).await }.in_current_span(),
        )
        .await
        .map_err(StoreError::TaskFailed)?
    }

    /// Abandons an upload and deletes its staging file.
    #[tracing::instrument(skip_all, fields(upload = %id))]
    pub async fn abort_upload(&self, id: &UploadId) -> Result<()> {
        let slot = lock(&self.inner.uploads)
            .remove(id)
            .ok_or(StoreError::UploadNotFound(*id))?;
        slot.state.lock().await.closed = true;
        self.inner.discard(slot.dir.clone()).await;
        Ok(())
    }

    /// Stores a blob held in memory: create, write, commit. For small blobs and tests.
    pub async fn put_bytes(
        &self,
        expected: &Digest,
        data: impl Into<Bytes>,
        options: &CommitOptions,
    ) -> Result<CommitOutcome> {
        let id = self.create_upload().await?;
        if let Err(error) = self.write_upload(&id, 0, data.into()).await {
            let _ = self.abort_upload(&id).await;
            return Err(error);
        }
        self.commit_upload(&id, expected, options).await
    }

    /// Stores a blob read from `reader` to its end, in bounded chunks (constant memory), then
    /// commits it against `expected`. A read error aborts the upload.
    pub async fn put_reader<R>(
        &self,
        expected: &Digest,
        mut reader: R,
        options: &CommitOptions,
    ) -> Result<CommitOutcome>
    where
        R: AsyncRead + Unpin + Send,
    {
        let id = self.create_upload().await?;
        let copied = async {
            let mut offset = 0;
            loop {
                let mut chunk = BytesMut::with_capacity(CHUNK);
                while chunk.len() < CHUNK {
                    let read = reader
                        .read_buf(&mut chunk)
                        .await
                        .map_err(StoreError::Source)?;
                    if read == 0 {
                        break;
                    }
                }
                if chunk.is_empty() {
                    return Ok(());
                }
                offset = self.write_upload(&id, offset, chunk.freeze()).await?;
            }
        }
        .await;
        if let Err(error) = copied {
            let _ = self.abort_upload(&id).await;
            return Err(error);
        }
        self.commit_upload(&id, expected, options).await
    }
}

impl Inner {
    fn upload_slot(&self, id: &UploadId) -> Result<Arc<UploadSlot>> {
        lock(&self.uploads)
            .get(id)
            .cloned()
            .ok_or(StoreError::UploadNotFound(*id))
    }

    async fn commit_upload(
        &self,
        id: UploadId,
        expected: Digest,
        options: CommitOptions,
    ) -> Result<CommitOutcome> {
        // Out of the map first: from here on no new write can start.
        let slot = lock(&self.uploads)
            .remove(&id)
            .ok_or(StoreError::UploadNotFound(id))?;
        let size = {
            let mut state = slot.state.lock().await;
            if state.closed {
                return Err(StoreError::UploadNotFound(id));
            }
            state.closed = true;
            state.size
        };
        let piece_length = options.piece_lengths.piece_length_for(size);
        let algorithm = options.piece_hash;
        let (file, path) = (slot.file.clone(), slot.data.clone());
        let hashed = blocking(move || {
            // Durable before it can be renamed into the cache: a crash must never leave a
            // committed name pointing at unwritten bytes.
            file.sync_all()
                .map_err(StoreError::io("fsync upload", &path))?;
            hash_upload(&file, &path, size, piece_length, algorithm)
        })
        .await;
        let metainfo = match hashed {
            Ok(metainfo) => metainfo,
            Err(error) => {
                self.discard(slot.dir.clone()).await;
                return Err(error);
            }
        };
        if *metainfo.digest() != expected {
            self.discard(slot.dir.clone()).await;
            metrics::counter!(m::DIGEST_MISMATCHES, "source" => "upload").increment(1);
            tracing::warn!(actual = %metainfo.digest(), size, "upload does not match its digest");
            return Err(StoreError::DigestMismatch {
                expected,
                actual: *metainfo.digest(),
            });
        }
        // Hashing ran without the lock (it is the slow part); only the move is serialised.
        let guard = self.locks.lock(expected).await;
        let outcome = self
            .commit_staged(
                &guard,
                slot.dir.clone(),
                metainfo,
                options.persist,
                "upload",
            )
            .await?;
        drop(guard);
        if matches!(outcome, CommitOutcome::Stored(_)) {
            self.enforce_capacity(Some(expected)).await;
        }
        Ok(outcome)
    }

    /// Removes uploads with no write since `now - tti`. Returns how many.
    pub(crate) async fn sweep_uploads(&self, now: SystemTime) -> usize {
        let Some(cutoff) = now.checked_sub(self.config.upload_cleanup.tti) else {
            return 0;
        };
        let mut idle = Vec::new();
        {
            let mut uploads = lock(&self.uploads);
            uploads.retain(|id, slot| {
                // A locked upload is being written or committed right now: not idle.
                let Ok(mut state) = slot.state.try_lock() else {
                    return true;
                };
                if state.last_write >= cutoff {
                    return true;
                }
                state.closed = true;
                idle.push((*id, slot.dir.clone()));
                false
            });
        }
        for (id, dir) in &idle {
            tracing::info!(upload = %id, "removing idle upload");
            self.discard(dir.clone()).await;
            metrics::counter!(m::CLEANUP_REMOVED, "kind" => "upload").increment(1);
        }
        idle.len()
    }
}

/// Reads `size` bytes of an upload once, computing its sha256 and metainfo together. Blocking.
fn hash_upload(
    file: &File,
    path: &Path,
    size: u64,
    piece_length: u64,
    algorithm: PieceHashAlgorithm,
) -> Result<MetaInfo> {
    let mut generator = MetaInfoGenerator::new(piece_length, algorithm)?;
    let mut buf = vec![0u8; CHUNK];
    let mut offset = 0;
    while offset < size {
        let want = usize::try_from(size - offset).map_or(CHUNK, |left| left.min(CHUNK));
        let chunk = &mut buf[..want];
        file.read_exact_at(chunk, offset)
            .map_err(StoreError::io("read upload", path))?;
        generator.update(chunk);
        offset += want as u64;
    }
    Ok(generator.finish()?)
}
