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
//!
//! Sessions are budgeted ([`UploadLimits`]): so many open at once, so many per client
//! address, so many bytes each, and expired once idle. A session holds no open file between
//! requests — each append opens the file for its own duration — so open descriptors follow
//! requests in flight, never sessions.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::net::IpAddr;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Body;
use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use kraken_config::proxy::UploadLimits;
use kraken_core::{Digest, Namespace, Sha256Hasher};

use crate::metrics as m;

/// Bytes gathered from the request body before one blocking write.
const WRITE_CHUNK: usize = 1 << 20;

/// Which session cap refused a new session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SessionCap {
    /// `uploads.max_sessions`: all clients together.
    Total,
    /// `uploads.max_sessions_per_client`: one client address.
    PerClient,
}

impl SessionCap {
    /// The config key, also the `reason` label of the refusal metric.
    pub(crate) fn key(self) -> &'static str {
        match self {
            Self::Total => "max_sessions",
            Self::PerClient => "max_sessions_per_client",
        }
    }
}

/// Why an append or a commit failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum StagingError {
    #[error("upload {0} is unknown: never started, finished, cancelled or expired")]
    UnknownUpload(String),
    /// A session cap is reached; the client should retry once sessions finish or expire.
    #[error(
        "the limit of {max} open upload sessions (uploads.{}) is reached; finish or cancel one",
        cap.key()
    )]
    TooManySessions { cap: SessionCap, max: usize },
    /// The blob would grow past `uploads.max_blob_size`.
    #[error("the blob would reach {size} bytes, more than the {max} bytes allowed")]
    TooLarge { size: u64, max: u64 },
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
    /// The address that opened the session, whose per-client budget it counts against.
    client: IpAddr,
    /// `uploads.max_blob_size` when the session opened.
    max_size: u64,
    path: PathBuf,
    /// Bytes stored so far, readable while an append holds the lock.
    size: AtomicU64,
    /// The last request that reached the session; idle sessions expire from it.
    touched: Mutex<Instant>,
    state: tokio::sync::Mutex<UploadState>,
}

#[derive(Debug)]
struct UploadState {
    hasher: Sha256Hasher,
    size: u64,
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

    /// Marks the session as used now, so it does not expire while a client works on it.
    fn touch(&self) {
        *kraken_core::sync::lock(&self.touched) = Instant::now();
    }

    fn idle_since(&self) -> Instant {
        *kraken_core::sync::lock(&self.touched)
    }

    /// Appends a request body. `start` (from `Content-Range`) must equal the current size;
    /// `expected` (from `Content-Range` or `Content-Length`) is the exact body length. A body
    /// that would take the blob past `uploads.max_blob_size` is refused with
    /// [`StagingError::TooLarge`] — before reading when `expected` says so, else as soon as
    /// the bytes arrive. On any failure the upload is left exactly as it was. Returns the new
    /// size.
    pub(crate) async fn append(
        &self,
        start: Option<u64>,
        expected: Option<u64>,
        body: Body,
    ) -> Result<u64, StagingError> {
        let mut state = self.state.lock().await;
        let appended = self.append_locked(&mut state, start, expected, body).await;
        // Touched at the end too: a long streamed body must not count as idle time.
        self.touch();
        appended
    }

    async fn append_locked(
        &self,
        state: &mut UploadState,
        start: Option<u64>,
        expected: Option<u64>,
        body: Body,
    ) -> Result<u64, StagingError> {
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
        if let Some(expected) = expected {
            let size = state.size.saturating_add(expected);
            if size > self.max_size {
                return Err(StagingError::TooLarge {
                    size,
                    max: self.max_size,
                });
            }
        }
        let file = Arc::new(self.open_file().await?);
        let before = (state.size, state.hasher.clone());
        let appended = self.copy_body(state, &file, expected, body).await;
        match appended {
            Ok(received) => {
                self.size.store(state.size, Ordering::Release);
                metrics::counter!(m::UPLOAD_BYTES).increment(received);
                Ok(state.size)
            }
            Err(error) => {
                let (size, hasher) = before;
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

    /// Opens the session's file for one append; it is closed when the append is done, so an
    /// idle session costs no descriptor.
    async fn open_file(&self) -> Result<File, StagingError> {
        let path = self.path.clone();
        tokio::task::spawn_blocking(move || {
            OpenOptions::new()
                .write(true)
                .open(&path)
                .map_err(io_error("open", &path))
        })
        .await
        .map_err(StagingError::Task)?
    }

    /// Streams `body` into the file at the current size; returns the bytes received.
    async fn copy_body(
        &self,
        state: &mut UploadState,
        file: &Arc<File>,
        expected: Option<u64>,
        body: Body,
    ) -> Result<u64, StagingError> {
        let start = state.size;
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
                // Counted as the bytes arrive: a streamed body announces no length.
                let size = start.saturating_add(received);
                if size > self.max_size {
                    return Err(StagingError::TooLarge {
                        size,
                        max: self.max_size,
                    });
                }
                pending.extend_from_slice(&chunk);
            }
            if pending.len() >= WRITE_CHUNK || (done && !pending.is_empty()) {
                self.write(state, file, pending.split().freeze()).await?;
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
    async fn write(
        &self,
        state: &mut UploadState,
        file: &Arc<File>,
        data: Bytes,
    ) -> Result<(), StagingError> {
        let file = file.clone();
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

/// The open sessions and what they count against.
#[derive(Debug, Default)]
struct Sessions {
    uploads: HashMap<String, Arc<Upload>>,
    /// Sessions per client address, those still being created included.
    per_client: HashMap<IpAddr, usize>,
    /// Sessions open or being created.
    open: usize,
}

impl Sessions {
    /// Takes a slot for a new session of `client`, or says which cap is reached.
    fn reserve(&mut self, client: IpAddr, limits: &UploadLimits) -> Result<(), StagingError> {
        if self.open >= limits.max_sessions {
            return Err(StagingError::TooManySessions {
                cap: SessionCap::Total,
                max: limits.max_sessions,
            });
        }
        let count = self.per_client.entry(client).or_default();
        if *count >= limits.max_sessions_per_client {
            return Err(StagingError::TooManySessions {
                cap: SessionCap::PerClient,
                max: limits.max_sessions_per_client,
            });
        }
        *count += 1;
        self.open += 1;
        Ok(())
    }

    /// Gives back a slot taken by [`Sessions::reserve`].
    fn release(&mut self, client: IpAddr) {
        self.open = self.open.saturating_sub(1);
        if let Entry::Occupied(mut entry) = self.per_client.entry(client) {
            *entry.get_mut() = entry.get().saturating_sub(1);
            // Dropped at zero so the map holds only clients with sessions.
            if *entry.get() == 0 {
                entry.remove();
            }
        }
    }

    /// Removes a session and frees its slot; `None` when it was already gone (so a slot is
    /// freed exactly once however many requests race to close the session).
    fn remove(&mut self, id: &str) -> Option<Arc<Upload>> {
        let upload = self.uploads.remove(id)?;
        self.release(upload.client);
        Some(upload)
    }
}

/// A slot taken for a session being created; freed on drop unless the session was
/// registered (a request cancelled mid-way must not leak its slot).
struct Reservation<'a> {
    staging: &'a Staging,
    client: IpAddr,
    armed: bool,
}

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        if self.armed {
            self.staging.lock().release(self.client);
        }
    }
}

/// Every open upload session.
#[derive(Debug)]
pub(crate) struct Staging {
    dir: PathBuf,
    limits: UploadLimits,
    sessions: Mutex<Sessions>,
}

impl Staging {
    /// Staging under `dir` with the session budgets of `limits`; files left by a previous run
    /// are removed (their sessions are gone with the process).
    pub(crate) async fn open(dir: PathBuf, limits: UploadLimits) -> Result<Self, StagingError> {
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
            limits,
            sessions: Mutex::new(Sessions::default()),
        })
    }

    /// The largest blob a session accepts.
    pub(crate) fn max_blob_size(&self) -> u64 {
        self.limits.max_blob_size.0
    }

    /// Opens a new, empty session for `repository` on behalf of `client`, or refuses with
    /// [`StagingError::TooManySessions`] when a cap is reached.
    pub(crate) async fn create(
        &self,
        repository: Namespace,
        client: IpAddr,
    ) -> Result<Arc<Upload>, StagingError> {
        self.lock().reserve(client, &self.limits)?;
        let mut reservation = Reservation {
            staging: self,
            client,
            armed: true,
        };
        let id = format!("{:032x}", rand::random::<u128>());
        let path = self.dir.join(&id);
        let create_path = path.clone();
        tokio::task::spawn_blocking(move || {
            // Created now so a session's bytes always have a place, then closed: appends
            // reopen it for their own duration.
            OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&create_path)
                .map(drop)
                .map_err(io_error("create", &create_path))
        })
        .await
        .map_err(StagingError::Task)??;
        let upload = Arc::new(Upload {
            id: id.clone(),
            repository,
            client,
            max_size: self.limits.max_blob_size.0,
            path,
            size: AtomicU64::new(0),
            touched: Mutex::new(Instant::now()),
            state: tokio::sync::Mutex::new(UploadState {
                hasher: Sha256Hasher::new(),
                size: 0,
                closed: false,
            }),
        });
        let open = {
            let mut sessions = self.lock();
            sessions.uploads.insert(id, upload.clone());
            reservation.armed = false;
            sessions.open
        };
        metrics::gauge!(m::UPLOADS_OPEN).set(open as f64);
        Ok(upload)
    }

    /// The session `id` of `repository`; another repository's session is unknown here.
    /// Finding a session counts as using it.
    pub(crate) fn get(
        &self,
        repository: &Namespace,
        id: &str,
    ) -> Result<Arc<Upload>, StagingError> {
        let upload = self
            .lock()
            .uploads
            .get(id)
            .filter(|upload| upload.repository == *repository)
            .cloned()
            .ok_or_else(|| StagingError::UnknownUpload(clip(id)))?;
        upload.touch();
        Ok(upload)
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
        self.remove(&upload.id);
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
        self.remove(&upload.id);
        let _ = tokio::fs::remove_file(&upload.path).await;
    }

    /// Expires sessions no request has reached for `idle_timeout` and removes their files.
    /// Sessions busy right now (an append streaming in) are kept.
    pub(crate) async fn sweep_idle(&self, idle_timeout: Duration) -> usize {
        let now = Instant::now();
        let idle: Vec<Arc<Upload>> = {
            let mut sessions = self.lock();
            let expired: Vec<String> = sessions
                .uploads
                .values()
                .filter(|upload| now.saturating_duration_since(upload.idle_since()) >= idle_timeout)
                .filter_map(|upload| {
                    // Marked closed under the map lock, so a request that found the session
                    // just before is refused rather than writing to a removed file.
                    let mut state = upload.state.try_lock().ok()?;
                    state.closed = true;
                    Some(upload.id.clone())
                })
                .collect();
            expired
                .iter()
                .filter_map(|id| sessions.remove(id))
                .collect()
        };
        for upload in &idle {
            tracing::info!(upload = %upload.id, repository = %upload.repository, "removing idle upload");
            let _ = tokio::fs::remove_file(&upload.path).await;
        }
        metrics::counter!(m::UPLOADS_EXPIRED).increment(idle.len() as u64);
        metrics::gauge!(m::UPLOADS_OPEN).set(self.len() as f64);
        idle.len()
    }

    /// Sessions open (or being created) right now.
    pub(crate) fn len(&self) -> usize {
        self.lock().open
    }

    /// Removes a session from the books and updates the gauge.
    fn remove(&self, id: &str) {
        let open = {
            let mut sessions = self.lock();
            sessions.remove(id);
            sessions.open
        };
        metrics::gauge!(m::UPLOADS_OPEN).set(open as f64);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Sessions> {
        // Every update leaves the books consistent before the next can fail: a poisoned map
        // is still usable.
        kraken_core::sync::lock(&self.sessions)
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

    fn client(last: u8) -> IpAddr {
        IpAddr::from([127, 0, 0, last])
    }

    async fn staging(dir: &Path, limits: UploadLimits) -> Staging {
        Staging::open(dir.join("uploads"), limits).await.unwrap()
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
        let staging = staging(dir.path(), UploadLimits::default()).await;
        let upload = staging.create(ns(), client(1)).await.unwrap();
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
        let staging = staging(dir.path(), UploadLimits::default()).await;
        let upload = staging.create(ns(), client(1)).await.unwrap();
        let other: Namespace = "other/app".parse().unwrap();
        assert!(staging.get(&other, &upload.id).is_err());
        assert!(staging.get(&ns(), &upload.id).is_ok());
        assert_eq!(staging.sweep_idle(Duration::from_secs(3600)).await, 0);
        assert_eq!(staging.sweep_idle(Duration::ZERO).await, 1);
        assert_eq!(staging.len(), 0);
        assert!(upload.append(None, None, body(vec![b"x"])).await.is_err());
    }

    #[tokio::test]
    async fn session_caps_count_open_sessions_and_free_slots_once() {
        let dir = tempfile::tempdir().unwrap();
        let limits = UploadLimits {
            max_sessions: 3,
            max_sessions_per_client: 2,
            ..UploadLimits::default()
        };
        let staging = staging(dir.path(), limits).await;
        let a1 = staging.create(ns(), client(1)).await.unwrap();
        let _a2 = staging.create(ns(), client(1)).await.unwrap();
        assert!(matches!(
            staging.create(ns(), client(1)).await,
            Err(StagingError::TooManySessions {
                cap: SessionCap::PerClient,
                max: 2
            })
        ));
        let b1 = staging.create(ns(), client(2)).await.unwrap();
        assert!(matches!(
            staging.create(ns(), client(3)).await,
            Err(StagingError::TooManySessions {
                cap: SessionCap::Total,
                max: 3
            })
        ));
        // A refused session leaves no file behind.
        assert_eq!(fs::read_dir(dir.path().join("uploads")).unwrap().count(), 3);
        // Cancelling twice frees one slot, not two.
        staging.cancel(&a1).await;
        staging.cancel(&a1).await;
        assert_eq!(staging.len(), 2);
        let _a3 = staging.create(ns(), client(1)).await.unwrap();
        assert!(staging.create(ns(), client(4)).await.is_err());
        let (digest, _) = b1.digest().await.unwrap();
        drop(staging.finish(&b1, digest).await.unwrap());
        let _b2 = staging.create(ns(), client(2)).await.unwrap();
        assert_eq!(staging.len(), 3);
    }

    #[tokio::test]
    async fn a_blob_past_the_maximum_is_refused_before_or_while_reading() {
        let dir = tempfile::tempdir().unwrap();
        let limits = UploadLimits {
            max_blob_size: bytesize::ByteSize(8),
            ..UploadLimits::default()
        };
        let staging = staging(dir.path(), limits).await;
        let upload = staging.create(ns(), client(1)).await.unwrap();
        upload
            .append(None, Some(5), body(vec![b"hello"]))
            .await
            .unwrap();
        // Announced: refused before a byte is read.
        assert!(matches!(
            upload.append(Some(5), Some(4), body(vec![b"1234"])).await,
            Err(StagingError::TooLarge { size: 9, max: 8 })
        ));
        // Streamed: refused when the ninth byte arrives, and rolled back.
        assert!(matches!(
            upload.append(None, None, body(vec![b"12", b"34"])).await,
            Err(StagingError::TooLarge { size: 9, max: 8 })
        ));
        assert_eq!(upload.size(), 5);
        assert_eq!(fs::read(&upload.path).unwrap(), b"hello");
        // Exactly the maximum is fine.
        assert_eq!(
            upload.append(None, None, body(vec![b"123"])).await.unwrap(),
            8
        );
    }
}
