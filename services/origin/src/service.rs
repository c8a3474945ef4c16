//! `kraken.origin.v1.BlobService` over the store, the backends and the scheduler.

use std::io::SeekFrom;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::{Stream, StreamExt};
use kraken_core::{Digest, MetaInfo, Namespace, parse_digest};
use kraken_proto::common::v1 as common_pb;
use kraken_proto::origin::v1::blob_service_server::BlobService;
use kraken_proto::origin::v1::{
    AbortUploadRequest, AbortUploadResponse, CommitUploadRequest, CommitUploadResponse,
    DeleteRequest, DeleteResponse, DownloadRequest, DownloadResponse, DuplicateRequest,
    DuplicateResponse, GetMetaInfoRequest, GetMetaInfoResponse, GetPeerContextRequest,
    GetPeerContextResponse, GetUploadStatusRequest, GetUploadStatusResponse, LocationsRequest,
    LocationsResponse, OriginLocation, PrefetchRequest, PrefetchResponse, ReplicateToRemoteRequest,
    ReplicateToRemoteResponse, StartUploadRequest, StartUploadResponse, StatRequest, StatResponse,
    UploadChunksRequest, UploadChunksResponse, UploadRequest, UploadResponse, duplicate_request,
    upload_request,
};
use kraken_scheduler::Scheduler;
use kraken_store::{BlobStore, CommitOptions, CommitOutcome, StoreError, UploadId};
use kraken_transport::cluster::HostPool;
use tokio::io::{AsyncReadExt, AsyncSeekExt};
use tokio_util::io::ReaderStream;
use tonic::{Request, Response, Status, Streaming};
use tracing::Instrument;
use tracing::field::{Empty, display};

use crate::error::OriginError;
use crate::fetch::{BackendFetcher, Presence, stat_with_timeout};
use crate::metrics as m;
use crate::remote::Remotes;
use crate::replicate::{Persistence, Replicator};
use crate::staging::StagedUpload;
use crate::writeback::{TaskSource, WriteBackQueue};
use kraken_backend::Backends;
use kraken_proto::wire::CHUNK_SIZE;

/// A client stream that sends nothing for this long is dropped (and its upload aborted).
const STREAM_IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// Everything the handlers share.
#[derive(Debug)]
pub(crate) struct Shared {
    /// Ring label (`host:port`).
    pub(crate) name: String,
    pub(crate) store: BlobStore,
    pub(crate) backends: Backends,
    pub(crate) fetcher: BackendFetcher,
    pub(crate) writeback: WriteBackQueue,
    pub(crate) replicator: Replicator,
    /// How uploads are committed (pinned until written back).
    pub(crate) commit: CommitOptions,
    /// The origin ring with active health checks.
    pub(crate) cluster: HostPool,
    pub(crate) max_replica: usize,
    pub(crate) scheduler: Scheduler,
    /// The remote clusters under `remotes:`, the only ones `ReplicateToRemote` may name.
    pub(crate) remotes: Remotes,
}

/// The `BlobService` implementation.
#[derive(Debug, Clone)]
pub(crate) struct OriginService {
    shared: Arc<Shared>,
}

type DownloadStream = Pin<Box<dyn Stream<Item = Result<DownloadResponse, Status>> + Send>>;

impl OriginService {
    pub(crate) fn new(shared: Arc<Shared>) -> Self {
        Self { shared }
    }

    /// Copies the data chunks following a header into a new store upload, which is aborted
    /// on any failure; `declared` (the header's size) is enforced both ways.
    async fn receive<M>(
        &self,
        stream: &mut Streaming<M>,
        declared: Option<u64>,
        chunk_of: fn(M) -> Result<Bytes, OriginError>,
    ) -> Result<StagedUpload, OriginError> {
        let store = &self.shared.store;
        let staged = StagedUpload::create(store).await?;
        let mut size = 0u64;
        while let Some(message) = next_message(stream).await? {
            let chunk = chunk_of(message)?;
            if let Some(declared) = declared
                && size + chunk.len() as u64 > declared
            {
                return Err(OriginError::InvalidRequest(format!(
                    "chunk after the end: the header announced {declared} bytes and more arrived"
                )));
            }
            if chunk.is_empty() {
                continue;
            }
            metrics::counter!(m::UPLOAD_BYTES).increment(chunk.len() as u64);
            size = store.write_upload(staged.id(), size, chunk).await?;
        }
        if let Some(declared) = declared
            && size != declared
        {
            return Err(OriginError::InvalidRequest(format!(
                "the stream ended after {size} of the {declared} bytes the header announced"
            )));
        }
        Ok(staged)
    }

    /// Verifies and commits an upload (pinned), durably queues its write-back to the
    /// namespace's backend and starts copying it to the other owners. Returns the size and
    /// whether this upload stored the blob. Once this returns, the blob survives a restart and
    /// a backend outage: the caller may acknowledge the upload.
    async fn commit_and_write_back(
        &self,
        namespace: &Namespace,
        digest: &Digest,
        upload: &UploadId,
    ) -> Result<(u64, bool), OriginError> {
        // Detached from the request: a client that disconnects now must not cut the sequence
        // between the commit (pinned blob) and its queued write-back.
        let shared = self.shared.clone();
        let (namespace, digest, upload) = (namespace.clone(), *digest, *upload);
        let committing =
            async move { commit_and_queue(&shared, &namespace, &digest, &upload).await };
        tokio::spawn(committing.instrument(tracing::Span::current()))
            .await
            .map_err(OriginError::Task)?
    }

    /// The blob's metainfo, computing (and saving) it for an entry stored without one.
    async fn metainfo(&self, digest: &Digest) -> Result<MetaInfo, OriginError> {
        let store = &self.shared.store;
        if let Some(metainfo) = store.metainfo(digest).await? {
            return Ok(metainfo);
        }
        let reader = store.open_blob(digest).await?;
        let piece_length = self
            .shared
            .commit
            .piece_lengths
            .piece_length_for(reader.size());
        let algorithm = self.shared.commit.piece_hash;
        let file = reader.into_file();
        let metainfo = tokio::task::spawn_blocking(move || {
            MetaInfo::generate(std::io::BufReader::new(file), piece_length, algorithm)
        })
        .await
        .map_err(OriginError::Task)?
        .map_err(|source| OriginError::ReadBlob {
            digest: *digest,
            source,
        })?;
        if metainfo.digest() != digest {
            return Err(OriginError::Store(StoreError::MetaInfoMismatch {
                digest: *digest,
                reason: format!("the stored content hashes to {}", metainfo.digest()),
            }));
        }
        store.set_metainfo(&metainfo).await?;
        Ok(metainfo)
    }
}

#[tonic::async_trait]
impl BlobService for OriginService {
    #[tracing::instrument(skip_all, fields(digest = Empty, namespace = Empty))]
    async fn upload(
        &self,
        request: Request<Streaming<UploadRequest>>,
    ) -> Result<Response<UploadResponse>, Status> {
        let mut stream = request.into_inner();
        let header = match next_message(&mut stream).await? {
            Some(UploadRequest {
                part: Some(upload_request::Part::Header(header)),
            }) => header,
            _ => {
                return Err(OriginError::InvalidRequest(
                    "the first message of an upload must be its header (namespace, digest, size)"
                        .to_owned(),
                )
                .into());
            }
        };
        let (namespace, digest) = blob_ref(&header.namespace, &header.digest)?;
        let staged = self
            .receive(
                &mut stream,
                header.size,
                |message: UploadRequest| match message.part {
                    Some(upload_request::Part::Chunk(chunk)) => Ok(chunk),
                    Some(upload_request::Part::Header(_)) => Err(second_header()),
                    None => Ok(Bytes::new()),
                },
            )
            .await?;
        let committed = self
            .commit_and_write_back(&namespace, &digest, staged.id())
            .await;
        staged.disarm();
        let (size, created) = committed?;
        Ok(Response::new(UploadResponse {
            digest: digest.to_string(),
            size,
            created,
        }))
    }

    #[tracing::instrument(skip_all, fields(namespace = Empty))]
    async fn start_upload(
        &self,
        request: Request<StartUploadRequest>,
    ) -> Result<Response<StartUploadResponse>, Status> {
        let namespace = parse_namespace(&request.get_ref().namespace)?;
        tracing::Span::current().record("namespace", display(&namespace));
        let upload = self
            .shared
            .store
            .create_upload()
            .await
            .map_err(OriginError::from)?;
        Ok(Response::new(StartUploadResponse {
            upload_id: upload.to_string(),
        }))
    }

    #[tracing::instrument(skip_all, fields(upload = Empty))]
    async fn upload_chunks(
        &self,
        request: Request<Streaming<UploadChunksRequest>>,
    ) -> Result<Response<UploadChunksResponse>, Status> {
        let store = &self.shared.store;
        let mut stream = request.into_inner();
        let mut upload: Option<UploadId> = None;
        let mut size = None;
        while let Some(message) = next_message(&mut stream).await? {
            let id = match upload {
                Some(id) => id,
                None => {
                    let id = parse_upload_id(&message.upload_id)?;
                    tracing::Span::current().record("upload", display(id));
                    *upload.insert(id)
                }
            };
            let len = message.data.len() as u64;
            // A refused chunk leaves the upload as it was: the client resumes at the offset
            // the error names.
            size = Some(
                store
                    .write_upload(&id, message.offset, message.data)
                    .await
                    .map_err(OriginError::from)?,
            );
            metrics::counter!(m::UPLOAD_BYTES).increment(len);
        }
        let Some(id) = upload else {
            return Err(OriginError::InvalidRequest(
                "an UploadChunks stream needs at least one message, carrying the upload id"
                    .to_owned(),
            )
            .into());
        };
        let size = match size {
            Some(size) => size,
            None => store.upload_size(&id).await.map_err(OriginError::from)?,
        };
        Ok(Response::new(UploadChunksResponse { size }))
    }

    #[tracing::instrument(skip_all, fields(upload = Empty))]
    async fn get_upload_status(
        &self,
        request: Request<GetUploadStatusRequest>,
    ) -> Result<Response<GetUploadStatusResponse>, Status> {
        let id = parse_upload_id(&request.get_ref().upload_id)?;
        tracing::Span::current().record("upload", display(id));
        let size = self
            .shared
            .store
            .upload_size(&id)
            .await
            .map_err(OriginError::from)?;
        Ok(Response::new(GetUploadStatusResponse { size }))
    }

    #[tracing::instrument(skip_all, fields(digest = Empty, namespace = Empty, upload = Empty))]
    async fn commit_upload(
        &self,
        request: Request<CommitUploadRequest>,
    ) -> Result<Response<CommitUploadResponse>, Status> {
        let request = request.into_inner();
        let id = parse_upload_id(&request.upload_id)?;
        tracing::Span::current().record("upload", display(id));
        let (namespace, digest) = blob_ref(&request.namespace, &request.digest)?;
        let (size, created) = self.commit_and_write_back(&namespace, &digest, &id).await?;
        Ok(Response::new(CommitUploadResponse {
            digest: digest.to_string(),
            size,
            created,
        }))
    }

    #[tracing::instrument(skip_all, fields(upload = Empty))]
    async fn abort_upload(
        &self,
        request: Request<AbortUploadRequest>,
    ) -> Result<Response<AbortUploadResponse>, Status> {
        let id = parse_upload_id(&request.get_ref().upload_id)?;
        tracing::Span::current().record("upload", display(id));
        self.shared
            .store
            .abort_upload(&id)
            .await
            .map_err(OriginError::from)?;
        Ok(Response::new(AbortUploadResponse {}))
    }

    type DownloadStream = DownloadStream;

    #[tracing::instrument(skip_all, fields(digest = Empty, namespace = Empty))]
    async fn download(
        &self,
        request: Request<DownloadRequest>,
    ) -> Result<Response<Self::DownloadStream>, Status> {
        let request = request.into_inner();
        let (namespace, digest) = blob_ref(&request.namespace, &request.digest)?;
        let store = &self.shared.store;
        let reader = match store.open_blob(&digest).await {
            Ok(reader) => reader,
            Err(StoreError::NotFound(_)) => {
                self.shared.fetcher.require(&namespace, &digest).await?;
                store.open_blob(&digest).await.map_err(OriginError::from)?
            }
            Err(error) => return Err(OriginError::from(error).into()),
        };
        let size = reader.size();
        let out_of_range = || OriginError::OutOfRange {
            digest,
            offset: request.offset,
            length: request.length,
            size,
        };
        if request.offset > size {
            return Err(out_of_range().into());
        }
        let length = match request.length {
            Some(length)
                if request
                    .offset
                    .checked_add(length)
                    .is_none_or(|end| end > size) =>
            {
                return Err(out_of_range().into());
            }
            Some(length) => length,
            None => size - request.offset,
        };
        let mut file = tokio::fs::File::from_std(reader.into_file());
        file.seek(SeekFrom::Start(request.offset))
            .await
            .map_err(|source| OriginError::ReadBlob { digest, source })?;
        metrics::counter!(m::DOWNLOADS).increment(1);
        let chunks =
            ReaderStream::with_capacity(file.take(length), CHUNK_SIZE).map(
                move |read| match read {
                    Ok(chunk) => {
                        metrics::counter!(m::DOWNLOAD_BYTES).increment(chunk.len() as u64);
                        Ok(DownloadResponse { chunk })
                    }
                    Err(source) => Err(OriginError::ReadBlob { digest, source }.into()),
                },
            );
        Ok(Response::new(Box::pin(chunks)))
    }

    #[tracing::instrument(skip_all, fields(digest = Empty, namespace = Empty))]
    async fn stat(&self, request: Request<StatRequest>) -> Result<Response<StatResponse>, Status> {
        let request = request.into_inner();
        let (namespace, digest) = blob_ref(&request.namespace, &request.digest)?;
        if let Some(info) = self
            .shared
            .store
            .stat(&digest)
            .await
            .map_err(OriginError::from)?
        {
            return Ok(Response::new(StatResponse {
                size: info.size,
                local: true,
                // Pinned means "not yet written back".
                persisted: !info.persist,
            }));
        }
        if request.local_only {
            return Err(OriginError::Store(StoreError::NotFound(digest)).into());
        }
        let backend = self
            .shared
            .backends
            .backend_for(&namespace)
            .map_err(OriginError::from)?;
        match stat_with_timeout(backend.as_ref(), &namespace, &digest)
            .await
            .map_err(OriginError::from)?
        {
            Some(size) => Ok(Response::new(StatResponse {
                size,
                local: false,
                persisted: true,
            })),
            None => Err(OriginError::NotFound { namespace, digest }.into()),
        }
    }

    #[tracing::instrument(skip_all, fields(digest = Empty, namespace = Empty))]
    async fn get_meta_info(
        &self,
        request: Request<GetMetaInfoRequest>,
    ) -> Result<Response<GetMetaInfoResponse>, Status> {
        let request = request.into_inner();
        let (namespace, digest) = blob_ref(&request.namespace, &request.digest)?;
        self.shared.fetcher.require(&namespace, &digest).await?;
        let metainfo = self.metainfo(&digest).await?;
        Ok(Response::new(GetMetaInfoResponse {
            metainfo: Some(common_pb::MetaInfo::from(&metainfo)),
        }))
    }

    #[tracing::instrument(skip_all, fields(digest = Empty))]
    async fn locations(
        &self,
        request: Request<LocationsRequest>,
    ) -> Result<Response<LocationsResponse>, Status> {
        let digest =
            parse_digest("digest", &request.get_ref().digest).map_err(OriginError::from)?;
        tracing::Span::current().record("digest", display(digest));
        let shared = &self.shared;
        let ranked = shared.cluster.ranked(&digest);
        if ranked.is_empty() {
            // A DNS ring not resolved yet: this origin is the one member it knows of.
            return Ok(Response::new(LocationsResponse {
                origins: vec![OriginLocation {
                    address: shared.name.clone(),
                    healthy: true,
                }],
            }));
        }
        let mut owners: Vec<_> = ranked.iter().take(shared.max_replica.max(1)).collect();
        // As Kraken: when every owner is down, the next healthy member stands in (it fetches
        // the blob from the backend), rather than sending callers to dead hosts only.
        if !owners.iter().any(|o| o.healthy)
            && let Some(stand_in) = ranked.iter().skip(owners.len()).find(|m| m.healthy)
        {
            owners.push(stand_in);
        }
        let origins = owners
            .into_iter()
            .map(|member| OriginLocation {
                address: member.label.clone(),
                healthy: member.healthy,
            })
            .collect();
        Ok(Response::new(LocationsResponse { origins }))
    }

    #[tracing::instrument(skip_all)]
    async fn get_peer_context(
        &self,
        _request: Request<GetPeerContextRequest>,
    ) -> Result<Response<GetPeerContextResponse>, Status> {
        Ok(Response::new(GetPeerContextResponse {
            peer: Some(common_pb::PeerInfo::from(self.shared.scheduler.local())),
            name: self.shared.name.clone(),
        }))
    }

    #[tracing::instrument(skip_all, fields(digest = Empty, namespace = Empty, remote = %request.get_ref().remote_cluster))]
    async fn replicate_to_remote(
        &self,
        request: Request<ReplicateToRemoteRequest>,
    ) -> Result<Response<ReplicateToRemoteResponse>, Status> {
        let request = request.into_inner();
        let (namespace, digest) = blob_ref(&request.namespace, &request.digest)?;
        // A name, never an address: an origin only ever dials the clusters it is configured
        // for, with the TLS configured for each.
        let response = self
            .shared
            .remotes
            .replicate(&self.shared, &request.remote_cluster, &namespace, &digest)
            .await?;
        Ok(Response::new(response))
    }

    #[tracing::instrument(skip_all, fields(digest = Empty, namespace = Empty))]
    async fn duplicate(
        &self,
        request: Request<Streaming<DuplicateRequest>>,
    ) -> Result<Response<DuplicateResponse>, Status> {
        let mut stream = request.into_inner();
        let header = match next_message(&mut stream).await? {
            Some(DuplicateRequest {
                part: Some(duplicate_request::Part::Header(header)),
            }) => header,
            _ => {
                return Err(OriginError::InvalidRequest(
                    "the first message of a duplicate must be its header (namespace, digest, \
                     size, write_back_delay)"
                        .to_owned(),
                )
                .into());
            }
        };
        let (namespace, digest) = blob_ref(&header.namespace, &header.digest)?;
        let write_back_delay = match header.write_back_delay {
            None => None,
            Some(delay) => Some(Duration::try_from(delay).map_err(|_| {
                OriginError::InvalidRequest(
                    "field `write_back_delay` must not be negative".to_owned(),
                )
            })?),
        };
        let staged = self
            .receive(
                &mut stream,
                header.size,
                |message: DuplicateRequest| match message.part {
                    Some(duplicate_request::Part::Chunk(chunk)) => Ok(chunk),
                    Some(duplicate_request::Part::Header(_)) => Err(second_header()),
                    None => Ok(Bytes::new()),
                },
            )
            .await?;
        // A replica asked to write back later is the fallback copy should the sender die
        // first: pinned, with a durable write-back due after the delay (by then the sender
        // has normally written it back, and the task only finds it present). Without a delay
        // the sender owns the write-back, or the backend already has the blob.
        let shared = self.shared.clone();
        let staged_id = *staged.id();
        // Detached from the request, like an upload's commit: a sender that goes away now must
        // not leave a pinned replica without its write-back task.
        let committing = async move {
            let options = shared.commit.clone().persist(write_back_delay.is_some());
            let outcome = shared
                .store
                .commit_upload(&staged_id, &digest, &options)
                .await?;
            let created = record_commit(&outcome);
            if let Some(delay) = write_back_delay
                && !shared.backends.is_empty()
            {
                shared
                    .writeback
                    .enqueue(&namespace, &digest, TaskSource::Replica, delay)
                    .await?;
            }
            Ok::<bool, OriginError>(created)
        };
        let committed = tokio::spawn(committing.instrument(tracing::Span::current())).await;
        staged.disarm();
        let created = committed.map_err(OriginError::Task)??;
        Ok(Response::new(DuplicateResponse { created }))
    }

    #[tracing::instrument(skip_all, fields(digest = Empty, namespace = Empty))]
    async fn delete(
        &self,
        request: Request<DeleteRequest>,
    ) -> Result<Response<DeleteResponse>, Status> {
        let request = request.into_inner();
        let (_namespace, digest) = blob_ref(&request.namespace, &request.digest)?;
        let store = &self.shared.store;
        let info = store
            .stat(&digest)
            .await
            .map_err(OriginError::from)?
            .ok_or(OriginError::Store(StoreError::NotFound(digest)))?;
        if info.persist {
            return Err(OriginError::NotPersisted(digest).into());
        }
        self.shared.scheduler.remove(&digest);
        store.delete(&digest).await.map_err(OriginError::from)?;
        tracing::info!("blob deleted from this origin");
        Ok(Response::new(DeleteResponse {}))
    }

    #[tracing::instrument(skip_all, fields(digest = Empty, namespace = Empty))]
    async fn prefetch(
        &self,
        request: Request<PrefetchRequest>,
    ) -> Result<Response<PrefetchResponse>, Status> {
        let request = request.into_inner();
        let (namespace, digest) = blob_ref(&request.namespace, &request.digest)?;
        let presence = self.shared.fetcher.locate(&namespace, &digest).await?;
        Ok(Response::new(PrefetchResponse {
            cached: presence == Presence::Local,
        }))
    }
}

/// Verifies and commits an upload (pinned), durably queues its write-back and starts copying
/// it to the other owners; see [`OriginService::commit_and_write_back`].
async fn commit_and_queue(
    shared: &Shared,
    namespace: &Namespace,
    digest: &Digest,
    upload: &UploadId,
) -> Result<(u64, bool), OriginError> {
    let outcome = shared
        .store
        .commit_upload(upload, digest, &shared.commit)
        .await?;
    let created = record_commit(&outcome);
    // Without any backend there is nothing to write to: the blob just stays pinned (the
    // origin warned at start-up).
    if !shared.backends.is_empty() {
        shared
            .writeback
            .enqueue(namespace, digest, TaskSource::Upload, Duration::ZERO)
            .await?;
    }
    shared
        .replicator
        .replicate(namespace, digest, Persistence::Pending);
    Ok((outcome.metainfo().length(), created))
}

/// Counts a commit; whether it stored the blob.
fn record_commit(outcome: &CommitOutcome) -> bool {
    let created = matches!(outcome, CommitOutcome::Stored(_));
    let label = if created { "created" } else { "existing" };
    metrics::counter!(m::UPLOADS, "outcome" => label).increment(1);
    tracing::info!(size = outcome.metainfo().length(), created, "blob received");
    created
}

/// The next message of a client stream, or `None` at its end; a client silent for
/// [`STREAM_IDLE_TIMEOUT`] is given up on.
async fn next_message<M>(stream: &mut Streaming<M>) -> Result<Option<M>, OriginError> {
    match tokio::time::timeout(STREAM_IDLE_TIMEOUT, stream.message()).await {
        Err(_) => Err(OriginError::StreamIdle(STREAM_IDLE_TIMEOUT)),
        Ok(Err(status)) => Err(OriginError::Stream(status)),
        Ok(Ok(message)) => Ok(message),
    }
}

fn second_header() -> OriginError {
    OriginError::InvalidRequest(
        "a second header arrived after the first: a stream carries one header, then data"
            .to_owned(),
    )
}

fn parse_namespace(text: &str) -> Result<Namespace, OriginError> {
    Ok(text.parse()?)
}

fn parse_upload_id(text: &str) -> Result<UploadId, OriginError> {
    Ok(text.parse()?)
}

/// Parses a request's namespace and digest and records them on the handler's span.
fn blob_ref(namespace: &str, digest: &str) -> Result<(Namespace, Digest), OriginError> {
    let digest = parse_digest("digest", digest)?;
    let namespace = parse_namespace(namespace)?;
    let span = tracing::Span::current();
    span.record("digest", display(digest));
    span.record("namespace", display(&namespace));
    Ok((namespace, digest))
}
