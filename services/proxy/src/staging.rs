//! Blob upload sessions, staged on the proxy's local disk under `<store.dir>/uploads/`.
//!
//! A session is a file written strictly in order and hashed as it grows, so the digest is
//! known the moment the client commits, without reading the blob again. Each append is all or
//! nothing: if the body ends early, breaks off or disagrees with its `Content-Range`, the file
//! is cut back and the hash state restored to where they were before it, and the client can
//! resume from the offset the session reports. Writes and hashing run on blocking threads, a
//! bounded chunk at a time, so a blob of any size passes in constant memory.
//!
//! Sessions live in memory: a restarted proxy forgets them (and removes their files), and the
//! client starts the upload again, as Docker does on any upload error.

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Body;
use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use kraken_core::{Digest, Namespace, Sha256Hasher};

use crate::metrics as m;

/// Bytes gathered from the request body before one blocking write.
const WRITE_CHUNK: usize = 1 << 20;

/// Why an append or a commit failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum StagingError {
    #[error("upload {0} is unknown: never started, finished, cancelled or expired")]
    UnknownUpload(String),
    /// The chunk does not start where the upload ends (a lost or repeated chunk).
    #[error("the chunk starts at byte {start} but the upload holds {size} bytes")]
    OutOfOrder { start: u64, size: u64 },
    /// The body is shorter or longer than its `Content-Range` / `Content-Length` said.
    #[error("the chunk announced {expected} bytes but {received} arrived")]
    WrongLength { expected: u64, received: u64 },
    #[error("reading the request body failed after {received} bytes")]
    Body {
        received: u64,
        #[source]
        source: axum::Error,
    },
    #[error("{operation} {}", path.display())]
    Io {
        operation: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("a staging file task failed")]
    Task(#[source] tokio::task::JoinError),
}

fn io_error(operation: &'static str, path: &Path) -> impl FnOnce(io::Error) -> StagingError {
    let path = path.to_owned();
    move |source| StagingError::Io {
        operation,
        path,
        source,
    }
}

/// One upload session.
#[derive(Debug)]
pub(crate) struct Upload {
    pub(crate) id: String,
    pub(crate) repository: Namespace,
    path: PathBuf,
    /// Bytes stored so far, readable while an append holds the lock.
    size: AtomicU64,
    state: tokio::sync::Mutex<UploadState>,
}

#[derive(Debug)]
struct UploadState {
    file: Arc<File>,
    hasher: Sha256Hasher,
    size: u64,
    last_write: Instant,
    /// Committed, cancelled or expired: any later call is refused.
    closed: bool,
}

/// A committed upload: the verified digest and where the bytes are, until the caller is done
/// with them (the file is removed when this is dropped).
#[derive(Debug)]
pub(crate) struct Staged {
    pub(crate) digest: Digest,
    pub(crate) size: u64,
    pub(crate) path: PathBuf,
}

impl Drop for Staged {
    fn drop(&mut self) {
        // A small unlink; doing it inline keeps ownership simple.
        let _ = fs::remove_file(&self.path);
    }
}

impl Upload {
    /// Bytes received so far.
    pub(crate) fn size(&self) -> u64 {
        self.size.load(Ordering::Acquire)
    }

    /// Appends a request body. `start` (from `Content-Range`) must equal the current size;
    /// `expected` (from `Content-Range` or `Content-Length`) is the exact body length. On any
    /// failure the upload is left exactly as it was. Returns the new size.
    pub(crate) async fn append(
        &self,
        start: Option<u64>,
        expected: Option<u64>,
        body: Body,
    ) -> Result<u64, StagingError> {
        let mut state = self.state.lock().await;
        if state.closed {
            return Err(StagingError::UnknownUpload(self.id.clone()));
        }
        if let Some(start) = start
            && start != state.size
        {
            return Err(StagingError::OutOfOrder {
                start,
                size: state.size,
            });
        }
        let before = (state.size, state.hasher.clone());
        let appended = self.copy_body(&mut state, expected, body).await;
        match appended {
            Ok(received) => {
                state.last_write = Instant::now();
                self.size.store(state.size, Ordering::Release);
                metrics::counter!(m::UPLOAD_BYTES).increment(received);
                Ok(state.size)
            }
            Err(error) => {
                let (size, hasher) = before;
                let file = state.file.clone();
                let path = self.path.clone();
                // Cut back to the last complete append so a retry starts from a known offset.
                let truncated = tokio::task::spawn_blocking(move || {
                    file.set_len(size).map_err(io_error("truncate", &path))
                })
                .await;
                state.size = size;
                state.hasher = hasher;
                self.size.store(size, Ordering::Release);
                if !matches!(truncated, Ok(Ok(()))) {
                    // The file may hold bytes past `size`; writes go by offset, so they are
                    // overwritten or never read, but the session can no longer be trusted.
                    state.closed = true;
                }
                Err(error)
            }
        }
    }

    /// Streams `body` into the file at the current size; returns the bytes received.
    async fn copy_body(
        &self,
        state: &mut UploadState,
        expected: Option<u64>,
        body: Body,
    ) -> Result<u64, StagingError> {
        let mut stream = body.into_data_stream();
        let mut received = 0u64;
        let mut pending = BytesMut::new();
        loop {
            let next = stream.next().await;
            let done = next.is_none();
            if let Some(chunk) = next {
                let chunk = chunk.map_err(|source| StagingError::Body { received, source })?;
                received += chunk.len() as u64;
                if let Some(expected) = expected
                    && received > expected
                {
                    return Err(StagingError::WrongLength { expected, received });
                }
                pending.extend_from_slice(&chunk);
            }
            if pending.len() >= WRITE_CHUNK || (done && !pending.is_empty()) {
                self.write(state, pending.split().freeze()).await?;
            }
            if done {
                break;
            }
        }
        if let Some(expected) = expected
            && received != expected
        {
            return Err(StagingError::WrongLength { expected, received });
        }
        Ok(received)
    }

    /// Writes and hashes one chunk on a blocking thread.
    async fn write(&self, state: &mut UploadState, data: Bytes) -> Result<(), StagingError> {
        let file = state.file.clone();
        let offset = state.size;
        let mut hasher = std::mem::take(&mut state.hasher);
        let path = self.path.clone();
        let (hasher, written) = tokio::task::spawn_blocking(move || {
            let written = file
                .write_all_at(&data, offset)
                .map_err(io_error("write", &path));
            if written.is_ok() {
                hasher.update(&data);
            }
            (hasher, written.map(|()| data.len() as u64))
        })
        .await
        .map_err(StagingError::Task)?;
        state.hasher = hasher;
        state.size += written?;
        Ok(())
    }

    /// The digest of everything received, and the bytes. The session stays open until
    /// [`Staging::finish`] (so a failed hand-off to the origins can be retried).
    pub(crate) async fn digest(&self) -> Result<(Digest, u64), StagingError> {
        let state = self.state.lock().await;
        if state.closed {
            return Err(StagingError::UnknownUpload(self.id.clone()));
        }
        Ok((state.hasher.clone().finish(), state.size))
    }
}

/// Every open upload session.
#[derive(Debug)]
pub(crate) struct Staging {
    dir: PathBuf,
    uploads: Mutex<HashMap<String, Arc<Upload>>>,
}

impl Staging {
    /// Staging under `dir`; files left by a previous run are removed (their sessions are
    /// gone with the process).
    pub(crate) async fn open(dir: PathBuf) -> Result<Self, StagingError> {
        let clear = dir.clone();
        tokio::task::spawn_blocking(move || {
            match fs::remove_dir_all(&clear) {
                Ok(()) => {}
                Err(error) if error.kind() == io::ErrorKind::NotFound => {}
                Err(error) => return Err(io_error("clear", &clear)(error)),
            }
            fs::create_dir_all(&clear).map_err(io_error("create", &clear))
        })
        .await
        .map_err(StagingError::Task)??;
        Ok(Self {
            dir,
            uploads: Mutex::new(HashMap::new()),
        })
    }

    /// Opens a new, empty session for `repository`.
    pub(crate) async fn create(&self, repository: Namespace) -> Result<Arc<Upload>, StagingError> {
        let id = format!("{:032x}", rand::random::<u128>());
        let path = self.dir.join(&id);
        let open_path = path.clone();
        let file = tokio::task::spawn_blocking(move || {
            OpenOptions::new()
                .read(true)
                .write(true)
                .create_new(true)
                .open(&open_path)
                .map_err(io_error("create", &open_path))
        })
        .await
        .map_err(StagingError::Task)??;
        let upload = Arc::new(Upload {
            id: id.clone(),
            repository,
            path,
            size: AtomicU64::new(0),
            state: tokio::sync::Mutex::new(UploadState {
                file: Arc::new(file),
                hasher: Sha256Hasher::new(),
                size: 0,
                last_write: Instant::now(),
                closed: false,
            }),
        });
        self.lock().insert(id, upload.clone());
        metrics::gauge!(m::UPLOADS_OPEN).set(self.len() as f64);
        Ok(upload)
    }

    /// The session `id` of `repository`; another repository's session is unknown here.
    pub(crate) fn get(
        &self,
        repository: &Namespace,
        id: &str,
    ) -> Result<Arc<Upload>, StagingError> {
        self.lock()
            .get(id)
            .filter(|upload| upload.repository == *repository)
            .cloned()
            .ok_or_else(|| StagingError::UnknownUpload(clip(id)))
    }

    /// Closes a session whose content is being handed off; the returned [`Staged`] removes
    /// the file when dropped.
    pub(crate) async fn finish(
        &self,
        upload: &Upload,
        digest: Digest,
    ) -> Result<Staged, StagingError> {
        let mut state = upload.state.lock().await;
        if state.closed {
            return Err(StagingError::UnknownUpload(upload.id.clone()));
        }
        state.closed = true;
        self.lock().remove(&upload.id);
        metrics::gauge!(m::UPLOADS_OPEN).set(self.len() as f64);
        Ok(Staged {
            digest,
            size: state.size,
            path: upload.path.clone(),
        })
    }

    /// Abandons a session and removes its file.
    pub(crate) async fn cancel(&self, upload: &Upload) {
        let mut state = upload.state.lock().await;
        state.closed = true;
        self.lock().remove(&upload.id);
        metrics::gauge!(m::UPLOADS_OPEN).set(self.len() as f64);
        let _ = tokio::fs::remove_file(&upload.path).await;
    }

    /// Removes sessions without a write for `tti`. Sessions busy right now are kept.
    pub(crate) async fn sweep_idle(&self, tti: Duration) -> usize {
        let now = Instant::now();
        let idle: Vec<Arc<Upload>> = {
            let mut uploads = self.lock();
            let mut idle = Vec::new();
            uploads.retain(|_, upload| {
                let Ok(mut state) = upload.state.try_lock() else {
                    return true;
                };
                if now.duration_since(state.last_write) < tti {
                    return true;
                }
                state.closed = true;
                idle.push(upload.clone());
                false
            });
            idle
        };
        for upload in &idle {
            tracing::info!(upload = %upload.id, repository = %upload.repository, "removing idle upload");
            let _ = tokio::fs::remove_file(&upload.path).await;
        }
        metrics::gauge!(m::UPLOADS_OPEN).set(self.len() as f64);
        idle.len()
    }

    pub(crate) fn len(&self) -> usize {
        self.lock().len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<Upload>>> {
        // Entries are inserted and removed whole: a poisoned map is still consistent.
        kraken_core::sync::lock(&self.uploads)
    }
}

/// Shortens an untrusted id echoed in an error.
fn clip(text: &str) -> String {
    text.chars().take(64).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ns() -> Namespace {
        "library/app".parse().unwrap()
    }

    fn body(chunks: Vec<&'static [u8]>) -> Body {
        let stream = futures::stream::iter(
            chunks
                .into_iter()
                .map(|c| Ok::<_, std::io::Error>(Bytes::from_static(c))),
        );
        Body::from_stream(stream)
    }

    fn failing_body(first: &'static [u8]) -> Body {
        let stream = futures::stream::iter(vec![
            Ok(Bytes::from_static(first)),
            Err(std::io::Error::other("client went away")),
        ]);
        Body::from_stream(stream)
    }

    #[tokio::test]
    async fn appends_hash_in_order_and_failed_appends_change_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let staging = Staging::open(dir.path().join("uploads")).await.unwrap();
        let upload = staging.create(ns()).await.unwrap();
        assert_eq!(
            upload
                .append(Some(0), Some(5), body(vec![b"hel", b"lo"]))
                .await
                .unwrap(),
            5
        );
        // Out of order: refused before reading.
        assert!(matches!(
            upload.append(Some(3), None, body(vec![b"x"])).await,
            Err(StagingError::OutOfOrder { start: 3, size: 5 })
        ));
        // Truncated: announced 4, sent 2.
        assert!(matches!(
            upload.append(Some(5), Some(4), body(vec![b" w"])).await,
            Err(StagingError::WrongLength {
                expected: 4,
                received: 2
            })
        ));
        // Too long, and broken off: both rolled back.
        assert!(
            upload
                .append(None, Some(1), body(vec![b" wo"]))
                .await
                .is_err()
        );
        assert!(
            upload
                .append(None, None, failing_body(b" wor"))
                .await
                .is_err()
        );
        assert_eq!(upload.size(), 5);
        assert_eq!(
            upload
                .append(None, None, body(vec![b" world"]))
                .await
                .unwrap(),
            11
        );
        let (digest, size) = upload.digest().await.unwrap();
        assert_eq!((digest, size), (Digest::of(b"hello world"), 11));
        let staged = staging.finish(&upload, digest).await.unwrap();
        assert_eq!(fs::read(&staged.path).unwrap(), b"hello world");
        let path = staged.path.clone();
        drop(staged);
        assert!(!path.exists());
        assert!(matches!(
            staging.get(&ns(), &upload.id),
            Err(StagingError::UnknownUpload(_))
        ));
    }

    #[tokio::test]
    async fn sessions_belong_to_their_repository_and_expire() {
        let dir = tempfile::tempdir().unwrap();
        let staging = Staging::open(dir.path().join("uploads")).await.unwrap();
        let upload = staging.create(ns()).await.unwrap();
        let other: Namespace = "other/app".parse().unwrap();
        assert!(staging.get(&other, &upload.id).is_err());
        assert!(staging.get(&ns(), &upload.id).is_ok());
        assert_eq!(staging.sweep_idle(Duration::from_secs(3600)).await, 0);
        assert_eq!(staging.sweep_idle(Duration::ZERO).await, 1);
        assert_eq!(staging.len(), 0);
        assert!(upload.append(None, None, body(vec![b"x"])).await.is_err());
    }
}
