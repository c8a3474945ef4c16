//! Downloads: a blob filled piece by piece in any order (agents receiving from peers), each
//! piece verified before it is written, the whole blob verified before it is committed.

use std::fmt;
use std::fs::{self, File};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use bytes::Bytes;
use kraken_core::{Bitfield, Digest, MetaInfo, PieceError, Sha256Hasher};
use tokio::sync::watch;
use tracing::Instrument;

use crate::StoreError;
use crate::error::Result;
use crate::layout::{self, DATA_FILE, META_FILE, PIECES_FILE};
use crate::meta::BlobMeta;
use crate::metrics as m;
use crate::reader::read_exact_at;
use kraken_core::sync::lock;

use crate::store::{BlobStore, CommitOutcome, Inner, blocking};

/// Where a download stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DownloadState {
    /// Accepting pieces.
    Downloading,
    /// Verified and moved into the cache.
    Committed,
    /// Every piece was valid but the whole blob did not match its digest; staging was removed.
    Failed,
    /// Aborted by a caller or by idle cleanup; staging was removed.
    Aborted,
}

impl fmt::Display for DownloadState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Downloading => "downloading",
            Self::Committed => "committed",
            Self::Failed => "failed verification",
            Self::Aborted => "aborted",
        })
    }
}

/// A download in progress, shared by everyone working on the same digest: the scheduler writing
/// pieces, peers being served pieces already verified, a client streaming the blob's prefix.
/// Cheap to clone.
#[derive(Clone)]
pub struct DownloadHandle {
    store: Arc<Inner>,
    shared: Arc<DownloadShared>,
}

pub(crate) struct DownloadShared {
    metainfo: MetaInfo,
    dir: PathBuf,
    data_path: PathBuf,
    file: File,
    pieces: File,
    /// Verified pieces. A watch so readers can wait for the piece they need next without
    /// polling; the sender also wakes them when the download fails or is aborted.
    progress: watch::Sender<Bitfield>,
    state: Mutex<DownloadState>,
    last_write: Mutex<SystemTime>,
    /// SHA-256 of the blob's contiguous prefix of verified pieces, advanced as pieces arrive so
    /// that completing a download only hashes what is left instead of re-reading the whole blob
    /// (on a 1 GiB blob that re-read was ~45% of the end-to-end time).
    prefix: Mutex<PrefixHash>,
}

impl DownloadShared {
    /// Bytes still to be written: the blob less its verified pieces (which are on disk).
    pub(crate) fn remaining_bytes(&self) -> u64 {
        let have = u64::from(self.progress.borrow().count());
        let written = have
            .saturating_mul(self.metainfo.piece_length())
            .min(self.metainfo.length());
        self.metainfo.length() - written
    }
}

/// Hash state over pieces `0..next`.
struct PrefixHash {
    hasher: Sha256Hasher,
    next: u32,
}

impl BlobStore {
    /// Starts downloading the blob `metainfo` describes: a sparse staging file of its length
    /// and an empty piece record. Idempotent: while a download of the digest is in progress
    /// every caller gets a handle to that same download (with the same metainfo, else
    /// [`StoreError::MetaInfoConflict`]). [`StoreError::AlreadyExists`] if it is committed.
    #[tracing::instrument(skip_all, fields(digest = %metainfo.digest()))]
    pub async fn begin_download(&self, metainfo: &MetaInfo) -> Result<DownloadHandle> {
        let digest = *metainfo.digest();
        if let Some(handle) = join_download(&self.inner, metainfo)? {
            return Ok(handle);
        }
        let _guard = self.inner.locks.lock(digest).await;
        if let Some(handle) = join_download(&self.inner, metainfo)? {
            return Ok(handle);
        }
        if self.inner.index().contains(&digest) {
            return Err(StoreError::AlreadyExists(digest));
        }
        self.inner.ensure_room(digest, metainfo.length()).await?;
        let now = self.inner.clock.now();
        let dir = self.inner.layout.download_dir(&digest);
        let (new_dir, new_metainfo) = (dir.clone(), metainfo.clone());
        let (file, pieces) =
            blocking(move || create_download_files(&new_dir, &new_metainfo, now)).await?;
        let shared = Arc::new(DownloadShared {
            metainfo: metainfo.clone(),
            data_path: dir.join(DATA_FILE),
            dir,
            file,
            pieces,
            progress: watch::Sender::new(Bitfield::new(metainfo.num_pieces())),
            state: Mutex::new(DownloadState::Downloading),
            last_write: Mutex::new(now),
            prefix: Mutex::new(PrefixHash {
                hasher: Sha256Hasher::new(),
                next: 0,
            }),
        });
        lock(&self.inner.downloads).insert(digest, shared.clone());
        tracing::debug!(
            pieces = metainfo.num_pieces(),
            size = metainfo.length(),
            "download started"
        );
        Ok(DownloadHandle {
            store: self.inner.clone(),
            shared,
        })
    }

    /// The download of `digest` in progress, if any (e.g. to serve its verified pieces).
    pub fn download(&self, digest: &Digest) -> Option<DownloadHandle> {
        let shared = lock(&self.inner.downloads).get(digest).cloned()?;
        Some(DownloadHandle {
            store: self.inner.clone(),
            shared,
        })
    }
}

impl DownloadHandle {
    pub fn digest(&self) -> &Digest {
        self.shared.metainfo.digest()
    }

    pub fn metainfo(&self) -> &MetaInfo {
        &self.shared.metainfo
    }

    pub fn state(&self) -> DownloadState {
        self.shared.state()
    }

    /// The verified pieces right now.
    pub fn bitfield(&self) -> Bitfield {
        self.shared.progress.borrow().clone()
    }

    pub fn has_piece(&self, index: u32) -> bool {
        self.shared.progress.borrow().get(index)
    }

    /// Observes progress: the receiver sees the bitfield change as pieces are verified (and a
    /// notification without change when the download fails or is aborted).
    pub fn subscribe(&self) -> watch::Receiver<Bitfield> {
        self.shared.progress.subscribe()
    }

    /// Verifies piece `index` against the metainfo and, if it matches, writes it. A corrupt
    /// piece is refused with [`StoreError::Piece`] and nothing is written. Returns whether the
    /// piece was new (`false`: already held, nothing done).
    // Debug level: once per piece, and at info every piece would be an exported trace.
    #[tracing::instrument(level = "debug", skip_all, fields(digest = %self.digest(), piece = index))]
    pub async fn write_piece(&self, index: u32, data: Bytes) -> Result<bool> {
        // Duplicates are cheap no-ops, also once committed: a late duplicate from a slow peer
        // is not the caller's error. A failed or aborted download refuses everything.
        self.ensure_state(&[DownloadState::Downloading, DownloadState::Committed])?;
        if self.has_piece(index) {
            return Ok(false);
        }
        self.ensure_state(&[DownloadState::Downloading])?;
        let shared = self.shared.clone();
        let now = self.store.clock.now();
        // Hashing and writing off the runtime; bits are set inside the task, so a cancelled
        // caller cannot lose a piece that was written.
        let written = data.clone();
        let stored = blocking(move || shared.store_piece(index, &written, now)).await;
        if matches!(stored, Ok(true)) {
            let shared = self.shared.clone();
            // Detached: the commit finishes whatever this does not get to.
            drop(tokio::task::spawn_blocking(move || {
                shared.advance_prefix(Some((index, &data)))
            }));
        }
        if let Err(StoreError::Piece(error)) = &stored
            && !matches!(error, PieceError::OutOfRange { .. })
        {
            metrics::counter!(m::BAD_PIECES).increment(1);
            tracing::warn!(error = %error, "refused corrupt piece");
        }
        stored
    }

    /// Reads a verified piece, to serve it to peers while the download continues (and after
    /// it was committed, through the same open file).
    pub async fn read_piece(&self, index: u32) -> Result<Bytes> {
        let len = self.shared.metainfo.piece_len(index)?;
        self.ensure_state(&[DownloadState::Downloading, DownloadState::Committed])?;
        if !self.has_piece(index) {
            return Err(StoreError::PieceNotHeld {
                digest: *self.digest(),
                index,
            });
        }
        let shared = self.shared.clone();
        let offset = shared.metainfo.piece_offset(index);
        blocking(move || read_exact_at(&shared.file, &shared.data_path, offset, len)).await
    }

    /// Waits until piece `index` is verified, so a reader can stream a blob's prefix as it
    /// arrives. Fails if the download fails or is aborted first.
    pub async fn wait_for_piece(&self, index: u32) -> Result<()> {
        self.shared.metainfo.piece_len(index)?;
        let mut progress = self.subscribe();
        loop {
            // Mark the value seen before checking the state: a failure after this point
            // notifies again, so `changed` below cannot miss it.
            let held = progress.borrow_and_update().get(index);
            if held {
                return Ok(());
            }
            self.ensure_state(&[DownloadState::Downloading, DownloadState::Committed])?;
            if progress.changed().await.is_err() {
                // The sender lives as long as `self`; this cannot happen, but do not spin.
                return Err(self.closed(self.state()));
            }
        }
    }

    /// With every piece held: fsyncs the blob, verifies its sha256 on a blocking thread and
    /// atomically moves it into the cache. If the digest does not match (pieces individually
    /// valid, metainfo lying about the whole), the download fails, its staging is removed and
    /// [`StoreError::DigestMismatch`] is returned.
    #[tracing::instrument(skip_all, fields(digest = %self.digest()))]
    pub async fn complete(&self) -> Result<CommitOutcome> {
        let (store, shared) = (self.store.clone(), self.shared.clone());
        // Spawned so a caller that goes away mid-commit cannot leave a blob renamed into the
        // cache but missing from the index.
        tokio::spawn(async move { complete_download(store, shared).await }.in_current_span())
            .await
            .map_err(StoreError::TaskFailed)?
    }

    /// Abandons the download and removes its staging. Everyone sharing it sees
    /// [`DownloadState::Aborted`]. No-op if it already finished.
    #[tracing::instrument(skip_all, fields(digest = %self.digest()))]
    pub async fn abort(&self) -> Result<()> {
        let _guard = self.store.locks.lock(*self.digest()).await;
        self.store
            .close_download(&self.shared, DownloadState::Aborted)
            .await;
        Ok(())
    }

    fn ensure_state(&self, allowed: &[DownloadState]) -> Result<()> {
        let state = self.state();
        if allowed.contains(&state) {
            Ok(())
        } else {
            Err(self.closed(state))
        }
    }

    fn closed(&self, state: DownloadState) -> StoreError {
        StoreError::DownloadClosed {
            digest: *self.digest(),
            state,
        }
    }
}

impl fmt::Debug for DownloadHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DownloadHandle")
            .field("digest", self.digest())
            .field("state", &self.state())
            .field("pieces", &*self.shared.progress.borrow())
            .finish()
    }
}

async fn complete_download(
    store: Arc<Inner>,
    shared: Arc<DownloadShared>,
) -> Result<CommitOutcome> {
    let digest = *shared.metainfo.digest();
    let closed = |state| StoreError::DownloadClosed { digest, state };
    match shared.state() {
        DownloadState::Downloading => {}
        DownloadState::Committed => {
            return Ok(CommitOutcome::AlreadyExists(shared.metainfo.clone()));
        }
        state => return Err(closed(state)),
    }
    {
        let pieces = shared.progress.borrow();
        if !pieces.is_complete() {
            return Err(StoreError::DownloadIncomplete {
                digest,
                missing: pieces.len() - pieces.count(),
                total: pieces.len(),
            });
        }
    }
    // Hashing reads the whole blob; nothing about it needs the lock, so it runs before.
    let hashing = shared.clone();
    let actual = blocking(move || hashing.sync_and_hash()).await?;
    let guard = store.locks.lock(digest).await;
    // Someone else may have finished or aborted it while we hashed.
    match shared.state() {
        DownloadState::Downloading => {}
        DownloadState::Committed => {
            return Ok(CommitOutcome::AlreadyExists(shared.metainfo.clone()));
        }
        state => return Err(closed(state)),
    }
    if actual != digest {
        store.close_download(&shared, DownloadState::Failed).await;
        metrics::counter!(m::DIGEST_MISMATCHES, "source" => "download").increment(1);
        tracing::warn!(%actual, "downloaded blob does not match its digest");
        return Err(StoreError::DigestMismatch {
            expected: digest,
            actual,
        });
    }
    let committed = store
        .commit_staged(
            &guard,
            shared.dir.clone(),
            shared.metainfo.clone(),
            false,
            "download",
        )
        .await;
    let state = if committed.is_ok() {
        DownloadState::Committed
    } else {
        DownloadState::Failed
    };
    // Staging is already gone (renamed into the cache or discarded by `commit_staged`).
    store.finish_download(&shared, state);
    drop(guard);
    if let Ok(CommitOutcome::Stored(_)) = &committed {
        store.enforce_capacity(Some(digest)).await;
    }
    committed
}

/// A handle to the download of `metainfo`'s digest in progress, if any.
fn join_download(store: &Arc<Inner>, metainfo: &MetaInfo) -> Result<Option<DownloadHandle>> {
    let Some(shared) = lock(&store.downloads).get(metainfo.digest()).cloned() else {
        return Ok(None);
    };
    if shared.metainfo != *metainfo {
        return Err(StoreError::MetaInfoConflict {
            digest: *metainfo.digest(),
        });
    }
    Ok(Some(DownloadHandle {
        store: store.clone(),
        shared,
    }))
}

impl Inner {
    /// Moves a download out of `Downloading` (caller holds the digest lock): state, map,
    /// watchers. Returns whether it was still downloading.
    fn finish_download(&self, shared: &Arc<DownloadShared>, state: DownloadState) -> bool {
        {
            let mut current = lock(&shared.state);
            if *current != DownloadState::Downloading {
                return false;
            }
            *current = state;
        }
        let mut downloads = lock(&self.downloads);
        if downloads
            .get(shared.metainfo.digest())
            .is_some_and(|d| Arc::ptr_eq(d, shared))
        {
            downloads.remove(shared.metainfo.digest());
        }
        drop(downloads);
        // Wake waiters so they notice the new state.
        shared.progress.send_modify(|_| {});
        true
    }

    /// Ends a download that will not be committed and removes its staging (caller holds the
    /// digest lock).
    async fn close_download(&self, shared: &Arc<DownloadShared>, state: DownloadState) {
        if self.finish_download(shared, state) {
            self.discard(shared.dir.clone()).await;
        }
    }

    /// Removes downloads with no new piece since `now - tti`. Returns how many.
    pub(crate) async fn sweep_downloads(&self, now: SystemTime) -> usize {
        let Some(cutoff) = now.checked_sub(self.config.download_cleanup.tti) else {
            return 0;
        };
        let candidates: Vec<Arc<DownloadShared>> = lock(&self.downloads)
            .values()
            .filter(|shared| *lock(&shared.last_write) < cutoff)
            .cloned()
            .collect();
        let mut removed = 0;
        for shared in candidates {
            let digest = *shared.metainfo.digest();
            let Some(_guard) = self.locks.try_lock(digest) else {
                continue;
            };
            if *lock(&shared.last_write) >= cutoff {
                continue;
            }
            if self.finish_download(&shared, DownloadState::Aborted) {
                tracing::info!(%digest, "removing idle download");
                self.discard(shared.dir.clone()).await;
                metrics::counter!(m::CLEANUP_REMOVED, "kind" => "download").increment(1);
                removed += 1;
            }
        }
        removed
    }
}

impl DownloadShared {
    fn state(&self) -> DownloadState {
        *lock(&self.state)
    }

    /// Verifies and writes one piece, then records it. Blocking.
    fn store_piece(&self, index: u32, data: &[u8], now: SystemTime) -> Result<bool> {
        self.metainfo.verify_piece(index, data)?;
        let offset = self.metainfo.piece_offset(index);
        self.file
            .write_all_at(data, offset)
            .map_err(StoreError::io("write piece to", &self.data_path))?;
        // Only a record for diagnosis (staging never survives a restart), so no fsync.
        self.pieces
            .write_all_at(&[1], u64::from(index))
            .map_err(StoreError::io(
                "record piece in",
                self.dir.join(PIECES_FILE),
            ))?;
        {
            let mut last_write = lock(&self.last_write);
            *last_write = (*last_write).max(now);
        }
        // Set only after the bytes are in the file: whoever sees the bit can read the piece.
        Ok(self
            .progress
            .send_if_modified(|pieces| pieces.set(index, true)))
    }

    /// Extends the prefix hash over every consecutive piece now held. `just_written` is a
    /// piece still in memory, hashed from there rather than read back. Another thread already
    /// advancing the prefix will pick up this piece, so a busy lock is skipped, never waited for
    /// (the commit finishes whatever is left). Blocking; run it off the piece-write path, so a
    /// long catch-up never delays the next request.
    fn advance_prefix(&self, just_written: Option<(u32, &[u8])>) -> Result<()> {
        let Ok(mut prefix) = self.prefix.try_lock() else {
            return Ok(());
        };
        let mut buf = Vec::new();
        loop {
            let next = prefix.next;
            if next >= self.metainfo.num_pieces() || !self.progress.borrow().get(next) {
                return Ok(());
            }
            match just_written {
                Some((index, data)) if index == next => prefix.hasher.update(data),
                _ => {
                    let len = self.metainfo.piece_len(next)? as usize;
                    buf.resize(len, 0);
                    self.file
                        .read_exact_at(&mut buf, self.metainfo.piece_offset(next))
                        .map_err(StoreError::io("read download", &self.data_path))?;
                    prefix.hasher.update(&buf);
                }
            }
            prefix.next += 1;
        }
    }

    /// Makes the data durable and returns its sha256; drops the piece record, which has no
    /// place in a cache entry. Blocking.
    fn sync_and_hash(&self) -> Result<Digest> {
        self.file
            .sync_all()
            .map_err(StoreError::io("fsync download", &self.data_path))?;
        // Every piece is held: finish the prefix hash over what it has not covered yet.
        let mut prefix = lock(&self.prefix);
        let PrefixHash { hasher, next } = std::mem::replace(
            &mut *prefix,
            PrefixHash {
                hasher: Sha256Hasher::new(),
                next: 0,
            },
        );
        drop(prefix);
        let mut hasher = hasher;
        let mut buf = vec![0u8; 1 << 20];
        let length = self.metainfo.length();
        let mut offset = self.metainfo.piece_offset(next).min(length);
        while offset < length {
            let want =
                usize::try_from(length - offset).map_or(buf.len(), |left| left.min(buf.len()));
            let chunk = &mut buf[..want];
            self.file
                .read_exact_at(chunk, offset)
                .map_err(StoreError::io("read download", &self.data_path))?;
            hasher.update(chunk);
            offset += want as u64;
        }
        let pieces = self.dir.join(PIECES_FILE);
        match fs::remove_file(&pieces) {
            Err(error) if error.kind() != io::ErrorKind::NotFound => {
                return Err(StoreError::io("remove piece record", pieces)(error));
            }
            _ => {}
        }
        Ok(hasher.finish())
    }
}

/// Creates `downloads/<hex>/` with a sparse data file, a zeroed piece record and the metadata.
/// Blocking.
fn create_download_files(dir: &Path, metainfo: &MetaInfo, now: SystemTime) -> Result<(File, File)> {
    // Left by an earlier download of the same digest that ended without cleaning up (we hold
    // the digest lock and it is not in the map, so nobody uses it).
    if dir.exists() {
        fs::remove_dir_all(dir).map_err(StoreError::io("remove stale download", dir))?;
    }
    layout::create_dir_all(dir).map_err(StoreError::io("create download directory", dir))?;
    let create = |name: &str, len: u64| -> Result<File> {
        let path = dir.join(name);
        let file = layout::file_options()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(StoreError::io("create", &path))?;
        // Sparse: no disk space is used until pieces arrive.
        file.set_len(len).map_err(StoreError::io("size", &path))?;
        Ok(file)
    };
    let data = create(DATA_FILE, metainfo.length())?;
    let pieces = create(PIECES_FILE, u64::from(metainfo.num_pieces()))?;
    BlobMeta::new(
        *metainfo.digest(),
        metainfo.length(),
        false,
        now,
        Some(metainfo.clone()),
    )
    .write_new(&dir.join(META_FILE))?;
    Ok((data, pieces))
}
