//! `kraken.agent.v1.AgentService` over the [`Fetcher`].

use std::sync::Arc;
use std::time::Duration;

use futures::stream::{self, BoxStream, StreamExt};
use kraken_core::{Digest, Namespace};
use kraken_oci::TaggedName;
use kraken_proto::agent::v1::{
    EvictRequest, EvictResponse, GetBlobRequest, GetBlobResponse, GetStatusRequest,
    GetStatusResponse, PreloadProgress, PreloadRequest, RecentDownload, StatRequest, StatResponse,
    agent_service_server::AgentService, preload_request::Target,
};
use kraken_store::DownloadState;
use tokio::sync::{mpsc, oneshot};
use tonic::{Request, Response, Status};
use tracing::Instrument;

use crate::error::AgentError;
use crate::fetch::{BlobStream, Fetcher, Progress};
use crate::metrics as m;
use kraken_tagclient::TagClient;

/// The gRPC face of the agent.
#[derive(Clone)]
pub(crate) struct AgentGrpc {
    fetcher: Arc<Fetcher>,
    /// Resolves `repository:tag` for Preload; `None` without a build-index.
    tags: Option<TagClient>,
    /// How long a streaming call may take to resolve its blob before the response starts
    /// anyway (the outcome then arrives in-stream). Below the server's request timeout, which
    /// only covers the time to the response headers.
    header_wait: Duration,
}

impl AgentGrpc {
    pub(crate) fn new(
        fetcher: Arc<Fetcher>,
        tags: Option<TagClient>,
        header_wait: Duration,
    ) -> Self {
        Self {
            fetcher,
            tags,
            header_wait,
        }
    }
}

type StatusStream<T> = BoxStream<'static, Result<T, Status>>;

#[tonic::async_trait]
impl AgentService for AgentGrpc {
    type PreloadStream = StatusStream<PreloadProgress>;
    type GetBlobStream = StatusStream<GetBlobResponse>;

    #[tracing::instrument(skip_all, fields(digest = tracing::field::Empty))]
    async fn get_blob(
        &self,
        request: Request<GetBlobRequest>,
    ) -> Result<Response<Self::GetBlobStream>, Status> {
        let request = request.into_inner();
        let (namespace, digest) =
            parse_blob(&request.namespace, &request.digest).map_err(|e| failed("get_blob", e))?;
        tracing::Span::current().record("digest", tracing::field::display(&digest));
        let fetcher = self.fetcher.clone();
        let (offset, length) = (request.offset, request.length);
        let work = async move {
            fetcher
                .fetch(&namespace, &digest, offset, length, "get_blob")
                .await
        };
        respond("get_blob", self.header_wait, work, blob_chunks).await
    }

    #[tracing::instrument(skip_all, fields(digest = tracing::field::Empty))]
    async fn preload(
        &self,
        request: Request<PreloadRequest>,
    ) -> Result<Response<Self::PreloadStream>, Status> {
        let blob = match request.into_inner().target {
            Some(Target::Blob(blob)) => blob,
            Some(Target::Tag(tag)) => {
                let Some(tags) = self.tags.clone() else {
                    return Err(failed("preload", AgentError::TagsUnsupported));
                };
                let tagged: TaggedName =
                    tag.parse().map_err(|e: kraken_oci::TaggedNameError| {
                        failed("preload", AgentError::InvalidTag(e.to_string()))
                    })?;
                let fetcher = self.fetcher.clone();
                let work = preload_image(fetcher, tags, tagged);
                let to_stream = |progress: mpsc::Receiver<Result<PreloadProgress, AgentError>>| {
                    tokio_stream::wrappers::ReceiverStream::new(progress)
                        .map(|update| update.map_err(|e| failed("preload", e)))
                        .boxed()
                };
                return respond("preload", self.header_wait, work, to_stream).await;
            }
            None => {
                return Err(failed(
                    "preload",
                    AgentError::MissingField { field: "target" },
                ));
            }
        };
        let (namespace, digest) =
            parse_blob(&blob.namespace, &blob.digest).map_err(|e| failed("preload", e))?;
        tracing::Span::current().record("digest", tracing::field::display(&digest));
        let fetcher = self.fetcher.clone();
        let work = async move { fetcher.preload(&namespace, &digest).await };
        let to_stream = move |progress: tokio::sync::mpsc::Receiver<_>| {
            tokio_stream::wrappers::ReceiverStream::new(progress)
                .map(move |update: Result<Progress, AgentError>| {
                    update
                        .map(|p| PreloadProgress {
                            digest: digest.to_string(),
                            bytes_done: p.bytes_done,
                            bytes_total: p.bytes_total,
                            done: p.done,
                        })
                        .map_err(|e| failed("preload", e))
                })
                .boxed()
        };
        respond("preload", self.header_wait, work, to_stream).await
    }

    #[tracing::instrument(skip_all, fields(digest = tracing::field::Empty))]
    async fn stat(&self, request: Request<StatRequest>) -> Result<Response<StatResponse>, Status> {
        let request = request.into_inner();
        if !request.namespace.is_empty() {
            parse_namespace(&request.namespace)?;
        }
        let digest = parse_digest(&request.digest)?;
        tracing::Span::current().record("digest", tracing::field::display(&digest));
        let store = self.fetcher.store();
        if let Some(info) = store.stat(&digest).await.map_err(AgentError::from)? {
            let pieces = info.metainfo.as_ref().map_or(0, |m| m.num_pieces());
            return Ok(Response::new(StatResponse {
                size: info.size,
                complete: true,
                pieces_held: pieces,
                pieces_total: pieces,
            }));
        }
        if let Some(download) = store.download(&digest) {
            let metainfo = download.metainfo();
            let state = download.state();
            if matches!(state, DownloadState::Downloading | DownloadState::Committed) {
                let complete = state == DownloadState::Committed;
                return Ok(Response::new(StatResponse {
                    size: metainfo.length(),
                    complete,
                    pieces_held: download.bitfield().count(),
                    pieces_total: metainfo.num_pieces(),
                }));
            }
        }
        Err(AgentError::NotFound { digest }.into())
    }

    #[tracing::instrument(skip_all, fields(digest = tracing::field::Empty))]
    async fn evict(
        &self,
        request: Request<EvictRequest>,
    ) -> Result<Response<EvictResponse>, Status> {
        let digest = parse_digest(&request.get_ref().digest)?;
        tracing::Span::current().record("digest", tracing::field::display(&digest));
        let store = self.fetcher.store();
        self.fetcher.scheduler().remove(&digest);
        let downloading = store.download(&digest);
        if let Some(download) = &downloading {
            download.abort().await.map_err(AgentError::from)?;
        }
        let deleted = match store.delete(&digest).await {
            Ok(()) => true,
            Err(error) if error.is_not_found() => false,
            Err(error) => return Err(AgentError::from(error).into()),
        };
        if !deleted && downloading.is_none() {
            return Err(AgentError::NotFound { digest }.into());
        }
        tracing::info!(%digest, "blob evicted");
        Ok(Response::new(EvictResponse {}))
    }

    async fn get_status(
        &self,
        _request: Request<GetStatusRequest>,
    ) -> Result<Response<GetStatusResponse>, Status> {
        let scheduler = self.fetcher.scheduler();
        let stats = scheduler.stats();
        let millis = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        let downloads = scheduler
            .recent_downloads()
            .into_iter()
            .map(|report| RecentDownload {
                namespace: report.namespace.to_string(),
                digest: report.digest.to_string(),
                size: report.size,
                bytes_from_peers: report.bytes_from_peers,
                bytes_from_origins: report.bytes_from_origins,
                duration_ms: millis(report.duration),
                finished_unix_ms: report
                    .finished
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(millis)
                    .unwrap_or_default(),
                metainfo_wait_ms: self
                    .fetcher
                    .metainfo_wait(&report.digest)
                    .map(millis)
                    .unwrap_or_default(),
            })
            .collect();
        let store = self.fetcher.store();
        Ok(Response::new(GetStatusResponse {
            downloads,
            torrents: u32::try_from(stats.torrents).unwrap_or(u32::MAX),
            connected_peers: u32::try_from(stats.links).unwrap_or(u32::MAX),
            blacklisted_peers: stats.blacklisted_peers,
            bytes_down: stats.bytes_received,
            bytes_up: stats.bytes_sent,
            stored_blobs: store.list().len() as u64,
            stored_bytes: store.stored_bytes(),
        }))
    }
}

/// Runs `work` (resolving a blob) in its own task and answers with its stream. If `work` fails
/// within `header_wait`, the call fails with a plain status (`NOT_FOUND`, `OUT_OF_RANGE`, ...);
/// if it takes longer (the origin is still fetching the blob), the response starts now and the
/// outcome follows in-stream, so the server's timeout to the headers never cuts a long wait.
async fn respond<S, T, W>(
    method: &'static str,
    header_wait: Duration,
    work: W,
    to_stream: impl FnOnce(S) -> StatusStream<T> + Send + 'static,
) -> Result<Response<StatusStream<T>>, Status>
where
    W: Future<Output = Result<S, AgentError>> + Send + 'static,
    S: Send + 'static,
    T: Send + 'static,
{
    let (ready_tx, mut ready) = oneshot::channel();
    tokio::spawn(
        async move {
            let mut ready_tx = ready_tx;
            let outcome = tokio::select! {
                outcome = work => Some(outcome),
                // The caller went away: stop resolving.
                _ = ready_tx.closed() => None,
            };
            if let Some(outcome) = outcome {
                let _ = ready_tx.send(outcome);
            }
        }
        .in_current_span(),
    );
    let gone = || Status::internal("the request task ended without an answer");
    let stream = match tokio::time::timeout(header_wait, &mut ready).await {
        Ok(Ok(Ok(resolved))) => to_stream(resolved),
        Ok(Ok(Err(error))) => return Err(failed(method, error)),
        Ok(Err(_)) => return Err(gone()),
        Err(_) => stream::once(async move {
            match ready.await {
                Ok(Ok(resolved)) => to_stream(resolved),
                Ok(Err(error)) => stream::iter([Err(failed(method, error))]).boxed(),
                Err(_) => stream::iter([Err(gone())]).boxed(),
            }
        })
        .flatten()
        .boxed(),
    };
    Ok(Response::new(stream))
}

fn blob_chunks(blob: BlobStream) -> StatusStream<GetBlobResponse> {
    blob.map(|chunk| {
        chunk
            .map(|chunk| GetBlobResponse { chunk })
            .map_err(|e| failed("get_blob", e))
    })
    .boxed()
}

/// Counts a failed request and converts the error.
fn failed(method: &'static str, error: AgentError) -> Status {
    let status = Status::from(error);
    metrics::counter!(
        m::BLOB_REQUEST_ERRORS,
        "method" => method,
        "code" => format!("{:?}", status.code())
    )
    .increment(1);
    status
}

fn parse_blob(namespace: &str, digest: &str) -> Result<(Namespace, Digest), AgentError> {
    Ok((parse_namespace(namespace)?, parse_digest(digest)?))
}

fn parse_namespace(text: &str) -> Result<Namespace, AgentError> {
    text.parse().map_err(AgentError::InvalidNamespace)
}

fn parse_digest(text: &str) -> Result<Digest, AgentError> {
    Ok(kraken_core::parse_digest("digest", text)?)
}

/// Preloads every blob of the image `tagged` points at (manifests first, then configs and
/// layers), one after the other. Progress events name the blob they are about; only the last
/// blob's final event has `done` set, so a client waiting for `done` waits for the whole image.
async fn preload_image(
    fetcher: Arc<Fetcher>,
    tags: TagClient,
    tagged: TaggedName,
) -> Result<mpsc::Receiver<Result<PreloadProgress, AgentError>>, AgentError> {
    let namespace = tagged.repository.clone();
    let digest = tags.resolve(&tagged).await?;
    let blobs = fetcher.image_blobs(&namespace, &digest).await?;
    tracing::info!(tag = %tagged, %digest, blobs = blobs.len(), "preloading image");
    let (tx, rx) = mpsc::channel(16);
    tokio::spawn(async move {
        let last = blobs.len().saturating_sub(1);
        for (index, blob) in blobs.iter().enumerate() {
            let mut progress = match fetcher.preload(&namespace, blob).await {
                Ok(progress) => progress,
                Err(error) => {
                    let _ = tx.send(Err(error)).await;
                    return;
                }
            };
            while let Some(update) = progress.recv().await {
                let event = update.map(|p| PreloadProgress {
                    digest: blob.to_string(),
                    bytes_done: p.bytes_done,
                    bytes_total: p.bytes_total,
                    done: p.done && index == last,
                });
                let failed = event.is_err();
                if tx.send(event).await.is_err() || failed {
                    return;
                }
            }
        }
    });
    Ok(rx)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn numbers(count: u32) -> StatusStream<u32> {
        stream::iter((0..count).map(Ok)).boxed()
    }

    #[tokio::test(start_paused = true)]
    async fn quick_outcomes_answer_directly() {
        let response = respond("test", Duration::from_secs(10), async { Ok(3) }, numbers)
            .await
            .unwrap();
        let items: Vec<_> = response.into_inner().collect().await;
        assert_eq!(items.len(), 3);

        let digest = Digest::of(b"x");
        let error = respond(
            "test",
            Duration::from_secs(10),
            async move { Err::<u32, _>(AgentError::NotFound { digest }) },
            numbers,
        )
        .await
        .err()
        .unwrap();
        assert_eq!(error.code(), tonic::Code::NotFound);
    }

    #[tokio::test(start_paused = true)]
    async fn slow_outcomes_arrive_in_stream() {
        let slow = |outcome: Result<u32, AgentError>| async move {
            tokio::time::sleep(Duration::from_secs(60)).await;
            outcome
        };
        // Responds at the header deadline, long before the work ends.
        let started = tokio::time::Instant::now();
        let response = respond("test", Duration::from_secs(10), slow(Ok(2)), numbers)
            .await
            .unwrap();
        assert_eq!(started.elapsed(), Duration::from_secs(10));
        let items: Vec<_> = response.into_inner().collect().await;
        assert_eq!(items.len(), 2);
        assert!(items.iter().all(Result::is_ok));

        let digest = Digest::of(b"x");
        let response = respond(
            "test",
            Duration::from_secs(10),
            slow(Err(AgentError::NotFound { digest })),
            numbers,
        )
        .await
        .unwrap();
        let items: Vec<_> = response.into_inner().collect().await;
        assert_eq!(items.len(), 1);
        assert_eq!(items[0].as_ref().unwrap_err().code(), tonic::Code::NotFound);
    }
}
