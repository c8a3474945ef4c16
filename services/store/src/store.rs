//! The store: committed blobs, their metadata, capacity and idle cleanup. Uploads and downloads
//! add their own `impl BlobStore` blocks in `upload.rs` and `download.rs`.

use std::collections::HashMap;
use std::fmt;
use std::fs::{self, File};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use kraken_config::store::StoreConfig;
use kraken_core::sync::lock;
use kraken_core::{Digest, MetaInfo, PieceHashAlgorithm, PieceLengthPolicy};
use tokio::task::JoinHandle;
use tokio::time::{Instant, Interval, MissedTickBehavior};
use tokio_util::sync::CancellationToken;

use crate::StoreError;
use crate::download::DownloadShared;
use crate::error::Result;
use crate::index::Index;
use crate::layout::{DATA_FILE, Layout, META_FILE, UploadId};
use crate::locks::{DigestGuard, DigestLocks};
use crate::meta::{BlobMeta, sync_dir};
use crate::metrics as m;
use crate::reader::BlobReader;
use crate::recovery::{self, remove_path};
use crate::upload::UploadSlot;
use kraken_core::clock::{Clock, SystemClock};

/// In-memory last-access times reach the metadata files only when they moved by at least this
/// much: reads stay free of disk writes, and idle cleanup (hours) does not need more precision
/// after a restart.
const ACCESS_PERSIST_GRANULARITY: Duration = Duration::from_secs(60);
/// How often the background task writes changed access times.
const ACCESS_FLUSH_INTERVAL: Duration = Duration::from_secs(5 * 60);

/// A content-addressed blob store on local disk. Cheap to clone; clones share everything.
#[derive(Clone)]
pub struct BlobStore {
    pub(crate) inner: Arc<Inner>,
}

/// What the store knows about a committed blob.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlobInfo {
    pub digest: Digest,
    pub size: u64,
    /// Known for every blob this store committed; `None` only for entries written without it.
    pub metainfo: Option<MetaInfo>,
    /// Pinned: never evicted or cleaned up (not yet written back to storage).
    pub persist: bool,
    pub last_access: SystemTime,
}

/// How a committed upload is described and kept.
#[derive(Debug, Clone, Default)]
pub struct CommitOptions {
    /// Picks the piece length of the metainfo generated while the upload is hashed.
    pub piece_lengths: PieceLengthPolicy,
    pub piece_hash: PieceHashAlgorithm,
    /// Pin the blob (e.g. until a write-back to storage succeeds). Only applies if this commit
    /// stores the blob; an existing copy keeps its flag (see [`BlobStore::set_persist`]).
    pub persist: bool,
}

impl CommitOptions {
    pub fn persist(mut self, persist: bool) -> Self {
        self.persist = persist;
        self
    }
}

/// The result of a successful commit. Both variants carry metainfo computed from the verified
/// content, so the caller can announce the blob without reading it again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CommitOutcome {
    /// This call stored the blob.
    Stored(MetaInfo),
    /// An identical blob was already stored (another writer won the race); this copy was
    /// discarded.
    AlreadyExists(MetaInfo),
}

impl CommitOutcome {
    pub fn metainfo(&self) -> &MetaInfo {
        match self {
            Self::Stored(metainfo) | Self::AlreadyExists(metainfo) => metainfo,
        }
    }
}

/// What one idle-cleanup sweep removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CleanupReport {
    pub cache_blobs: usize,
    pub cache_bytes: u64,
    pub uploads: usize,
    pub downloads: usize,
}

impl BlobStore {
    /// Opens (or creates) the store under `config.dir` with the system clock. Discards staging
    /// left by a previous run and every cache entry that is not provably whole; see
    /// [`open_with_clock`](Self::open_with_clock).
    pub async fn open(config: StoreConfig) -> Result<Self> {
        Self::open_with_clock(config, Arc::new(SystemClock)).await
    }

    /// Like [`open`](Self::open) with an injected clock (tests, simulations).
    #[tracing::instrument(skip_all, fields(dir = %config.dir.display()))]
    pub async fn open_with_clock(config: StoreConfig, clock: Arc<dyn Clock>) -> Result<Self> {
        let layout = Layout::new(&config.dir);
        let scan = layout.clone();
        let recovered = blocking(move || recovery::recover(&scan)).await?;
        let mut index = Index::default();
        // Oldest first, so the recency order survives the restart.
        for blob in recovered {
            index.insert(blob.digest, blob.size, blob.persist, blob.last_access);
        }
        tracing::info!(
            blobs = index.len(),
            bytes = index.total_bytes(),
            "blob store opened"
        );
        m::record_totals(index.total_bytes(), index.len());
        let store = Self {
            inner: Arc::new(Inner {
                config,
                layout,
                clock,
                index: Mutex::new(index),
                locks: DigestLocks::default(),
                uploads: Mutex::new(HashMap::new()),
                downloads: Mutex::new(HashMap::new()),
                eviction: tokio::sync::Mutex::new(()),
            }),
        };
        // A capacity lowered since the last run applies right away.
        store.inner.enforce_capacity(None).await;
        Ok(store)
    }

    pub fn config(&self) -> &StoreConfig {
        &self.inner.config
    }

    /// Total bytes of committed blobs.
    pub fn stored_bytes(&self) -> u64 {
        self.inner.index().total_bytes()
    }

    /// Whether a blob is committed. Does not count as a read.
    pub fn contains(&self, digest: &Digest) -> bool {
        self.inner.index().contains(digest)
    }

    /// Every committed blob, sorted. Meant for tests and tooling, not request paths.
    pub fn list(&self) -> Vec<Digest> {
        self.inner.index().digests()
    }

    /// Size, metainfo, pin and last access of a committed blob, or `None`. Does not count as
    /// a read (existence checks should not keep a blob alive).
    #[tracing::instrument(skip_all, fields(digest = %digest))]
    pub async fn stat(&self, digest: &Digest) -> Result<Option<BlobInfo>> {
        let Some(entry) = self.inner.index().get(digest).cloned() else {
            return Ok(None);
        };
        let path = self.inner.layout.entry_dir(digest).join(META_FILE);
        let meta = match blocking(move || BlobMeta::read(&path)).await {
            Ok(meta) => meta,
            // Evicted or deleted between the index lookup and the read.
            Err(error) if error.is_not_found() && !self.contains(digest) => return Ok(None),
            Err(error) => return Err(error),
        };
        Ok(Some(BlobInfo {
            digest: *digest,
            size: entry.size,
            metainfo: meta.metainfo,
            persist: entry.pinned,
            last_access: entry.last_access,
        }))
    }

    /// Opens a committed blob for reading; counts as a read for LRU and idle cleanup.
    #[tracing::instrument(level = "debug", skip_all, fields(digest = %digest))]
    pub async fn open_blob(&self, digest: &Digest) -> Result<BlobReader> {
        let now = self.inner.clock.now();
        let size = self
            .inner
            .index()
            .touch(digest, now)
            .ok_or(StoreError::NotFound(*digest))?;
        let path = self.inner.layout.entry_dir(digest).join(DATA_FILE);
        let digest = *digest;
        blocking(move || match File::open(&path) {
            Ok(file) => Ok(BlobReader::new(digest, size, path, file)),
            // Evicted or deleted between the index lookup and the open.
            Err(error) if error.kind() == io::ErrorKind::NotFound => {
                Err(StoreError::NotFound(digest))
            }
            Err(error) => Err(StoreError::io("open blob", path)(error)),
        })
        .await
    }

    /// Reads `len` bytes at `offset` of a committed blob into memory (pieces, small ranges).
    // Debug level, like `write_piece`: called once per piece served, and at info every piece
    // would be an exported root trace of its own.
    #[tracing::instrument(level = "debug", skip_all, fields(digest = %digest, offset, len))]
    pub async fn read_range(&self, digest: &Digest, offset: u64, len: u64) -> Result<Bytes> {
        self.open_blob(digest).await?.read_at(offset, len).await
    }

    /// The metainfo of a committed blob (`None` if it has none); `NotFound` if not committed.
    #[tracing::instrument(skip_all, fields(digest = %digest))]
    pub async fn metainfo(&self, digest: &Digest) -> Result<Option<MetaInfo>> {
        let info = self
            .stat(digest)
            .await?
            .ok_or(StoreError::NotFound(*digest))?;
        Ok(info.metainfo)
    }

    /// Replaces the metainfo of a committed blob (e.g. with another piece length). Its digest
    /// and length must match the blob; its piece hashes are trusted, since checking them would
    /// mean reading the whole blob.
    #[tracing::instrument(skip_all, fields(digest = %metainfo.digest()))]
    pub async fn set_metainfo(&self, metainfo: &MetaInfo) -> Result<()> {
        let digest = *metainfo.digest();
        let guard = self.inner.locks.lock(digest).await;
        let size = self.inner.index().get(&digest).map(|entry| entry.size);
        let size = size.ok_or(StoreError::NotFound(digest))?;
        if metainfo.length() != size {
            return Err(StoreError::MetaInfoMismatch {
                digest,
                reason: format!(
                    "it describes {} bytes, the blob has {size}",
                    metainfo.length()
                ),
            });
        }
        let metainfo = metainfo.clone();
        self.inner
            .rewrite_meta(&guard, digest, move |meta| meta.metainfo = Some(metainfo))
            .await
    }

    /// Pins (`true`) or unpins a committed blob. A pinned blob is never evicted or cleaned up;
    /// unpinning lets capacity enforcement reclaim it right away if the store is over capacity.
    #[tracing::instrument(skip_all, fields(digest = %digest, persist))]
    pub async fn set_persist(&self, digest: &Digest, persist: bool) -> Result<()> {
        let guard = self.inner.locks.lock(*digest).await;
        if !self.inner.index().contains(digest) {
            return Err(StoreError::NotFound(*digest));
        }
        // Disk first: if the write fails, memory still agrees with what a restart would see.
        self.inner
            .rewrite_meta(&guard, *digest, move |meta| meta.persist = persist)
            .await?;
        self.inner.index().set_pinned(digest, persist);
        drop(guard);
        if !persist {
            self.inner.enforce_capacity(None).await;
        }
        Ok(())
    }

    /// Removes a committed blob, pinned or not. Open readers keep reading it.
    #[tracing::instrument(skip_all, fields(digest = %digest))]
    pub async fn delete(&self, digest: &Digest) -> Result<()> {
        let _guard = self.inner.locks.lock(*digest).await;
        self.inner
            .index()
            .remove(digest)
            .ok_or(StoreError::NotFound(*digest))?;
        self.inner.record_totals();
        self.inner.remove_entry_files(digest).await
    }

    /// Writes last-access times that moved noticeably since last persisted; returns how many.
    /// The cleanup task calls it periodically and on shutdown.
    pub async fn flush_access_times(&self) -> usize {
        let stale = self
            .inner
            .index()
            .stale_access_times(ACCESS_PERSIST_GRANULARITY);
        let mut written = 0;
        for (digest, _) in stale {
            // Busy blobs get their metadata rewritten by whoever holds the lock, or next time.
            let Some(guard) = self.inner.locks.try_lock(digest) else {
                continue;
            };
            if !self.inner.index().contains(&digest) {
                continue;
            }
            match self.inner.rewrite_meta(&guard, digest, |_| {}).await {
                Ok(()) => written += 1,
                Err(error) if error.is_not_found() => {}
                Err(error) => {
                    tracing::warn!(%digest, error = %error, "cannot persist last access time");
                }
            }
        }
        written
    }

    /// Removes, for each enabled kind, what has been idle longer than its `tti` at `now`:
    /// unpinned cache entries not read, uploads not written, downloads without a new piece.
    /// Failures are logged per entry; the sweep carries on.
    pub async fn cleanup_idle(&self, now: SystemTime) -> CleanupReport {
        let config = &self.inner.config;
        let mut report = CleanupReport::default();
        if config.cache_cleanup.enable {
            (report.cache_blobs, report.cache_bytes) = self.inner.sweep_cache(now).await;
        }
        if config.upload_cleanup.enable {
            report.uploads = self.inner.sweep_uploads(now).await;
        }
        if config.download_cleanup.enable {
            report.downloads = self.inner.sweep_downloads(now).await;
        }
        self.inner.locks.prune();
        report
    }

    /// Runs each enabled cleanup every `interval` (and persists access times) until `shutdown`
    /// fires; a last flush of access times happens on the way out.
    pub fn spawn_cleanup(&self, shutdown: CancellationToken) -> JoinHandle<()> {
        let store = self.clone();
        tokio::spawn(async move { store.run_cleanup(shutdown).await })
    }

    async fn run_cleanup(&self, shutdown: CancellationToken) {
        let config = &self.inner.config;
        let (cache_on, uploads_on, downloads_on) = (
            config.cache_cleanup.enable,
            config.upload_cleanup.enable,
            config.download_cleanup.enable,
        );
        let mut cache = ticker(config.cache_cleanup.interval);
        let mut uploads = ticker(config.upload_cleanup.interval);
        let mut downloads = ticker(config.download_cleanup.interval);
        let mut flush = ticker(ACCESS_FLUSH_INTERVAL);
        loop {
            tokio::select! {
                () = shutdown.cancelled() => break,
                _ = cache.tick(), if cache_on => {
                    let (blobs, bytes) = self.inner.sweep_cache(self.inner.clock.now()).await;
                    if blobs > 0 {
                        tracing::info!(blobs, bytes, "removed idle blobs");
                    }
                }
                _ = uploads.tick(), if uploads_on => {
                    self.inner.sweep_uploads(self.inner.clock.now()).await;
                }
                _ = downloads.tick(), if downloads_on => {
                    self.inner.sweep_downloads(self.inner.clock.now()).await;
                }
                _ = flush.tick() => {
                    self.flush_access_times().await;
                    self.inner.locks.prune();
                }
            }
        }
        self.flush_access_times().await;
    }
}

impl fmt::Debug for BlobStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let index = self.inner.index();
        f.debug_struct("BlobStore")
            .field("dir", &self.inner.layout.root)
            .field("blobs", &index.len())
            .field("bytes", &index.total_bytes())
            .finish()
    }
}

/// State shared by the store and the download handles it gives out.
pub(crate) struct Inner {
    pub(crate) config: StoreConfig,
    pub(crate) layout: Layout,
    pub(crate) clock: Arc<dyn Clock>,
    index: Mutex<Index>,
    pub(crate) locks: DigestLocks,
    pub(crate) uploads: Mutex<HashMap<UploadId, Arc<UploadSlot>>>,
    pub(crate) downloads: Mutex<HashMap<Digest, Arc<DownloadShared>>>,
    /// One eviction pass at a time, so concurrent commits do not each evict for the same excess.
    eviction: tokio::sync::Mutex<()>,
}

impl Inner {
    pub(crate) fn index(&self) -> MutexGuard<'_, Index> {
        lock(&self.index)
    }

    fn record_totals(&self) {
        let index = self.index();
        m::record_totals(index.total_bytes(), index.len());
    }

    /// Moves a verified staging directory (holding `data`) into the cache under the digest lock
    /// the caller holds. The staging directory is gone afterwards whatever the outcome.
    pub(crate) async fn commit_staged(
        &self,
        _guard: &DigestGuard<'_>,
        staging: PathBuf,
        metainfo: MetaInfo,
        persist: bool,
        source: &'static str,
    ) -> Result<CommitOutcome> {
        let digest = *metainfo.digest();
        let now = self.clock.now();
        // A second writer of the same content counts as interest in it: refresh its recency.
        if self.index().touch(&digest, now).is_some() {
            self.discard(staging).await;
            metrics::counter!(m::COMMITS, "source" => source, "outcome" => "already_exists")
                .increment(1);
            tracing::debug!(%digest, "blob already stored; staged copy discarded");
            return Ok(CommitOutcome::AlreadyExists(metainfo));
        }
        let size = metainfo.length();
        let meta = BlobMeta::new(digest, size, persist, now, Some(metainfo.clone()));
        let (cache, shard, entry) = (
            self.layout.cache.clone(),
            self.layout.shard_dir(&digest),
            self.layout.entry_dir(&digest),
        );
        let stale = self.layout.temp_path();
        let staged = staging.clone();
        let moved = blocking(move || {
            meta.write_new(&staged.join(META_FILE))?;
            sync_dir(&staged)?;
            create_shard(&cache, &shard)?;
            // Not in the index, yet on disk: debris of an interrupted operation (we hold the
            // digest lock, so nobody else is using it). Out of the way, or rename would fail.
            if entry.exists() {
                tracing::warn!(path = %entry.display(), "replacing unindexed cache entry");
                move_out(&entry, &stale)?;
            }
            fs::rename(&staged, &entry).map_err(|source| StoreError::Rename {
                from: staged.clone(),
                to: entry.clone(),
                source,
            })?;
            // The blob is in place; from here a failure only leaves durability in doubt, so it
            // is logged, not returned (the content itself was fsynced before the rename).
            let parent = staged.parent().map(Path::to_path_buf);
            for dir in std::iter::once(shard).chain(parent) {
                if let Err(error) = sync_dir(&dir) {
                    tracing::warn!(error = %error, "cannot make commit durable");
                }
            }
            Ok(())
        })
        .await;
        if let Err(error) = moved {
            self.discard(staging).await;
            return Err(error);
        }
        self.index().insert(digest, size, persist, now);
        self.record_totals();
        metrics::counter!(m::COMMITS, "source" => source, "outcome" => "stored").increment(1);
        metrics::counter!(m::COMMITTED_BYTES, "source" => source).increment(size);
        tracing::debug!(%digest, size, persist, "blob committed");
        Ok(CommitOutcome::Stored(metainfo))
    }

    /// Rewrites a committed blob's metadata under the digest lock the caller holds, carrying
    /// the in-memory last access along for free.
    async fn rewrite_meta(
        &self,
        _guard: &DigestGuard<'_>,
        digest: Digest,
        change: impl FnOnce(&mut BlobMeta) + Send + 'static,
    ) -> Result<()> {
        let last_access = self.index().get(&digest).map(|entry| entry.last_access);
        let dir = self.layout.entry_dir(&digest);
        let temp = self.layout.temp_path();
        blocking(move || {
            let mut meta = BlobMeta::read(&dir.join(META_FILE))?;
            change(&mut meta);
            if let Some(at) = last_access {
                meta.set_last_access(at.max(meta.last_access()));
            }
            meta.replace(&dir, &temp)
        })
        .await?;
        if let Some(at) = last_access {
            self.index().mark_access_persisted(&digest, at);
        }
        Ok(())
    }

    /// Evicts least recently used unpinned blobs until the total fits the capacity. `protect`
    /// is the blob a commit just stored, never chosen by its own commit. Blobs another
    /// operation holds are skipped; they are reconsidered by the next pass.
    pub(crate) async fn enforce_capacity(&self, protect: Option<Digest>) {
        let capacity = self.config.capacity.as_u64();
        if capacity == 0 {
            return;
        }
        self.evict_down_to(capacity, protect).await;
    }

    /// Evicts least recently used unpinned blobs until the stored total is at most `target`
    /// (or nothing more can go), never `protect`.
    pub(crate) async fn evict_down_to(&self, target: u64, protect: Option<Digest>) {
        let _pass = self.eviction.lock().await;
        let candidates = self.index().eviction_candidates(target, protect.as_ref());
        for digest in candidates {
            if self.index().total_bytes() <= target {
                break;
            }
            let Some(_guard) = self.locks.try_lock(digest) else {
                continue;
            };
            let removed = {
                let mut index = self.index();
                match index.get(&digest) {
                    Some(entry) if !entry.pinned => index.remove(&digest),
                    _ => None,
                }
            };
            let Some(entry) = removed else {
                continue;
            };
            if let Err(error) = self.remove_entry_files(&digest).await {
                tracing::warn!(%digest, error = %error, "cannot remove evicted blob");
            }
            metrics::counter!(m::EVICTIONS).increment(1);
            metrics::counter!(m::EVICTED_BYTES).increment(entry.size);
            tracing::debug!(%digest, size = entry.size, "evicted blob");
        }
        self.record_totals();
        let total = self.index().total_bytes();
        if total > target {
            tracing::warn!(
                total,
                target,
                "the store cannot shrink further: the remaining blobs are pinned, in use or \
                 just stored"
            );
        }
    }

    /// Makes room on the disk for a new download of `needed` bytes before any of it is
    /// written, so a download that cannot fit is refused at once instead of failing midway:
    /// the downloads in progress keep what they still need, and least recently used unpinned
    /// blobs are evicted for the rest.
    pub(crate) async fn ensure_room(&self, digest: Digest, needed: u64) -> Result<()> {
        let reserved = self.reserved_by_downloads();
        let free = self.free_disk_space()?;
        let wanted = needed.saturating_add(reserved);
        if free >= wanted {
            return Ok(());
        }
        let shortfall = wanted - free;
        let total = self.index().total_bytes();
        self.evict_down_to(total.saturating_sub(shortfall), None)
            .await;
        let free = self.free_disk_space()?;
        if free >= wanted {
            return Ok(());
        }
        let unevictable = self.index().total_bytes();
        metrics::counter!(m::REFUSED_DOWNLOADS).increment(1);
        Err(StoreError::NoSpace {
            digest,
            needed,
            available: free,
            reserved,
            unevictable,
        })
    }

    /// Bytes the downloads in progress have still to write.
    fn reserved_by_downloads(&self) -> u64 {
        lock(&self.downloads)
            .values()
            .map(|download| download.remaining_bytes())
            .sum()
    }

    /// Bytes an unprivileged writer may still use on the store's filesystem.
    fn free_disk_space(&self) -> Result<u64> {
        let root = &self.layout.root;
        let stats = rustix::fs::statvfs(root)
            .map_err(|errno| StoreError::io("statvfs", root)(std::io::Error::from(errno)))?;
        Ok(stats.f_bavail.saturating_mul(stats.f_frsize))
    }

    /// Removes unpinned blobs not read since `now - tti`. Returns (blobs, bytes) removed.
    async fn sweep_cache(&self, now: SystemTime) -> (usize, u64) {
        let Some(cutoff) = now.checked_sub(self.config.cache_cleanup.tti) else {
            return (0, 0);
        };
        let idle = self.index().idle_before(cutoff);
        let (mut blobs, mut bytes) = (0, 0);
        for digest in idle {
            let Some(_guard) = self.locks.try_lock(digest) else {
                continue;
            };
            // Re-check under the lock: it may have been read or pinned since the scan.
            let removed = {
                let mut index = self.index();
                match index.get(&digest) {
                    Some(entry) if !entry.pinned && entry.last_access < cutoff => {
                        index.remove(&digest)
                    }
                    _ => None,
                }
            };
            let Some(entry) = removed else {
                continue;
            };
            if let Err(error) = self.remove_entry_files(&digest).await {
                tracing::warn!(%digest, error = %error, "cannot remove idle blob");
            }
            metrics::counter!(m::CLEANUP_REMOVED, "kind" => "cache").increment(1);
            blobs += 1;
            bytes += entry.size;
        }
        self.record_totals();
        (blobs, bytes)
    }

    /// Takes a committed entry off disk. It is first renamed into `tmp/` so it disappears in
    /// one step; a crash during the recursive removal leaves debris only where start-up clears.
    pub(crate) async fn remove_entry_files(&self, digest: &Digest) -> Result<()> {
        let entry = self.layout.entry_dir(digest);
        let temp = self.layout.temp_path();
        blocking(move || move_out(&entry, &temp)).await
    }

    /// Best-effort removal of a staging directory (failures are logged).
    pub(crate) async fn discard(&self, path: PathBuf) {
        let _ = blocking(move || {
            remove_path(&path);
            Ok(())
        })
        .await;
    }
}

/// Renames `path` to `temp` and removes it there; a missing `path` is fine. Blocking.
fn move_out(path: &Path, temp: &Path) -> Result<()> {
    match fs::rename(path, temp) {
        Ok(()) => {
            remove_path(temp);
            Ok(())
        }
        Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(StoreError::Rename {
            from: path.to_path_buf(),
            to: temp.to_path_buf(),
            source,
        }),
    }
}

/// Creates `cache/aa/bb` if missing and makes the new directories durable. Blocking.
fn create_shard(cache: &Path, shard: &Path) -> Result<()> {
    if shard.is_dir() {
        return Ok(());
    }
    crate::layout::create_dir_all(shard)
        .map_err(StoreError::io("create shard directory", shard))?;
    if let Some(parent) = shard.parent() {
        sync_dir(parent)?;
    }
    sync_dir(cache)
}

fn ticker(period: Duration) -> Interval {
    // `interval` panics on a zero period; config validation should prevent it, but a sweep
    // storm is better than a panic.
    let period = period.max(Duration::from_secs(1));
    let mut interval = tokio::time::interval_at(Instant::now() + period, period);
    interval.set_missed_tick_behavior(MissedTickBehavior::Delay);
    interval
}

/// Runs blocking file work off the async runtime.
pub(crate) async fn blocking<T, F>(work: F) -> Result<T>
where
    F: FnOnce() -> Result<T> + Send + 'static,
    T: Send + 'static,
{
    tokio::task::spawn_blocking(work)
        .await
        .map_err(StoreError::TaskFailed)?
}
