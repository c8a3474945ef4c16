//! Getting a blob's bytes: from the store when it is held, otherwise through the swarm, streamed
//! in piece order as pieces are verified.
//!
//! Every stream is fed by a producer task through a bounded channel, so memory per stream stays
//! constant (a few chunks) whatever the blob size, and a slow reader slows its producer instead
//! of growing a buffer. A swarm stream holds its newest chunk back until the whole blob has been
//! verified: the reader gets its last byte only once the digest matched, and a failed check ends
//! the stream with an error instead.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures::future::{BoxFuture, FutureExt, Shared};
use futures::{Stream, StreamExt};
use kraken_core::sync::lock;
use kraken_core::{Bitfield, Digest, MetaInfo, Namespace};
use kraken_oci::{MAX_MANIFEST_SIZE, Manifest};
use kraken_scheduler::{BlobState, Download, Scheduler, Status};
use kraken_store::{BlobReader, BlobStore, DownloadHandle, StoreError};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;

use crate::error::AgentError;
use crate::metrics as m;
use crate::tracker::{TrackerClient, TrackerError};

/// Largest chunk a blob stream yields (and so the largest gRPC message it produces).
pub const STREAM_CHUNK: usize = 1 << 20;
/// Chunks buffered between a producer and its reader.
const CHANNEL_DEPTH: usize = 4;
/// How often a blob the scheduler reports stored may vanish (evicted) before we open it.
const EVICTED_RETRIES: u32 = 3;
/// How often Preload reports progress (when there is any).
const PROGRESS_INTERVAL: Duration = Duration::from_millis(100);

/// Where a stream's bytes come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlobSource {
    /// The local store held the whole, verified blob.
    Store,
    /// The blob is being downloaded through the swarm; bytes flow as pieces are verified.
    Swarm,
}

impl BlobSource {
    fn label(self) -> &'static str {
        match self {
            Self::Store => "store",
            Self::Swarm => "swarm",
        }
    }
}

/// A blob's bytes (or a range of them) as a stream of chunks of at most [`STREAM_CHUNK`].
///
/// It yields exactly [`len`](Self::len) bytes and then ends, or ends with an error; it never
/// yields its final chunk before the whole blob has been verified against its digest. Dropping
/// it stops the producer (the swarm download itself carries on, so other readers and peers keep
/// their progress).
pub struct BlobStream {
    digest: Digest,
    size: u64,
    offset: u64,
    len: u64,
    source: BlobSource,
    chunks: mpsc::Receiver<Result<Bytes, AgentError>>,
}

impl BlobStream {
    pub fn digest(&self) -> &Digest {
        &self.digest
    }

    /// Length of the whole blob.
    pub fn blob_size(&self) -> u64 {
        self.size
    }

    /// Where in the blob the stream starts.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// Bytes the stream yields in all (what a `Content-Length` would say).
    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn source(&self) -> BlobSource {
        self.source
    }
}

impl Stream for BlobStream {
    type Item = Result<Bytes, AgentError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.chunks.poll_recv(cx)
    }
}

impl std::fmt::Debug for BlobStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BlobStream")
            .field("digest", &self.digest)
            .field("size", &self.size)
            .field("offset", &self.offset)
            .field("len", &self.len)
            .field("source", &self.source)
            .finish_non_exhaustive()
    }
}

/// Download progress of one blob, for Preload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Progress {
    pub(crate) bytes_done: u64,
    pub(crate) bytes_total: u64,
    pub(crate) done: bool,
}

type MetaInfoLookup = Shared<BoxFuture<'static, Result<MetaInfo, TrackerError>>>;

/// The blob-fetching machinery shared by the gRPC service and [`crate::Agent::fetch`].
pub(crate) struct Fetcher {
    store: BlobStore,
    scheduler: Scheduler,
    tracker: TrackerClient,
    /// Metainfo lookups in flight: concurrent requests for a blob share one, so a burst of
    /// readers costs the tracker one request (and one wait while the origin fetches).
    lookups: Arc<Mutex<HashMap<(Namespace, Digest), MetaInfoLookup>>>,
    /// How long the last lookups waited for their metainfo, newest last, for
    /// `kraken agent status` (bounded: [`METAINFO_WAITS_KEPT`]).
    metainfo_waits: Arc<Mutex<std::collections::VecDeque<(Digest, Duration)>>>,
    shutdown: CancellationToken,
}

/// How many metainfo waits [`Fetcher::metainfo_wait`] remembers: a few more than the
/// scheduler's recent downloads, which they are shown beside.
const METAINFO_WAITS_KEPT: usize = kraken_scheduler::RECENT_DOWNLOADS * 2;

impl std::fmt::Debug for Fetcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fetcher")
            .field("lookups_in_flight", &lock(&self.lookups).len())
            .finish_non_exhaustive()
    }
}

/// A blob a request can read: held, or being downloaded.
enum Joined {
    Stored(BlobReader),
    Downloading {
        metainfo: MetaInfo,
        download: Download,
        handle: DownloadHandle,
    },
}

impl Fetcher {
    pub(crate) fn new(
        store: BlobStore,
        scheduler: Scheduler,
        tracker: TrackerClient,
        shutdown: CancellationToken,
    ) -> Self {
        Self {
            store,
            scheduler,
            tracker,
            lookups: Arc::default(),
            metainfo_waits: Arc::default(),
            shutdown,
        }
    }

    /// How long the last lookup of `digest`'s metainfo waited, if it is still remembered.
    pub(crate) fn metainfo_wait(&self, digest: &Digest) -> Option<Duration> {
        lock(&self.metainfo_waits)
            .iter()
            .rev()
            .find(|(d, _)| d == digest)
            .map(|(_, wait)| *wait)
    }

    pub(crate) fn store(&self) -> &BlobStore {
        &self.store
    }

    pub(crate) fn scheduler(&self) -> &Scheduler {
        &self.scheduler
    }

    /// `length` bytes (or the rest of the blob) from `offset`. Resolves the blob first, so
    /// `NotFound`, `OutOfRange` and tracker errors come from here, not from the stream.
    pub(crate) async fn fetch(
        &self,
        namespace: &Namespace,
        digest: &Digest,
        offset: u64,
        length: Option<u64>,
        method: &'static str,
    ) -> Result<BlobStream, AgentError> {
        // The range is checked as soon as the size is known, before a download starts.
        let check = |size| resolve_range(digest, offset, length, size).map(drop);
        let joined = self
            .until_shutdown(self.join(namespace, digest, check))
            .await?;
        let (chunks_tx, chunks) = mpsc::channel(CHANNEL_DEPTH);
        let stream = match joined {
            Joined::Stored(reader) => {
                let size = reader.size();
                let (offset, len) = resolve_range(digest, offset, length, size)?;
                let emitter = Emitter::new(chunks_tx, false);
                tokio::spawn(stream_stored(reader, offset, len, emitter));
                BlobStream {
                    digest: *digest,
                    size,
                    offset,
                    len,
                    source: BlobSource::Store,
                    chunks,
                }
            }
            Joined::Downloading {
                metainfo,
                download,
                handle,
            } => {
                let (offset, len) = resolve_range(digest, offset, length, metainfo.length())?;
                let emitter = Emitter::new(chunks_tx, true);
                let producer = SwarmProducer {
                    metainfo: metainfo.clone(),
                    download,
                    handle,
                    offset,
                    len,
                    started: Instant::now(),
                    shutdown: self.shutdown.clone(),
                };
                tokio::spawn(producer.run(emitter));
                BlobStream {
                    digest: *digest,
                    size: metainfo.length(),
                    offset,
                    len,
                    source: BlobSource::Swarm,
                    chunks,
                }
            }
        };
        metrics::counter!(m::BLOB_REQUESTS, "method" => method, "source" => stream.source.label())
            .increment(1);
        Ok(stream)
    }

    /// A manifest's bytes and parsed form, fetched like any blob (through the swarm unless
    /// held). A blob too large or not parseable as a manifest is [`AgentError::NotAManifest`].
    pub(crate) async fn manifest(
        &self,
        namespace: &Namespace,
        digest: &Digest,
    ) -> Result<(Bytes, Manifest), AgentError> {
        let mut stream = self.fetch(namespace, digest, 0, None, "manifest").await?;
        let size = stream.blob_size();
        if size > MAX_MANIFEST_SIZE as u64 {
            return Err(AgentError::NotAManifest {
                digest: *digest,
                reason: format!(
                    "{size} bytes is above the {MAX_MANIFEST_SIZE} byte manifest limit"
                ),
            });
        }
        let mut body = BytesMut::with_capacity(size as usize);
        while let Some(chunk) = stream.next().await {
            body.extend_from_slice(&chunk?);
        }
        let body = body.freeze();
        let manifest = Manifest::parse(None, &body).map_err(|error| AgentError::NotAManifest {
            digest: *digest,
            reason: error.to_string(),
        })?;
        Ok((body, manifest))
    }

    /// Every blob of the image `digest` names, manifests first: for an index, each child
    /// manifest and then its config and layers. Foreign layers are skipped (they are not in the
    /// registry). Each digest appears once.
    pub(crate) async fn image_blobs(
        &self,
        namespace: &Namespace,
        digest: &Digest,
    ) -> Result<Vec<Digest>, AgentError> {
        let (_, manifest) = self.manifest(namespace, digest).await?;
        let mut blobs = vec![*digest];
        if manifest.is_index() {
            for child in manifest.references() {
                let (_, child_manifest) = self.manifest(namespace, &child).await?;
                blobs.push(child);
                blobs.extend(child_manifest.references());
            }
        } else {
            blobs.extend(manifest.references());
        }
        let mut seen = std::collections::HashSet::new();
        blobs.retain(|digest| seen.insert(*digest));
        Ok(blobs)
    }

    /// The blob's size without downloading it: from the store when held, else from its
    /// metainfo (what a registry `HEAD` answers).
    pub(crate) async fn size(
        &self,
        namespace: &Namespace,
        digest: &Digest,
    ) -> Result<u64, AgentError> {
        if let Some(info) = self.store.stat(digest).await? {
            return Ok(info.size);
        }
        let info = self
            .until_shutdown(self.metainfo(namespace, digest))
            .await?;
        Ok(info.length())
    }

    /// Downloads a blob into the store (unless held), reporting progress until it is verified.
    pub(crate) async fn preload(
        &self,
        namespace: &Namespace,
        digest: &Digest,
    ) -> Result<mpsc::Receiver<Result<Progress, AgentError>>, AgentError> {
        let joined = self
            .until_shutdown(self.join(namespace, digest, |_| Ok(())))
            .await?;
        let (progress_tx, progress) = mpsc::channel(CHANNEL_DEPTH);
        match joined {
            Joined::Stored(reader) => {
                metrics::counter!(m::BLOB_REQUESTS, "method" => "preload", "source" => "store")
                    .increment(1);
                let size = reader.size();
                let _ = progress_tx.try_send(Ok(Progress {
                    bytes_done: size,
                    bytes_total: size,
                    done: true,
                }));
            }
            Joined::Downloading {
                metainfo,
                download,
                handle,
            } => {
                metrics::counter!(m::BLOB_REQUESTS, "method" => "preload", "source" => "swarm")
                    .increment(1);
                tokio::spawn(report_progress(
                    metainfo,
                    download,
                    handle,
                    progress_tx,
                    self.shutdown.clone(),
                ));
            }
        }
        Ok(progress)
    }

    /// The blob, held or joined to the swarm download (started if none is running). `check`
    /// vets the request against the blob's size before any download starts.
    async fn join(
        &self,
        namespace: &Namespace,
        digest: &Digest,
        check: impl Fn(u64) -> Result<(), AgentError>,
    ) -> Result<Joined, AgentError> {
        if let Some(reader) = self.open_stored(digest, &check).await? {
            return Ok(Joined::Stored(reader));
        }
        let metainfo = self.metainfo(namespace, digest).await?;
        check(metainfo.length())?;
        // The scheduler sees out a closing download itself; only an eviction between its answer
        // and our open sends us back to it.
        for _ in 0..EVICTED_RETRIES {
            match self.scheduler.download(namespace, &metainfo).await? {
                BlobState::Downloading(download) => {
                    return Ok(Joined::Downloading {
                        handle: download.handle.clone(),
                        metainfo,
                        download,
                    });
                }
                BlobState::Stored => {
                    if let Some(reader) = self.open_stored(digest, &check).await? {
                        return Ok(Joined::Stored(reader));
                    }
                }
            }
        }
        Err(AgentError::DownloadFailed {
            digest: *digest,
            reason: "the blob was evicted from the store as soon as it was stored; try again"
                .into(),
        })
    }

    /// The blob from the store, `None` when it is not held (or evicted while we opened it).
    async fn open_stored(
        &self,
        digest: &Digest,
        check: &impl Fn(u64) -> Result<(), AgentError>,
    ) -> Result<Option<BlobReader>, AgentError> {
        if !self.store.contains(digest) {
            return Ok(None);
        }
        match self.store.open_blob(digest).await {
            Ok(reader) => {
                check(reader.size())?;
                Ok(Some(reader))
            }
            Err(error) if error.is_not_found() => Ok(None),
            Err(error) => Err(error.into()),
        }
    }

    /// The blob's metainfo from the tracker, sharing a lookup already in flight. The lookup
    /// runs in its own task, so a caller that gives up does not cancel it for the others; it
    /// removes itself from the table when it ends.
    async fn metainfo(
        &self,
        namespace: &Namespace,
        digest: &Digest,
    ) -> Result<MetaInfo, AgentError> {
        let key = (namespace.clone(), *digest);
        let lookup = lock(&self.lookups)
            .entry(key.clone())
            .or_insert_with(|| {
                let (tracker, lookups, waits, shutdown) = (
                    self.tracker.clone(),
                    self.lookups.clone(),
                    self.metainfo_waits.clone(),
                    self.shutdown.clone(),
                );
                // In the first caller's span: its trace goes on to the tracker and origin.
                let task = tokio::spawn(
                    async move {
                        let started = Instant::now();
                        let result = tokio::select! {
                            result = tracker.get_metainfo(&key.0, &key.1) => result,
                            _ = shutdown.cancelled() => Err(TrackerError::LookupAborted),
                        };
                        if result.is_ok() {
                            let mut waits = lock(&waits);
                            if waits.len() == METAINFO_WAITS_KEPT {
                                waits.pop_front();
                            }
                            waits.push_back((key.1, started.elapsed()));
                        }
                        lock(&lookups).remove(&key);
                        result
                    }
                    .in_current_span(),
                );
                async move { task.await.unwrap_or(Err(TrackerError::LookupAborted)) }
                    .boxed()
                    .shared()
            })
            .clone();
        Ok(lookup.await?)
    }

    async fn until_shutdown<T>(
        &self,
        work: impl Future<Output = Result<T, AgentError>>,
    ) -> Result<T, AgentError> {
        tokio::select! {
            result = work => result,
            _ = self.shutdown.cancelled() => Err(AgentError::ShuttingDown),
        }
    }
}

/// Checks a requested range against the blob size; returns `(offset, len)`.
fn resolve_range(
    digest: &Digest,
    offset: u64,
    length: Option<u64>,
    size: u64,
) -> Result<(u64, u64), AgentError> {
    let len = length.unwrap_or_else(|| size.saturating_sub(offset));
    match offset.checked_add(len) {
        Some(end) if offset <= size && end <= size => Ok((offset, len)),
        _ => Err(AgentError::OutOfRange {
            digest: *digest,
            offset,
            length,
            size,
        }),
    }
}

/// The reader went away: stop producing.
struct Gone;

/// The sending half of a blob stream. With `hold_last`, the newest chunk stays back until
/// [`finish`](Self::finish): that is what keeps an unverified blob's last byte from a reader.
struct Emitter {
    tx: mpsc::Sender<Result<Bytes, AgentError>>,
    hold_last: bool,
    held: Option<Bytes>,
}

impl Emitter {
    fn new(tx: mpsc::Sender<Result<Bytes, AgentError>>, hold_last: bool) -> Self {
        Self {
            tx,
            hold_last,
            held: None,
        }
    }

    async fn push(&mut self, chunk: Bytes) -> Result<(), Gone> {
        if chunk.is_empty() {
            return Ok(());
        }
        let ready = if self.hold_last {
            self.held.replace(chunk)
        } else {
            Some(chunk)
        };
        match ready {
            Some(chunk) => self.send(chunk).await,
            None => Ok(()),
        }
    }

    async fn send(&mut self, chunk: Bytes) -> Result<(), Gone> {
        let len = chunk.len() as u64;
        self.tx.send(Ok(chunk)).await.map_err(|_| Gone)?;
        metrics::counter!(m::SERVED_BYTES).increment(len);
        Ok(())
    }

    /// Releases the held chunk: the content has been verified.
    async fn finish(mut self) {
        if let Some(last) = self.held.take() {
            let _ = self.send(last).await;
        }
    }

    /// Ends the stream with an error; the held chunk is dropped.
    async fn fail(self, error: AgentError) {
        tracing::warn!(error = %kraken_core::error_chain(&error), "blob stream failed");
        let _ = self.tx.send(Err(error)).await;
    }
}

/// Streams a committed blob in [`STREAM_CHUNK`]s.
async fn stream_stored(reader: BlobReader, offset: u64, len: u64, mut emitter: Emitter) {
    let end = offset + len;
    let mut position = offset;
    while position < end {
        let want = (end - position).min(STREAM_CHUNK as u64);
        let chunk = tokio::select! {
            chunk = reader.read_at(position, want) => chunk,
            _ = emitter.tx.closed() => return,
        };
        match chunk {
            Ok(chunk) => {
                if emitter.push(chunk).await.is_err() {
                    return;
                }
            }
            Err(error) => return emitter.fail(error.into()).await,
        }
        position += want;
    }
    emitter.finish().await;
}

/// Streams a range of a blob being downloaded, piece by piece as each is verified.
struct SwarmProducer {
    metainfo: MetaInfo,
    download: Download,
    handle: DownloadHandle,
    offset: u64,
    len: u64,
    started: Instant,
    shutdown: CancellationToken,
}

/// Why a swarm stream stopped early.
enum Stop {
    Gone,
    Failed(AgentError),
}

impl From<Gone> for Stop {
    fn from(_: Gone) -> Self {
        Self::Gone
    }
}

impl SwarmProducer {
    async fn run(mut self, mut emitter: Emitter) {
        let closed = emitter.tx.clone();
        let shutdown = self.shutdown.clone();
        let digest = *self.metainfo.digest();
        let outcome = tokio::select! {
            outcome = self.produce(&mut emitter) => outcome,
            _ = closed.closed() => Err(Stop::Gone),
            _ = shutdown.cancelled() => Err(Stop::Failed(AgentError::ShuttingDown)),
        };
        drop(closed);
        match outcome {
            Ok(()) => {
                metrics::histogram!(m::DOWNLOAD_SECONDS)
                    .record(self.started.elapsed().as_secs_f64());
                tracing::debug!(%digest, "blob verified; stream complete");
                emitter.finish().await;
            }
            Err(Stop::Gone) => {}
            Err(Stop::Failed(error)) => emitter.fail(error).await,
        }
    }

    async fn produce(&mut self, emitter: &mut Emitter) -> Result<(), Stop> {
        if self.len > 0 {
            let piece_length = self.metainfo.piece_length();
            let end = self.offset + self.len;
            let first = u32::try_from(self.offset / piece_length).unwrap_or(u32::MAX);
            let last = u32::try_from((end - 1) / piece_length).unwrap_or(u32::MAX);
            // Pieces already held are coalesced up to a full chunk; a piece still missing
            // flushes what is ready first, so the reader never waits on bytes we have.
            let mut ready = BytesMut::new();
            for index in first..=last {
                if !ready.is_empty() && !self.handle.has_piece(index) {
                    emitter.push(ready.split().freeze()).await?;
                }
                let piece = self.verified_piece(index).await?;
                let start = self.metainfo.piece_offset(index);
                let from = self.offset.saturating_sub(start) as usize;
                let to = (end.min(start + piece.len() as u64) - start) as usize;
                let mut rest = piece.slice(from..to);
                while !rest.is_empty() {
                    if ready.is_empty() && rest.len() >= STREAM_CHUNK {
                        emitter.push(rest.split_to(STREAM_CHUNK)).await?;
                        continue;
                    }
                    let take = (STREAM_CHUNK - ready.len()).min(rest.len());
                    ready.extend_from_slice(&rest.split_to(take));
                    if ready.len() == STREAM_CHUNK {
                        emitter.push(ready.split().freeze()).await?;
                    }
                }
            }
            if !ready.is_empty() {
                emitter.push(ready.split().freeze()).await?;
            }
        }
        // Every byte asked for is out but the last chunk; it goes only once the whole blob
        // matched its digest.
        self.download
            .wait()
            .await
            .map_err(|error| Stop::Failed(error.into()))
    }

    async fn verified_piece(&self, index: u32) -> Result<Bytes, Stop> {
        let read = async {
            self.handle.wait_for_piece(index).await?;
            self.handle.read_piece(index).await
        };
        read.await
            .map_err(|error| Stop::Failed(download_error(&self.download, error)))
    }
}

/// A store error met while following a download, explained by the download's status when it
/// ended (failed verification, removed, gave up on idle peers).
fn download_error(download: &Download, error: StoreError) -> AgentError {
    match (&*download.status.borrow(), error) {
        (Status::Failed(failure), _) => AgentError::DownloadFailed {
            digest: download.digest,
            reason: kraken_core::error_chain(failure),
        },
        (_, error @ StoreError::DownloadClosed { .. }) => AgentError::DownloadFailed {
            digest: download.digest,
            reason: error.to_string(),
        },
        (_, error) => error.into(),
    }
}

/// Sends Preload progress until the download is verified (then a final `done`) or fails.
async fn report_progress(
    metainfo: MetaInfo,
    mut download: Download,
    handle: DownloadHandle,
    progress: mpsc::Sender<Result<Progress, AgentError>>,
    shutdown: CancellationToken,
) {
    let total = metainfo.length();
    let mut tick = tokio::time::interval(PROGRESS_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut reported = None;
    let waiter = progress.clone();
    let finished = download.wait();
    tokio::pin!(finished);
    let last = loop {
        tokio::select! {
            result = &mut finished => {
                break result.map_err(AgentError::from).map(|()| Progress {
                    bytes_done: total,
                    bytes_total: total,
                    done: true,
                });
            }
            _ = waiter.closed() => return,
            _ = shutdown.cancelled() => break Err(AgentError::ShuttingDown),
            _ = tick.tick() => {
                let done = held_bytes(&handle.bitfield(), &metainfo);
                if reported != Some(done) {
                    reported = Some(done);
                    let update = Progress { bytes_done: done, bytes_total: total, done: false };
                    if progress.send(Ok(update)).await.is_err() {
                        return;
                    }
                }
            }
        }
    };
    let _ = progress.send(last).await;
}

/// Bytes covered by the verified pieces in `held`.
fn held_bytes(held: &Bitfield, metainfo: &MetaInfo) -> u64 {
    let pieces = metainfo.num_pieces();
    if pieces == 0 {
        return 0;
    }
    let count = u64::from(held.count());
    let full = count * metainfo.piece_length();
    if held.get(pieces - 1) {
        let last_len = metainfo.length() - metainfo.piece_offset(pieces - 1);
        full - metainfo.piece_length() + last_len
    } else {
        full
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::StreamExt;
    use kraken_config::store::StoreConfig;
    use kraken_core::PieceHashAlgorithm;
    use kraken_scheduler::DownloadError;
    use kraken_store::BlobStore;
    use tokio::sync::watch;

    fn blob(len: usize) -> Bytes {
        (0..len)
            .map(|i| (i as u32).wrapping_mul(2_654_435_761).to_be_bytes()[0])
            .collect::<Vec<_>>()
            .into()
    }

    async fn store() -> (BlobStore, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::open(StoreConfig {
            dir: dir.path().to_owned(),
            ..StoreConfig::default()
        })
        .await
        .unwrap();
        (store, dir)
    }

    /// Plays the scheduler: writes every piece, commits, and reports the outcome as a status.
    async fn deliver(handle: DownloadHandle, data: Bytes, status: watch::Sender<Status>) {
        let metainfo = handle.metainfo().clone();
        for index in 0..metainfo.num_pieces() {
            let start = metainfo.piece_offset(index) as usize;
            let len = metainfo.piece_len(index).unwrap() as usize;
            handle
                .write_piece(index, data.slice(start..start + len))
                .await
                .unwrap();
            tokio::task::yield_now().await;
        }
        match handle.complete().await {
            Ok(_) => status.send_replace(Status::Complete),
            Err(error) => status.send_replace(Status::Failed(DownloadError::Commit(
                std::sync::Arc::new(error),
            ))),
        };
    }

    async fn stream_range(
        metainfo: MetaInfo,
        data: Bytes,
        offset: u64,
        len: u64,
    ) -> (Vec<Result<Bytes, AgentError>>, tempfile::TempDir) {
        let (store, dir) = store().await;
        let handle = store.begin_download(&metainfo).await.unwrap();
        let (status_tx, status) = watch::channel(Status::Downloading {
            pieces: 0,
            total: metainfo.num_pieces(),
        });
        let download = Download {
            digest: *metainfo.digest(),
            handle: handle.clone(),
            status,
        };
        let (tx, rx) = mpsc::channel(CHANNEL_DEPTH);
        let producer = SwarmProducer {
            metainfo,
            download,
            handle: handle.clone(),
            offset,
            len,
            started: Instant::now(),
            shutdown: CancellationToken::new(),
        };
        tokio::spawn(producer.run(Emitter::new(tx, true)));
        tokio::spawn(deliver(handle, data, status_tx));
        let items = tokio_stream::wrappers::ReceiverStream::new(rx)
            .collect()
            .await;
        (items, dir)
    }

    #[tokio::test]
    async fn streams_ranges_across_piece_boundaries_in_bounded_chunks() {
        let data = blob(3 * STREAM_CHUNK + 12_345);
        let metainfo = MetaInfo::generate(&data[..], 64 << 10, PieceHashAlgorithm::Blake3).unwrap();
        for (offset, len) in [
            (0, data.len() as u64),
            (1, 1),
            (65_535, 2),
            (100_000, 2 * STREAM_CHUNK as u64 + 7),
            (data.len() as u64 - 10, 10),
            (5, 0),
        ] {
            let (items, _dir) = stream_range(metainfo.clone(), data.clone(), offset, len).await;
            let mut got = Vec::new();
            for item in items {
                let chunk = item.unwrap();
                assert!(!chunk.is_empty() && chunk.len() <= STREAM_CHUNK);
                got.extend_from_slice(&chunk);
            }
            let expected = &data[offset as usize..(offset + len) as usize];
            assert!(got == expected, "range {offset}+{len}");
        }
    }

    #[tokio::test]
    async fn a_blob_failing_its_digest_never_yields_its_last_byte() {
        // Pieces that hash right under a digest that does not: the store verifies each piece,
        // then refuses the whole.
        let data = blob(3 * STREAM_CHUNK);
        let honest = MetaInfo::generate(&data[..], 64 << 10, PieceHashAlgorithm::Blake3).unwrap();
        let lying = MetaInfo::new(
            Digest::of(b"something else"),
            honest.length(),
            honest.piece_length(),
            honest.piece_hash_algorithm(),
            honest.piece_hashes().to_vec(),
        )
        .unwrap();
        let (items, _dir) = stream_range(lying, data.clone(), 0, data.len() as u64).await;
        let (last, chunks) = items.split_last().unwrap();
        let served: usize = chunks.iter().map(|c| c.as_ref().unwrap().len()).sum();
        assert!(served < data.len(), "the held-back chunk was not released");
        let error = last.as_ref().unwrap_err();
        assert!(
            matches!(error, AgentError::DownloadFailed { .. }),
            "{error}"
        );
        assert_eq!(
            tonic::Status::from(AgentError::DownloadFailed {
                digest: Digest::of(b"x"),
                reason: String::new(),
            })
            .code(),
            tonic::Code::Aborted
        );
    }

    #[test]
    fn ranges_are_checked_against_the_size() {
        let digest = Digest::of(b"x");
        assert_eq!(resolve_range(&digest, 0, None, 10).unwrap(), (0, 10));
        assert_eq!(resolve_range(&digest, 10, None, 10).unwrap(), (10, 0));
        assert_eq!(resolve_range(&digest, 3, Some(7), 10).unwrap(), (3, 7));
        assert!(resolve_range(&digest, 11, None, 10).is_err());
        assert!(resolve_range(&digest, 3, Some(8), 10).is_err());
        assert!(resolve_range(&digest, 1, Some(u64::MAX), 10).is_err());
    }

    #[test]
    fn held_bytes_counts_the_short_last_piece() {
        let data = blob(2500);
        let metainfo = MetaInfo::generate(&data[..], 1024, PieceHashAlgorithm::Blake3).unwrap();
        let mut held = Bitfield::new(3);
        assert_eq!(held_bytes(&held, &metainfo), 0);
        held.set(0, true);
        assert_eq!(held_bytes(&held, &metainfo), 1024);
        held.set(2, true);
        assert_eq!(held_bytes(&held, &metainfo), 1024 + 452);
        held.set(1, true);
        assert_eq!(held_bytes(&held, &metainfo), 2500);
    }
}
